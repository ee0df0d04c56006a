"""LoRAs: the shipped one changes what the embedded model draws (every shape a triangle) at
weight 1 and nothing at weight 0; files that are not LoRAs, or were made for other models,
are refused with the reason; the recipe, the infotext and a job made again carry them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from generation.embedded import adherence
from generation.embedded.detector import detect
from generation.embedded.lora_train import LoraTrainConfig, train_lora
from generation.embedded.model import SHIPPED_WEIGHTS
from generation.engine import DiffusersEngine, RenderSpec, parameter_bytes
from generation.errors import InvalidRequest, LoraUnavailable
from generation.events import EventBus
from generation.loras import MAX_LORAS, LoraCatalogue, LoraChoice, take_tags
from generation.model_info import ModelInfo
from generation.reproduce import reproduce
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind, JobStatus

SHIPPED_LORA = (
    Path(__file__).parents[2] / "generation" / "embedded" / "loras" / "triangles.safetensors"
)
CROSS = "unet.down_blocks.1.attentions.0.transformer_blocks.0"


def _pair(prefix: str, rank: int, inputs: int, outputs: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"{prefix}.lora_A.weight": torch.randn(rank, inputs, generator=generator),
        f"{prefix}.lora_B.weight": torch.randn(outputs, rank, generator=generator),
    }


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    shutil.copy(SHIPPED_LORA, folder / "triangles.safetensors")
    # Made for SDXL (kohya's layout names its second text encoder).
    save_file(
        {
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(
                4, 1280
            ),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(
                1280, 4
            ),
        },
        str(folder / "xl-style.safetensors"),
    )
    # SD 1.5's text width: its cross-attention reads 768-wide text, the embedded model's 64.
    save_file(_pair(f"{CROSS}.attn2.to_k", 4, 768, 64), str(folder / "sd15-style.safetensors"))
    # Right names, wrong shapes: only loading it can tell.
    save_file(_pair(f"{CROSS}.attn1.to_q", 4, 999, 64), str(folder / "misshapen.safetensors"))
    # A full model's weights, not a LoRA.
    shutil.copy(
        SHIPPED_WEIGHTS / "vae" / "diffusion_pytorch_model.safetensors",
        folder / "a-vae.safetensors",
    )
    (folder / "truncated.safetensors").write_bytes(SHIPPED_LORA.read_bytes()[:5000])
    return folder


@pytest.fixture(scope="module")
def catalogue(lora_dir: Path) -> LoraCatalogue:
    return LoraCatalogue(lora_dir, lora_dir.parent / "hashes.json")


@pytest.fixture(scope="module")
def lora_engine(trained_model: ModelInfo, catalogue: LoraCatalogue) -> DiffusersEngine:
    return DiffusersEngine(
        trained_model, device="cpu", dtype="float32", torch_threads=1, loras=catalogue
    )


def test_prompt_tags_are_taken_out_with_their_weights() -> None:
    text, choices = take_tags("a red circle <lora:triangles:0.8> on blue <LORA:other>")
    assert text == "a red circle on blue"
    assert choices == [LoraChoice("triangles", 0.8), LoraChoice("other", 1.0)]
    assert take_tags("a <b> and 1:2") == ("a <b> and 1:2", [])
    for bad in ("<lora:x:heavy>", "<lora::1>", "<lora:x:1:0.5>"):
        with pytest.raises(InvalidRequest, match="prompt") as refused:
            take_tags(f"a circle {bad}")
        assert bad in str(refused.value)


def test_the_shipped_lora_is_described_and_hashed_as_a1111_does(
    catalogue: LoraCatalogue, trained_model: ModelInfo
) -> None:
    lora = catalogue.find("triangles")
    data = SHIPPED_LORA.read_bytes()
    assert lora.sha256 == hashlib.sha256(data).hexdigest()
    header = int.from_bytes(data[:8], "little")
    assert lora.short_hash == hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    assert (lora.family, lora.text_width) == ("sd", trained_model.text_width)
    assert SHIPPED_LORA.stat().st_size < 200_000  # kilobytes, as a LoRA of this model is
    assert "triangles" in catalogue.search("tri") and catalogue.search("TRI")[0] == "triangles"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("xl-style", "made for SDXL models; embedded is SD 2.x"),
        ("sd15-style", "text encoder is 768 wide; embedded's is 64"),
        ("a-vae", "is not a LoRA"),
        ("truncated", "truncated"),
        ("nothing-here", "there is no LoRA called 'nothing-here'; some there are: "),
    ],
)
def test_a_lora_for_another_model_or_not_a_lora_is_refused_with_the_reason(
    catalogue: LoraCatalogue, trained_model: ModelInfo, name: str, reason: str
) -> None:
    with pytest.raises(InvalidRequest, match="lora") as refused:
        catalogue.resolve([LoraChoice(name)], trained_model)
    assert reason in str(refused.value)


def test_a_request_names_each_lora_once_within_range_and_few_enough(
    catalogue: LoraCatalogue, trained_model: ModelInfo
) -> None:
    cases = [
        ([LoraChoice("triangles"), LoraChoice("triangles", 0.5)], "named twice"),
        ([LoraChoice("triangles", 4.5)], "between -4 and 4"),
        ([LoraChoice(f"l{i}") for i in range(MAX_LORAS + 1)], f"at most {MAX_LORAS}"),
        ([LoraChoice("triangles", 1.0, "0" * 64)], "has changed since the job was made"),
    ]
    for choices, reason in cases:
        with pytest.raises(InvalidRequest) as refused:
            catalogue.resolve(choices, trained_model)
        assert reason in str(refused.value)


def test_at_weight_one_the_lora_draws_triangles_and_at_weight_zero_the_base_pixels(
    lora_engine: DiffusersEngine, catalogue: LoraCatalogue, trained_model: ModelInfo
) -> None:
    sha256 = catalogue.find("triangles").sha256
    # Held-out captions (never seen by the model or the LoRA) asking for another shape.
    cases = [case for case in adherence.prompts(60, seed=5) if case[0].shape != "triangle"][:16]
    base_triangles = lora_triangles = colours = 0
    for index, (scene, text) in enumerate(cases):
        spec = RenderSpec(text, "", (100 + index,), 10, 3.0, 64, 64, trained_model.scheduler)
        base = lora_engine.render(spec)[0]
        with_lora = lora_engine.render(
            dataclasses.replace(spec, loras=(("triangles", sha256, 1.0),))
        )[0]
        at_zero = lora_engine.render(
            dataclasses.replace(spec, loras=(("triangles", sha256, 0.0),))
        )[0]
        found = detect(with_lora)
        lora_triangles += found.shape == "triangle"
        colours += found.colour == scene.colour
        base_triangles += detect(base).shape == "triangle"
        assert np.array_equal(np.asarray(at_zero), np.asarray(base)), text
        # After a LoRA job, a job without one is the base model again.
        assert np.array_equal(np.asarray(lora_engine.render(spec)[0]), np.asarray(base)), text
    assert lora_triangles >= 0.9 * len(cases), (lora_triangles, len(cases))
    assert base_triangles <= 0.25 * len(cases), base_triangles  # the base draws what is asked
    assert colours >= 0.8 * len(cases), colours  # and the LoRA keeps the colours


def test_a_lora_that_does_not_load_fails_the_job_with_the_reason_and_the_engine_goes_on(
    lora_engine: DiffusersEngine, catalogue: LoraCatalogue, trained_model: ModelInfo
) -> None:
    spec = RenderSpec("a red circle", "", (1,), 4, 3.0, 64, 64, trained_model.scheduler)
    before = np.asarray(lora_engine.render(spec)[0])
    misshapen = hashlib.sha256((catalogue.folder / "misshapen.safetensors").read_bytes())  # type: ignore[operator]
    with pytest.raises(LoraUnavailable, match="does not load onto embedded"):
        lora_engine.render(
            dataclasses.replace(spec, loras=(("misshapen", misshapen.hexdigest(), 1.0),))
        )
    with pytest.raises(LoraUnavailable, match="not the file the job was asked with"):
        lora_engine.render(dataclasses.replace(spec, loras=(("triangles", "f" * 64, 1.0),)))
    assert np.array_equal(np.asarray(lora_engine.render(spec)[0]), before)


async def test_a_lora_job_records_its_lora_carries_it_to_buttons_and_makes_it_again(
    tmp_path: Path,
    trained_model: ModelInfo,
    sqlite: Database,
    store: ImageStore,
) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(SHIPPED_LORA, folder / "triangles.safetensors")
    catalogue = LoraCatalogue(folder, tmp_path / "hashes.json")
    engine = DiffusersEngine(
        trained_model, device="cpu", dtype="float32", torch_threads=1, loras=catalogue
    )
    limits = Limits(max_width=128, max_height=128, max_count=2)
    service = GenerationService(sqlite, trained_model, limits, store=store, loras=catalogue)
    worker = Worker(sqlite, engine, store, EventBus(), WorkerConfig())
    submitted = await service.submit(
        GenerationRequest(
            "a red circle on a blue background <lora:triangles:0.8>",
            user_id=1,
            seed=11,
            count=2,
        )
    )
    job = submitted.job
    assert job.prompt == "a red circle on a blue background"
    sha256 = hashlib.sha256(SHIPPED_LORA.read_bytes()).hexdigest()
    assert [(lora["name"], lora["sha256"], lora["weight"]) for lora in job.loras] == [
        ("triangles", sha256, 0.8)
    ]
    await worker.run(burst=True)
    view = await service.job(job.id)
    assert view.job.status == JobStatus.SUCCEEDED, view.job.error
    with Image.open(io.BytesIO(store.get(view.images[0].path))) as image:
        parameters = image.text["parameters"]  # type: ignore[attr-defined]
    short = catalogue.find("triangles").short_hash
    assert parameters.startswith("a red circle on a blue background <lora:triangles:0.8>\n")
    assert f'Lora hashes: "triangles: {short}"' in parameters
    # A variation keeps the LoRA; the same job made again is identical.
    variation = await service.derive(JobKind.VARIATION, job.id, 0, user_id=1)
    assert [lora["weight"] for lora in variation.job.loras] == [0.8]
    await worker.run(burst=True)
    report = await reproduce(sqlite, engine, store, job.id)
    assert report.identical, report.differences
    # The file changes: the job cannot be made again with it; a queued one still runs where
    # the LoRA it asked for is loaded, and fails on a worker started since, saying why.
    queued = await service.submit(
        GenerationRequest(
            "a green square", user_id=1, seed=3, count=1, loras=(LoraChoice("triangles"),)
        )
    )
    data = bytearray(SHIPPED_LORA.read_bytes())
    data[-1] ^= 1
    (folder / "triangles.safetensors").write_bytes(bytes(data))
    with pytest.raises(InvalidRequest, match="has changed since the job was made"):
        await service.reproduce(job.id, user_id=1)
    restarted = DiffusersEngine(
        trained_model, device="cpu", dtype="float32", torch_threads=1, loras=catalogue
    )
    await Worker(sqlite, restarted, store, EventBus(), WorkerConfig()).run(burst=True)
    failed = (await service.job(queued.job.id)).job
    assert failed.status == JobStatus.FAILED
    assert "not the file the job was asked with" in (failed.error or "")


def test_the_trainer_makes_the_same_lora_from_the_same_config(tmp_path: Path) -> None:
    config = LoraTrainConfig(
        model=SHIPPED_WEIGHTS, out=tmp_path / "a.safetensors", images=64, batch=4, steps=3
    )
    losses = train_lora(config, progress=False)
    train_lora(dataclasses.replace(config, out=tmp_path / "b.safetensors"), progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    first, second = (safe_open(tmp_path / f"{n}.safetensors", "pt") for n in ("a", "b"))
    assert first.metadata() == second.metadata()  # (safetensors orders metadata at random)
    assert sorted(first.keys()) == sorted(second.keys())
    assert all(torch.equal(first.get_tensor(k), second.get_tensor(k)) for k in first.keys())  # noqa: SIM118
    lora = LoraCatalogue(tmp_path).find("a")
    assert (lora.family, lora.text_width, lora.base_model) == ("sd", 64, "embedded (trained-v1)")


def test_a_tag_inside_a_tag_is_refused_and_a_stored_prompt_is_not_read_for_tags(
    catalogue: LoraCatalogue, trained_model: ModelInfo
) -> None:
    from generation.requests import validate

    with pytest.raises(InvalidRequest, match="is not a whole tag"):
        take_tags("a cat <lora:<lora:x>y>")
    # A job from before LoRAs whose prompt holds tag text: a job made from it keeps the text
    # as its model saw it, and adds no LoRA.
    old = "a cat <lora:triangles:1>"
    derived = GenerationRequest(old, user_id=1, parent_job_id=9, kind=JobKind.REROLL)
    recipe = validate(derived, Limits(), trained_model, loras=catalogue)
    assert recipe.prompt == old and recipe.loras == []


def test_the_same_file_under_two_names_odd_names_and_odd_headers(
    tmp_path: Path, trained_model: ModelInfo
) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("triangles", "triangles-copy", "bad:name", " padded"):
        shutil.copy(SHIPPED_LORA, folder / f"{name}.safetensors")
    deep = b"[" * 100_000 + b"]" * 100_000
    (folder / "deep.safetensors").write_bytes(len(deep).to_bytes(8, "little") + deep)
    # A LoRA whose up matrix comes first in the header (fp32 before fp16): its width is the
    # down matrix's all the same.
    prefix = f"{CROSS}.attn2.to_k".replace(".", "_").replace("unet_", "lora_unet_", 1)
    save_file(
        {
            f"{prefix}.lora_up.weight": torch.zeros(64, 4),
            f"{prefix}.lora_down.weight": torch.zeros(4, 64, dtype=torch.float16),
        },
        str(folder / "kohya.safetensors"),
    )
    catalogue = LoraCatalogue(folder)
    assert catalogue.names() == ["deep", "kohya", "triangles", "triangles-copy"]
    assert catalogue.suggest("", trained_model) == ["kohya", "triangles", "triangles-copy"]
    assert catalogue.find("kohya").text_width == 64
    with pytest.raises(InvalidRequest, match="is not a safetensors file"):
        catalogue.find("deep")
    with pytest.raises(InvalidRequest, match="triangles-copy and triangles are the same file"):
        catalogue.resolve([LoraChoice("triangles"), LoraChoice("triangles-copy")], trained_model)
    missing = LoraCatalogue(tmp_path / "typo")
    with pytest.raises(InvalidRequest, match="no LoRA folder"):
        missing.find("triangles")


async def test_a_loras_name_goes_through_the_prompt_filter(
    tmp_path: Path, trained_model: ModelInfo, sqlite: Database
) -> None:
    from generation.errors import PromptBlocked
    from generation.prompt_filter import PromptFilter

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(SHIPPED_LORA, folder / "forbidden-style.safetensors")
    service = GenerationService(
        sqlite,
        trained_model,
        Limits(),
        loras=LoraCatalogue(folder),
        prompt_filter=PromptFilter(["forbidden"]),
    )
    with pytest.raises(PromptBlocked):
        await service.submit(
            GenerationRequest("a cat", user_id=1, loras=(LoraChoice("forbidden-style"),))
        )


def test_img2img_and_inpainting_share_the_weights_and_a_lora_adds_little(
    trained_model: ModelInfo, catalogue: LoraCatalogue
) -> None:
    """The benchmark's goal (benchmarks/models.py), held: one copy of the weights however
    many pipelines use them, and a LoRA adds its own small matrices only. (An engine of its
    own: the module's has LoRAs loaded by the tests before, in whatever order they ran.)"""
    from diffusers import AutoPipelineForInpainting

    lora_engine = DiffusersEngine(
        trained_model, device="cpu", dtype="float32", torch_threads=1, loras=catalogue
    )
    txt2img = lora_engine.txt2img
    alone = parameter_bytes(txt2img)
    inpaint = AutoPipelineForInpainting.from_pipe(txt2img)
    shared = parameter_bytes(txt2img, lora_engine.img2img, inpaint)
    assert shared == alone
    lora = catalogue.find("triangles")
    lora_engine.render(
        RenderSpec(
            "a red circle",
            "",
            (1,),
            2,
            5.0,
            64,
            64,
            trained_model.scheduler,
            loras=(("triangles", lora.sha256, 1.0),),
        )
    )
    with_lora = parameter_bytes(txt2img, lora_engine.img2img, inpaint)
    assert alone < with_lora <= 1.1 * alone
