"""The pipeline engine: one diffusers pipeline loaded once, shared by every kind of job.

The pipeline runs in a worker thread, one call at a time; progress and cancel go through its
step callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import platform
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from PIL import Image

from generation.errors import RenderCancelled
from generation.model_info import ModelInfo

logger = logging.getLogger(__name__)

# Linear map from Stable Diffusion's 4 latent channels to RGB: a preview that costs nothing.
SD_LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


@dataclasses.dataclass(frozen=True, slots=True)
class RenderSpec:
    """One pipeline call: a batch of images, one seed each; an init image makes it img2img."""

    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    strength: float | None = None
    init_image: Image.Image | None = None
    # Which loaded model runs it: None is the base model; an upscale may name the upscaler.
    model_id: str | None = None
    # CPU threads to run with (they change the bits); None: the engine's own setting.
    torch_threads: int | None = None
    # The job's kind (txt2img, img2img, variation, upscale, reroll): an API engine calls a
    # different endpoint for each.
    kind: str = "txt2img"


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """How this engine computes: recorded with every job so it can be reproduced."""

    device: str
    device_kind: str
    dtype: str
    torch_threads: int
    library_versions: dict[str, str]


class StepProgress:
    """One finished denoising step; ``preview()`` projects the latents to a small RGB image."""

    def __init__(self, step: int, total: int, latents: torch.Tensor) -> None:
        self.step = step
        self.total = total
        self._latents = latents

    def preview(self, index: int = 0) -> Image.Image:
        latent = self._latents[index].detach().float().cpu()
        if latent.shape[0] == SD_LATENT_RGB.shape[0]:
            rgb = torch.einsum("chw,cr->rhw", latent, SD_LATENT_RGB)
        else:
            rgb = latent[:3]
        array = ((rgb.clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array, mode="RGB")


StepCallback = Callable[[StepProgress], None]


class Engine(Protocol):
    """What the worker needs from an engine; the diffusers one is the real one."""

    model: ModelInfo
    runtime: RuntimeInfo

    @property
    def models(self) -> dict[str, ModelInfo]: ...

    async def render_async(
        self, spec: RenderSpec, on_step: StepCallback | None = None
    ) -> list[Image.Image]: ...


def resolve_device(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """``auto`` picks CUDA with fp16 when a GPU is there, else CPU with fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.float16
    if dtype not in names:
        raise ValueError(f"IMAGINE_DTYPE must be auto, float32, float16 or bfloat16, not {dtype!r}")
    return device, names[dtype]


def library_versions() -> dict[str, str]:
    import diffusers
    import numpy
    import PIL
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


class DiffusersEngine:
    """Loads a diffusers text-to-image pipeline once and renders from it, one call at a time.

    A host may configure a diffusion upscaler too (its own weights); without one, upscales
    are a Lanczos resize followed by a low-strength img2img pass with the base weights.
    """

    def __init__(
        self,
        model: ModelInfo,
        *,
        device: str = "auto",
        dtype: str = "auto",
        torch_threads: int = 1,
        upscaler: ModelInfo | None = None,
    ) -> None:
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForText2Image,
            DiffusionPipeline,
        )
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # progress is ours to report, per job

        self.model = model
        self.upscaler_model = upscaler
        device, self._torch_dtype = resolve_device(device, dtype)
        torch.set_num_threads(torch_threads)
        self.runtime = RuntimeInfo(
            device=device,
            device_kind=torch.device(device).type,
            dtype=str(self._torch_dtype).removeprefix("torch."),
            torch_threads=torch.get_num_threads(),
            library_versions=library_versions(),
        )
        self.txt2img: Any = self._load(AutoPipelineForText2Image, model)
        # from_pipe shares every module: img2img and upscale add no second copy of the weights.
        self.img2img: Any = AutoPipelineForImage2Image.from_pipe(self.txt2img)
        self.upscaler: Any = self._load(DiffusionPipeline, upscaler) if upscaler else None
        for pipeline in (self.txt2img, self.img2img, self.upscaler):
            if pipeline is not None:
                pipeline.set_progress_bar_config(disable=True)
        self._lock = threading.Lock()
        # One long-lived thread per device: torch's per-thread caches stay warm between jobs.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    def _load(self, pipeline_class: Any, model: ModelInfo) -> Any:
        """``from_pretrained`` of a local folder as it is, or of the hub revision described."""
        logger.info(
            "loading %s (%s) on %s as %s",
            model.model_id,
            model.revision,
            self.runtime.device,
            self.runtime.dtype,
        )
        source = model.path if model.local else model.model_id
        revision = None if model.local else model.revision
        with warnings.catch_warnings():
            # Newer diffusers renamed torch_dtype to dtype; older ones know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = pipeline_class.from_pretrained(
                source,
                revision=revision,
                torch_dtype=self._torch_dtype,
                local_files_only=model.local,
            )
        return pipeline.to(self.runtime.device)

    @property
    def models(self) -> dict[str, ModelInfo]:
        """The models this engine can run, by model id."""
        loaded = [self.model, self.upscaler_model]
        return {model.model_id: model for model in loaded if model is not None}

    async def render_async(
        self, spec: RenderSpec, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """``render`` in the engine's pipeline thread, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.render, spec, on_step)

    @property
    def busy(self) -> bool:
        """Whether a render holds the pipeline (a hung one never lets go)."""
        return self._lock.locked()

    def close(self) -> None:
        """Stop the pipeline thread; a render that hung is not waited for (the process exits
        without it: see bot.service_runner.end_process)."""
        self._thread.shutdown(wait=not self.busy, cancel_futures=True)

    def render(self, spec: RenderSpec, on_step: StepCallback | None = None) -> list[Image.Image]:
        """Run one batched call; ``on_step`` may raise RenderCancelled to stop at the next step."""
        model_id = spec.model_id or self.model.model_id
        if model_id not in self.models:
            raise ValueError(
                f"the job needs model {model_id!r}; this worker has {', '.join(self.models)}"
            )
        threads = spec.torch_threads or self.runtime.torch_threads
        with self._lock, torch.inference_mode():
            torch.set_num_threads(threads)
            try:
                if self.upscaler_model is not None and model_id == self.upscaler_model.model_id:
                    return self._run_upscaler(spec, on_step)
                return self._run_base(spec, on_step)
            except RenderCancelled:
                logger.info("render stopped at the step callback's request")
                raise
            finally:
                torch.set_num_threads(self.runtime.torch_threads)

    def _common_arguments(self, spec: RenderSpec) -> dict[str, Any]:
        batch = len(spec.seeds)
        return {
            "prompt": [spec.prompt] * batch,
            "negative_prompt": [spec.negative_prompt] * batch,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance,
            # CPU generators: the starting noise is the same on every device.
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds],
            "output_type": "pil",
        }

    def _run_base(self, spec: RenderSpec, on_step: StepCallback | None) -> list[Image.Image]:
        def callback(
            pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                on_step(StepProgress(step + 1, pipeline.num_timesteps, tensors["latents"]))
            return tensors

        arguments = self._common_arguments(spec)
        arguments.update(
            callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]
        )
        if spec.init_image is None:
            pipeline = self.txt2img
            arguments.update(width=spec.width, height=spec.height)
        else:
            pipeline = self.img2img
            init = _resized(spec.init_image, spec.width, spec.height)
            arguments.update(image=[init] * len(spec.seeds), strength=spec.strength)
        _use_scheduler(pipeline, spec.scheduler)
        images: list[Image.Image] = pipeline(**arguments).images
        return images

    def _run_upscaler(self, spec: RenderSpec, on_step: StepCallback | None) -> list[Image.Image]:
        """The configured diffusion upscaler at its own factor, resized to the asked size."""
        if spec.init_image is None:
            raise ValueError("an upscale needs the image it starts from")

        def callback(step: int, _timestep: Any, latents: torch.Tensor) -> None:
            if on_step is not None:
                on_step(StepProgress(step + 1, spec.steps, latents))

        arguments = self._common_arguments(spec)
        arguments.update(
            image=[spec.init_image.convert("RGB")] * len(spec.seeds),
            callback=callback,
            callback_steps=1,
        )
        _use_scheduler(self.upscaler, spec.scheduler)
        images = self.upscaler(**arguments).images
        return [_resized(image, spec.width, spec.height) for image in images]


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _use_scheduler(pipeline: Any, name: str) -> None:
    """Run with the scheduler the job recorded (the model's own unless it says otherwise)."""
    if type(pipeline.scheduler).__name__ != name:
        import diffusers

        pipeline.scheduler = getattr(diffusers, name).from_config(pipeline.scheduler.config)
