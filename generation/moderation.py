"""Moderation: strikes and bans, deletions, the review of flagged images, and the record.

Every action here writes a moderation event (who, to whom, why, when) in the same
transaction as the change; nothing edits or deletes events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from generation.access import HIDDEN_REVIEWS
from generation.errors import (
    InvalidRequest,
    JobNotFound,
    JobStateError,
    NotAllowed,
)
from generation.rendering import thumbs_prefix
from generation.service import JobView
from generation.strikes import STRIKE_KINDS, StrikePolicy, manual_strike
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import EventKind, JobStatus, Review, utcnow
from storage.records import (
    GuildBanRecord,
    ImageRecord,
    JobRecord,
    ModerationEventRecord,
    UserRecord,
)
from storage.unit_of_work import UnitOfWork

MAX_DURATION = dt.timedelta(weeks=520)  # ten years: longer is "until further notice"


def parse_duration(text: str, option: str = "duration") -> dt.timedelta:
    """``30m``, ``12h``, ``7d`` or ``2w``, up to ten years; InvalidRequest naming ``option``
    otherwise."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip().lower()
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise InvalidRequest(
            option, f"must be a number and a unit, such as 30m, 12h, 7d or 2w, not {text[:20]!r}"
        )
    if int(number) > MAX_DURATION / dt.timedelta(**{units[unit]: 1}):
        raise InvalidRequest(option, f"must be at most 520w (ten years), not {text[:20]!r}")
    return dt.timedelta(**{units[unit]: int(number)})


@dataclasses.dataclass(frozen=True, slots=True)
class LogPage:
    """One page of the logs, newest first; ``page`` counts from 0 (for its title); the next
    page is the jobs older than the last one here, the previous the ones newer than the
    first."""

    jobs: list[JobView]
    page: int
    has_next: bool
    has_previous: bool = False  # newer jobs than these match (known from the keys, not page)


@dataclasses.dataclass(frozen=True, slots=True)
class JobReport:
    view: JobView
    parent: JobRecord | None
    children: list[JobRecord]
    events: list[ModerationEventRecord]


@dataclasses.dataclass(frozen=True, slots=True)
class Flagged:
    image: ImageRecord
    job: JobRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """A user as a moderator sees them: their record (None: never seen), their bans in the
    servers asked about, and their strikes within the strike window there."""

    user: UserRecord | None
    server_bans: list[GuildBanRecord]
    strikes: int
    window: dt.timedelta


class Moderation:
    """What moderators do, from Discord or the command line; each action leaves an event."""

    def __init__(
        self,
        db: Database,
        store: ImageStore,
        clock: Callable[[], dt.datetime] = utcnow,
        strikes: StrikePolicy | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self.strikes = strikes or StrikePolicy()

    async def _event(self, uow: UnitOfWork, kind: EventKind, **fields: Any) -> None:
        await uow.events.add(kind=kind, created_at=self.clock(), **fields)

    async def ban(
        self,
        actor_id: int | None,
        user_id: int,
        *,
        reason: str = "",
        duration: dt.timedelta | None = None,
        guild_id: int | None = None,
        in_server: bool = False,
    ) -> UserRecord:
        """Ban a user from generating, for ``duration`` or until unbanned: on every server, or
        (``in_server``) in ``guild_id`` only, as a server's moderators do."""
        until = self.clock() + duration if duration is not None else None
        why = reason or "no reason given"
        async with self.db.uow() as uow:
            if in_server:
                if guild_id is None:
                    raise InvalidRequest("server", "a server ban needs the server")
                await uow.users.set_guild_ban(guild_id, user_id, reason=why, until=until)
            else:
                await uow.users.set_ban(user_id, banned=True, reason=why, until=until)
            await self._event(
                uow,
                EventKind.BAN,
                actor_id=actor_id,
                guild_id=guild_id,
                target_user_id=user_id,
                reason=reason,
                details={
                    "until": until.isoformat() if until else None,
                    "scope": "server" if in_server else "host",
                },
            )
            user = await uow.users.ensure(user_id)
            await uow.commit()
        return user

    async def strike(
        self,
        actor_id: int | None,
        user_id: int,
        *,
        reason: str,
        guild_id: int | None,
        job_id: int | None = None,
    ) -> tuple[int, dt.datetime | None]:
        """A moderator's strike against a user in a server (``guild_id`` None: host-wide),
        counted with their blocked prompts: at the policy's limit within its window it bans
        them there for a while. Returns their strikes in the window and the ban's end (None:
        no ban came of it)."""
        async with self.db.uow() as uow:
            await uow.users.ensure(user_id)
            counted = await manual_strike(
                uow,
                self.strikes,
                actor_id=actor_id,
                user_id=user_id,
                guild_id=guild_id,
                reason=reason or "no reason given",
                job_id=job_id,
                now=self.clock(),
            )
            await uow.commit()
        return counted

    async def user_names(self, user_ids: Iterable[int]) -> dict[int, str]:
        """The names the bot last saw these users under, for the moderators' pages."""
        async with self.db.uow() as uow:
            return await uow.users.names(user_ids)

    async def standing(self, user_id: int, guild_ids: Sequence[int] | None) -> Standing:
        """Their record, bans and recent strikes, in these servers (None: everywhere)."""
        since = self.clock() - self.strikes.window
        async with self.db.uow() as uow:
            user = await uow.users.get(user_id)
            bans = await uow.users.guild_bans(user_id, guild_ids)
            if guild_ids is None:
                strikes = await uow.events.count(STRIKE_KINDS, user_id, since)
            else:
                strikes = 0
                for guild_id in guild_ids:
                    strikes += await uow.events.count(STRIKE_KINDS, user_id, since, guild_id)
        return Standing(user, bans, strikes, self.strikes.window)

    async def unban(
        self,
        actor_id: int | None,
        user_id: int,
        *,
        reason: str = "",
        guild_id: int | None = None,
        in_server: bool = False,
    ) -> UserRecord:
        """Lift a ban: the host-wide one, or (``in_server``) the one in ``guild_id``."""
        async with self.db.uow() as uow:
            if in_server:
                if guild_id is None:
                    raise InvalidRequest("server", "a server ban needs the server")
                await uow.users.clear_guild_ban(guild_id, user_id)
            else:  # a host admin's unban lifts every ban, the servers' too
                await uow.users.set_ban(user_id, banned=False)
                await uow.users.clear_guild_bans(user_id)
            await self._event(
                uow,
                EventKind.UNBAN,
                actor_id=actor_id,
                guild_id=guild_id,
                target_user_id=user_id,
                reason=reason,
                details={"scope": "server" if in_server else "host"},
            )
            user = await uow.users.ensure(user_id)
            await uow.commit()
        return user

    async def delete_job(
        self,
        actor_id: int | None,
        job_id: int,
        *,
        is_admin: bool,
        reason: str = "",
        guild_id: int | None = None,
    ) -> JobRecord:
        """Mark an ended job deleted (the record stays). A moderator's deletion also removes
        its image files; the requester's own keeps them for review. ``actor_id`` None: the
        host, from the command line."""
        async with self.db.uow() as uow:
            job = await uow.jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.user_id != actor_id and not is_admin:
                raise NotAllowed(f"job {job_id} is not yours to delete")
            if not job.is_terminal:
                raise JobStateError(f"job {job_id} has not ended ({job.status}): cancel it first")
            await uow.jobs.mark_deleted(job_id)
            await uow.images.set_job_review(job_id, Review.DELETED)
            # A result not yet out never goes: recorded so, not left pending.
            await uow.deliveries.give_up(
                job_id, "the job was deleted before its result went out", tried=False
            )
            # Its messages go, whichever front door deleted it (the bot's sweep removes them).
            await uow.deliveries.withdraw(job_id, await uow.now())
            moderator = is_admin and actor_id != job.user_id
            if moderator and job.init_image_path is not None:
                await self._forget_upload(uow, job.init_image_path)
            await self._event(
                uow,
                EventKind.DELETE,
                actor_id=actor_id,
                guild_id=guild_id if guild_id is not None else job.guild_id,
                target_user_id=job.user_id,
                job_id=job_id,
                reason=reason,
                details={"by": "moderator" if is_admin and actor_id != job.user_id else "owner"},
            )
            await uow.commit()
            deleted = await uow.jobs.get(job_id)
        if is_admin and actor_id != job.user_id:
            await asyncio.to_thread(self.store.delete_tree, f"images/{job_id}")
            await asyncio.to_thread(self.store.delete_tree, thumbs_prefix(job_id))
        assert deleted is not None
        return deleted

    async def _forget_upload(self, uow: UnitOfWork, path: str) -> None:
        """A start image goes with the last job that still uses it (rerolls share it); the
        key held meanwhile, so a submit of the same picture cannot slip in between."""
        await uow.jobs.lock_upload(path)
        if not await uow.jobs.using_upload(path):
            await asyncio.to_thread(self.store.delete, path)

    async def job_of_image(self, image_id: int) -> int:
        """The job a flagged image belongs to (to decide who may review it)."""
        async with self.db.uow() as uow:
            image = await uow.images.get(image_id)
        if image is None:
            raise InvalidRequest("image", f"{image_id} is not a flagged image")
        return image.job_id

    async def approve(
        self, actor_id: int | None, image_id: int, *, guild_id: int | None = None
    ) -> ImageRecord:
        """A flagged image judged fine: it leaves the review queue; once none of the job's
        images is held back, a result that went out without them is delivered again, with
        them (the bot's delivery sweep sends it)."""
        async with self.db.uow() as uow:
            image = await uow.images.get(image_id)
            if image is None or image.review is None:
                raise InvalidRequest("image", f"{image_id} is not a flagged image")
            job = await uow.jobs.get(image.job_id)
            assert job is not None
            if image.review != Review.PENDING or job.status == JobStatus.DELETED:
                # Judged already, or its job deleted (its owner's files kept for review):
                # approving it would show it again.
                raise InvalidRequest("image", f"{image_id} is not waiting for review")
            await uow.images.set_review(image_id, Review.APPROVED)
            unsettled = [i for i in await uow.images.for_job(job.id) if i.review in HIDDEN_REVIEWS]
            if not unsettled and job.status == JobStatus.SUCCEEDED:
                # None held back any more: a result that went out without them now shows them.
                await uow.deliveries.reopen(job.id, await uow.now())
            await self._event(
                uow,
                EventKind.IMAGE_APPROVED,
                actor_id=actor_id,
                guild_id=guild_id if guild_id is not None else job.guild_id,
                target_user_id=job.user_id,
                job_id=job.id,
                details={"image_id": image_id, "index": image.index},
            )
            await uow.commit()
            approved = await uow.images.get(image_id)
        assert approved is not None
        return approved

    async def logs(
        self,
        *,
        user_id: int | None = None,
        since: dt.datetime | None = None,
        flagged: bool = False,
        guild_id: int | None = None,
        page: int = 0,
        per_page: int = 10,
        before: int | None = None,
        after: int | None = None,
        guild_ids: Sequence[int] | None = None,
        until: dt.datetime | None = None,
        status: str | None = None,
        model_id: str | None = None,
        search: str | None = None,
    ) -> LogPage:
        """One page of jobs, newest first, filtered: the first, or the one older than job
        ``before``, or the one newer than job ``after`` (keys, not offsets: a page costs the
        same on page 1 and page 10,000). ``search``: prompts holding every word of it."""
        async with self.db.uow() as uow:
            jobs = await uow.jobs.recent(
                user_id=user_id,
                since=since,
                flagged=flagged,
                guild_id=guild_id,
                limit=per_page + 1,
                before=before,
                after=after,
                guild_ids=guild_ids,
                until=until,
                status=status,
                model_id=model_id,
                search=search,
            )
            if after is not None:  # going back: older ones are where we came from
                has_previous = len(jobs) > per_page
                jobs = jobs[-per_page:]
                has_next = True
            else:
                has_previous = before is not None
                has_next = len(jobs) > per_page
                jobs = jobs[:per_page]
            images = await uow.images.for_jobs([job.id for job in jobs])
        views = [JobView(job, images[job.id]) for job in jobs]
        return LogPage(views, page, has_next=has_next, has_previous=has_previous)

    async def report(self, job_id: int) -> JobReport:
        """A job's recipe, lineage, moderation events and images."""
        async with self.db.uow() as uow:
            job = await uow.jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            parent = await uow.jobs.get(job.parent_job_id) if job.parent_job_id else None
            children = await uow.jobs.children(job_id)
            events = await uow.events.for_job(job_id)
            images = await uow.images.for_job(job_id)
            delivery = await uow.deliveries.get(job_id)
        return JobReport(JobView(job, images, delivery), parent, children, events)

    async def flagged(self, limit: int = 5, guild_id: int | None = None) -> list[Flagged]:
        """Flagged images waiting for a moderator, oldest first (one server's, or all)."""
        async with self.db.uow() as uow:
            images = await uow.images.pending_review(limit, guild_id)
            jobs = await uow.jobs.get_many([image.job_id for image in images])
        return [Flagged(image, jobs[image.job_id]) for image in images]

    async def events(
        self,
        *,
        target_user_id: int | None = None,
        limit: int = 50,
        guild_ids: Sequence[int] | None = None,
        kind: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        before: int | None = None,
        job_id: int | None = None,
    ) -> list[ModerationEventRecord]:
        """Moderation events, newest first, filtered (``guild_ids``: these servers' only;
        ``job_id``: one job's); ``before``: older than that event id."""
        async with self.db.uow() as uow:
            return await uow.events.recent(
                target_user_id=target_user_id,
                limit=limit,
                guild_ids=guild_ids,
                kind=kind,
                since=since,
                until=until,
                before=before,
                job_id=job_id,
            )
