"""Quotas: admission limits checked when a job is submitted, separate from the claim's order.

Each limit refuses at once with a message that names it and says when it frees up, and the
refusal stores nothing (the check runs inside the submit transaction, which rolls back).
Hosts set the defaults; an admin may override the per-user ones for one user.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from generation.errors import GenerationError, InvalidRequest
from storage.records import UserRecord
from storage.unit_of_work import UnitOfWork


@dataclasses.dataclass(frozen=True, slots=True)
class Quotas:
    """The host's limits. The ``USER_QUOTAS`` among them can be overridden per user."""

    queued_per_user: int = 16  # jobs waiting or running
    queued_per_guild: int = 100
    images_per_user_day: int = 400  # images asked for per UTC day
    images_per_guild_day: int = 4000
    bucket_size: int = 6  # button presses (🔄, V, U) in a burst ...
    bucket_refill_seconds: float = 10.0  # ... and one more every this many seconds

    def for_user(self, user: UserRecord) -> Quotas:
        """These limits with the user's overrides applied."""
        overrides = {k: v for k, v in user.quota_overrides.items() if k in USER_QUOTAS}
        return dataclasses.replace(self, **overrides)

    def within(self, server: Mapping[str, int | float]) -> Quotas:
        """These limits, tightened by a server's own where it is stricter (a server never
        loosens them, whatever its row says)."""
        tighter: dict[str, Any] = {}
        for name, value in server.items():
            if name not in SERVER_QUOTAS:
                continue
            mine = getattr(self, name)
            tighter[name] = max(mine, value) if name in LONGER_IS_STRICTER else min(mine, value)
        return dataclasses.replace(self, **tighter)


USER_QUOTAS = (
    "queued_per_user",
    "images_per_user_day",
    "bucket_size",
    "bucket_refill_seconds",
)
# What a server's moderators may tighten for their server.
SERVER_QUOTAS = (*USER_QUOTAS, "queued_per_guild", "images_per_guild_day")
LONGER_IS_STRICTER = frozenset({"bucket_refill_seconds"})
MAX_LIMIT = 10**9  # any limit (and a refill of about 30 years) fits a time delta


class QuotaExceeded(GenerationError):
    """A limit was hit; ``quota`` names it and ``resets_at`` says when it frees up (or None
    when that depends on a job finishing)."""

    def __init__(self, quota: str, message: str, resets_at: dt.datetime | None) -> None:
        super().__init__(message)
        self.quota = quota
        self.resets_at = resets_at


def check_override(name: str, value: object, names: tuple[str, ...] = USER_QUOTAS) -> int | float:
    """Validate one override (per user, or a server's with ``SERVER_QUOTAS``); raises
    InvalidRequest naming it."""
    if name not in names:
        which = "per-user" if names == USER_QUOTAS else "server"
        raise InvalidRequest(name, f"is not a {which} quota; use one of {', '.join(names)}")
    kind = float if name == "bucket_refill_seconds" else int
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # a whole number given as a float (Discord's number option)
    try:
        number: int | float = kind(str(value).strip())
    except ValueError:
        whole = "whole " if kind is int else ""
        raise InvalidRequest(name, f"must be a {whole}number, not {value!r}") from None
    if number < 0 or (name == "bucket_refill_seconds" and number <= 0):
        raise InvalidRequest(name, f"must be positive, not {value}")
    if number > MAX_LIMIT:
        raise InvalidRequest(name, f"must be at most {MAX_LIMIT:,}, not {value}")
    return number


def next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _in(delta: dt.timedelta) -> str:
    seconds = max(1, int(delta.total_seconds() + 0.999))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Where one user stands against their limits now."""

    user: UserRecord  # with their weight and quota overrides
    limits: Quotas
    queued: int
    images_today: int
    bucket_tokens: float
    day_resets_at: dt.datetime


def _bucket(user: UserRecord, limits: Quotas, now: dt.datetime) -> float:
    if user.bucket_tokens is None or user.bucket_updated_at is None:
        return float(limits.bucket_size)
    refilled = (now - user.bucket_updated_at).total_seconds() / limits.bucket_refill_seconds
    return min(float(limits.bucket_size), user.bucket_tokens + max(0.0, refilled))


async def usage(uow: UnitOfWork, quotas: Quotas, user: UserRecord, now: dt.datetime) -> Usage:
    limits = quotas.for_user(user)
    midnight = dt.datetime.combine(now.date(), dt.time(), tzinfo=dt.UTC)
    queued, images_today = await uow.jobs.standing(midnight, user_id=user.id)
    return Usage(
        user=user,
        limits=limits,
        queued=queued,
        images_today=images_today,
        bucket_tokens=_bucket(user, limits, now),
        day_resets_at=next_midnight(now),
    )


async def admit(
    uow: UnitOfWork,
    quotas: Quotas,
    user: UserRecord,
    *,
    guild_id: int | None,
    images: int,
    button: bool,
    now: dt.datetime,
    server: Mapping[str, int | float] | None = None,
) -> Usage:
    """Refuse the job if any limit (the host's, the user's overrides, tightened by the
    server's own) is hit; otherwise take a bucket token for a job a button made (``button``:
    every job made from another, whatever kind it became). Returns where the user stood
    before this job."""
    mine = await usage(uow, quotas, user, now)
    limits = mine.limits.within(server or {})
    tomorrow = mine.day_resets_at
    if mine.queued >= limits.queued_per_user:
        raise QuotaExceeded(
            "queued_per_user",
            f"you already have {_jobs(mine.queued)} waiting or running, the most allowed "
            f"({limits.queued_per_user}); send this again when one of them is done",
            None,
        )
    if mine.images_today + images > limits.images_per_user_day:
        raise QuotaExceeded(
            "images_per_user_day",
            f"this would make {mine.images_today + images} images today, over your daily "
            f"limit of {limits.images_per_user_day}; it resets at 00:00 UTC "
            f"(in {_in(tomorrow - now)})",
            tomorrow,
        )
    if guild_id is not None:
        midnight = tomorrow - dt.timedelta(days=1)
        waiting, made = await uow.jobs.standing(midnight, guild_id=guild_id)
        if waiting >= limits.queued_per_guild:
            raise QuotaExceeded(
                "queued_per_guild",
                f"this server already has {_jobs(waiting)} waiting or running, the most allowed "
                f"({limits.queued_per_guild}); try again when some are done",
                None,
            )
        if made + images > limits.images_per_guild_day:
            raise QuotaExceeded(
                "images_per_guild_day",
                f"this server has used its {limits.images_per_guild_day} images for today; "
                f"it resets at 00:00 UTC (in {_in(tomorrow - now)})",
                tomorrow,
            )
    if button:
        tokens = _bucket(user, limits, now)
        if tokens < 1:
            wait = dt.timedelta(seconds=(1 - tokens) * limits.bucket_refill_seconds)
            raise QuotaExceeded(
                "bucket",
                f"too many button presses in a row; the next one works in {_in(wait)}",
                now + wait,
            )
        await uow.users.set_bucket(user.id, tokens - 1, now)
    return mine
