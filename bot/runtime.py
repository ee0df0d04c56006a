"""The composition root: builds settings' resources in order and closes them in reverse."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from bot.settings import Settings
from generation.engine import DiffusersEngine
from generation.events import EventBus
from generation.model_info import ModelInfo, describe_model
from generation.service import GenerationService
from generation.worker import Worker
from storage.db import Database
from storage.image_store import ImageStore

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ImageStore
    events: EventBus
    model: ModelInfo
    service: GenerationService
    engine: DiffusersEngine | None = None
    worker: Worker | None = None


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, with_engine: bool = False) -> AsyncIterator[Runtime]:
    """Database (migrated), image store, model description, service; the engine and worker on request."""
    import asyncio

    db = Database(settings.database_url)
    try:
        await db.upgrade()
        model = await asyncio.to_thread(
            describe_model, settings.model, settings.models_dir, settings.model_revision
        )
        store = ImageStore(settings.images_dir)
        events = EventBus()
        service = GenerationService(
            db, model, settings.limits(), max_attempts=settings.max_attempts
        )
        runtime = Runtime(settings, db, store, events, model, service)
        if with_engine:
            runtime.engine = await asyncio.to_thread(
                DiffusersEngine,
                model,
                device=settings.device,
                dtype=settings.dtype,
                torch_threads=settings.torch_threads,
            )
            runtime.worker = Worker(db, runtime.engine, store, events, settings.worker_config())
        yield runtime
    finally:
        await db.close()
