"""Each server's own settings: only ever tighter than the host's, per server, read by every
process within the cache's time, and safe to edit from two places at once."""

from __future__ import annotations

import asyncio

import pytest

from generation.access import HOST, Actor
from generation.errors import InvalidRequest, NotAllowed
from generation.quotas import Quotas
from generation.safety import SafetyPolicy
from generation.server_settings import ServerSettings
from storage.db import Database

ONE, TWO = 1001, 1002
MODERATOR = Actor(5, ONE, moderator=True)


async def test_a_server_tightens_the_hosts_rules_and_never_loosens_them(db: Database) -> None:
    servers = ServerSettings(db, safety=SafetyPolicy("spoiler"), quotas=Quotas())
    for actor in (MODERATOR, HOST):
        with pytest.raises(NotAllowed, match="choose a stricter one"):
            await servers.update(ONE, actor, safety_policy="off")
        with pytest.raises(NotAllowed, match="above the host's 400"):
            await servers.update(ONE, actor, quotas={"images_per_user_day": 401})
        with pytest.raises(NotAllowed, match="below the host's 10"):
            await servers.update(ONE, actor, quotas={"bucket_refill_seconds": 5})
    with pytest.raises(NotAllowed, match="only this server's moderators"):
        await servers.update(TWO, MODERATOR, safety_policy="withhold")
    with pytest.raises(InvalidRequest, match="safety: must be one of spoiler, withhold, off, host"):
        await servers.update(ONE, MODERATOR, safety_policy="blur")
    rules = await servers.update(
        ONE, MODERATOR, safety_policy="withhold", quotas={"images_per_user_day": 20}
    )
    assert rules.safety_policy == "withhold" and rules.limits.images_per_user_day == 20
    assert rules.limits.queued_per_user == Quotas().queued_per_user
    assert (await servers.rules(TWO)).safety_policy == "spoiler", "one server only"
    # A host that tightens later holds over what a server stored.
    stricter_host = ServerSettings(db, safety=SafetyPolicy("withhold"), quotas=Quotas(10))
    assert (await stricter_host.rules(ONE)).limits.queued_per_user == 10
    await servers.update(ONE, MODERATOR, safety_policy="host")
    assert (await stricter_host.rules(ONE)).safety_policy == "withhold"
    assert (await servers.rules(ONE)).safety_policy == "spoiler"


async def test_every_process_reads_a_change_within_the_cache_time(db: Database) -> None:
    now = [0.0]
    bot = ServerSettings(db, ttl=10.0, monotonic=lambda: now[0])
    worker = ServerSettings(db, ttl=10.0, monotonic=lambda: now[0])
    assert (await worker.rules(ONE)).blocked_terms == ()
    await bot.update(ONE, MODERATOR, block=["teapot"])
    assert (await bot.rules(ONE)).check_prompt("a teapot") is not None, "at once where changed"
    assert (await worker.rules(ONE)).blocked_terms == (), "cached elsewhere ..."
    now[0] = 10.0
    assert (await worker.rules(ONE)).check_prompt("a TEAP0T") is not None, "... for 10 s"
    assert (await worker.rules(TWO)).check_prompt("a teapot") is None


async def test_two_edits_at_once_keep_each_others_terms(db: Database) -> None:
    servers = ServerSettings(db)
    terms = [f"word{n}" for n in range(8)]
    await asyncio.gather(*(servers.update(ONE, MODERATOR, block=[term]) for term in terms))
    servers_elsewhere = ServerSettings(db)
    assert sorted((await servers_elsewhere.rules(ONE)).blocked_terms) == sorted(terms)
