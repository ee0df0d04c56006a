"""The image-API engine against a local OpenAI-compatible server, through service and worker."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from generation.errors import InvalidRequest
from generation.events import EventBus
from generation.openai_engine import OpenAIEngine, describe_api_model
from generation.reproduce import reproduce
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind
from tests.fakeopenai import FakeImagesAPI


@pytest.fixture
async def api() -> AsyncIterator[FakeImagesAPI]:
    async with FakeImagesAPI() as server:
        yield server


@pytest.fixture
def api_engine(api: FakeImagesAPI) -> OpenAIEngine:
    return OpenAIEngine(
        ["dall-e-2", "dall-e-3", "gpt-image-1"], api_key="sk-test", base_url=api.base_url
    )


@pytest.fixture
def api_service(db: Database, store: ImageStore) -> GenerationService:
    models = [describe_api_model(name) for name in ("dall-e-2", "dall-e-3", "gpt-image-1")]
    return GenerationService(db, models[0], Limits(), store=store, more_models=models[1:])


async def _run(db: Database, engine: OpenAIEngine, store: ImageStore) -> int:
    worker = Worker(
        db, engine, store, EventBus(), WorkerConfig(worker_id="api", poll_interval=0.05)
    )
    return await worker.run(burst=True)


def _colour(store: ImageStore, path: str) -> tuple[int, ...]:
    with Image.open(io.BytesIO(store.get(path))) as image:
        return image.convert("RGB").getpixel((5, 5))  # type: ignore[return-value]


async def test_generations_variations_edits_and_a_local_upscale(
    api: FakeImagesAPI,
    api_engine: OpenAIEngine,
    api_service: GenerationService,
    db: Database,
    store: ImageStore,
) -> None:
    grid = await api_service.submit(GenerationRequest("a blue circle", user_id=1, count=4))
    wide = await api_service.submit(
        GenerationRequest(
            "a green square", user_id=2, model="dall-e-3", width=1792, height=1024, count=2
        )
    )
    assert await _run(db, api_engine, store) == 2
    assert [(r.path, r.fields["n"], r.fields["size"]) for r in api.requests] == [
        ("/v1/images/generations", 4, "1024x1024"),  # dall-e-2: four in one call
        ("/v1/images/generations", 1, "1792x1024"),  # dall-e-3: one a call
        ("/v1/images/generations", 1, "1792x1024"),
    ]
    made = await api_service.job(grid.job.id)
    assert made.job.status == "succeeded" and len(made.images) == 4
    assert _colour(store, made.images[0].path) == (0, 0, 255)
    details = (await api_service.job(wide.job.id)).job.engine_details
    assert details["model"] == "dall-e-3" and details["size"] == "1792x1024"
    assert details["revised_prompts"] == ["A detailed picture: a green square"] * 2

    api.requests.clear()
    varied = await api_service.derive(JobKind.VARIATION, grid.job.id, 2, user_id=1)
    edited = await api_service.derive(JobKind.UPSCALE, grid.job.id, 1, user_id=1)
    assert await _run(db, api_engine, store) == 2
    assert [r.path for r in api.requests] == ["/v1/images/variations"], "U makes no API call"
    assert api.requests[0].fields["n"] == "4" and "image" in api.requests[0].files
    upscaled = await api_service.job(edited.job.id)
    assert (upscaled.images[0].width, upscaled.images[0].height) == (2048, 2048)
    assert (await api_service.job(varied.job.id)).job.status == "succeeded"

    # gpt-image-1 has no variations endpoint: V sends the tile to edits, with the prompt.
    other = await api_service.submit(
        GenerationRequest("a red circle", user_id=3, model="gpt-image-1", count=1)
    )
    await _run(db, api_engine, store)
    api.requests.clear()
    await api_service.derive(JobKind.VARIATION, other.job.id, 0, user_id=3)
    await _run(db, api_engine, store)
    assert [(r.path, r.fields["prompt"]) for r in api.requests] == [
        ("/v1/images/edits", "a red circle")
    ]

    report = await reproduce(db, api_engine, store, grid.job.id)
    assert not report.identical
    assert any("cannot be made again" in note for note in report.differences)


async def test_sizes_a_model_does_not_make_and_images_it_cannot_take_are_refused(
    api_service: GenerationService,
) -> None:
    with pytest.raises(InvalidRequest, match=r"size: dall-e-3 makes 1024×1024, 1792×1024"):
        await api_service.submit(
            GenerationRequest("x", user_id=1, model="dall-e-3", width=512, height=512)
        )
    with pytest.raises(InvalidRequest, match="model: must be one of dall-e-2, dall-e-3"):
        await api_service.submit(GenerationRequest("x", user_id=1, model="midjourney"))


async def test_a_429_keeps_the_job_queued_until_retry_after_then_it_runs(
    api: FakeImagesAPI,
    api_engine: OpenAIEngine,
    api_service: GenerationService,
    db: Database,
    store: ImageStore,
) -> None:
    api.rate_limit(retry_after=0.3)
    api.rate_limit(retry_after=0.3)  # the client's own retry meets a second one
    job = (await api_service.submit(GenerationRequest("a red circle", user_id=1))).job
    assert await _run(db, api_engine, store) == 2  # released once, then made
    done = (await api_service.job(job.id)).job
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert [r.status for r in api.requests] == [429, 429, 200]


async def test_a_content_refusal_fails_the_job_with_a_moderation_event_and_401_waits_for_the_key(
    api: FakeImagesAPI,
    api_engine: OpenAIEngine,
    api_service: GenerationService,
    db: Database,
    store: ImageStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api.refuse_content()
    refused = (await api_service.submit(GenerationRequest("something", user_id=1))).job
    await _run(db, api_engine, store)
    failed = (await api_service.job(refused.id)).job
    assert failed.status == "failed" and failed.error.startswith("content_refused")  # type: ignore[union-attr]
    async with db.uow() as uow:
        events = await uow.events.for_job(refused.id)
    assert [(e.kind, e.reason) for e in events] == [
        ("content_refused", "Your request was rejected as a result of our safety system.")
    ]

    # A refused key is the host's problem, not the job's: it waits in the queue, and the
    # worker looks again later (here: at once) and makes it once the key works.
    monkeypatch.setattr("generation.running.KEY_RETRY_SECONDS", 0.1)
    api.reject_key()
    denied = (await api_service.submit(GenerationRequest("a cat", user_id=2))).job
    with caplog.at_level(logging.ERROR, logger="generation.running"):
        await _run(db, api_engine, store)
    done = (await api_service.job(denied.id)).job
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert "IMAGINE_OPENAI_API_KEY" in caplog.text


async def test_the_command_line_on_the_api_engine_alone(api: FakeImagesAPI, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(tmp_path / "data"),
        "IMAGINE_ENGINE": "openai",
        "IMAGINE_OPENAI_API_KEY": "sk-test",
        "IMAGINE_OPENAI_BASE_URL": api.base_url,
        "IMAGINE_OPENAI_MODEL": "dall-e-3,dall-e-2",
        "IMAGINE_SAFETY_CHECKER": "off",
    }
    env.pop("IMAGINE_DATABASE_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "generate", "a green square", "--count", "2", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    made = json.loads(out)
    assert (made["model_id"], made["width"], made["height"]) == ("openai:dall-e-3", 1024, 1024)
    assert made["engine_details"]["revised_prompts"] == ["A detailed picture: a green square"] * 2
    assert [r.fields["n"] for r in api.requests] == [1, 1]
    assert "sk-test" not in err.decode(), "the key is never logged"


async def test_a_cancel_asked_while_the_api_call_runs_keeps_nothing(
    api: FakeImagesAPI,
    api_engine: OpenAIEngine,
    api_service: GenerationService,
    db: Database,
    store: ImageStore,
) -> None:
    """An image API's call cannot be stopped half-way: what it returns after a cancel (❌, or
    Discord's 10062) is not kept, charged or shown."""
    api.gate = asyncio.Event()
    job = (await api_service.submit(GenerationRequest("a red circle", user_id=1, count=1))).job
    config = WorkerConfig(worker_id="api", poll_interval=0.05, heartbeat_interval=0.05)
    worker = Worker(db, api_engine, store, EventBus(), config)
    running = asyncio.create_task(worker.run(burst=True))
    await asyncio.wait_for(api.held.wait(), 30)
    await api_service.cancel(job.id, 1)
    await asyncio.sleep(0.5)  # the worker's lease keeper hears of it
    api.gate.set()
    await asyncio.wait_for(running, 30)
    view = await api_service.job(job.id)
    assert view.job.status == "cancelled" and view.images == []
    assert (await api_service.usage(1)).images_today == 0
