"""The pipeline engine: one diffusers pipeline loaded once, shared by every kind of job.

The pipeline runs in a worker thread, one call at a time; progress and cancel go through its
step callback.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import inspect
import json
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from PIL import Image

from generation.errors import (
    InvalidRequest,
    LoraUnavailable,
    ModelLoadFailed,
    ModelUnavailable,
    RenderCancelled,
    TooLargeForDevice,
)
from generation.loras import LoraCatalogue, check_fits
from generation.model_info import ModelInfo

logger = logging.getLogger(__name__)


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
    # The scheduler's options over the model's own config (a sampler by name).
    scheduler_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Decode through the VAE in tiles (the job recorded it; see requests.tiled_decode).
    vae_tiling: bool = False
    # LoRAs on the base model: (name, sha256, weight) each, as the job recorded them.
    loras: tuple[tuple[str, str, float], ...] = ()
    # An edit (generation.editing): the init image is its canvas, and the model paints
    # where this mask is white (inpainting on the same weights).
    mask_image: Image.Image | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """How this engine computes: recorded with every job so it can be reproduced."""

    device: str
    device_kind: str
    dtype: str
    torch_threads: int
    library_versions: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class LatentPreview:
    """Latents to a small RGB image at no cost: an affine map per latent channel, fitted when
    the model loads by encoding a colour chart with the model's own VAE (so every family, and
    every fine-tune's VAE, gets its own; no table of numbers per family). ``unpack`` turns a
    transformer's packed latents (Flux: batch, patches, channels) back into a grid."""

    factors: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)
    unpack: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None

    def image(self, latents: torch.Tensor, index: int, width: int, height: int) -> Image.Image:
        if self.unpack is not None:
            latents = self.unpack(latents, height, width)
        latent = latents[index].detach().float().cpu()
        rgb = torch.einsum("chw,cr->rhw", latent, self.factors) + self.bias[:, None, None]
        array = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array, mode="RGB")


def colour_chart(side: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, side, side) image in [-1, 1]: blocks of random colours over two gradients,
    so a fit sees every hue, dark and light."""
    generator = torch.Generator("cpu").manual_seed(seed)
    blocks = torch.rand(1, 3, 8, 8, generator=generator)
    image = torch.nn.functional.interpolate(blocks, size=(side, side), mode="nearest")
    ramp = torch.linspace(0, 1, side)
    image[:, 0, : side // 4] = ramp[None, :]
    image[:, 1, :, : side // 4] = ramp[:, None]
    return image * 2 - 1


def fit_preview(pipeline: Any, family: str, side: int) -> LatentPreview | None:
    """Fit the latents → RGB map on the pipeline's VAE (None if the VAE gave no usable
    latents, as an fp16 VAE that overflows may)."""
    vae = pipeline.vae
    chart = colour_chart(side)
    with torch.inference_mode():
        encoded = vae.encode(chart.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
    config = vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    scaled = (encoded - shift) * config.scaling_factor  # what the denoiser's latents are
    target = torch.nn.functional.interpolate((chart + 1) / 2, size=scaled.shape[-2:], mode="area")
    inputs = scaled[0].flatten(1).T  # (pixels, channels)
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    if not torch.isfinite(design).all():
        return None
    solution = torch.linalg.lstsq(design, target[0].flatten(1).T).solution
    unpack = None
    if family == "flux":
        factor = pipeline.vae_scale_factor

        def unpack(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
            return pipeline._unpack_latents(latents, height, width, factor)  # type: ignore[no-any-return]

    return LatentPreview(solution[:-1], solution[-1], unpack)


class StepProgress:
    """One finished denoising step; ``preview()`` projects the latents to a small RGB image."""

    def __init__(
        self,
        step: int,
        total: int,
        latents: torch.Tensor,
        preview: LatentPreview | None = None,
        size: tuple[int, int] = (0, 0),
    ) -> None:
        self.step = step
        self.total = total
        self._latents = latents
        self._preview = preview
        self._size = size

    @property
    def has_preview(self) -> bool:
        return self._preview is not None

    @property
    def count(self) -> int:
        """How many images the step made (the batch)."""
        return int(self._latents.shape[0])

    def preview(self, index: int = 0) -> Image.Image | None:
        if self._preview is None:
            return None
        return self._preview.image(self._latents, index, *self._size)


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


def default_budgets(device: str) -> tuple[int, int]:
    """Bytes of model weights kept on the device, and in CPU RAM once moved off it, when the
    host sets neither: on a GPU, 60 % of its memory (the rest is for activations) and a
    quarter of the machine's RAM; on the CPU, one model at a time and nothing kept."""
    if torch.device(device).type != "cuda":
        return 0, 0
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(total * 0.6), ram // 4


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


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """One model's pipelines, on the device or kept in CPU RAM, and the LoRAs loaded onto it
    (adapter name → its sha256, least recently used first; img2img shares the UNet, so it
    shares them too)."""

    model: ModelInfo
    txt2img: Any
    img2img: Any
    nbytes: int  # its parameters' and buffers' bytes, counted once however shared
    on_device: bool = True
    inpaint: Any = None  # made from txt2img (from_pipe: the same modules) at its first edit
    adapters: collections.OrderedDict[str, str] = dataclasses.field(
        default_factory=collections.OrderedDict
    )

    def to(self, device: str) -> None:
        self.txt2img.to(device)


@dataclasses.dataclass
class LoadCounts:
    """What the engine did to have each job's model on the device."""

    cold: int = 0  # loaded from its files
    from_cpu: int = 0  # moved back from CPU RAM
    offloaded: int = 0  # moved to CPU RAM to make room
    dropped: int = 0  # let go of entirely to make room
    cold_seconds: float = 0.0
    from_cpu_seconds: float = 0.0


def parameter_bytes(*pipelines: Any) -> int:
    """The bytes of every parameter and buffer of the pipelines' modules, each tensor's
    storage counted once (from_pipe shares modules; tied weights share storage)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for pipeline in pipelines:
        if pipeline is None:
            continue
        for component in pipeline.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for tensor in (*component.parameters(), *component.buffers()):
                storage = tensor.untyped_storage()
                key = (str(tensor.device), storage.data_ptr())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
    return total


class DiffusersEngine:
    """Runs diffusers pipelines, one call at a time: the host's model, the models its presets
    name (``offer``), and an upscaler if the host configured one.

    Models are loaded when a job first needs them and kept on the device while their
    parameter bytes fit ``memory_budget`` (0: one model at a time besides the upscaler; None:
    ``default_budgets``); the least recently used goes first, to CPU RAM while
    ``cpu_budget`` has room (a GPU's swap back is then a copy, not a load from disk), else
    freed. Without a diffusion
    upscaler, upscales are a Lanczos resize and a low-strength img2img pass with the job's
    model's weights.
    """

    def __init__(
        self,
        model: ModelInfo,
        *,
        device: str = "auto",
        dtype: str = "auto",
        torch_threads: int = 1,
        upscaler: ModelInfo | None = None,
        loras: LoraCatalogue | None = None,
        max_loaded_loras: int = 16,
        memory_budget: int | None = None,
        cpu_budget: int | None = None,
    ) -> None:
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
        auto_memory, auto_cpu = default_budgets(device)
        self.memory_budget = auto_memory if memory_budget is None else memory_budget
        self.cpu_budget = auto_cpu if cpu_budget is None else cpu_budget
        self.counts = LoadCounts()
        self._offered: dict[str, ModelInfo] = {}
        # Loaded models, least recently used first.
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        # Each model's own scheduler config: every sampler is built from it, never from the
        # previous job's (whose options would otherwise carry over).
        self._scheduler_configs: dict[str, dict[str, Any]] = {}
        self._schedulers: dict[tuple[str, str, str], Any] = {}
        self.previews: dict[str, LatentPreview | None] = {}
        self._on_device: tuple[str, ...] = ()
        self.loading_since: float | None = None  # time.monotonic() a load began
        self.last_load_seconds = 0.0  # loading during the last render
        self._ensure(model)
        self.upscaler: Any = self._load(upscaler, upscaler=True) if upscaler else None
        if self.upscaler is not None:
            assert upscaler is not None
            self.upscaler.set_progress_bar_config(disable=True)
            self._scheduler_configs[upscaler.model_id] = dict(self.upscaler.scheduler.config)
            self.previews[upscaler.model_id] = self._fit_preview(self.upscaler, upscaler)
        self.loras = loras
        self.max_loaded_loras = max_loaded_loras
        self._lock = threading.Lock()
        # One long-lived thread per device: torch's per-thread caches stay warm between jobs.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    # -- which models, and where they are ------------------------------------------------------

    @property
    def models(self) -> dict[str, ModelInfo]:
        """The models this engine can run, by model id: the host's first."""
        runnable = [self.model, *self._offered.values(), self.upscaler_model]
        return {model.model_id: model for model in runnable if model is not None}

    @property
    def loaded(self) -> list[str]:
        """The models on the device now, most recently used first (a worker prefers their
        jobs, within its fair-share bound). Read from the event loop's thread: a tuple the
        pipeline thread replaces whole, never the dict it changes."""
        return list(self._on_device)

    def _note_loaded(self) -> None:
        on_device = [mid for mid, loaded in reversed(self._loaded.items()) if loaded.on_device]
        if self.upscaler_model is not None:  # always there, outside the budget
            on_device.append(self.upscaler_model.model_id)
        self._on_device = tuple(on_device)

    def offer(self, models: list[ModelInfo]) -> None:
        """The presets' models this worker has the files of (the worker checked); the host's
        model and the upscaler are always offered. One no longer offered stays loaded until
        it is the least recently used."""
        fixed = {self.model.model_id}
        if self.upscaler_model is not None:
            fixed.add(self.upscaler_model.model_id)
        self._offered = {m.model_id: m for m in models if m.model_id not in fixed}

    @property
    def txt2img(self) -> Any:
        """The host model's text-to-image pipeline (loaded again if it was let go of)."""
        return self._ensure(self.model).txt2img

    @property
    def img2img(self) -> Any:
        return self._ensure(self.model).img2img

    def _ensure(self, model: ModelInfo) -> LoadedModel:
        """The model on the device: already there, moved back from CPU RAM, or loaded from its
        files; others are moved off (least recently used first) to keep to the budget. While
        it loads, ``loading_since`` says so (a load is not a hung render: see running.py), and
        the seconds it took go to ``last_load_seconds`` (not the job's measured time)."""
        loaded = self._loaded.get(model.model_id)
        if loaded is not None and loaded.model.revision != model.revision:
            # Its files changed and its preset was added again: the weights in memory are old.
            logger.info("%s changed (now %s): loading it again", model.name, model.revision[:12])
            self._forget(loaded)
            self.previews.pop(model.model_id, None)
            loaded = None
        if loaded is not None and loaded.on_device:
            self._loaded.move_to_end(model.model_id)
            self._note_loaded()
            return loaded
        self.loading_since = time.monotonic()
        started = time.perf_counter()
        try:
            return self._bring(model, loaded)
        finally:
            self.loading_since = None
            self.last_load_seconds += time.perf_counter() - started

    def _bring(self, model: ModelInfo, loaded: LoadedModel | None) -> LoadedModel:
        if loaded is not None:  # kept in CPU RAM
            self._loaded.move_to_end(model.model_id)
            started = time.perf_counter()
            self._make_room(loaded.nbytes, keep=model.model_id)
            loaded.to(self.runtime.device)
            loaded.on_device = True
            self.counts.from_cpu += 1
            self.counts.from_cpu_seconds += time.perf_counter() - started
            logger.info("%s moved back onto %s", model.name, self.runtime.device)
            self._note_loaded()
            return loaded
        from diffusers import AutoPipelineForImage2Image

        started = time.perf_counter()
        txt2img = self._load(model, device="cpu")
        # from_pipe shares every module: img2img and upscale add no second copy of the weights.
        img2img = None
        if model.img2img:
            try:
                img2img = AutoPipelineForImage2Image.from_pipe(txt2img)
            except ValueError:  # a pipeline diffusers has no image-to-image twin for
                logger.warning("%s cannot start from an image: no img2img pipeline", model.name)
        for pipeline in (txt2img, img2img):
            if pipeline is not None:
                pipeline.set_progress_bar_config(disable=True)
        loaded = LoadedModel(model, txt2img, img2img, parameter_bytes(txt2img, img2img))
        self._make_room(loaded.nbytes, keep=model.model_id)
        loaded.to(self.runtime.device)
        self._loaded[model.model_id] = loaded
        self._scheduler_configs[model.model_id] = dict(txt2img.scheduler.config)
        if model.model_id not in self.previews:
            self.previews[model.model_id] = self._fit_preview(txt2img, model)
        self.counts.cold += 1
        self.counts.cold_seconds += time.perf_counter() - started
        self._note_loaded()
        return loaded

    def _make_room(self, nbytes: int, keep: str) -> None:
        """Move models off the device, least recently used first, until ``nbytes`` more fit
        the budget (a model larger than the budget alone is still run, alone)."""
        for model_id, loaded in list(self._loaded.items()):
            on_device = sum(x.nbytes for x in self._loaded.values() if x.on_device)
            if on_device + nbytes <= self.memory_budget:
                return
            if model_id == keep or not loaded.on_device:
                continue
            self._let_go(loaded, keep)

    def _let_go(self, loaded: LoadedModel, keep: str) -> None:
        """To CPU RAM if it fits there (freeing the older kept ones, never ``keep``, the model
        being moved back), else freed."""
        if loaded.nbytes <= self.cpu_budget:
            for other in list(self._loaded.values()):
                kept = sum(
                    x.nbytes
                    for x in self._loaded.values()
                    if not x.on_device and x.model.model_id != keep
                )
                if kept + loaded.nbytes <= self.cpu_budget:
                    break
                if not other.on_device and other.model.model_id != keep:
                    self._forget(other)
            try:
                loaded.to("cpu")
            except RuntimeError as error:  # no CPU RAM for it after all: half moved, freed
                if not _out_of_memory(error):
                    raise
                self._forget(loaded)
                logger.warning("%s could not be moved to CPU RAM: unloaded", loaded.model.name)
            else:
                loaded.on_device = False
                self.counts.offloaded += 1
                logger.info("%s moved to CPU RAM to make room", loaded.model.name)
        else:
            self._forget(loaded)
            logger.info("%s unloaded to make room", loaded.model.name)
        _free_memory()

    def _forget(self, loaded: LoadedModel) -> None:
        del self._loaded[loaded.model.model_id]
        loaded.txt2img = loaded.img2img = loaded.inpaint = None
        self.counts.dropped += 1
        self._schedulers = {
            k: v for k, v in self._schedulers.items() if k[0] != loaded.model.model_id
        }

    def _load(self, model: ModelInfo, *, upscaler: bool = False, device: str | None = None) -> Any:
        """``from_pretrained`` of a local folder as it is, or of the hub revision described;
        ``from_single_file`` of a checkpoint file with its family's configs."""
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        logger.info(
            "loading %s (%s, %s) on %s as %s",
            model.model_id,
            model.family_label,
            model.revision,
            self.runtime.device,
            self.runtime.dtype,
        )
        with warnings.catch_warnings():
            # Newer diffusers renamed torch_dtype to dtype; older ones know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            if model.single_file:
                from generation.checkpoints import load_single_file

                pipeline = load_single_file(model, self._torch_dtype)
            else:
                # An upscaler is whatever pipeline its folder names (x4, latent x2).
                loader = DiffusionPipeline if upscaler or model.family == "upscaler" else None
                source = model.path if model.local else model.model_id
                try:
                    pipeline = (loader or AutoPipelineForText2Image).from_pretrained(
                        source,
                        revision=None if model.local else model.revision,
                        torch_dtype=self._torch_dtype,
                        local_files_only=model.local,
                    )
                except Exception as error:  # a corrupt or partial download, a foreign folder
                    raise ModelUnavailable(
                        f"{model.name} could not be loaded from {source} ({type(error).__name__}: "
                        f"{str(error)[:300]}): download it again, or check IMAGINE_MODEL"
                    ) from error
        return pipeline.to(device or self.runtime.device)

    def _fit_preview(self, pipeline: Any, model: ModelInfo) -> LatentPreview | None:
        side = max(model.size_multiple * 8, min(256, model.native_width, model.native_height))
        side -= side % model.size_multiple
        try:
            preview = fit_preview(pipeline, model.family, side)
        except Exception:  # a VAE the fit cannot use: the model runs, without previews
            logger.warning("%s: no step previews (its VAE could not be fitted)", model.name)
            return None
        if preview is None:
            logger.warning("%s: no step previews (its VAE gave no finite latents)", model.name)
        return preview

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
        models = self.models  # read once: offer() may replace the offered models meanwhile
        if model_id not in models:
            raise ValueError(
                f"the job needs model {model_id!r}; this worker has {', '.join(models)}"
            )
        if spec.kind == "upscale" and spec.strength == 0:
            # Past what diffusion may make at this size: a resize only (see requests).
            if spec.init_image is None:
                raise ValueError("an upscale needs the image it starts from")
            return [_resized(spec.init_image, spec.width, spec.height) for _ in spec.seeds]
        threads = spec.torch_threads or self.runtime.torch_threads
        with self._lock:
            self.last_load_seconds = 0.0
            self._cast_back()
            out_of_memory = False
            try:
                with torch.inference_mode():
                    torch.set_num_threads(threads)
                    if self.upscaler_model is not None and (
                        model_id == self.upscaler_model.model_id
                    ):
                        return self._run_upscaler(spec, on_step)
                    return self._run_model(models[model_id], spec, on_step)
            except RenderCancelled:
                logger.info("render stopped at the step callback's request")
                raise
            except RuntimeError as error:  # torch.OutOfMemoryError is one; MPS says it in words
                if not _out_of_memory(error):
                    raise
                out_of_memory = True  # freed below, once this frame lets go of its tensors
            finally:
                torch.set_num_threads(self.runtime.torch_threads)
                if out_of_memory:
                    _free_memory()  # before the VAE is cast back, which allocates
                self._settle()
            # Only an out-of-memory error gets here: every other way out returned or raised.
            raise self._too_large(spec)

    def _settle(self) -> None:
        """Undo what a render broken off mid-way may leave: SDXL's pipeline upcasts its VAE
        to float32 for the decode and casts it back only when the decode finishes. Never
        raises over the render's own error: a cast that fails is tried again before the next
        render (whose job fails, if it fails again, and the worker goes on)."""
        try:
            self._cast_back()
        except Exception:
            logger.exception("could not cast the VAE back to %s", self.runtime.dtype)

    def _run_model(
        self, model: ModelInfo, spec: RenderSpec, on_step: StepCallback | None
    ) -> list[Image.Image]:
        """The job on its model; out of memory with other models on the device, they are
        moved off and it is tried once more (they took the memory, not the job)."""
        try:
            return self._run_base(self._ready(model), spec, on_step)
        except RuntimeError as error:
            if not _out_of_memory(error) or not self._others_on_device(model):
                raise
        # Here once the failed call's frame let go of its tensors.
        self._clear_others(model)
        return self._run_base(self._ready(model), spec, on_step)

    def _others_on_device(self, model: ModelInfo) -> bool:
        return any(other.on_device and mid != model.model_id for mid, other in self._loaded.items())

    def _clear_others(self, model: ModelInfo) -> None:
        """Move every other model off the device (out of memory next to them)."""
        logger.warning("out of memory next to other models: moving them off for %s", model.name)
        _free_memory()
        for other in list(self._loaded.values()):
            if other.on_device and other.model.model_id != model.model_id:
                self._let_go(other, keep=model.model_id)
        self._note_loaded()
        _free_memory()

    def _ready(self, model: ModelInfo) -> LoadedModel:
        """``_ensure``, failing the job (not the worker) when the model does not load. Out of
        memory next to other models: they took it, so they go, and it is tried once more."""
        for attempt in range(2):
            try:
                return self._ensure(model)
            except ModelUnavailable as error:
                self._note_loaded()
                raise ModelLoadFailed(str(error)) from None
            except RuntimeError as error:
                if not _out_of_memory(error):
                    raise
                self._loaded.pop(model.model_id, None)  # half moved: loaded again next time
                self._note_loaded()
            _free_memory()  # once the failed load's frame has let go of its tensors
            if attempt or not self._others_on_device(model):
                break
            self._clear_others(model)
        raise ModelLoadFailed(f"{model.name} does not fit on this GPU ({self.runtime.device}) now")

    def _cast_back(self) -> None:
        on_device = [loaded.txt2img for loaded in self._loaded.values() if loaded.on_device]
        for pipeline in (*on_device, self.upscaler):
            vae = getattr(pipeline, "vae", None)
            if vae is not None and vae.dtype != self._torch_dtype:
                vae.to(dtype=self._torch_dtype)

    @staticmethod
    def _too_large(spec: RenderSpec) -> TooLargeForDevice:
        """The reason a job the device had no memory for fails with (already freed)."""
        logger.warning(
            "out of memory at %d×%d × %d; memory freed", spec.width, spec.height, len(spec.seeds)
        )
        return TooLargeForDevice(
            f"too large for this GPU ({spec.width}×{spec.height}, {len(spec.seeds)} "
            "image(s)): try a smaller size or fewer images"
        )

    def _scheduler(self, model: ModelInfo, spec: RenderSpec) -> Any:
        """The job's scheduler: its class and options over the model's own config."""
        import diffusers

        options = json.dumps(spec.scheduler_options, sort_keys=True)
        key = (model.model_id, spec.scheduler, options)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler_class = getattr(diffusers, spec.scheduler, None)
            if not (
                isinstance(scheduler_class, type)
                and issubclass(scheduler_class, diffusers.SchedulerMixin)
            ):
                raise ValueError(f"diffusers {diffusers.__version__} has no {spec.scheduler}")
            known = inspect.signature(scheduler_class.__init__).parameters
            unknown = sorted(set(spec.scheduler_options) - set(known))
            if unknown:
                raise ValueError(f"{spec.scheduler} takes no {', '.join(unknown)}")
            config = self._scheduler_configs[model.model_id]
            scheduler = scheduler_class.from_config(config, **spec.scheduler_options)
            self._schedulers[key] = scheduler
        timesteps: list[Any] = []
        if spec.scheduler_options.get("use_karras_sigmas") and scheduler.order == 1:
            # A multistep solver starts at the second of a repeated first timestep (Karras
            # sigmas on a cosine schedule) and would index past its end mid-render.
            scheduler.set_timesteps(spec.steps)
            timesteps = scheduler.timesteps.tolist()
        if timesteps and timesteps.count(timesteps[0]) > 1:
            raise ValueError(
                f"{spec.scheduler} with {spec.scheduler_options} repeats timesteps on "
                f"{model.name}'s noise schedule at {spec.steps} steps: pick another sampler"
            )
        if hasattr(scheduler, "noise_sampler_seed"):
            # An SDE sampler draws its Brownian noise from this seed, one per image, or
            # from torch's global generator: never the same twice.
            scheduler.noise_sampler_seed = list(spec.seeds)
        return scheduler

    def _use_loras(self, loaded: LoadedModel, spec: RenderSpec) -> None:
        """Make the job's LoRAs (and only them) active at their weights, loading any not yet
        loaded. Unfused: a weight of 0 (or no LoRA) runs the base weights untouched."""
        active = [(name, sha256, weight) for name, sha256, weight in spec.loras if weight != 0]
        pipeline = loaded.txt2img
        if not active:
            if loaded.adapters:
                pipeline.disable_lora()
            return
        names = []
        for name, sha256, _weight in active:
            adapter = f"lora_{sha256[:16]}"
            if adapter not in loaded.adapters:
                self._load_lora(loaded, name, sha256, adapter)
            loaded.adapters.move_to_end(adapter)
            names.append(adapter)
        self._evict_loras(loaded, keep=set(names))
        pipeline.enable_lora()
        pipeline.set_adapters(names, adapter_weights=[weight for _, _, weight in active])

    def _load_lora(self, loaded: LoadedModel, name: str, sha256: str, adapter: str) -> None:
        if self.loras is None:
            raise LoraUnavailable(f"the LoRA {name} is not on this worker (it has no LoRA folder)")
        try:
            lora = self.loras.find(name)
            check_fits(lora, loaded.model)
        except InvalidRequest as error:
            raise LoraUnavailable(f"the LoRA {name} cannot be used here: {error.message}") from None
        if lora.sha256 != sha256:
            raise LoraUnavailable(
                f"the LoRA {name} on this worker is not the file the job was asked with "
                f"(sha256 {lora.sha256[:12]}…, not {sha256[:12]}…): ask again"
            )
        model = loaded.model
        logger.info("loading LoRA %s (%s) onto %s", name, sha256[:12], model.name)
        try:
            loaded.txt2img.load_lora_weights(str(lora.path), adapter_name=adapter)
        except Exception as error:  # shapes of another model, a file damaged past its header
            self._drop_adapter(loaded, adapter)
            if isinstance(error, RuntimeError) and _out_of_memory(error):
                raise  # the render's own out-of-memory path frees it and says so
            raise LoraUnavailable(
                f"the LoRA {name} does not load onto {model.name} "
                f"({type(error).__name__}: {str(error)[:200]})"
            ) from None
        # diffusers only warns when no layer matches
        if adapter not in self._loaded_adapters(loaded):
            self._drop_adapter(loaded, adapter)
            raise LoraUnavailable(
                f"the LoRA {name} has no layer that {model.name} has: it was made for another model"
            )
        loaded.adapters[adapter] = sha256

    def _evict_loras(self, loaded: LoadedModel, keep: set[str]) -> None:
        """Unload the least recently used LoRAs past the cap (never one this job uses)."""
        for adapter in list(loaded.adapters):
            if len(loaded.adapters) <= self.max_loaded_loras:
                break
            if adapter not in keep:
                self._drop_adapter(loaded, adapter)

    def _drop_adapter(self, loaded: LoadedModel, adapter: str) -> None:
        loaded.adapters.pop(adapter, None)
        if adapter in self._loaded_adapters(loaded):
            loaded.txt2img.delete_adapters(adapter)

    @staticmethod
    def _loaded_adapters(loaded: LoadedModel) -> set[str]:
        """The adapters peft holds on any of the pipeline's components."""
        listed = loaded.txt2img.get_list_adapters().values()
        return {adapter for adapters in listed for adapter in adapters}

    def _common_arguments(self, spec: RenderSpec, model: ModelInfo) -> dict[str, Any]:
        batch = len(spec.seeds)
        arguments: dict[str, Any] = {
            "prompt": [spec.prompt] * batch,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance,
            # CPU generators: the starting noise is the same on every device.
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds],
            "output_type": "pil",
        }
        if model.negative_prompt:
            arguments["negative_prompt"] = [spec.negative_prompt] * batch
        return arguments

    @staticmethod
    def _tiled(pipeline: Any, spec: RenderSpec) -> None:
        """Large decodes go through the VAE in tiles, as the job recorded (so a job made again
        decodes the way it was made)."""
        if not hasattr(pipeline.vae, "enable_tiling"):
            return
        if spec.vae_tiling:
            pipeline.vae.enable_tiling()
        else:
            pipeline.vae.disable_tiling()

    def _run_base(
        self, loaded: LoadedModel, spec: RenderSpec, on_step: StepCallback | None
    ) -> list[Image.Image]:
        model, preview = loaded.model, self.previews[loaded.model.model_id]

        def callback(
            pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                progress = StepProgress(
                    step + 1,
                    pipeline.num_timesteps,
                    tensors["latents"],
                    preview,
                    (spec.width, spec.height),
                )
                on_step(progress)
            return tensors

        arguments = self._common_arguments(spec, model)
        arguments.update(
            callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]
        )
        if spec.mask_image is not None:
            if spec.init_image is None:
                raise ValueError("an edit needs the canvas it paints on")
            pipeline = self._inpainting(loaded)
            arguments.update(
                image=[spec.init_image] * len(spec.seeds),
                mask_image=[spec.mask_image] * len(spec.seeds),
                strength=1.0 if spec.strength is None else spec.strength,
                width=spec.width,
                height=spec.height,
            )
        elif spec.init_image is None:
            pipeline = loaded.txt2img
            arguments.update(width=spec.width, height=spec.height)
        else:
            if loaded.img2img is None:
                raise ValueError(f"{model.name} ({model.family_label}) cannot start from an image")
            pipeline = loaded.img2img
            init = _resized(spec.init_image, spec.width, spec.height)
            arguments.update(image=[init] * len(spec.seeds), strength=spec.strength)
            if model.family == "flux":  # Flux's img2img takes the size as its own arguments
                arguments.update(width=spec.width, height=spec.height)
        pipeline.scheduler = self._scheduler(model, spec)
        self._tiled(pipeline, spec)
        self._use_loras(loaded, spec)
        images: list[Image.Image] = pipeline(**arguments).images
        return images

    @staticmethod
    def _inpainting(loaded: LoadedModel) -> Any:
        """The model's inpainting pipeline, made at its first edit from the loaded modules
        (no second copy of the weights)."""
        if loaded.inpaint is None:
            from diffusers import AutoPipelineForInpainting

            try:
                loaded.inpaint = AutoPipelineForInpainting.from_pipe(loaded.txt2img)
            except ValueError:  # a pipeline diffusers has no inpainting twin for
                raise ValueError(f"{loaded.model.name} cannot paint into an image") from None
            loaded.inpaint.set_progress_bar_config(disable=True)
        return loaded.inpaint

    def _run_upscaler(self, spec: RenderSpec, on_step: StepCallback | None) -> list[Image.Image]:
        """The configured diffusion upscaler at its own factor, resized to the asked size."""
        if spec.init_image is None:
            raise ValueError("an upscale needs the image it starts from")
        assert self.upscaler_model is not None
        model = self.upscaler_model
        preview = self.previews[model.model_id]
        low = spec.init_image.convert("RGB")

        def callback(step: int, _timestep: Any, latents: torch.Tensor) -> None:
            if on_step is not None:
                on_step(StepProgress(step + 1, spec.steps, latents, preview, low.size))

        arguments = self._common_arguments(spec, model)
        arguments.update(image=[low] * len(spec.seeds), callback=callback, callback_steps=1)
        self.upscaler.scheduler = self._scheduler(model, spec)
        self._tiled(self.upscaler, spec)
        images = self.upscaler(**arguments).images
        return [_resized(image, spec.width, spec.height) for image in images]


# torch.OutOfMemoryError is CUDA's (torch.cuda's before 2.5); MPS and the CPU allocator say it
# in words.
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_OUT_OF_MEMORY_WORDS = ("out of memory", "not enough memory", "can't allocate memory")


def _out_of_memory(error: RuntimeError) -> bool:
    if isinstance(error, _OUT_OF_MEMORY):
        return True
    text = str(error).lower()
    return any(words in text for words in _OUT_OF_MEMORY_WORDS)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
