"""Each model family hosts run (SD 1.x, 2.x, XL, Flux) through the host's own code path:
described from its configs, generated, varied, started from an image, upscaled, switched to
another sampler, and made again identically. Tiny pipelines built here (see tiny_families)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from PIL import Image

from generation.engine import DiffusersEngine, RenderSpec, StepProgress
from generation.errors import InvalidRequest
from generation.events import EventBus
from generation.imaging import pixel_sha256
from generation.model_info import ModelInfo, describe_model
from generation.reproduce import reproduce
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind, JobStatus
from tests.generation.tiny_families import build_family

FAMILIES = ("sd1", "sd2", "sdxl", "flux")
# The sampler each family switches to (a flow-matching model takes its own).
OTHER_SAMPLER = {"sd1": "DPM++ 2M Karras", "sd2": "Euler a", "sdxl": "DPM++ SDE", "flux": "Euler"}
SIZE = 64  # every family draws 64×64 here (Flux's native 128 is only slower)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    root = tmp_path_factory.mktemp("families")
    return {
        family: describe_model(str(build_family(family, root / family)), root / "models")
        for family in FAMILIES
    }


_ENGINES: dict[str, DiffusersEngine] = {}


def engine_for(info: ModelInfo) -> DiffusersEngine:
    if info.family_label not in _ENGINES:
        _ENGINES[info.family_label] = DiffusersEngine(
            info, device="cpu", dtype="float32", torch_threads=1
        )
    return _ENGINES[info.family_label]


def test_each_family_is_described_from_its_configs(built: dict[str, ModelInfo]) -> None:
    described = {
        name: (
            info.family_label,
            info.prediction,
            (info.native_width, info.native_height),
            info.negative_prompt,
            info.img2img,
        )
        for name, info in built.items()
    }
    assert described == {
        "sd1": ("SD 1.x", "epsilon", (64, 64), True, True),
        "sd2": ("SD 2.x", "v_prediction", (64, 64), True, True),
        "sdxl": ("SDXL", "epsilon", (64, 64), True, True),
        "flux": ("Flux", "flow", (128, 128), False, True),
    }
    assert built["flux"].flow and built["flux"].guidance  # FLUX.1-dev embeds its guidance


def test_a_request_a_family_cannot_honour_is_refused_naming_the_option(
    built: dict[str, ModelInfo],
) -> None:
    flux, limits = built["flux"], Limits(max_width=256, max_height=256)
    service = GenerationService(None, flux, limits)  # type: ignore[arg-type] - check only
    with pytest.raises(InvalidRequest) as refused:
        service.check(GenerationRequest("a cat", user_id=1, negative_prompt="dogs"))
    assert refused.value.option == "negative"
    assert "takes no negative prompt" in str(refused.value)
    with pytest.raises(InvalidRequest) as refused:
        service.check(GenerationRequest("a cat", user_id=1, sampler="DPM++ 2M Karras"))
    assert refused.value.option == "sampler"
    assert "flow-matching" in str(refused.value) and "takes Euler" in str(refused.value)
    with pytest.raises(InvalidRequest) as refused:  # a multiple of Flux's 16 on real models
        service.check(GenerationRequest("a cat", user_id=1, width=100, height=64))
    assert refused.value.option == "width"


@pytest.mark.parametrize("family", FAMILIES)
def test_previews_show_every_familys_latents_as_a_picture(
    family: str, built: dict[str, ModelInfo]
) -> None:
    """Flux packs its latents (batch, patches, channels): the preview unpacks them; each
    family's preview is the latent grid's size, never a crash at the first step."""
    info = built[family]
    engine = engine_for(info)
    previews: list[Image.Image | None] = []

    def on_step(progress: StepProgress) -> None:
        previews.append(progress.preview())

    spec = RenderSpec(
        prompt="a red circle",
        negative_prompt="",
        seeds=(1,),
        steps=2,
        guidance=4.0,
        width=SIZE,
        height=SIZE,
        scheduler=info.scheduler,
    )
    engine.render(spec, on_step)
    factor = info.size_multiple // (2 if family == "flux" else 1)
    assert previews and all(p is not None for p in previews)
    assert {p.size for p in previews if p is not None} == {(SIZE // factor, SIZE // factor)}


async def _run(worker: Worker, service: GenerationService, job_id: int) -> Any:
    await worker.run(burst=True)
    view = await service.job(job_id)
    assert view.job.status == JobStatus.SUCCEEDED, view.job.error
    return view


@pytest.mark.parametrize("family", FAMILIES)
async def test_each_family_generates_varies_upscales_and_makes_it_all_again(
    family: str, built: dict[str, ModelInfo], sqlite: Database, store: ImageStore
) -> None:
    info = built[family]
    engine = engine_for(info)
    # The generation cap is the model's native size: U1 is allowed all the same.
    limits = Limits(max_width=info.native_width, max_height=info.native_height, max_count=2)
    service = GenerationService(sqlite, info, limits, store=store)
    worker = Worker(sqlite, engine, store, EventBus(), WorkerConfig())
    request = GenerationRequest(
        "a red circle", user_id=1, seed=7, steps=3, width=SIZE, height=SIZE, count=2
    )
    first = await service.submit(request)
    switched = await service.submit(
        GenerationRequest(
            "a red circle",
            user_id=1,
            seed=7,
            steps=3,
            width=SIZE,
            height=SIZE,
            count=2,
            sampler=OTHER_SAMPLER[family],
        )
    )
    base = await _run(worker, service, first.job.id)
    other = await _run(worker, service, switched.job.id)
    assert other.job.sampler == OTHER_SAMPLER[family]
    if family != "flux":  # Flux's one sampler is its own: the same pixels, named
        assert other.job.scheduler != base.job.scheduler or other.job.scheduler_options
        assert [i.sha256 for i in other.images] != [i.sha256 for i in base.images]
    png = store.get(other.images[0].path)
    with Image.open(io.BytesIO(png)) as image:
        assert f"Sampler: {OTHER_SAMPLER[family]}," in image.text["parameters"]  # type: ignore[attr-defined]

    upscale = await service.derive(JobKind.UPSCALE, switched.job.id, 0, user_id=1)
    variation = await service.derive(JobKind.VARIATION, switched.job.id, 1, user_id=1)
    start = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    buffer = io.BytesIO()
    start.save(buffer, format="PNG")
    img2img = await service.submit(
        GenerationRequest(
            "a blue square",
            user_id=1,
            seed=3,
            steps=4,
            width=SIZE,
            height=SIZE,
            count=1,
            kind=JobKind.IMG2IMG,
            init_image=buffer.getvalue(),
            strength=0.5,
        )
    )
    upscaled = await _run(worker, service, upscale.job.id)
    assert (upscaled.job.width, upscaled.job.height) == (2 * SIZE, 2 * SIZE)
    assert upscaled.job.sampler == OTHER_SAMPLER[family]  # a derived job keeps the sampler
    await _run(worker, service, variation.job.id)
    await _run(worker, service, img2img.job.id)
    for job_id in (first.job.id, switched.job.id, upscale.job.id, variation.job.id):
        report = await reproduce(sqlite, engine, store, job_id)
        assert report.identical, (family, job_id, report.differences)
    report = await reproduce(sqlite, engine, store, img2img.job.id)
    assert report.identical


async def test_upscales_past_twice_the_native_size_are_resizes_and_stop_at_the_cap(
    built: dict[str, ModelInfo], sqlite: Database, store: ImageStore
) -> None:
    info = built["sd1"]
    engine = engine_for(info)
    limits = Limits(max_width=64, max_height=64, max_count=1, default_count=1, upscale_max_side=256)
    service = GenerationService(sqlite, info, limits, store=store)
    worker = Worker(sqlite, engine, store, EventBus(), WorkerConfig())
    grid = await service.submit(GenerationRequest("a red circle", user_id=1, seed=1, steps=2))
    await _run(worker, service, grid.job.id)
    first = await service.derive(JobKind.UPSCALE, grid.job.id, 0, user_id=1)
    by_diffusion = await _run(worker, service, first.job.id)
    assert by_diffusion.job.strength == limits.upscale_strength  # 128: twice native, diffused
    assert service.offers(by_diffusion.job) >= {JobKind.UPSCALE, JobKind.VARIATION}
    second = await service.derive(JobKind.UPSCALE, first.job.id, 0, user_id=1)
    resized = await _run(worker, service, second.job.id)
    assert resized.job.strength == 0.0  # 256 is past 2 × 64: a resize, recorded as such
    assert resized.job.cost == pytest.approx(256 * 256 / 1e6)  # one step's worth at its size
    # Made again as it was made, whatever today's diffusion cap: still a resize.
    wider = GenerationService(sqlite, info, dataclasses.replace(limits, upscale_diffusion_side=512))
    again = wider.check(
        GenerationRequest(
            "a red circle",
            user_id=1,
            kind=JobKind.UPSCALE,
            width=256,
            height=256,
            count=1,
            strength=0.0,
            steps=2,
            reproduces_job_id=second.job.id,
        )
    )
    assert again.strength == 0.0
    assert (resized.job.width, resized.job.height) == (256, 256)
    parent = Image.open(io.BytesIO(store.get(by_diffusion.images[0].path)))
    expected = parent.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    assert resized.images[0].sha256 == pixel_sha256(expected)
    # 512 would pass the host's cap: no Upscale 2× (nor a Vary at 256, past diffusion's cap,
    # nor a reroll: text-to-image at 256 is past IMAGINE_MAX_WIDTH), nor a comparison: the
    # host makes one image a job. With two, a comparison remakes the 64×64 image they came
    # from, so it is offered.
    assert service.offers(resized.job) == frozenset()
    service.limits = dataclasses.replace(service.limits, max_count=2)
    assert service.offers(resized.job) == frozenset({JobKind.COMPARE})
    with pytest.raises(InvalidRequest, match="at most 256 pixels"):
        await service.derive(JobKind.UPSCALE, second.job.id, 0, user_id=1)


def test_an_unknown_sampler_is_refused_with_the_list(built: dict[str, ModelInfo]) -> None:
    service = GenerationService(None, built["sd1"], Limits())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as refused:
        service.check(GenerationRequest("a cat", user_id=1, sampler="DPM++ 3M SDE Exponential"))
    assert refused.value.option == "sampler"
    assert "Euler, Euler a, Heun, LMS, DPM2, DPM++ 2M, DPM++ 2M Karras" in str(refused.value)
    recipe = service.check(GenerationRequest("a cat", user_id=1, sampler="dpm++ 2m  karras"))
    assert (recipe.sampler, recipe.scheduler) == ("DPM++ 2M Karras", "DPMSolverMultistepScheduler")
    assert recipe.scheduler_options["use_karras_sigmas"] is True


def test_an_out_of_memory_render_fails_with_a_short_reason_and_the_engine_goes_on(
    built: dict[str, ModelInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from generation.errors import TooLargeForDevice

    info = built["sd1"]
    engine = engine_for(info)
    spec = RenderSpec("a cat", "", (1,), 2, 4.0, SIZE, SIZE, info.scheduler)
    real = engine._run_base

    def out_of_memory(*_: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def upcast_then_out_of_memory(*_: Any) -> Any:
        engine.txt2img.vae.to(dtype=torch.float64)  # as SDXL's decode upcasts its VAE
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "_run_base", upcast_then_out_of_memory)
    with pytest.raises(TooLargeForDevice, match=r"too large for this GPU .*try a smaller size"):
        engine.render(spec)
    assert engine.txt2img.vae.dtype == torch.float32  # cast back: the next job's dtype
    monkeypatch.setattr(engine, "_run_base", real)
    assert len(engine.render(spec)) == 1  # the lock was let go; the next job runs
    assert not engine.busy


def test_karras_sigmas_on_a_linear_schedule_run_at_every_step_count_a_host_allows(
    built: dict[str, ModelInfo],
) -> None:
    """SD's scaled-linear betas repeat the last Karras timestep at 45–50 steps: harmless (only
    a repeated first one is not), so the job runs."""
    info = built["sd1"]
    engine = engine_for(info)
    service = GenerationService(None, info, Limits())  # type: ignore[arg-type]
    recipe = service.check(
        GenerationRequest("a cat", user_id=1, steps=45, sampler="DPM++ 2M Karras")
    )
    spec = RenderSpec(
        "a cat",
        "",
        (1,),
        45,
        4.0,
        SIZE,
        SIZE,
        recipe.scheduler,
        scheduler_options=recipe.scheduler_options,
    )
    assert len(engine.render(spec)) == 1


def test_a_second_order_sampler_costs_its_two_model_calls_a_step(
    built: dict[str, ModelInfo],
) -> None:
    from generation.service import job_cost

    service = GenerationService(None, built["sd1"], Limits())  # type: ignore[arg-type]
    euler = service.check(GenerationRequest("a cat", user_id=1, steps=20, sampler="Euler"))
    heun = service.check(GenerationRequest("a cat", user_id=1, steps=20, sampler="Heun"))
    assert job_cost(heun) == 2 * job_cost(euler)
