"""Requests written down before they are acknowledged: batched commits, and the job made from
a record left behind by a process that stopped."""

from __future__ import annotations

import asyncio

import pytest

from generation.intents import IntentLog, decode_arguments, encode_request
from generation.model_info import ModelInfo
from generation.outbox import DeliveryTarget
from generation.quotas import Quotas
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database
from storage.models import JobKind, utcnow

TARGET = DeliveryTarget(7, "token", utcnow(), channel_id=5, attachment_size_limit=1 << 20)


async def test_requests_arriving_together_share_commits_and_are_all_kept(db: Database) -> None:
    log = IntentLog(db)
    requests = [
        GenerationRequest(f"a red circle {n}", user_id=n, interaction_id=100 + n, role_ids=(3,))
        for n in range(50)
    ]
    await asyncio.gather(
        *(log.record(r.interaction_id or 0, "submit", encode_request(r), TARGET) for r in requests)
    )
    assert log.commits < 10  # not one transaction each
    kept = await log.pending()
    assert sorted(intent.interaction_id for intent in kept) == list(range(100, 150))
    assert kept[0].delivery["interaction_token"] == "token"


async def test_a_record_left_behind_becomes_its_job_once(
    db: Database, service: GenerationService
) -> None:
    log = IntentLog(db)
    request = GenerationRequest(
        "a blue square", user_id=4, guild_id=9, channel_id=5, interaction_id=777, steps=3
    )
    await log.record(777, "submit", encode_request(request), TARGET)
    (intent,) = await log.pending()
    made = await service.resume(intent)
    # The record went in the job's own transaction; the job is the request, delivered where
    # the record said.
    assert await log.pending() == []
    assert (made.job.interaction_id, made.job.prompt, made.job.steps) == (777, "a blue square", 3)
    async with db.uow() as uow:
        delivery = await uow.deliveries.get(made.job.id)
    assert delivery is not None
    assert (delivery.interaction_token, delivery.attachment_size_limit) == ("token", 1 << 20)
    again = await service.resume(intent)  # a second start that read it before it went
    assert again.job.id == made.job.id
    assert len(await service.recent()) == 1


async def test_a_refused_record_is_dropped_with_the_refusal(db: Database, model: ModelInfo) -> None:
    strict = GenerationService(db, model, Limits(), quotas=Quotas(queued_per_user=0))
    log = IntentLog(db)
    request = GenerationRequest("a green triangle", user_id=4, interaction_id=778)
    await log.record(778, "submit", encode_request(request), TARGET)
    (intent,) = await log.pending()
    with pytest.raises(Exception, match="most allowed"):
        await strict.resume(intent)
    await log.forget(778)
    assert await log.pending() == []


async def test_a_button_press_is_written_down_as_its_call(
    db: Database, service: GenerationService
) -> None:
    arguments = {
        "kind": JobKind.REROLL,
        "parent_job_id": 3,
        "image_index": None,
        "user_id": 4,
        "channel": [5, False, True],
        "strength": None,
        "interaction_id": 9,
        "user_name": "alice",
        "role_ids": [1, 2],
    }
    log = IntentLog(db)
    await log.record(9, "derive", arguments, TARGET)
    (intent,) = await log.pending()
    decoded = decode_arguments(intent.operation, intent.arguments)
    assert decoded["kind"] is JobKind.REROLL
    assert decoded["channel"] == (5, False, True)
    assert decoded["role_ids"] == (1, 2)
    with pytest.raises(ValueError, match="not a service call"):
        await log.record(10, "delete_everything", {}, TARGET)
