"""A job's whole lineage (the web console's tree), and its owner's private toggle under the
server's private mode."""

from __future__ import annotations

import pytest

from generation.access import Actor
from generation.errors import InvalidRequest, NotAllowed
from generation.service import GenerationService
from storage.db import Database
from tests.storage.helpers import add_job

GUILD = 77


async def test_the_family_is_the_ancestors_and_descendants_in_tree_order_and_bounded(
    db: Database, service: GenerationService
) -> None:
    root = (await add_job(db)).id
    first = (await add_job(db, parent_job_id=root)).id
    second = (await add_job(db, parent_job_id=root)).id
    grandchild = (await add_job(db, parent_job_id=first)).id
    await add_job(db)  # a stranger
    tree = [(depth, job.id) for depth, job in await service.family(root)]
    assert tree == [(0, root), (1, first), (2, grandchild), (1, second)]
    # Its ancestors, itself, what was made from it: not its siblings.
    assert [(d, job.id) for d, job in await service.family(grandchild)] == [
        (0, root),
        (1, first),
        (2, grandchild),
    ]
    assert [job.id for _, job in await service.family(second)] == [root, second]
    assert [job.id for _, job in await service.family(root, limit=2)] == [root, first, second]


@pytest.mark.parametrize(
    ("mode", "private_ok", "public_ok"),
    [("allow", True, True), ("forbid", False, True), ("force", True, False)],
)
async def test_only_the_owner_toggles_private_as_the_server_allows(
    db: Database, service: GenerationService, mode: str, private_ok: bool, public_ok: bool
) -> None:
    async with db.uow() as uow:
        await uow.guilds.ensure(GUILD)
        await uow.commit()
    host = Actor(1, GUILD, host=True, moderator=True)
    await service.servers.update(GUILD, host, private_mode=mode)
    job = (await add_job(db, user_id=5, guild_id=GUILD, private=mode == "force")).id
    with pytest.raises(NotAllowed):
        await service.set_private(job, 6, True)
    for wanted, allowed in ((True, private_ok), (False, public_ok)):
        if allowed:
            assert (await service.set_private(job, 5, wanted)).private is wanted
        else:
            with pytest.raises(InvalidRequest, match="private"):
                await service.set_private(job, 5, wanted)
