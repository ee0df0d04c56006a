"""Settings from the environment and ``.env`` (prefix ``IMAGINE_``), built once at startup."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from generation.checkpoints import CheckpointOptions
from generation.loras import LoraCatalogue
from generation.model_info import HASH_CACHE
from generation.prompt_filter import PromptFilter, read_blocklist
from generation.quotas import Quotas
from generation.requests import Limits
from generation.safety import SafetyPolicy
from generation.strikes import StrikePolicy
from generation.worker import WorkerConfig
from storage.queue import Policy

DEFAULT_QUOTAS = Quotas()
# Discord ids, written as hosts write them: 123, "123,456", "123 456" or [123, 456].
IdList = Annotated[list[int], NoDecode]


def id_list(value: Any) -> Any:
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in re.split(r"[\s,;]+", text) if part]
    return value


# A fair-share weight or cost factor: above 0, and finite (no inf, no nan).
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Settings(BaseSettings):
    """Every knob of imagine-bot; ``.env.example`` lists them with their defaults."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGINE_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    data_dir: Path = Path("./data")
    database_url: str = ""
    # SQLite only: FULL (a committed job survives a power loss) or NORMAL (faster; survives a
    # crash of the process, but a power loss may lose the last commits).
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Where images live: empty, the data folder; or an fsspec URL (s3://bucket/prefix) that the
    # bot and every worker reach, with its options as JSON ({"endpoint_url": "..."}).
    image_store: str = ""
    image_store_options: dict[str, Any] = Field(default_factory=dict)
    model: str = "embedded"
    model_revision: str | None = None
    # A single checkpoint file (IMAGINE_MODEL=/models/x.safetensors): its family when its keys
    # cannot tell (sd1, sd2, sdxl), its prediction when its configs say otherwise (SD 2.x
    # 768-v: v_prediction), and a local folder of its family's configs and tokenizers (needed
    # offline; online, the family's reference repository on the hub). A .ckpt is a pickle,
    # which runs code when loaded: refused unless allowed.
    model_family: Literal["sd1", "sd2", "sdxl"] | None = None
    model_prediction: Literal["epsilon", "v_prediction"] | None = None
    model_config_dir: str | None = None
    allow_pickle_checkpoints: bool = False
    # The folder of LoRA files (*.safetensors; a LoRA's name is its file name). Default:
    # <data_dir>/models/loras. The bot process and every worker read it.
    lora_dir: Path | None = None
    upscaler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int = Field(default=1, ge=1)
    max_steps: int = Field(default=50, ge=1)
    max_width: int = Field(default=1024, ge=64)
    max_height: int = Field(default=1024, ge=64)
    max_count: int = Field(default=4, ge=1, le=4)
    variation_strength: float = Field(default=0.6, gt=0, le=1)
    upscale_strength: float = Field(default=0.3, gt=0, le=1)
    # Upscales (and variations of them) are made by diffusion up to this longest side (empty:
    # twice the model's native size), by a resize beyond it, and never past the max.
    upscale_diffusion_side: int | None = Field(default=None, ge=64)
    upscale_max_side: int = Field(default=4096, ge=64)
    # Several models on one worker (the presets'): the bytes of weights kept on the device
    # together (GB; empty: 60 % of a GPU's memory, one model at a time on the CPU), and in CPU
    # RAM once moved off a GPU (GB; empty: a quarter of the machine's RAM).
    model_memory_gb: float | None = Field(default=None, ge=0)
    model_cpu_gb: float | None = Field(default=None, ge=0)
    # A job for a loaded model goes first while it is within this many jobs of its fair turn.
    group_bound: float = Field(default=2.0, ge=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    # A job with no progress for this long (or 5 × its expected time, if longer) is hung: it
    # goes back to the queue (or fails, out of attempts) and the worker process exits.
    hang_seconds: float = Field(default=60.0, gt=0)
    # An image API job that could not run this long (429s, a refused key) fails.
    api_give_up_seconds: float = Field(default=3600.0, gt=0)
    # How often every process puts jobs whose worker went silent back in the queue.
    reap_interval: float = Field(default=10.0, gt=0)
    # At start, how long to wait for a database that is away before exiting non-zero.
    database_wait_seconds: float = Field(default=300.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_interval: float = Field(default=1.0, gt=0)
    queue_policy: Policy = Policy.FAIR
    # Each weight and factor above 0 and finite: a weight of 0 or a factor of 0 or infinity
    # would leave a user's place in the queue where it was however much they ran.
    role_weights: dict[int, PositiveFinite] = Field(default_factory=dict)
    model_cost_factors: dict[str, PositiveFinite] = Field(default_factory=dict)
    queued_per_user: int = Field(default=DEFAULT_QUOTAS.queued_per_user, ge=1)
    queued_per_guild: int = Field(default=DEFAULT_QUOTAS.queued_per_guild, ge=1)
    images_per_user_day: int = Field(default=DEFAULT_QUOTAS.images_per_user_day, ge=1)
    images_per_guild_day: int = Field(default=DEFAULT_QUOTAS.images_per_guild_day, ge=1)
    bucket_size: int = Field(default=DEFAULT_QUOTAS.bucket_size, ge=1)
    bucket_refill_seconds: float = Field(default=DEFAULT_QUOTAS.bucket_refill_seconds, gt=0)
    # Which engines make images: diffusers (the GPU, or the CPU), openai (an image API, no GPU
    # needed), or both (each model a choice in /imagine).
    engine: str = Field(default="diffusers", pattern="^(diffusers|openai|both)$")
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # Comma-separated: dall-e-2, dall-e-3, gpt-image-1 (the first is the default of its engine).
    openai_model: str = "dall-e-2"
    openai_quality: str | None = None
    openai_style: str | None = None
    # Price per image in USD by "model:WxH" or "model" (JSON), over the built-in list prices.
    openai_prices: dict[str, float] = Field(default_factory=dict)
    # Fair-share cost units per dollar of API spend (a 512×512 20-step local image is about 5).
    openai_cost_per_dollar: float = Field(default=250.0, gt=0)
    discord_token: SecretStr | None = None
    # A Discord-compatible REST proxy and gateway (large bots run one; the tests run a local one).
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    # The servers the bot serves (their commands are registered at start, at once): anything
    # from another server gets one line and is ignored. open_to_all_servers serves every
    # server that adds the bot (global commands); `run` refuses to start with neither.
    guild_ids: IdList = Field(default_factory=list)
    open_to_all_servers: bool = False
    # Slash commands in a direct message with the bot (buttons on its own DMs always work).
    allow_dms: bool = False
    admin_user_ids: IdList = Field(default_factory=list)
    admin_role_ids: IdList = Field(default_factory=list)
    # Attached start images: the largest file and the most pixels accepted.
    max_upload_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    max_upload_pixels: int = Field(default=4096 * 4096, ge=1)
    # Edit a message with progress at most this often (Discord rate-limits edits).
    progress_interval: float = Field(default=2.0, ge=0)
    # A waiting job's message shows its place in line, edited when it changed, at most this
    # often (0: shown once), and all such edits together at most this many a second (Discord
    # allows a bot about 50 requests a second in all).
    place_interval: float = Field(default=5.0, ge=0)
    place_edits_per_second: float = Field(default=10.0, ge=0, le=40)
    # A result Discord did not take for a passing reason is tried again after this many
    # seconds, doubling each time up to the cap (with jitter); every due result is looked at
    # every delivery_sweep_interval seconds.
    delivery_retry_base: float = Field(default=5.0, gt=0)
    delivery_retry_cap: float = Field(default=300.0, gt=0)
    delivery_sweep_interval: float = Field(default=5.0, gt=0)
    # On SIGTERM the job in hand gets this long to finish before it goes back to the queue.
    stop_grace_seconds: float = Field(default=20.0, ge=0, le=20)
    # The prompt filter: comma-separated terms, a file of one per line (``re:`` for a regex;
    # ``*term*`` also inside words), and each guild's own as JSON {"guild id": ["term"]}.
    blocked_terms: str = ""
    blocklist_file: Path | None = None
    guild_blocked_terms: dict[int, list[str]] = Field(default_factory=dict)
    # This many blocked prompts within the window ban the user for strike_ban_hours.
    strikes_to_ban: int = Field(default=3, ge=1)
    strike_window_hours: float = Field(default=24.0, gt=0)
    strike_ban_hours: float = Field(default=24.0, gt=0)
    # The image safety check: auto (nudenet when installed), nudenet, off, or module:Class.
    safety_checker: str = "auto"
    # What a flagged image gets: spoiler, withhold or off; per guild as JSON {"id": "withhold"}.
    safety_policy: str = "spoiler"
    guild_safety_policies: dict[int, str] = Field(default_factory=dict)
    safety_threshold: float = Field(default=0.5, gt=0, le=1)
    # Where the bot tells moderators about withheld images (a channel id); empty: nowhere.
    moderation_channel_id: int | None = None
    # The web console (imagine-bot web). Its public address: Discord sends the login back to
    # <web_base_url>/auth/callback (register it under OAuth2 → Redirects), and its cookies
    # are Secure when it is https. The OAuth2 client secret of the bot's own application
    # (its client id is the application's id, or web_client_id); the key that signs the
    # console's cookies (32 random bytes or more: `python -c "import secrets;
    # print(secrets.token_urlsafe(32))"`).
    web_base_url: str = "http://127.0.0.1:8080"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=1, le=65535)
    web_client_id: str | None = None
    web_client_secret: SecretStr | None = None
    web_session_secret: SecretStr | None = None
    # Behind a reverse proxy: its addresses, whose X-Forwarded-For/-Proto headers are trusted
    # (comma-separated); empty: none are.
    web_trusted_proxies: str = ""
    # /metrics answers localhost; from elsewhere, a request bearing this token.
    web_metrics_token: SecretStr | None = None
    # A logged-in user's roles are read again (with the bot's token) this often, so a demoted
    # moderator loses access within it.
    web_recheck_seconds: float = Field(default=300.0, ge=0)
    # With an object store (S3): a full-size image the console has authorised is fetched
    # from the store itself through a presigned URL valid this long; 0: through the console.
    web_presign_seconds: int = Field(default=300, ge=0, le=7 * 24 * 3600)
    discord_oauth_url: str = "https://discord.com/oauth2/authorize"
    log_level: str = "WARNING"

    @field_validator("guild_ids", "admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return id_list(value)

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            database = (self.data_dir / "imagine.db").resolve()
            self.database_url = f"sqlite+aiosqlite:///{database}"
        return self

    @field_validator("blocked_terms", "guild_blocked_terms")
    @classmethod
    def _terms_compile(cls, value: Any) -> Any:
        """A blocked term or pattern that cannot be used is refused at start, naming it."""
        if isinstance(value, str):
            PromptFilter([term for term in value.split(",") if term.strip()])
        else:
            PromptFilter((), value)
        return value

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def limits(self) -> Limits:
        return Limits(
            max_steps=self.max_steps,
            max_width=self.max_width,
            max_height=self.max_height,
            max_count=self.max_count,
            default_count=self.max_count,
            default_strength=self.variation_strength,
            upscale_strength=self.upscale_strength,
            upscale_diffusion_side=self.upscale_diffusion_side,
            upscale_max_side=self.upscale_max_side,
        )

    def lora_catalogue(self) -> LoraCatalogue:
        folder = self.lora_dir or self.models_dir / "loras"
        return LoraCatalogue(folder, self.models_dir / HASH_CACHE)

    def checkpoint_options(self) -> CheckpointOptions:
        return CheckpointOptions(
            family=self.model_family,
            prediction=self.model_prediction,
            config=self.model_config_dir,
            allow_pickle=self.allow_pickle_checkpoints,
        )

    def quotas(self) -> Quotas:
        return Quotas(
            queued_per_user=self.queued_per_user,
            queued_per_guild=self.queued_per_guild,
            images_per_user_day=self.images_per_user_day,
            images_per_guild_day=self.images_per_guild_day,
            bucket_size=self.bucket_size,
            bucket_refill_seconds=self.bucket_refill_seconds,
        )

    @property
    def openai_models(self) -> list[str]:
        return [name.strip() for name in self.openai_model.split(",") if name.strip()]

    def prompt_filter(self) -> PromptFilter:
        terms = [term for term in self.blocked_terms.split(",") if term.strip()]
        if self.blocklist_file is not None:
            terms += read_blocklist(self.blocklist_file)
        return PromptFilter(terms, self.guild_blocked_terms)

    def strike_policy(self) -> StrikePolicy:
        return StrikePolicy(
            strikes_to_ban=self.strikes_to_ban,
            window=dt.timedelta(hours=self.strike_window_hours),
            ban_for=dt.timedelta(hours=self.strike_ban_hours),
        )

    def safety(self) -> SafetyPolicy:
        return SafetyPolicy(
            self.safety_policy, self.guild_safety_policies, threshold=self.safety_threshold
        )

    def worker_config(self) -> WorkerConfig:
        return WorkerConfig(
            lease_seconds=self.lease_seconds,
            poll_interval=self.poll_interval,
            hang_seconds=self.hang_seconds,
            api_give_up_seconds=self.api_give_up_seconds,
            group_bound=self.group_bound,
        )

    def model_budgets(self) -> tuple[int | None, int | None]:
        """The engine's budgets in bytes (None: its defaults for the device)."""
        memory, cpu = self.model_memory_gb, self.model_cpu_gb
        return (
            None if memory is None else int(memory * 1024**3),
            None if cpu is None else int(cpu * 1024**3),
        )
