"""Rows for storage tests, written through the repositories."""

from __future__ import annotations

from typing import Any

from storage.db import Database
from storage.models import utcnow
from storage.records import JobRecord

RECIPE: dict[str, Any] = {
    "kind": "txt2img",
    "prompt": "a red circle on a blue background",
    "negative_prompt": "",
    "seed": 7,
    "steps": 10,
    "guidance": 3.0,
    "width": 64,
    "height": 64,
    "count": 4,
    "strength": None,
    "scheduler": "DPMSolverMultistepScheduler",
    "model_id": "embedded",
    "model_revision": "0123456789ab",
    "cost": 1.0,
    "library_versions": {},
    "engine_details": {},
}


async def add_job(db: Database, user_id: int = 1, **overrides: Any) -> JobRecord:
    async with db.uow() as uow:
        await uow.users.ensure(user_id, f"user{user_id}")
        fields = {**RECIPE, "created_at": utcnow(), **overrides}
        job = await uow.queue.enqueue(user_id=user_id, **fields)
        await uow.commit()
    return job
