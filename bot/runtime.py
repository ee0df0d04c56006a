"""The composition root: builds settings' resources in order and closes them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from bot.settings import Settings
from generation.errors import ModelUnavailable
from generation.events import EventBus
from generation.faults import retrying
from generation.model_info import ModelInfo, describe_model
from generation.moderation import Moderation
from generation.reaper import Reaper
from generation.relay import EventRelay
from generation.safety import load_checker
from generation.server_settings import ServerSettings
from generation.service import GenerationService
from generation.worker import Worker
from storage.db import Database
from storage.image_store import ImageStore, open_store

if TYPE_CHECKING:
    from generation.engine import DiffusersEngine

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ImageStore
    events: EventBus
    model: ModelInfo
    service: GenerationService
    moderation: Moderation
    engine: DiffusersEngine | None = None
    worker: Worker | None = None
    relay: EventRelay | None = None
    reaper: asyncio.Task[None] | None = None

    def start_reaper(self) -> None:
        """Put jobs whose worker went silent back in the queue, on a timer (every process that
        serves runs one, so a dead worker never stops the queue)."""
        if self.reaper is None:
            reaper = Reaper(self.db, self.events, self.settings.reap_interval)
            self.reaper = asyncio.create_task(reaper.run(), name="reaper")

    async def start_relay(self) -> None:
        """On PostgreSQL, share job events with the other processes (LISTEN/NOTIFY)."""
        if self.relay is None and self.db.engine.dialect.name == "postgresql":
            self.relay = EventRelay(self.settings.database_url, self.events, self.store)
            await self.relay.start()

    async def _engines(self) -> Any:
        """The diffusers pipeline, the image API, or both, per IMAGINE_ENGINE."""
        settings = self.settings
        engines: list[Any] = []
        if settings.engine in ("diffusers", "both"):
            from generation.engine import DiffusersEngine

            engines.append(
                await asyncio.to_thread(
                    DiffusersEngine,
                    self.model if settings.engine == "both" else self.service.model,
                    device=settings.device,
                    dtype=settings.dtype,
                    torch_threads=settings.torch_threads,
                    upscaler=self.service.upscaler,
                    loras=self.service.loras,
                    memory_budget=settings.model_budgets()[0],
                    cpu_budget=settings.model_budgets()[1],
                )
            )
        if settings.engine in ("openai", "both"):
            from generation.openai_engine import OpenAIEngine

            if settings.openai_api_key is None:
                raise ModelUnavailable(
                    "IMAGINE_ENGINE=openai needs IMAGINE_OPENAI_API_KEY (your API key)"
                )
            engines.append(
                OpenAIEngine(
                    settings.openai_models,
                    api_key=settings.openai_api_key.get_secret_value(),
                    base_url=settings.openai_base_url,
                    quality=settings.openai_quality,
                    style=settings.openai_style,
                )
            )
        if len(engines) == 1:
            return engines[0]
        from generation.openai_engine import EngineSet

        return EngineSet(*engines)

    async def start_engine(self) -> Worker:
        """Load the pipeline (once) and build the worker that runs it."""
        if self.worker is None:
            self.engine = await self._engines()
            checker = await asyncio.to_thread(load_checker, self.settings.safety_checker)
            self.worker = Worker(
                self.db,
                self.engine,
                self.store,
                self.events,
                self.settings.worker_config(),
                checker=checker,
                servers=self.service.servers,
                presets=self.service.presets,
                models_dir=self.settings.models_dir,
            )
        return self.worker


def settle_heap() -> None:
    """Once a long-running process has loaded what it keeps (the model, the client): collect,
    then freeze what is left out of the garbage collector's reach. Its full passes then scan
    only what came after, so they no longer hold the event loop for half a second (measured:
    0.4-0.8 s with a pipeline loaded, before)."""
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, wait_for_database: bool = False
) -> AsyncIterator[Runtime]:
    """Database (migrated), image store, model description, service; the engine on request.
    A long-running process (``wait_for_database``) waits for a database that is away."""
    db = Database(
        settings.database_url,
        policy=settings.queue_policy,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    runtime: Runtime | None = None
    try:
        # A process started while the database is away (a failover, a reboot) waits for it
        # instead of exiting at once: a supervisor restarting it in a loop gives up soon.
        wait = settings.database_wait_seconds if wait_for_database else 0.0
        deadline = time.monotonic() + wait
        await retrying(db.upgrade, what="reaching the database", until=lambda: deadline, cap=10)
        api_models = []
        if settings.engine in ("openai", "both"):
            from generation.openai_engine import describe_api_model

            api_models = [describe_api_model(name) for name in settings.openai_models]
        if settings.engine == "openai":
            model = api_models.pop(0)
        else:
            model = await asyncio.to_thread(
                describe_model,
                settings.model,
                settings.models_dir,
                settings.model_revision,
                settings.checkpoint_options(),
            )
        store = open_store(settings.image_store or settings.data_dir, settings.image_store_options)
        events = EventBus()
        upscaler = None
        if settings.upscaler:
            upscaler = await asyncio.to_thread(
                describe_model, settings.upscaler, settings.models_dir
            )
        prompt_filter, quotas = settings.prompt_filter(), settings.quotas()
        service = GenerationService(
            db,
            model,
            settings.limits(),
            max_attempts=settings.max_attempts,
            upscaler=upscaler,
            quotas=quotas,
            role_weights=settings.role_weights,
            cost_factors=settings.model_cost_factors,
            store=store,
            prompt_filter=prompt_filter,
            strikes=settings.strike_policy(),
            more_models=api_models,
            prices=settings.openai_prices,
            cost_per_dollar=settings.openai_cost_per_dollar,
            server_settings=ServerSettings(
                db, safety=settings.safety(), prompt_filter=prompt_filter, quotas=quotas
            ),
            loras=settings.lora_catalogue(),
            models_dir=settings.models_dir,
        )
        moderation = Moderation(db, store, strikes=settings.strike_policy())
        runtime = Runtime(settings, db, store, events, model, service, moderation)
        yield runtime
    finally:
        if runtime is not None and runtime.reaper is not None:
            runtime.reaper.cancel()
            await asyncio.gather(runtime.reaper, return_exceptions=True)
        if runtime is not None and runtime.relay is not None:
            await runtime.relay.close()
        if runtime is not None and runtime.engine is not None:
            if hasattr(runtime.engine, "aclose"):  # an image API's HTTP client
                await runtime.engine.aclose()
            runtime.engine.close()  # never waits on a render that hung
        await db.close()
