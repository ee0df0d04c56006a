"""Repositories: the only code that reads and writes rows; they return plain records."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Integer,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy import column as sql_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    Base,
    Delivery,
    DeliveryState,
    Guild,
    GuildBan,
    GuildSettings,
    Image,
    Intent,
    Job,
    JobStatus,
    ModelPreset,
    ModerationEvent,
    ResultPost,
    Review,
    Usage,
    User,
    WorkerRow,
    utcnow,
)
from storage.records import (
    DeliveryRecord,
    GuildBanRecord,
    GuildSettingsRecord,
    ImageRecord,
    IntentRecord,
    JobRecord,
    ModelPresetRecord,
    ModerationEventRecord,
    NewImage,
    ResultPostRecord,
    UsageRecord,
    UserRecord,
    WorkerRecord,
    to_record,
)


async def _insert_if_missing(session: AsyncSession, model: type[Base], **values: Any) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: two first requests from one user never collide."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(insert(model).values(**values).on_conflict_do_nothing())


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, user_id: int) -> UserRecord | None:
        row = await self._session.get(User, user_id)
        return to_record(UserRecord, row) if row else None

    async def sign_out(self, user_id: int, at: dt.datetime) -> None:
        await self._session.execute(update(User).where(User.id == user_id).values(signed_out_at=at))

    async def signed_out_at(self, user_id: int) -> dt.datetime | None:
        """When they last logged out of the web console (None: never): one primary key read."""
        at: dt.datetime | None = await self._session.scalar(
            select(User.signed_out_at).where(User.id == user_id)
        )
        return at

    async def names(self, user_ids: Iterable[int]) -> dict[int, str]:
        """The names the bot last saw these users under (those it has seen, with one)."""
        ids = list(set(user_ids))
        if not ids:
            return {}
        rows = await self._session.execute(
            select(User.id, User.name).where(User.id.in_(ids), User.name != "")
        )
        return {int(user_id): str(name) for user_id, name in rows}

    async def _make(self, user_id: int, name: str) -> None:
        """The user's row, inserted on first sight (two first requests never collide)."""
        await _insert_if_missing(
            self._session,
            User,
            id=user_id,
            name=name,
            banned=False,
            virtual_time=0.0,
            quota_overrides={},
            created_at=utcnow(),
        )

    async def ensure(self, user_id: int, name: str = "") -> UserRecord:
        """Return the user, creating the row on first sight and keeping the name fresh."""
        await self._make(user_id, name)
        row = await self._session.get(User, user_id, populate_existing=True)
        assert row is not None
        if name and row.name != name:
            row.name = name
        return to_record(UserRecord, row)

    async def ensure_locked(self, user_id: int, name: str = "") -> UserRecord:
        """The user's row, made on first sight, locked until commit (PostgreSQL): one
        admission at a time per user; the name kept fresh. Two statements (three when the
        name changed)."""
        await self._make(user_id, name)
        user = await self.lock(user_id)
        if name and user.name != name:
            await self._session.execute(update(User).where(User.id == user_id).values(name=name))
        return user

    async def lock(self, user_id: int) -> UserRecord:
        """The user's row, locked until commit (PostgreSQL): one admission at a time per user."""
        # FOR NO KEY UPDATE: the job and usage rows that point at the user still insert.
        row = await self._session.get(
            User, user_id, with_for_update={"key_share": True}, populate_existing=True
        )
        assert row is not None, "ensure the user first"
        return to_record(UserRecord, row)

    async def set_bucket(self, user_id: int, tokens: float, at: dt.datetime) -> None:
        await self._session.execute(
            update(User)
            .where(User.id == user_id)
            .values(bucket_tokens=tokens, bucket_updated_at=at)
        )

    async def set_limits(
        self, user_id: int, *, weight: float | None, overrides: dict[str, Any]
    ) -> UserRecord:
        """An admin's per-user weight (None: from roles) and quota overrides (replacing all)."""
        await self.ensure(user_id)
        await self._session.execute(
            update(User)
            .where(User.id == user_id)
            .values(weight=weight, quota_overrides=dict(overrides))
        )
        row = await self._session.get(User, user_id, populate_existing=True)
        assert row is not None
        return to_record(UserRecord, row)

    async def set_preferences(self, user_id: int, preferences: dict[str, Any] | None) -> None:
        """The member's /settings (replacing all; None: back to the defaults)."""
        await self.ensure(user_id)
        await self._session.execute(
            update(User).where(User.id == user_id).values(preferences=preferences)
        )

    async def guild_ban(self, guild_id: int, user_id: int) -> GuildBanRecord | None:
        row = await self._session.get(GuildBan, (guild_id, user_id), populate_existing=True)
        return to_record(GuildBanRecord, row) if row else None

    async def set_guild_ban(
        self, guild_id: int, user_id: int, *, reason: str, until: dt.datetime | None
    ) -> None:
        """Ban (or ban again, replacing the last) in one server: one upsert, so two moderators
        banning at once both succeed."""
        dialect = self._session.bind.dialect.name if self._session.bind else "sqlite"
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = insert(GuildBan).values(
            guild_id=guild_id, user_id=user_id, reason=reason, until=until, created_at=utcnow()
        )
        await self._session.execute(
            statement.on_conflict_do_update(
                index_elements=[GuildBan.guild_id, GuildBan.user_id],
                set_={
                    "reason": reason,
                    "until": until,
                    "created_at": statement.excluded.created_at,
                },
            )
        )

    async def guild_bans(
        self, user_id: int, guild_ids: Sequence[int] | None = None
    ) -> list[GuildBanRecord]:
        """The user's bans in these servers (None: in every server)."""
        query = select(GuildBan).where(GuildBan.user_id == user_id).order_by(GuildBan.guild_id)
        if guild_ids is not None:
            query = query.where(GuildBan.guild_id.in_(guild_ids))
        return [to_record(GuildBanRecord, row) for row in await self._session.scalars(query)]

    async def clear_guild_ban(self, guild_id: int, user_id: int) -> bool:
        result = await self._session.execute(
            delete(GuildBan).where(GuildBan.guild_id == guild_id, GuildBan.user_id == user_id)
        )
        return bool(getattr(result, "rowcount", 0))

    async def clear_guild_bans(self, user_id: int) -> int:
        """Lift the user's bans in every server (a host admin's unban)."""
        result = await self._session.execute(delete(GuildBan).where(GuildBan.user_id == user_id))
        return int(getattr(result, "rowcount", 0))

    async def set_ban(
        self,
        user_id: int,
        *,
        banned: bool,
        reason: str | None = None,
        until: dt.datetime | None = None,
    ) -> None:
        await self.ensure(user_id)
        await self._session.execute(
            update(User)
            .where(User.id == user_id)
            .values(
                banned=banned,
                ban_reason=reason if banned else None,
                banned_until=until if banned else None,
            )
        )


class GuildRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def ensure(self, guild_id: int, name: str = "") -> None:
        await _insert_if_missing(self._session, Guild, id=guild_id, name=name, created_at=utcnow())
        if name:
            await self._session.execute(
                update(Guild).where(Guild.id == guild_id, Guild.name != name).values(name=name)
            )

    async def settings(self, guild_id: int) -> GuildSettingsRecord | None:
        row = await self._session.get(GuildSettings, guild_id, populate_existing=True)
        return to_record(GuildSettingsRecord, row) if row else None

    async def lock_settings(self, guild_id: int) -> GuildSettingsRecord:
        """A server's settings row, made if missing, held to the end of the transaction: two
        edits at once apply one after the other, neither losing the other's terms."""
        await _insert_if_missing(
            self._session,
            GuildSettings,
            guild_id=guild_id,
            blocked_terms=[],
            age_restricted_only=False,
            quotas={},
            updated_at=utcnow(),
        )
        row = await self._session.scalar(
            select(GuildSettings)
            .where(GuildSettings.guild_id == guild_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        assert row is not None
        return to_record(GuildSettingsRecord, row)

    async def set_settings(self, guild_id: int, **values: Any) -> GuildSettingsRecord:
        """Write a server's settings, on the row ``lock_settings`` holds."""
        await self._session.execute(
            update(GuildSettings)
            .where(GuildSettings.guild_id == guild_id)
            .values(**values, updated_at=utcnow())
        )
        stored = await self.settings(guild_id)
        assert stored is not None
        return stored


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, job_id: int) -> JobRecord | None:
        row = await self._session.get(Job, job_id, populate_existing=True)
        return to_record(JobRecord, row) if row else None

    async def get_many(self, job_ids: Sequence[int]) -> dict[int, JobRecord]:
        rows = await self._session.scalars(select(Job).where(Job.id.in_(job_ids)))
        return {row.id: to_record(JobRecord, row) for row in rows}

    async def by_interaction(self, interaction_id: int) -> JobRecord | None:
        row = await self._session.scalar(select(Job).where(Job.interaction_id == interaction_id))
        return to_record(JobRecord, row) if row else None

    async def recent(
        self,
        *,
        user_id: int | None = None,
        status: str | None = None,
        limit: int = 20,
        guild_id: int | None = None,
        since: dt.datetime | None = None,
        flagged: bool = False,
        before: int | None = None,
        after: int | None = None,
        guild_ids: Sequence[int] | None = None,
        until: dt.datetime | None = None,
        model_id: str | None = None,
        search: str | None = None,
    ) -> list[JobRecord]:
        """Newest first, filtered; a page by its keys (``before``: older than this job id;
        ``after``: the ``limit`` newer than it), through the id, (user, id) or (guild, id)
        index, never an offset. ``flagged``: only jobs with an image the safety check
        flagged; ``guild_ids``: only these servers' jobs; ``search``: prompts holding every
        word of it, each word or one it begins (the full-text index of migration 0022)."""
        query = select(Job).limit(limit)
        if after is not None:
            query = query.where(Job.id > after).order_by(Job.id)
        else:
            query = query.order_by(Job.id.desc())
            if before is not None:
                query = query.where(Job.id < before)
        query = _owned(query, user_id, guild_id)
        if guild_ids is not None:
            query = query.where(Job.guild_id.in_(guild_ids))
        if status is not None:
            query = query.where(Job.status == status)
        if model_id is not None:
            query = query.where(Job.model_id == model_id)
        if since is not None:
            query = query.where(Job.created_at >= since)
        if until is not None:
            query = query.where(Job.created_at < until)
        if flagged:
            query = query.where(
                Job.id.in_(select(Image.job_id).where(Image.review.is_not(None)).distinct())
            )
        words = search_words(search or "")
        bind = self._session.bind
        if words and bind is not None and bind.dialect.name == "postgresql":
            found = await self._searched(query, words, limit, before=before, after=after)
        else:
            if words:  # SQLite: the FTS5 table's matches (migration 0022)
                terms = " ".join(f'"{word}"*' for word in words)
                matches = text("SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH :terms")
                matching = matches.bindparams(terms=terms).columns(sql_column("rowid", Integer))
                query = query.where(Job.id.in_(matching))
            found = list(await self._session.scalars(query))
        rows = [to_record(JobRecord, row) for row in found]
        return rows[::-1] if after is not None else rows

    async def _searched(
        self, query: Any, words: list[str], limit: int, *, before: int | None, after: int | None
    ) -> list[Job]:
        """PostgreSQL: the jobs of ``query`` whose prompt holds every word (or a word it
        begins). The planner cannot tell a word in every prompt from a word in one, and
        either of its plans is slow for the other (down the ids, filtering each prompt; or
        every match through the full-text index, sorted), so each is bounded: first the
        SEARCH_WINDOW jobs next to the key, in id order, the index kept out of it (enough for
        a word in many prompts); only if they hold too few, the page's ids among every job
        matching the words and the filters (found through the indexes, ordered by ``id + 0``
        so the planner cannot walk down the ids instead), then those rows."""
        terms = func.to_tsquery(literal_column("'simple'"), " & ".join(f"{w}:*" for w in words))
        if after is not None:
            near = Job.id <= min(after + SEARCH_WINDOW, ROW_ID_MAX)
        else:
            top = (
                before
                if before is not None
                else await self._session.scalar(select(func.max(Job.id)))
            )
            near = Job.id >= (top or 0) - SEARCH_WINDOW
        # Not the index's expression (|| ''): this part reads the window only, row by row.
        scanned = func.to_tsvector(literal_column("'simple'"), Job.prompt.concat(""))
        found = list(await self._session.scalars(query.where(scanned.op("@@")(terms), near)))
        if len(found) >= limit:
            return found
        # The index's own expression (migration 0022), with every other filter of the page.
        indexed = func.to_tsvector(literal_column("'simple'"), Job.prompt)
        key = (Job.id + 0).asc() if after is not None else (Job.id + 0).desc()
        page = query.with_only_columns(Job.id).where(indexed.op("@@")(terms))
        ids = list(await self._session.scalars(page.order_by(None).order_by(key)))
        if not ids:
            return []
        candidates = bindparam("matches", value=ids, type_=postgresql.ARRAY(Integer))
        return list(await self._session.scalars(query.where(Job.id == any_(candidates))))

    async def in_queue(self) -> list[tuple[str, str, int, dt.datetime | None]]:
        """Per model: how many jobs are waiting and running, and since when the oldest (its
        created_at), through the status index."""
        rows = await self._session.execute(
            select(Job.model_id, Job.status, func.count(), func.min(Job.created_at))
            .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .group_by(Job.model_id, Job.status)
        )
        return [(str(m), str(s), int(n), oldest) for m, s, n, oldest in rows]

    async def latest_started(self, limit: int) -> list[tuple[int, dt.datetime, dt.datetime | None]]:
        """The newest ``limit`` jobs' user, created_at and started_at (by the primary key,
        never a scan): what waits are measured on."""
        rows = await self._session.execute(
            select(Job.user_id, Job.created_at, Job.started_at).order_by(Job.id.desc()).limit(limit)
        )
        return [(int(u), created, started) for u, created, started in rows]

    async def latest_failures(self, limit: int) -> list[tuple[str | None, dt.datetime | None]]:
        """The newest ``limit`` failed jobs' errors and when they ended (status index)."""
        rows = await self._session.execute(
            select(Job.error, Job.finished_at)
            .where(Job.status == JobStatus.FAILED)
            .order_by(Job.id.desc())
            .limit(limit)
        )
        return [(error, finished) for error, finished in rows]

    async def standing(
        self, since: dt.datetime, *, user_id: int | None = None, guild_id: int | None = None
    ) -> tuple[int, int]:
        """One user's or guild's jobs waiting or running, and images asked for since
        ``since``: ``active_count`` and ``images_since`` in one round trip."""
        active = select(func.count()).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        images = select(func.coalesce(func.sum(Job.count), 0)).where(
            Job.created_at >= since,
            Job.status.not_in((JobStatus.FAILED, JobStatus.CANCELLED)),
        )
        row = (
            await self._session.execute(
                select(
                    _owned(active, user_id, guild_id).scalar_subquery(),
                    _owned(images, user_id, guild_id).scalar_subquery(),
                )
            )
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

    async def active_count(self, *, user_id: int | None = None, guild_id: int | None = None) -> int:
        """Jobs waiting or running, of one user or one guild."""
        query = select(func.count()).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        query = _owned(query, user_id, guild_id)
        return int(await self._session.scalar(query) or 0)

    async def images_since(
        self, since: dt.datetime, *, user_id: int | None = None, guild_id: int | None = None
    ) -> int:
        """Images asked for since ``since`` by one user or guild, except jobs that made none."""
        query = select(func.coalesce(func.sum(Job.count), 0)).where(
            Job.created_at >= since,
            Job.status.not_in((JobStatus.FAILED, JobStatus.CANCELLED)),
        )
        query = _owned(query, user_id, guild_id)
        return int(await self._session.scalar(query) or 0)

    async def lock_upload(self, path: str) -> None:
        """Hold an uploaded file's key to the end of the transaction: its write (a submit) and
        its removal (a deletion) never cross. (SQLite's one writer already serialises them.)"""
        bind = self._session.bind
        if bind is not None and bind.dialect.name == "postgresql":
            key = int(hashlib.sha256(path.encode()).hexdigest()[:15], 16)
            await self._session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    async def using_upload(self, path: str) -> int:
        """How many jobs not deleted start from this uploaded image."""
        count = await self._session.scalar(
            select(func.count(Job.id)).where(
                Job.init_image_path == path, Job.status != JobStatus.DELETED
            )
        )
        return int(count or 0)

    async def mark_deleted(self, job_id: int) -> None:
        await self._session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.DELETED)
        )

    async def children(self, job_id: int) -> list[JobRecord]:
        rows = await self._session.scalars(
            select(Job).where(Job.parent_job_id == job_id).order_by(Job.id)
        )
        return [to_record(JobRecord, row) for row in rows]

    async def children_of(self, job_ids: Sequence[int], limit: int) -> list[JobRecord]:
        """The oldest ``limit`` jobs made from any of these (the parent index)."""
        rows = await self._session.scalars(
            select(Job).where(Job.parent_job_id.in_(job_ids)).order_by(Job.id).limit(limit)
        )
        return [to_record(JobRecord, row) for row in rows]

    async def update_recipe(self, job_id: int, **fields: Any) -> None:
        """Change stored recipe fields (admin correction; also how tests tamper with a recipe)."""
        await self._session.execute(update(Job).where(Job.id == job_id).values(**fields))


SEARCH_WORDS = 8  # the words of a search that are read
SEARCH_WINDOW = 5_000  # jobs next to the page's key read in order before the index is asked
ROW_ID_MAX = 2**31 - 1  # job ids are 32-bit on PostgreSQL


def search_words(text: str) -> list[str]:
    """The words a prompt search looks for: letters and digits only, lower case, at most
    SEARCH_WORDS of them, each at most 64 characters."""
    return [word[:64] for word in re.findall(r"[^\W_]+", text.lower())][:SEARCH_WORDS]


def _owned(query: Any, user_id: int | None, guild_id: int | None) -> Any:
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    if guild_id is not None:
        query = query.where(Job.guild_id == guild_id)
    return query


def _flags(image: NewImage) -> dict[str, Any]:
    flags: dict[str, Any] = {"safety": image.scores} if image.scores else {}
    if image.check_error:
        flags["safety_error"] = image.check_error
    return flags


class ImageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_many(self, job_id: int, images: Iterable[NewImage]) -> None:
        now = utcnow()
        for image in images:
            self._session.add(
                Image(
                    job_id=job_id,
                    index=image.index,
                    seed=image.seed,
                    sha256=image.sha256,
                    path=image.path,
                    width=image.width,
                    height=image.height,
                    flags=_flags(image),
                    review=Review.PENDING if image.flagged else None,
                    created_at=now,
                )
            )
        await self._session.flush()

    async def for_job(self, job_id: int) -> list[ImageRecord]:
        rows = await self._session.scalars(
            select(Image).where(Image.job_id == job_id).order_by(Image.index)
        )
        return [to_record(ImageRecord, row) for row in rows]

    async def get(self, image_id: int) -> ImageRecord | None:
        row = await self._session.get(Image, image_id, populate_existing=True)
        return to_record(ImageRecord, row) if row else None

    async def set_review(self, image_id: int, review: Review) -> None:
        await self._session.execute(update(Image).where(Image.id == image_id).values(review=review))

    async def set_job_review(self, job_id: int, review: Review) -> None:
        """Settle every flagged image of a job (a deleted job takes its flags with it)."""
        await self._session.execute(
            update(Image)
            .where(Image.job_id == job_id, Image.review.is_not(None))
            .values(review=review)
        )

    async def pending_review(
        self, limit: int = 25, guild_id: int | None = None
    ) -> list[ImageRecord]:
        """Images waiting for a moderator, oldest first; only one server's with ``guild_id``."""
        query = select(Image).where(Image.review == Review.PENDING)
        if guild_id is not None:
            query = query.join(Job, Job.id == Image.job_id).where(Job.guild_id == guild_id)
        rows = await self._session.scalars(query.order_by(Image.id).limit(limit))
        return [to_record(ImageRecord, row) for row in rows]

    async def for_jobs(self, job_ids: Sequence[int]) -> dict[int, list[ImageRecord]]:
        result: dict[int, list[ImageRecord]] = {job_id: [] for job_id in job_ids}
        rows = await self._session.scalars(
            select(Image).where(Image.job_id.in_(job_ids)).order_by(Image.job_id, Image.index)
        )
        for row in rows:
            result[row.job_id].append(to_record(ImageRecord, row))
        return result


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def charge(
        self, user_id: int, day: dt.date, *, images: int, cost: float, gpu_seconds: float
    ) -> None:
        """Add one job to the user's day: one upsert, so two first jobs of a day finishing at
        once (on two workers) both count, where an insert would fail one of them."""
        dialect = self._session.bind.dialect.name if self._session.bind else "sqlite"
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = insert(Usage).values(
            user_id=user_id, day=day, jobs=1, images=images, cost=cost, gpu_seconds=gpu_seconds
        )
        await self._session.execute(
            statement.on_conflict_do_update(
                index_elements=[Usage.user_id, Usage.day],
                set_={
                    "jobs": Usage.jobs + 1,
                    "images": Usage.images + statement.excluded.images,
                    "cost": Usage.cost + statement.excluded.cost,
                    "gpu_seconds": Usage.gpu_seconds + statement.excluded.gpu_seconds,
                },
            )
        )

    async def get(self, user_id: int, day: dt.date) -> UsageRecord | None:
        row = await self._session.get(Usage, (user_id, day))
        return to_record(UsageRecord, row) if row else None


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, **fields: Any) -> DeliveryRecord:
        row = Delivery(**fields)
        self._session.add(row)
        await self._session.flush()
        return to_record(DeliveryRecord, row)

    async def get(self, job_id: int) -> DeliveryRecord | None:
        row = await self._session.get(Delivery, job_id, populate_existing=True)
        return to_record(DeliveryRecord, row) if row else None

    async def for_jobs(self, job_ids: Sequence[int]) -> dict[int, DeliveryRecord]:
        rows = await self._session.scalars(select(Delivery).where(Delivery.job_id.in_(job_ids)))
        return {row.job_id: to_record(DeliveryRecord, row) for row in rows}

    async def by_message(self, message_id: int) -> DeliveryRecord | None:
        """The delivery whose result (or progress) message this is: two index lookups (an OR of
        the two columns may read the whole table)."""
        for column in (Delivery.result_message_id, Delivery.original_message_id):
            row = await self._session.scalar(select(Delivery).where(column == message_id).limit(1))
            if row is not None:
                return to_record(DeliveryRecord, row)
        return None

    async def set_original(self, job_id: int, message_id: int) -> None:
        await self._session.execute(
            update(Delivery).where(Delivery.job_id == job_id).values(original_message_id=message_id)
        )

    async def mark_delivered(
        self,
        job_id: int,
        message_id: int | None,
        at: dt.datetime,
        via: str = "response",
        *,
        withheld: bool = False,
    ) -> bool:
        """Record the delivery once; False if it was already recorded (fenced on the state)."""
        result = await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING)
            .values(
                state=DeliveryState.DELIVERED,
                delivered_at=at,
                result_message_id=message_id,
                delivered_via=via,
                next_try_at=None,
                withheld=withheld,
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def reopen(self, job_id: int, now: dt.datetime) -> bool:
        """A result that went out with its images withheld is due again (they were
        approved); False if there is none such."""
        result = await self._session.execute(
            update(Delivery)
            .where(
                Delivery.job_id == job_id,
                Delivery.state == DeliveryState.DELIVERED,
                Delivery.withheld.is_(True),
            )
            .values(state=DeliveryState.PENDING, next_try_at=now, last_error=None)
        )
        return bool(getattr(result, "rowcount", 0))

    async def give_up(self, job_id: int, reason: str, *, tried: bool = True) -> bool:
        """Record that the result can go nowhere, and why (``tried``: a try found so); False
        if it was no longer pending."""
        result = await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING)
            .values(
                state=DeliveryState.UNDELIVERABLE,
                last_error=reason,
                delivered_at=None,
                next_try_at=None,
                attempts=Delivery.attempts + int(tried),
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def withdraw(self, job_id: int, now: dt.datetime) -> bool:
        """Its job was deleted: its messages are to go (the bot's sweep removes them)."""
        result = await self._session.execute(
            update(Delivery)
            .where(
                Delivery.job_id == job_id,
                Delivery.state.in_((DeliveryState.DELIVERED, DeliveryState.UNDELIVERABLE)),
            )
            .values(state=DeliveryState.WITHDRAW, next_try_at=now)
        )
        return bool(getattr(result, "rowcount", 0))

    async def withdrawals(self, now: dt.datetime, limit: int) -> list[DeliveryRecord]:
        """Deleted jobs whose messages are still to remove, through the (state, next_try_at)
        index."""
        return await self._due_in(DeliveryState.WITHDRAW, now, limit)

    async def withdrawn(self, job_id: int) -> None:
        """Its messages are gone."""
        await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.WITHDRAW)
            .values(state=DeliveryState.WITHDRAWN, next_try_at=None)
        )

    async def claim(self, job_id: int, now: dt.datetime, until: dt.datetime) -> bool:
        """Take a due delivery for one try: not due again before ``until`` (so another process,
        or this one after a lost write, does not send it meanwhile); False if it is not due or
        not pending."""
        result = await self._session.execute(
            update(Delivery)
            .where(
                Delivery.job_id == job_id,
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_try_at <= now,
            )
            .values(next_try_at=until)
        )
        return bool(getattr(result, "rowcount", 0))

    async def release(self, job_id: int, now: dt.datetime) -> None:
        await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING)
            .values(next_try_at=now)
        )

    async def tried(self, job_id: int, error: str, next_try_at: dt.datetime) -> None:
        """A try that met a passing failure: when to try again, and what it met."""
        await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING)
            .values(attempts=Delivery.attempts + 1, last_error=error, next_try_at=next_try_at)
        )

    async def open_counts(self) -> dict[str, int]:
        """How many results are still to go (pending) or could not go (undeliverable)."""
        rows = await self._session.execute(
            select(Delivery.state, func.count())
            # IN, not <>: the (state, next_try_at) index finds them without a scan.
            .where(Delivery.state.in_((DeliveryState.PENDING, DeliveryState.UNDELIVERABLE)))
            .group_by(Delivery.state)
        )
        return {str(state): int(count) for state, count in rows}

    async def due(self, now: dt.datetime, limit: int = 50) -> list[DeliveryRecord]:
        """Pending results that are due (their job ended; their backoff is over), oldest due
        first, through the (state, next_try_at) index."""
        return await self._due_in(DeliveryState.PENDING, now, limit)

    async def _due_in(self, state: str, now: dt.datetime, limit: int) -> list[DeliveryRecord]:
        rows = await self._session.scalars(
            select(Delivery)
            .where(Delivery.state == state, Delivery.next_try_at <= now)
            .order_by(Delivery.next_try_at, Delivery.job_id)
            .limit(limit)
        )
        return [to_record(DeliveryRecord, row) for row in rows]


class ResultPostRepository:
    """Results posted again (``/show``), by message and by job."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, **fields: Any) -> None:
        await _insert_if_missing(self._session, ResultPost, **fields)

    async def get(self, message_id: int) -> ResultPostRecord | None:
        row = await self._session.get(ResultPost, message_id)
        return to_record(ResultPostRecord, row) if row else None

    async def for_job(self, job_id: int) -> list[ResultPostRecord]:
        rows = await self._session.scalars(
            select(ResultPost).where(ResultPost.job_id == job_id).order_by(ResultPost.message_id)
        )
        return [to_record(ResultPostRecord, row) for row in rows]

    async def remove(self, message_id: int) -> None:
        await self._session.execute(delete(ResultPost).where(ResultPost.message_id == message_id))


class ModerationEventRepository:
    """Moderation events are only ever added: nothing edits or deletes them."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, **fields: Any) -> ModerationEventRecord:
        fields.setdefault("details", {})
        fields.setdefault("reason", "")
        fields.setdefault("created_at", utcnow())
        row = ModerationEvent(**fields)
        self._session.add(row)
        await self._session.flush()
        return to_record(ModerationEventRecord, row)

    async def count(
        self,
        kind: str | Sequence[str],
        target_user_id: int,
        since: dt.datetime,
        guild_id: int | None = None,
        *,
        per_server: bool = False,
    ) -> int:
        """Events of a kind (or kinds) about a user since a time: in one server with
        ``guild_id``; with ``per_server``, those made outside any server when ``guild_id`` is
        None."""
        kinds = [kind] if isinstance(kind, str) else list(kind)
        query = select(func.count()).where(
            ModerationEvent.kind.in_(kinds),
            ModerationEvent.target_user_id == target_user_id,
            ModerationEvent.created_at >= since,
        )
        if guild_id is not None:
            query = query.where(ModerationEvent.guild_id == guild_id)
        elif per_server:
            query = query.where(ModerationEvent.guild_id.is_(None))
        return int(await self._session.scalar(query) or 0)

    async def for_job(self, job_id: int) -> list[ModerationEventRecord]:
        rows = await self._session.scalars(
            select(ModerationEvent)
            .where(ModerationEvent.job_id == job_id)
            .order_by(ModerationEvent.id)
        )
        return [to_record(ModerationEventRecord, row) for row in rows]

    async def recent(
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
        """Newest first, filtered; ``before``: older than this event id (a page by its key,
        through the (guild, id) or (target, id) index); ``job_id``: one job's (its index)."""
        query = select(ModerationEvent).order_by(ModerationEvent.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(ModerationEvent.job_id == job_id)
        if target_user_id is not None:
            query = query.where(ModerationEvent.target_user_id == target_user_id)
        if guild_ids is not None:
            query = query.where(ModerationEvent.guild_id.in_(guild_ids))
        if kind is not None:
            query = query.where(ModerationEvent.kind == kind)
        if since is not None:
            query = query.where(ModerationEvent.created_at >= since)
        if until is not None:
            query = query.where(ModerationEvent.created_at < until)
        if before is not None:
            query = query.where(ModerationEvent.id < before)
        rows = await self._session.scalars(query)
        return [to_record(ModerationEventRecord, row) for row in rows]


class WorkerRepository:
    """Workers announce themselves, beat while they live, and say when they stop."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def announce(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        device: str,
        models: list[str],
        now: dt.datetime,
    ) -> None:
        row = await self._session.get(WorkerRow, worker_id)
        if row is None:
            row = WorkerRow(id=worker_id, started_at=now)
            self._session.add(row)
        row.host, row.pid, row.device = host, pid, device
        row.models = {"ids": list(models)}
        row.state, row.current_job_id, row.heartbeat_at = "idle", None, now
        await self._session.flush()

    async def beat(self, worker_id: str, state: str, job_id: int | None, now: dt.datetime) -> None:
        await self._session.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(state=state, current_job_id=job_id, heartbeat_at=now)
        )

    async def serving(self, since: dt.datetime) -> set[str]:
        """The models announced by workers that have not stopped and were heard from since
        ``since`` (a busy worker is heard from at each claim)."""
        rows = await self._session.scalars(
            select(WorkerRow.models).where(
                WorkerRow.state != "stopped", WorkerRow.heartbeat_at >= since
            )
        )
        return {model for models in rows for model in (models or {}).get("ids", [])}

    async def all(self) -> list[WorkerRecord]:
        rows = await self._session.scalars(select(WorkerRow).order_by(WorkerRow.started_at))
        return [to_record(WorkerRecord, row) for row in rows]


class PresetRepository:
    """The host's model presets (a handful: read whole)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def all(self) -> list[ModelPresetRecord]:
        rows = await self._session.scalars(select(ModelPreset).order_by(ModelPreset.name))
        return [to_record(ModelPresetRecord, row) for row in rows]

    async def put(self, name: str, **values: Any) -> ModelPresetRecord:
        """Add the preset, or replace the one of that name."""
        row = await self._session.get(ModelPreset, name, populate_existing=True)
        if row is None:
            row = ModelPreset(name=name)
            self._session.add(row)
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        await self._session.flush()
        return to_record(ModelPresetRecord, row)

    async def remove(self, name: str) -> bool:
        result = await self._session.execute(delete(ModelPreset).where(ModelPreset.name == name))
        return bool(getattr(result, "rowcount", 0))

    async def defaults(self) -> dict[int, str]:
        """Each server's default preset, for the servers that picked one."""
        rows = await self._session.execute(
            select(GuildSettings.guild_id, GuildSettings.default_model).where(
                GuildSettings.default_model.is_not(None)
            )
        )
        return {int(guild_id): str(name) for guild_id, name in rows}

    async def clear_defaults(self, name: str, keep: Iterable[int] = ()) -> None:
        """Servers whose default was ``name`` go back to the host's (but those in ``keep``)."""
        query = update(GuildSettings).where(GuildSettings.default_model == name)
        kept = list(keep)
        if kept:
            query = query.where(GuildSettings.guild_id.not_in(kept))
        await self._session.execute(query.values(default_model=None, updated_at=utcnow()))


class IntentRepository:
    """Requests acknowledged before their job was stored; each goes when its job is made."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write several at once (one statement); one already there is kept."""
        if rows:
            dialect = self._session.bind.dialect.name if self._session.bind else "sqlite"
            insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
            await self._session.execute(insert(Intent).on_conflict_do_nothing(), list(rows))

    async def delete(self, interaction_id: int) -> None:
        await self._session.execute(delete(Intent).where(Intent.interaction_id == interaction_id))

    async def pending(
        self, limit: int = 1000, *, before: dt.datetime | None = None, after_id: int = 0
    ) -> list[IntentRecord]:
        """Records written before ``before``, in interaction order from ``after_id`` on."""
        query = select(Intent).where(Intent.interaction_id > after_id)
        if before is not None:
            query = query.where(Intent.created_at < before)
        rows = await self._session.scalars(query.order_by(Intent.interaction_id).limit(limit))
        return [to_record(IntentRecord, row) for row in rows]
