"""generation.access: the rules, decided from ids and permission bits, one row a case."""

from __future__ import annotations

import dataclasses

import pytest

from generation.access import (
    ADMINISTRATOR,
    HOST,
    Access,
    Actor,
    may_act_on_job,
    may_manage_users,
    may_moderate_job,
    may_see_job,
)
from storage.models import JobStatus, Review
from storage.records import ImageRecord, JobRecord

ONE, TWO = 1001, 2002  # two servers
MOD_ROLE_ONE, MOD_ROLE_TWO = 11, 22
ACCESS = Access.of(admin_user_ids=[9], admin_role_ids=[MOD_ROLE_ONE, MOD_ROLE_TWO])
OWNER = 1

ACTORS = {
    "owner": ACCESS.actor(OWNER, ONE),
    "member": ACCESS.actor(2, ONE),
    "moderator": ACCESS.actor(3, ONE, role_ids=[MOD_ROLE_ONE]),
    "administrator": ACCESS.actor(4, ONE, permissions=ADMINISTRATOR),
    "other member": ACCESS.actor(5, TWO),
    "other moderator": ACCESS.actor(6, TWO, role_ids=[MOD_ROLE_TWO]),
    "other administrator": ACCESS.actor(7, TWO, permissions=ADMINISTRATOR | 1),
    "host admin": ACCESS.actor(9, TWO),
    "the command line": HOST,
    "in a DM": ACCESS.actor(8, None, permissions=ADMINISTRATOR),
}


def _job(
    status: str = JobStatus.SUCCEEDED, guild_id: int | None = ONE, public: bool | None = True
) -> JobRecord:
    fields = {f.name: None for f in dataclasses.fields(JobRecord)}
    fields |= {
        "id": 1,
        "user_id": OWNER,
        "guild_id": guild_id,
        "status": status,
        "channel_public": public,
    }
    return JobRecord(**fields)


def _image(review: str | None) -> ImageRecord:
    fields = {f.name: None for f in dataclasses.fields(ImageRecord)}
    fields |= {"id": 1, "job_id": 1, "index": 0, "review": review}
    return ImageRecord(**fields)


SEES_PLAIN = {"owner", "member", "moderator", "administrator", "host admin", "the command line"}
MODERATES = {"moderator", "administrator", "host admin", "the command line"}


@pytest.mark.parametrize("name", sorted(ACTORS))
def test_who_sees_acts_on_and_moderates_a_servers_job(name: str) -> None:
    actor = ACTORS[name]
    job = _job()
    assert may_see_job(actor, job) is (name in SEES_PLAIN)
    assert may_moderate_job(actor, job) is (name in MODERATES)
    assert may_act_on_job(actor, job) is (name in MODERATES | {"owner"})
    assert may_manage_users(actor) is (name in {"host admin", "the command line"})
    # Deleted, or with an image held for review: no longer for other members.
    for hidden, images in [
        (_job(JobStatus.DELETED), []),
        (job, [_image(Review.PENDING)]),
        (job, [_image(Review.APPROVED), _image(Review.DELETED)]),
    ]:
        assert may_see_job(actor, hidden, images) is (name in MODERATES | {"owner"})
    assert may_see_job(actor, job, [_image(Review.APPROVED)]) is (name in SEES_PLAIN)
    # Made in a channel @everyone cannot view (or one not known): not for other members.
    for private in (_job(public=False), _job(public=None)):
        assert may_see_job(actor, private) is (name in MODERATES | {"owner"})


def test_a_moderator_role_or_administrator_counts_only_where_it_is_held() -> None:
    # A role id belongs to one server: the bot is told the member's roles there.
    assert not ACCESS.actor(3, ONE, role_ids=[99]).moderator
    assert ACCESS.actor(3, TWO, role_ids=[MOD_ROLE_TWO]).moderates(TWO)
    assert not ACCESS.actor(3, TWO, role_ids=[MOD_ROLE_TWO]).moderates(ONE)
    assert not ACCESS.actor(8, None, permissions=ADMINISTRATOR).may_moderate, "not in a DM"
    assert ACTORS["other administrator"].scope == TWO and ACTORS["host admin"].scope is None
    # A job made outside any server (a DM, the command line): host admins only.
    outside = _job(guild_id=None)
    assert [n for n, a in ACTORS.items() if may_moderate_job(a, outside)] == [
        "host admin",
        "the command line",
    ]
    assert not may_see_job(ACTORS["member"], outside)
    assert isinstance(HOST, Actor) and HOST.user_id is None
