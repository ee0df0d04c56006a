"""Strikes: a blocked prompt is one; enough within a window ban the user for a while."""

from __future__ import annotations

import dataclasses
import datetime as dt

from generation.errors import PromptBlocked
from generation.prompt_filter import Blocked
from storage.models import EventKind
from storage.unit_of_work import UnitOfWork


@dataclasses.dataclass(frozen=True, slots=True)
class StrikePolicy:
    """``strikes_to_ban`` blocked prompts within ``window`` ban the user for ``ban_for``."""

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
    # Strikes count, and ban, in the server they were made in (host-wide outside any server).
    strikes = await uow.events.count(
        EventKind.PROMPT_BLOCKED, user_id, now - policy.window, guild_id, per_server=True
    )
    if strikes < policy.strikes_to_ban:
        return PromptBlocked(blocked.option, strikes, policy.strikes_to_ban)
    until = now + policy.ban_for
    reason = f"automatic: {strikes} blocked prompts within {_span(policy.window)}"
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
    return PromptBlocked(blocked.option, strikes, policy.strikes_to_ban, until)


def _span(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"
