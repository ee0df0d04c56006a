"""Strikes: a blocked prompt is one, and so is a moderator's; enough within a window ban the
user for a while."""

from __future__ import annotations

import dataclasses
import datetime as dt

from generation.errors import InvalidRequest, PromptBlocked
from generation.prompt_filter import Blocked
from storage.models import EventKind
from storage.unit_of_work import UnitOfWork

STRIKE_KINDS = (EventKind.PROMPT_BLOCKED, EventKind.STRIKE)  # what counts as a strike


@dataclasses.dataclass(frozen=True, slots=True)
class StrikePolicy:
    """``strikes_to_ban`` strikes within ``window`` ban the user for ``ban_for``."""

    strikes_to_ban: int = 3
    window: dt.timedelta = dt.timedelta(hours=24)
    ban_for: dt.timedelta = dt.timedelta(hours=24)


async def strike(
    uow: UnitOfWork,
    policy: StrikePolicy,
    *,
    user_id: int,
    guild_id: int | None,
    blocked: Blocked,
    prompt: str,
    negative_prompt: str,
    now: dt.datetime,
) -> PromptBlocked:
    """Record a blocked prompt as a strike, ban automatically at the limit, and return the
    error that tells the user (the caller commits, then raises it)."""
    await uow.events.add(
        kind=EventKind.PROMPT_BLOCKED,
        actor_id=None,
        guild_id=guild_id,
        target_user_id=user_id,
        reason=f"blocked term in the {blocked.option}",
        details={
            "term": blocked.term,
            "option": blocked.option,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
        },
        created_at=now,
    )
    strikes, until = await _ban_at_the_limit(uow, policy, user_id, guild_id, now)
    return PromptBlocked(blocked.option, strikes, policy.strikes_to_ban, until)


async def manual_strike(
    uow: UnitOfWork,
    policy: StrikePolicy,
    *,
    actor_id: int | None,
    user_id: int,
    guild_id: int | None,
    reason: str,
    job_id: int | None,
    now: dt.datetime,
) -> tuple[int, dt.datetime | None]:
    """A moderator's strike: counted with blocked prompts, banning at the same limit. Returns
    the strikes within the window and, if this one banned them, until when. One strike a job:
    a second one for the same job (a double click, every flagged image of one job) is
    refused."""
    await uow.users.lock(user_id)  # two strikes at once (a double click) take turns
    if job_id is not None and any(
        event.kind == EventKind.STRIKE for event in await uow.events.for_job(job_id)
    ):
        raise InvalidRequest("strike", f"job {job_id} has had its strike already")
    await uow.events.add(
        kind=EventKind.STRIKE,
        actor_id=actor_id,
        guild_id=guild_id,
        target_user_id=user_id,
        job_id=job_id,
        reason=reason,
        details={},
        created_at=now,
    )
    return await _ban_at_the_limit(uow, policy, user_id, guild_id, now, what="strikes")


async def _ban_at_the_limit(
    uow: UnitOfWork,
    policy: StrikePolicy,
    user_id: int,
    guild_id: int | None,
    now: dt.datetime,
    *,
    what: str = "blocked prompts",
) -> tuple[int, dt.datetime | None]:
    """The user's strikes within the window, and the ban they brought (None: not yet, or a
    ban as long or longer holds already: a strike never shortens a moderator's ban)."""
    # Strikes count, and ban, in the server they were made in (host-wide outside any server).
    strikes = await uow.events.count(
        STRIKE_KINDS, user_id, now - policy.window, guild_id, per_server=True
    )
    if strikes < policy.strikes_to_ban:
        return strikes, None
    until = now + policy.ban_for
    if await _banned_until(uow, user_id, guild_id, now, until):
        return strikes, None
    reason = f"automatic: {strikes} {what} within {_span(policy.window)}"
    if guild_id is not None:
        await uow.users.set_guild_ban(guild_id, user_id, reason=reason, until=until)
    else:
        await uow.users.set_ban(user_id, banned=True, reason=reason, until=until)
    await uow.events.add(
        kind=EventKind.BAN,
        actor_id=None,
        guild_id=guild_id,
        target_user_id=user_id,
        reason=reason,
        details={"until": until.isoformat(), "automatic": True},
        created_at=now,
    )
    return strikes, until


async def _banned_until(
    uow: UnitOfWork, user_id: int, guild_id: int | None, now: dt.datetime, until: dt.datetime
) -> bool:
    """Whether a ban there (in the server; host-wide outside one) lasts at least to ``until``."""
    if guild_id is not None:
        ban = await uow.users.guild_ban(guild_id, user_id)
        return ban is not None and ban.active(now) and (ban.until is None or ban.until >= until)
    user = await uow.users.get(user_id)
    if user is None or not user.banned:
        return False
    return user.banned_until is None or user.banned_until >= until


def _span(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"
