"""Requests written down before they are acknowledged, many to one commit.

A front door (the bot) records what it is about to ask of the service — the call and where its
result goes — then answers the member, then makes the job. The job's own transaction removes
the record, so a process killed after the answer and before the job leaves the record behind,
and the next start makes the job from it (``GenerationService.resume``).

The records go through one writer: requests that arrive while a write is under way wait for
the next one and share its commit. Fifty simultaneous requests take a handful of commits where
fifty transactions would queue for SQLite's one write lock (or for a pool's connections).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from generation.comparing import Comparison
from generation.editing import Edit
from generation.loras import LoraChoice
from generation.outbox import DeliveryTarget
from generation.requests import GenerationRequest
from storage.db import Database
from storage.models import JobKind, utcnow
from storage.records import IntentRecord

logger = logging.getLogger(__name__)

# The service calls a record may stand for.
OPERATIONS = ("submit", "derive", "reproduce")


def encode_request(request: GenerationRequest) -> dict[str, Any]:
    """A request as JSON; one with an image's bytes is not written down (too big for a row)."""
    if request.init_image is not None:
        raise ValueError("a request with a start image is not written down")
    values = dataclasses.asdict(request)
    values["role_ids"] = list(request.role_ids)
    values["loras"] = [dataclasses.asdict(choice) for choice in request.loras]
    return values


def decode_arguments(operation: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the service call a record stands for."""
    values = dict(arguments)
    if "role_ids" in values:
        values["role_ids"] = tuple(values["role_ids"])
    if operation == "submit":
        values["kind"] = JobKind(values["kind"])
        values["loras"] = tuple(LoraChoice(**choice) for choice in values.get("loras", ()))
        return {"request": GenerationRequest(**values)}
    if values.get("channel") is not None:
        values["channel"] = tuple(values["channel"])
    if operation == "derive":
        values["kind"] = JobKind(values["kind"])
        if values.get("edit") is not None:
            values["edit"] = Edit.from_dict(values["edit"])
        if values.get("compare") is not None:
            values["compare"] = Comparison.from_dict(values["compare"])
    return values


def encode_delivery(target: DeliveryTarget) -> dict[str, Any]:
    values = dataclasses.asdict(target)
    values["interaction_at"] = target.interaction_at.isoformat()
    return values


def decode_delivery(values: Mapping[str, Any]) -> DeliveryTarget:
    fields = dict(values)
    fields["interaction_at"] = dt.datetime.fromisoformat(fields["interaction_at"])
    return DeliveryTarget(**fields)


class IntentLog:
    """Writes records down, batching those that arrive together into one commit."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # how many commits wrote records (for tests and benchmarks)

    async def record(
        self,
        interaction_id: int,
        operation: str,
        arguments: Mapping[str, Any],
        delivery: DeliveryTarget,
    ) -> None:
        """Return once the record is committed (raises what the write raised)."""
        if operation not in OPERATIONS:
            raise ValueError(f"not a service call a record may stand for: {operation!r}")
        row = {
            "interaction_id": interaction_id,
            "operation": operation,
            "arguments": dict(arguments),
            "delivery": encode_delivery(delivery),
            "created_at": utcnow(),
        }
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="intent-writer")
        await asyncio.shield(written)

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with self.db.uow() as uow:
                    await uow.intents.add_many([row for row, _ in batch])
                    await uow.commit()
                self.commits += 1
            except Exception as error:  # each waiter hears it; the next batch tries afresh
                for _, written in batch:
                    if not written.done():
                        written.set_exception(error)
                continue
            for _, written in batch:
                if not written.done():
                    written.set_result(None)

    async def forget(self, interaction_id: int) -> None:
        """Drop a record whose request was answered otherwise (refused, failed); best effort:
        one left behind is made or refused again at the next start."""
        try:
            async with self.db.uow() as uow:
                await uow.intents.delete(interaction_id)
                await uow.commit()
        except Exception as error:
            logger.warning("could not drop the record of interaction %s: %s", interaction_id, error)

    async def pending(
        self, *, before: dt.datetime | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[IntentRecord]:
        """Records whose job was never made (their process stopped in between): those written
        before ``before``, a page of ``limit`` from interaction ``after_id`` on."""
        async with self.db.uow() as uow:
            return await uow.intents.pending(limit, before=before, after_id=after_id)
