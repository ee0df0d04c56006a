"""Model presets: the host's named models with their defaults and the servers that may use
them; a server's default among them; what a job asked through one records."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from generation.access import Actor
from generation.engine import DiffusersEngine
from generation.errors import InvalidRequest, NotAllowed
from generation.events import EventBus
from generation.imaging import pixel_sha256
from generation.loras import LoraCatalogue, LoraChoice
from generation.model_info import ModelInfo
from generation.presets import Preset, PresetBook
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind
from storage.records import ImageRecord
from tests.generation.test_loras import SHIPPED_LORA

ONE, TWO = 111, 222
HOST = Actor(1, host=True)
MODERATOR_ONE = Actor(2, guild_id=ONE, moderator=True)
MODERATOR_TWO = Actor(3, guild_id=TWO, moderator=True)
TRIANGLES = Preset(
    name="tri",
    source="embedded",
    sampler="Euler a",
    steps=6,
    guidance=2.5,
    negative_prefix="blurry",
    loras=(LoraChoice("triangles", 0.8),),
    cost_factor=2.0,
    guild_ids=(ONE,),
)


def service_on(
    db: Database, model: ModelInfo, store: ImageStore | None = None
) -> GenerationService:
    return GenerationService(
        db,
        model,
        Limits(max_count=2, default_count=2),
        store=store,
        loras=LoraCatalogue(SHIPPED_LORA.parent),
        presets=PresetBook(db, ttl=0),
    )


async def test_a_preset_fills_what_the_request_leaves_out_and_is_recorded(
    sqlite: Database, trained_model: ModelInfo, store: ImageStore
) -> None:
    service = service_on(sqlite, trained_model, store)
    await service.put_preset(HOST, TRIANGLES)
    plain = await service.submit(GenerationRequest("a red circle", user_id=5, seed=1, guild_id=ONE))
    job = (
        await service.submit(
            GenerationRequest(
                "a red circle", user_id=5, seed=1, guild_id=ONE, model="tri", negative_prompt="text"
            )
        )
    ).job
    assert (job.steps, job.guidance, job.sampler, job.preset) == (6, 2.5, "Euler a", "tri")
    assert job.negative_prompt == "blurry, text"
    assert [(lora["name"], lora["weight"]) for lora in job.loras] == [("triangles", 0.8)]
    # Its factor is a fair-share charge: the weight is divided by it; the cost (what ETAs
    # measure) stays the model's.
    assert (job.weight, plain.job.weight) == (0.5, 1.0)
    assert job.cost / job.steps == pytest.approx(plain.job.cost / plain.job.steps)

    # What the request says wins: its steps, its weight for the preset's LoRA (by name).
    own = (
        await service.submit(
            GenerationRequest(
                "a red circle <lora:triangles:0.3>", user_id=5, guild_id=ONE, model="tri", steps=9
            )
        )
    ).job
    assert own.steps == 9 and [lora["weight"] for lora in own.loras] == [0.3]

    # A variation carries the recipe: the prefix and the LoRA are not applied twice.
    engine = DiffusersEngine(
        trained_model, device="cpu", dtype="float32", torch_threads=1, loras=service.loras
    )
    await Worker(sqlite, engine, store, EventBus(), WorkerConfig()).run(burst=True)
    child = (await service.derive(JobKind.VARIATION, job.id, 0, user_id=5)).job
    assert child.negative_prompt == "blurry, text" and len(child.loras) == 1
    assert (child.preset, child.weight, child.steps) == ("tri", 0.5, 6)  # charged alike

    # Another server may not use it, and is told what it may use.
    with pytest.raises(
        InvalidRequest,
        match="must be one of embedded, not 'tri'",  # as if it were not there
    ):
        await service.submit(GenerationRequest("a cat", user_id=5, guild_id=TWO, model="tri"))
    with pytest.raises(InvalidRequest, match="must be one of embedded, not 'nope'"):
        await service.submit(GenerationRequest("a cat", user_id=5, guild_id=TWO, model="nope"))


@pytest.mark.parametrize(
    ("change", "option", "reason"),
    [
        ({"source": "nope"}, "source", "must be one of the host's models, not 'nope'"),
        (
            {"sampler": "DPM++ 2M Karras"},
            "sampler",
            "does not suit embedded's cosine noise schedule",
        ),
        ({"width": 4096, "height": 4096}, "width", "must be from 64 to 1024 pixels"),
        ({"name": "embedded"}, "name", "is the name of a host model"),
        ({"loras": (LoraChoice("missing"),)}, "lora", "there is no LoRA called 'missing'"),
        ({"name": "Bad Name"}, "name", "is not a preset name"),
        ({"cost_factor": 0.01}, "cost", "must be from 0.1 to 10"),
    ],
)
async def test_a_preset_a_request_could_not_take_is_refused_naming_the_option(
    sqlite: Database, trained_model: ModelInfo, change: dict[str, object], option: str, reason: str
) -> None:
    import dataclasses

    service = service_on(sqlite, trained_model)
    with pytest.raises(InvalidRequest) as refused:
        await service.put_preset(HOST, dataclasses.replace(TRIANGLES, **change))  # type: ignore[arg-type]
    assert refused.value.option == option and reason in refused.value.message
    assert await PresetBook(sqlite).current() == PresetBook(sqlite).snapshot  # nothing stored


async def test_only_host_admins_add_presets_and_moderators_pick_their_servers_default(
    sqlite: Database, trained_model: ModelInfo
) -> None:
    service = service_on(sqlite, trained_model)
    with pytest.raises(NotAllowed):
        await service.put_preset(MODERATOR_ONE, TRIANGLES)
    await service.put_preset(HOST, TRIANGLES)
    with pytest.raises(NotAllowed):
        await service.presets.set_default(MODERATOR_TWO, ONE, "tri")
    with pytest.raises(InvalidRequest, match="'tri' is not a model this server may use"):
        await service.presets.set_default(MODERATOR_TWO, TWO, "tri")
    await service.presets.set_default(MODERATOR_ONE, ONE, "tri")
    # Another process sees it (its book reads the table again).
    other = service_on(sqlite, trained_model)
    defaulted = (await other.submit(GenerationRequest("a red circle", user_id=5, guild_id=ONE))).job
    assert defaulted.preset == "tri" and defaulted.steps == 6
    elsewhere = (await other.submit(GenerationRequest("a red circle", user_id=5, guild_id=TWO))).job
    assert elsewhere.preset is None and elsewhere.steps == trained_model.default_steps

    await service.presets.remove(HOST, "tri")
    after = (await other.submit(GenerationRequest("a red circle", user_id=6, guild_id=ONE))).job
    assert after.preset is None  # the server's default went with it
    with pytest.raises(InvalidRequest, match="no model preset called 'tri'"):
        await service.presets.remove(HOST, "tri")
    async with sqlite.uow() as uow:
        events = await uow.events.recent(limit=10)
    reasons = [event.reason for event in events]
    assert "model tri added" in reasons and "model tri removed" in reasons


def test_preset_names_are_what_discord_and_a_url_carry(tmp_path: Path) -> None:
    from generation.presets import check_name

    assert check_name("sdxl-turbo.v2") == "sdxl-turbo.v2"
    for bad in ("", "UPPER", "-lead", "a" * 33, "with space", "../x"):
        with pytest.raises(InvalidRequest):
            check_name(bad)


async def test_a_default_that_no_longer_works_falls_back_and_limiting_clears_defaults(
    sqlite: Database, trained_model: ModelInfo, tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(SHIPPED_LORA, folder / "triangles.safetensors")
    service = GenerationService(
        sqlite,
        trained_model,
        Limits(max_count=2, default_count=2),
        loras=LoraCatalogue(folder),
        presets=PresetBook(sqlite, ttl=0),
    )
    everywhere = dataclasses.replace(TRIANGLES, guild_ids=())
    await service.put_preset(HOST, everywhere)
    await service.presets.set_default(MODERATOR_ONE, ONE, "tri")
    await service.presets.set_default(MODERATOR_TWO, TWO, "tri")
    # The host limits it to server ONE: server TWO's default goes back to the host's.
    await service.put_preset(HOST, TRIANGLES)
    snapshot = await service.presets.current()
    assert snapshot.defaults == {ONE: "tri"}
    # Its LoRA file is deleted: ONE's members, who did not pick it, get the host's model.
    (folder / "triangles.safetensors").unlink()
    job = (await service.submit(GenerationRequest("a red circle", user_id=5, guild_id=ONE))).job
    assert job.preset is None and job.steps == trained_model.default_steps
    # Named explicitly, it is refused with the reason.
    with pytest.raises(InvalidRequest, match="no LoRA called 'triangles'"):
        await service.submit(GenerationRequest("a cat", user_id=5, guild_id=ONE, model="tri"))


async def test_a_preset_runs_a_model_of_its_own_on_the_workers_that_have_its_files(
    sqlite: Database, model: ModelInfo, trained_model: ModelInfo, store: ImageStore, tmp_path: Path
) -> None:
    import shutil

    models_dir = tmp_path / "models"
    folder = models_dir / "shapes-copy"
    shutil.copytree(trained_model.path, folder)
    service = GenerationService(
        sqlite,
        model,  # the host's model: the random-weight one
        Limits(max_count=1, default_count=1),
        store=store,
        presets=PresetBook(sqlite, ttl=0),
        models_dir=models_dir,
    )
    preset = await service.put_preset(HOST, Preset(name="shapes", source=str(folder), steps=4))
    assert preset.model is not None and preset.model.revision == trained_model.revision
    job = (
        await service.submit(GenerationRequest("a red circle", user_id=5, seed=3, model="shapes"))
    ).job
    assert (job.model_id, job.preset, job.steps) == (preset.model.model_id, "shapes", 4)

    # A host without its files neither offers the model nor claims the job.
    hidden = tmp_path / "elsewhere"
    folder.rename(hidden)
    engine = DiffusersEngine(model, device="cpu", dtype="float32", memory_budget=0)
    worker = Worker(
        sqlite,
        engine,
        store,
        EventBus(),
        WorkerConfig(worker_id="w-models"),
        presets=PresetBook(sqlite, ttl=0),
        models_dir=models_dir,
    )
    assert await worker.run(burst=True) == 0
    assert list(engine.models) == [model.model_id]

    # The files come (the worker looks again): it announces the model and runs the job on it.
    hidden.rename(folder)
    worker._looked_at = 0.0  # as if MODELS_RECHECK had passed
    assert await worker.run(burst=True) == 1
    async with sqlite.uow() as uow:
        rows = await uow.workers.all()
        done = await uow.jobs.get(job.id)
    assert rows[0].models["ids"] == [model.model_id, preset.model.model_id]
    assert done is not None and done.status == "succeeded"
    assert engine.loaded == [preset.model.model_id]
    # Its pixels are the trained model's (the copy's weights), not the host model's.
    same = GenerationService(sqlite, trained_model, Limits(max_count=1, default_count=1))
    twin = (await same.submit(GenerationRequest("a red circle", user_id=6, seed=3, steps=4))).job
    trained = DiffusersEngine(trained_model, device="cpu", dtype="float32")
    await Worker(sqlite, trained, store, EventBus(), WorkerConfig()).run(burst=True)
    async with sqlite.uow() as uow:
        ours, theirs = await uow.images.for_job(job.id), await uow.images.for_job(twin.id)

    def drawn(images: list[ImageRecord]) -> list[str]:
        return [pixel_sha256(Image.open(io.BytesIO(store.get(i.path)))) for i in images]

    assert drawn(ours) == drawn(theirs)
    # A variation of it runs on the same model (carried by id: a member cannot name it).
    child = (await service.derive(JobKind.VARIATION, job.id, 0, user_id=5)).job
    assert (child.model_id, child.preset) == (preset.model.model_id, "shapes")
    with pytest.raises(InvalidRequest, match="must be one of"):
        await service.submit(GenerationRequest("a cat", user_id=5, model=preset.model.model_id))

    # A preset whose source no host model names, and that cannot be described, is refused.
    with pytest.raises(InvalidRequest, match="nope") as refused:
        await service.put_preset(HOST, Preset(name="gone", source="nope/not-downloaded"))
    assert refused.value.option == "source"


async def test_a_model_no_worker_runs_is_said_and_joins_the_queue_at_everyones_level(
    sqlite: Database, model: ModelInfo, trained_model: ModelInfo, tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    from generation.wording import describe_place
    from storage.models import utcnow

    models_dir = tmp_path / "models"
    shutil.copytree(trained_model.path, models_dir / "shapes")
    service = GenerationService(
        sqlite,
        model,
        Limits(max_count=1, default_count=1),
        presets=PresetBook(sqlite, ttl=0),
        models_dir=models_dir,
    )
    for _ in range(3):  # the host model's queue has moved on: its level is above 0
        await service.submit(GenerationRequest("a cat", user_id=7, steps=30))
        async with sqlite.uow() as uow:
            assert await uow.queue.claim("w", 60, utcnow(), model_ids=[model.model_id])
            await uow.commit()
    level = (await service.submit(GenerationRequest("a cat", user_id=10))).job.start_tag
    assert level > 0

    preset = await service.put_preset(
        HOST, Preset(name="shapes", source=str(models_dir / "shapes"), guild_ids=(ONE,))
    )
    assert preset.model is not None
    asked = await service.submit(
        GenerationRequest("a circle", user_id=5, model="shapes", guild_id=ONE)
    )
    assert asked.job.start_tag >= level, "a model new to the queue does not go ahead of everyone"
    assert asked.unserved == "shapes"
    assert "no GPU host runs shapes right now" in describe_place(asked)
    async with sqlite.uow() as uow:  # a worker finds its files and announces it
        await uow.workers.announce(
            "w-shapes",
            host="gpu-2",
            pid=1,
            device="cuda",
            models=[preset.model.model_id],
            now=await uow.now(),
        )
        await uow.commit()
    assert (await service.status(asked.job.id)).unserved is None

    # Taken from server ONE: a button on the job there is refused, never naming the folder.
    await service.put_preset(HOST, dataclasses.replace(preset, guild_ids=(TWO,)))
    await service.presets.current()
    reroll = service._derived_request(JobKind.REROLL, asked.job, None, 5)
    with pytest.raises(InvalidRequest) as refused:
        service.check(reroll)
    assert "is not offered here any more" in refused.value.message
    assert str(models_dir) not in refused.value.message

    # A row this version cannot read is left out; the others are offered.
    async with sqlite.uow() as uow:
        values = {key: value for key, value in preset.row().items() if key != "name"}
        await uow.presets.put("broken", **{**values, "model": {"x": 1}})
        await uow.commit()
    snapshot = await service.presets.current()
    assert sorted(snapshot.presets) == ["shapes"]
