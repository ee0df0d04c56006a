"""SQLAlchemy 2.0 typed models: users, guilds, jobs, images, usage and moderation events."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no time zone, PostgreSQL does."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class JobKind(enum.StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"  # from an image the user gave
    VARIATION = "variation"
    UPSCALE = "upscale"
    REROLL = "reroll"
    EDIT = "edit"  # Zoom Out, Make Square, Pan or Vary (Region): see jobs.edit
    COMPARE = "compare"  # one image made again, a cell per value of one knob: jobs.compare


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETED = "deleted"


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DELETED}
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    ban_reason: Mapped[str | None] = mapped_column(Text)
    banned_until: Mapped[dt.datetime | None]
    # Fair share: an admin's weight override (None: from the user's roles), and the user's
    # virtual time: the service received so far, in cost units divided by weight.
    weight: Mapped[float | None] = mapped_column(Float)
    virtual_time: Mapped[float] = mapped_column(Float, default=0.0)
    # Per-user quota overrides by quota name (see generation.quotas.Quotas); absent: default.
    quota_overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The reroll token bucket: tokens left when last touched.
    bucket_tokens: Mapped[float | None] = mapped_column(Float)
    bucket_updated_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The member's own defaults from /settings (see generation.preferences); None: none set.
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class GuildBan(Base):
    """A ban in one server, by its moderators or its strikes: the member may not generate there,
    and other servers are not touched. (A host-wide ban is on the user.)"""

    __tablename__ = "guild_bans"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Guild(Base):
    __tablename__ = "guilds"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class GuildSettings(Base):
    """One server's own settings, edited by host admins and the server's moderators; a
    column left None (or empty) takes the host's value from the environment."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # spoiler, withhold or off; None: the host's IMAGINE_SAFETY_POLICY.
    safety_policy: Mapped[str | None] = mapped_column(String(16))
    # Terms blocked in this server on top of the host's (the prompt filter's syntax).
    blocked_terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    # /imagine only in channels marked age-restricted.
    age_restricted_only: Mapped[bool] = mapped_column(Boolean, default=False)
    # The server's limits by quota name, never looser than the host's.
    quotas: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The preset /imagine uses here when none is named; None: the host's default model.
    default_model: Mapped[str | None] = mapped_column(String(64))
    # Private mode here: allow (members choose), forbid or force; None: allow.
    private_mode: Mapped[str | None] = mapped_column(String(8))
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelPreset(Base):
    """A model as the host offers it: a name members pick, its source and its defaults, and
    the servers that may use it (an empty list: every server the bot serves)."""

    __tablename__ = "model_presets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A hub id, a local folder or file, "embedded", or an image API's model (dall-e-3).
    source: Mapped[str] = mapped_column(String(500))
    sampler: Mapped[str | None] = mapped_column(String(32))
    steps: Mapped[int | None]
    guidance: Mapped[float | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    negative_prefix: Mapped[str] = mapped_column(Text, default="")
    # [{"name": ..., "weight": ...}]: LoRAs every job of the preset adds.
    loras: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cost_factor: Mapped[float] = mapped_column(default=1.0)
    guild_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # The model the preset runs when it is not one of the host's (None): its description
    # (generation.model_info.ModelInfo), read once where the preset was added, so a process
    # that cannot see the files still knows its sizes and family.
    model: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# The waiting jobs: the partial index the claim, places and system virtual times read. A query
# uses it only when it says ``status = 'queued'`` literally (``QUEUED`` below), not as a bound
# parameter: neither database proves a parameter matches an index's WHERE.
WAITING = "status = 'queued'"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_guild_id_created_at", "guild_id", "created_at"),
        Index(
            "ix_jobs_queue",
            "status",
            "model_id",
            "start_tag",
            "id",
            "cost",  # places sum the cost ahead from the index alone
            postgresql_where=text(WAITING),
            sqlite_where=text(WAITING),
        ),
        Index("ix_jobs_user_id_status", "user_id", "status"),
        Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
        Index("ix_jobs_user_id_id", "user_id", "id"),
        Index("ix_jobs_guild_id_status", "guild_id", "status"),
        Index("ix_jobs_guild_id_id", "guild_id", "id"),
        Index("ix_jobs_parent_job_id", "parent_job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    parent_image_index: Mapped[int | None]
    # A job made to make another's images again (/reproduce): that job; its images are
    # compared with that job's when it ends.
    reproduces_job_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    guild_id: Mapped[int | None] = mapped_column(ForeignKey("guilds.id"))
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    # The channel as it was when asked: age-restricted (Discord's "nsfw"), and visible to
    # @everyone (a public job: any member of the server may look it up). None: not known
    # (a job from before these were kept, a DM, the command line): neither.
    channel_nsfw: Mapped[bool | None] = mapped_column(Boolean)
    channel_public: Mapped[bool | None] = mapped_column(Boolean)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    # The recipe: everything needed to make the images again.
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int]
    guidance: Mapped[float]
    width: Mapped[int]
    height: Mapped[int]
    count: Mapped[int]
    strength: Mapped[float | None]
    # An image the user gave to start from (img2img): its key in the image store and the
    # sha256 of its pixels, so the recipe names exactly what it started from.
    init_image_path: Mapped[str | None] = mapped_column(Text)
    init_image_sha256: Mapped[str | None] = mapped_column(String(64))
    # The diffusers scheduler class and its options over the model's own scheduler config,
    # and the sampler's familiar name ("DPM++ 2M Karras") when the job named one.
    scheduler: Mapped[str] = mapped_column(String(64))
    scheduler_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sampler: Mapped[str | None] = mapped_column(String(32))
    # Its decode went through the VAE in tiles (a large image); NULL: whole, as before tiling.
    vae_tiling: Mapped[bool | None]
    # The LoRAs it ran with: name, sha256, A1111 short hash and weight each.
    loras: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The preset it was asked through (its defaults are in the recipe already); None: none.
    preset: Mapped[str | None] = mapped_column(String(64))
    # The prompt as typed, when parameters (--ar 16:9, --no text) were taken out of it.
    raw_prompt: Mapped[str | None] = mapped_column(Text)
    # Private mode: answered to its owner alone (ephemeral, or by DM), hidden from others.
    private: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # An edit's description (generation.editing.Edit): its canvas and mask are made from the
    # parent image and this alone.
    edit: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # --video: a frame kept per denoising step, offered as an animated WebP beside its images.
    video: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A comparison grid (generation.comparing): its knob, values and each cell's own recipe.
    compare: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_id: Mapped[str] = mapped_column(String(300))
    model_revision: Mapped[str] = mapped_column(String(80))
    dtype: Mapped[str | None] = mapped_column(String(16))
    device_kind: Mapped[str | None] = mapped_column(String(16))
    torch_threads: Mapped[int | None]
    library_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What an image API said about the job (model, size, quality, style, revised prompts).
    engine_details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Queue state, fixed at submit: cost, weight and the start tag (start-time fair queuing:
    # the claim takes the lowest; see storage.queue). A released job keeps its tag, so a retry
    # is never charged twice; a cancel moves its user's later tags back. virtual_start is the
    # tag the job ran at (set at its first claim).
    cost: Mapped[float]
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    start_tag: Mapped[float | None] = mapped_column(Float)
    virtual_start: Mapped[float | None] = mapped_column(Float)
    gpu_seconds: Mapped[float | None]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    # Attempts are the runs that count against max_attempts (a crash, a lost lease, a hang);
    # runs are every start, a clean shutdown's release included, so a job that is released
    # every time still ends (see storage.queue.max_runs).
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    runs: Mapped[int] = mapped_column(default=0)
    # Not claimed before this (a retry's backoff, an image API's retry-after); error says why.
    not_before: Mapped[dt.datetime | None]
    # When an image API first sent it back (a 429, a refused key): it gives up after a while.
    deferred_since: Mapped[dt.datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[dt.datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_images_job_id_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int]
    height: Mapped[int]
    flags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Safety review of a flagged image: pending, approved or deleted; None when not flagged.
    review: Mapped[str | None] = mapped_column(String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Review(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DELETED = "deleted"


class EventKind(enum.StrEnum):
    """What a moderation event records."""

    PROMPT_BLOCKED = "prompt_blocked"
    CONTENT_REFUSED = "content_refused"  # an image API refused the request
    IMAGE_FLAGGED = "image_flagged"
    IMAGE_APPROVED = "image_approved"
    DELIVERY_FAILED = "delivery_failed"  # a result Discord would take nowhere
    BAN = "ban"
    UNBAN = "unban"
    QUOTA = "quota"
    DELETE = "delete"
    SETTINGS = "settings"  # a server's settings changed
    MODEL = "model"  # a model preset added, changed or removed


class Usage(Base):
    __tablename__ = "usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    jobs: Mapped[int] = mapped_column(default=0)
    images: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"  # every way was refused: last_error says why
    # Its job was deleted (from any front door): the bot removes its messages, then WITHDRAWN.
    WITHDRAW = "withdraw"
    WITHDRAWN = "withdrawn"


class Delivery(Base):
    """Where a job's result goes, and whether it got there: the outbox of the Discord bot.

    Written with the job, so a bot started again on the same data can still answer the
    interaction (its token is valid for 15 minutes from ``interaction_at``) or, after that,
    post to the channel; ``delivered_at`` is set once, so a result is delivered once.
    """

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_next_try_at", "state", "next_try_at"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    application_id: Mapped[int] = mapped_column(BigInteger)
    interaction_token: Mapped[str] = mapped_column(Text)
    interaction_at: Mapped[dt.datetime]
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    # The interaction's own response message (the progress message), once known.
    original_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # The message a derived job's result replies to: its parent's result.
    reply_to_message_id: Mapped[int | None] = mapped_column(BigInteger)
    result_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    delivered_at: Mapped[dt.datetime | None]
    # The largest file Discord takes in answers to the interaction (it says so in each one);
    # None for rows from before it was kept.
    attachment_size_limit: Mapped[int | None] = mapped_column(BigInteger)
    # The outbox's own state: due from next_try_at (set when the job ends, then by backoff),
    # tried attempts times, the last error; where it went in the end.
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_try_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_via: Mapped[str | None] = mapped_column(String(16))
    # What went out held the images back for review: approving them sends them (again).
    withheld: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The interaction was answered ephemerally: only its member sees that answer.
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ResultPost(Base):
    """A job's result posted again (``/show``): its message, so ✉️ and ❌ on it act on the job
    and ❌ takes it with the job's other messages."""

    __tablename__ = "result_posts"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)  # who asked for it
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WorkerRow(Base):
    """A worker process as it announced itself; its heartbeat says whether it is alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(default=0)
    device: Mapped[str] = mapped_column(String(32), default="")
    # The model ids it has loaded: it claims only their jobs.
    models: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="idle")
    current_job_id: Mapped[int | None]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Intent(Base):
    """A request written down before it is acknowledged: once its member sees "thinking…",
    a bot killed before the job is stored still makes it on its next start (the job's own
    transaction removes this row). ``operation`` and ``arguments`` are the service call that
    makes the job; ``delivery`` is where its result goes."""

    __tablename__ = "intents"

    interaction_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    operation: Mapped[str] = mapped_column(String(16))
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    delivery: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class QueueClock(Base):
    """One model's part of the queue: the tag of the last job claimed for it (the system
    virtual time while none waits), and the seconds a cost unit took, as workers measure them
    (the ETA's rate)."""

    __tablename__ = "queue_clocks"

    model_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    virtual_time: Mapped[float] = mapped_column(Float, default=0.0)
    seconds_per_cost: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class QueueFlow(Base):
    """One user's flow for one model: the finish tag of their last job queued for it, where
    their next job starts unless the system virtual time has passed it (no banked credit)."""

    __tablename__ = "queue_flows"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    finish_tag: Mapped[float] = mapped_column(Float, default=0.0)


class ModerationEvent(Base):
    __tablename__ = "moderation_events"
    __table_args__ = (
        Index("ix_moderation_events_guild_id_id", "guild_id", "id"),
        Index("ix_moderation_events_target_user_id_id", "target_user_id", "id"),
        Index("ix_moderation_events_job_id", "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Who did it: a moderator's Discord id; None for the bot itself (a filter, an automatic ban).
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    target_user_id: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
