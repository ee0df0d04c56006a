"""Plain frozen records that storage hands out: no ORM rows, no sessions, no lazy loading."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, TypeVar

from storage.models import TERMINAL_STATUSES, JobStatus


@dataclasses.dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    banned: bool
    ban_reason: str | None
    banned_until: dt.datetime | None
    weight: float | None
    virtual_time: float
    quota_overrides: dict[str, Any]
    bucket_tokens: float | None
    bucket_updated_at: dt.datetime | None
    created_at: dt.datetime
    preferences: dict[str, Any] | None = None
    signed_out_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResultPostRecord:
    message_id: int
    job_id: int
    channel_id: int | None
    user_id: int
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class GuildBanRecord:
    guild_id: int
    user_id: int
    reason: str
    until: dt.datetime | None
    created_at: dt.datetime

    def active(self, now: dt.datetime) -> bool:
        return self.until is None or self.until > now


@dataclasses.dataclass(frozen=True, slots=True)
class GuildSettingsRecord:
    guild_id: int
    safety_policy: str | None
    blocked_terms: list[str]
    age_restricted_only: bool
    quotas: dict[str, Any]
    default_model: str | None
    updated_by: int | None
    updated_at: dt.datetime
    private_mode: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPresetRecord:
    name: str
    source: str
    sampler: str | None
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None
    negative_prefix: str
    loras: list[dict[str, Any]]
    cost_factor: float
    guild_ids: list[int]
    model: dict[str, Any] | None
    created_by: int | None
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    kind: str
    parent_job_id: int | None
    parent_image_index: int | None
    reproduces_job_id: int | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    channel_nsfw: bool | None
    channel_public: bool | None
    interaction_id: int | None
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    count: int
    strength: float | None
    init_image_path: str | None
    init_image_sha256: str | None
    scheduler: str
    scheduler_options: dict[str, Any]
    sampler: str | None
    vae_tiling: bool | None
    loras: list[dict[str, Any]]
    preset: str | None
    raw_prompt: str | None
    model_id: str
    model_revision: str
    dtype: str | None
    device_kind: str | None
    torch_threads: int | None
    library_versions: dict[str, Any]
    engine_details: dict[str, Any]
    cost: float
    weight: float
    start_tag: float | None
    virtual_start: float | None
    gpu_seconds: float | None
    status: str
    attempts: int
    max_attempts: int
    runs: int
    not_before: dt.datetime | None
    deferred_since: dt.datetime | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: str | None
    # Private mode: its messages only its owner sees (and its server's moderators, here).
    private: bool = False
    edit: dict[str, Any] | None = None  # an edit's description (generation.editing)
    video: bool = False  # --video: its steps kept as an animated WebP (rendering.video_key)
    compare: dict[str, Any] | None = None  # a comparison's knob, values, cells (comparing)

    @property
    def is_terminal(self) -> bool:
        return JobStatus(self.status) in TERMINAL_STATUSES


@dataclasses.dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    job_id: int
    index: int
    seed: int
    sha256: str
    path: str
    width: int
    height: int
    flags: dict[str, Any]
    review: str | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ModerationEventRecord:
    id: int
    kind: str
    actor_id: int | None
    guild_id: int | None
    target_user_id: int | None
    job_id: int | None
    reason: str
    details: dict[str, Any]
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryRecord:
    job_id: int
    application_id: int
    interaction_token: str
    interaction_at: dt.datetime
    channel_id: int | None
    original_message_id: int | None
    reply_to_message_id: int | None
    result_message_id: int | None
    delivered_at: dt.datetime | None
    attachment_size_limit: int | None
    state: str
    attempts: int
    next_try_at: dt.datetime | None
    last_error: str | None
    delivered_via: str | None
    withheld: bool
    ephemeral: bool = False  # the interaction was answered so that only its member sees it


@dataclasses.dataclass(frozen=True, slots=True)
class NewImage:
    """An image a worker made, before it has a row."""

    index: int
    seed: int
    sha256: str
    path: str
    width: int
    height: int
    # The safety check's scores by label; flagged ones go to review.
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    flagged: bool = False
    check_error: str | None = None  # the safety check could not run: flagged for review


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """Proof that a worker holds a job: the owner and the attempt it claimed."""

    job_id: int
    owner: str
    attempt: int
    expires_at: dt.datetime


R = TypeVar("R")


def to_record(cls: type[R], row: object) -> R:
    """Copy a row's columns into a frozen record of type ``cls``."""
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names})


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRecord:
    user_id: int
    day: dt.date
    jobs: int
    images: int
    cost: float
    gpu_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Renewal:
    """What a lease renewal found: whether the lease is still held and whether to stop."""

    held: bool
    cancel_requested: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    host: str
    pid: int
    device: str
    models: dict[str, Any]
    state: str
    current_job_id: int | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class IntentRecord:
    interaction_id: int
    operation: str
    arguments: dict[str, Any]
    delivery: dict[str, Any]
    created_at: dt.datetime
