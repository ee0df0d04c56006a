"""What a model is, read from its config files without loading its weights."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generation.checkpoints import (
    PIPELINE_CLASSES,
    SAFE_SUFFIXES,
    CheckpointOptions,
    check_pickle,
    config_folder,
    family_of,
    is_checkpoint_file,
    read_header,
    text_width,
)
from generation.embedded import EMBEDDED_MODEL_NAME, RANDOM_MODEL_NAME, embedded_model_folder
from generation.errors import ModelUnavailable

logger = logging.getLogger(__name__)

# Files a model folder may carry to say how it is best run (the embedded model writes one).
DEFAULTS_FILE = "imagine-bot.json"
FALLBACK_STEPS = 25
FALLBACK_GUIDANCE = 7.0
HASH_CACHE = ".content-hashes.json"
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".ckpt", ".pt")


# A pipeline class (model_index.json's _class_name) → family and what it can do: img2img,
# inpainting, negative prompt. Each is what diffusers' AutoPipeline classes load for it.
FAMILIES: dict[str, tuple[str, bool, bool, bool]] = {
    "StableDiffusionPipeline": ("sd", True, True, True),
    "StableDiffusionXLPipeline": ("sdxl", True, True, True),
    "StableDiffusion3Pipeline": ("sd3", True, True, True),
    "FluxPipeline": ("flux", True, True, False),
    "StableDiffusionUpscalePipeline": ("upscaler", False, False, True),
    "StableDiffusionLatentUpscalePipeline": ("upscaler", False, False, True),
    # Others diffusers' AutoPipelineForImage2Image has a twin for.
    "LatentConsistencyModelPipeline": ("other", True, False, True),
}
FAMILY_LABELS = {"sdxl": "SDXL", "sd3": "SD3", "flux": "Flux", "upscaler": "upscaler"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    """A loadable model: where it is, which exact version, and its native defaults."""

    model_id: str
    path: str
    revision: str
    native_width: int
    native_height: int
    default_steps: int
    default_guidance: float
    scheduler: str
    local: bool
    # The model draws its native size only (its imagine-bot.json says "fixed_size": true):
    # other sizes come from upscaling, never from text-to-image at that size.
    fixed_size: bool = False
    # The only sizes it makes (an image API's list); empty: any multiple of 8 within limits.
    sizes: tuple[tuple[int, int], ...] = ()
    # What runs it: "diffusers" here, or a remote image API ("openai").
    engine: str = "diffusers"
    # Its family (sd, sdxl, sd3, flux, upscaler; other: a pipeline diffusers loads that this
    # table does not know) and what the family can do, read from its configs.
    family: str = "sd"
    prediction: str = "epsilon"  # epsilon, v_prediction, sample, or flow (flow matching)
    img2img: bool = True
    inpainting: bool = True
    negative_prompt: bool = True
    guidance: bool = True  # False: distilled to run without guidance (FLUX.1-schnell)
    size_multiple: int = 8  # width and height are multiples of this
    text_width: int = 0  # the UNet's cross-attention width: 768 is SD 1.x, 1024 SD 2.x
    # ``path`` is one checkpoint file (.safetensors) in the original layout, loaded with
    # ``from_single_file`` and the configs in ``config_path``.
    single_file: bool = False
    config_path: str = ""
    # Whether Karras sigmas suit its noise schedule: a cosine one (squaredcos_cap_v2) maps
    # several Karras sigmas to the same timestep, which the schedulers cannot step.
    karras: bool = True

    @property
    def flow(self) -> bool:
        return self.prediction == "flow"

    def to_dict(self) -> dict[str, Any]:
        """Its fields, as JSON stores them (a preset's row keeps the model it runs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelInfo:
        """Back from ``to_dict``; fields a newer version wrote and this one lacks are left."""
        known = {field.name for field in dataclasses.fields(cls)}
        fields = {key: value for key, value in values.items() if key in known}
        fields["sizes"] = tuple(tuple(size) for size in fields.get("sizes", ()))
        return cls(**fields)

    @property
    def family_label(self) -> str:
        """How hosts call the family: SD 1.x, SD 2.x, SDXL, SD3, Flux."""
        if self.family == "sd":
            if self.text_width == 1024 or self.prediction == "v_prediction":
                return "SD 2.x"
            return "SD 1.x"
        return FAMILY_LABELS.get(self.family, self.family)

    @property
    def name(self) -> str:
        """A short name for the infotext: the folder name of a local model, else the hub id."""
        if self.engine != "diffusers":
            return self.model_id.partition(":")[2] or self.model_id
        local = self.model_id.startswith((".", "/", "~"))
        if self.single_file:  # as A1111 shows it: the file's name without its suffix
            return Path(self.model_id).stem
        return Path(self.model_id).name if local else self.model_id


def _cached_hash(cache_file: Path | None, key: str, stamp: Any, compute: Callable[[], str]) -> str:
    """``compute()``, kept in ``cache_file`` under ``key`` while ``stamp`` (the files' sizes
    and modification times) stays the same: hashing gigabytes of weights takes seconds. A
    cache that cannot be read is rebuilt; one that cannot be written is skipped."""
    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(cache_file.read_text(encoding="utf-8"))
            cache = loaded if isinstance(loaded, dict) else {}
    cached = cache.get(key)
    if isinstance(cached, dict) and cached.get("stamp") == stamp:
        return str(cached["hash"])
    result = compute()
    if cache_file is not None:
        cache[key] = {"stamp": stamp, "hash": result}
        with contextlib.suppress(OSError):
            # Written whole, then renamed: the bot, workers and threads share this file, and a
            # reader never sees half of it.
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = cache_file.with_name(
                f".{cache_file.name}.{os.getpid()}.{threading.get_ident()}"
            )
            partial.write_text(json.dumps(cache), encoding="utf-8")
            os.replace(partial, cache_file)
    return result


def _sha256(files: list[Path], folder: Path | None = None) -> str:
    """sha256 over the files' bytes (and, with ``folder``, their names relative to it)."""
    digest = hashlib.sha256()
    for file in files:
        if folder is not None:
            digest.update(file.relative_to(folder).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def content_hash(folder: Path, cache_file: Path | None = None) -> str:
    """sha256 over a model folder's weight and config files (names and bytes), 12 hex digits,
    cached in ``cache_file``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    stamp = {
        file.relative_to(folder).as_posix(): [file.stat().st_size, file.stat().st_mtime_ns]
        for file in files
    }
    key = str(folder.resolve())
    return _cached_hash(cache_file, key, stamp, lambda: _sha256(files, folder)[:12])


def file_sha256(path: Path, cache_file: Path | None = None) -> str:
    """A checkpoint file's sha256 (64 hex digits), cached in ``cache_file``."""
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    return _cached_hash(cache_file, f"file:{path.resolve()}", stamp, lambda: _sha256([path]))


def _read_json(path: Path) -> dict[str, Any]:
    """A config file as a dict; a missing, unreadable or malformed one is refused naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelUnavailable(f"{path} cannot be read as a config ({error})") from error
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path} is not a config: it holds no JSON object")
    return data


def _resolve(model: str, models_dir: Path, revision: str | None) -> tuple[Path, str, bool]:
    """The folder holding ``model``'s configs, its revision, and whether it is a local folder.

    The revision is the commit of a hub snapshot, or a content hash of a local folder.
    """
    cache = models_dir / HASH_CACHE
    if model in (EMBEDDED_MODEL_NAME, RANDOM_MODEL_NAME):
        folder = embedded_model_folder(model, models_dir)
        return folder, content_hash(folder, cache), True
    if Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        return folder, content_hash(folder, cache), True
    from huggingface_hub import snapshot_download

    try:
        # Configs only: the worker's from_pretrained fetches the weights of this same revision.
        snapshot = snapshot_download(model, revision=revision, allow_patterns=["*.json", "*.txt"])
    except Exception as error:  # the hub client raises many kinds; all mean the same here
        raise ModelUnavailable(
            f"model {model!r} is not a local folder and could not be had from the Hugging Face "
            f"hub ({type(error).__name__}: {error}); check IMAGINE_MODEL, the network, or "
            "HF_HUB_OFFLINE with a model already in the cache"
        ) from error
    return Path(snapshot), Path(snapshot).name, False


def describe_model(
    model: str,
    models_dir: Path,
    revision: str | None = None,
    checkpoint: CheckpointOptions | None = None,
) -> ModelInfo:
    """Read a diffusers model's native size, scheduler and defaults from its configs; a
    single checkpoint file's from its family's configs (``checkpoint`` says how to find them)."""
    if is_checkpoint_file(model) and not Path(model).expanduser().is_dir():
        return describe_checkpoint(model, models_dir, checkpoint or CheckpointOptions())
    folder, resolved_revision, local = _resolve(model, models_dir, revision)
    # UNet pipelines (SD 1.x/2.x, SDXL) keep their size in unet/, transformer ones (SD3) there.
    denoiser = folder / "unet" / "config.json"
    if not denoiser.exists():
        denoiser = folder / "transformer" / "config.json"
    needed = [folder / "model_index.json", denoiser, folder / "vae" / "config.json"]
    missing = [path.relative_to(folder).as_posix() for path in needed if not path.exists()]
    if missing:
        raise ModelUnavailable(
            f"model {model!r} is not a diffusers pipeline: {folder} has no {', '.join(missing)}"
        )
    return _from_configs(
        model,
        folder,
        resolved_revision,
        local,
        pipeline=_read_json(folder / "model_index.json"),
        denoiser=_read_json(denoiser),
        vae=_read_json(folder / "vae" / "config.json"),
    )


def _from_configs(
    model: str,
    folder: Path,
    revision: str,
    local: bool,
    *,
    pipeline: dict[str, Any],
    denoiser: dict[str, Any],
    vae: dict[str, Any],
) -> ModelInfo:
    """A model's description from its pipeline's, denoiser's, VAE's and scheduler's configs."""
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_config) if scheduler_config.exists() else {}
    try:
        return _described(model, folder, revision, local, pipeline, denoiser, vae, scheduler)
    except (TypeError, ValueError, AttributeError) as error:
        raise ModelUnavailable(
            f"the configs in {folder} do not describe a model ({type(error).__name__}: "
            f"{error}): download them again"
        ) from error


def _described(  # noqa: PLR0917 - the configs, each as read
    model: str,
    folder: Path,
    revision: str,
    local: bool,
    pipeline: dict[str, Any],
    denoiser: dict[str, Any],
    vae: dict[str, Any],
    scheduler: dict[str, Any],
) -> ModelInfo:
    scheduler_class = str(scheduler.get("_class_name", "unknown"))
    # Another pipeline: text-to-image only (an upscale of its images is a resize).
    family, img2img, inpainting, negative = FAMILIES.get(
        str(pipeline.get("_class_name")), ("other", False, False, True)
    )
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    # A transformer works on patches of latents (SD3: patch_size; Flux packs 2×2).
    patch = 2 if family == "flux" else int(denoiser.get("patch_size", 1) or 1)
    # A UNet's or SD3's sample_size is its native latent size; Flux's pipeline draws 128.
    sample = denoiser.get("sample_size", 128)
    height, width = (sample, sample) if isinstance(sample, int) else sample
    defaults = _read_json(folder / DEFAULTS_FILE) if (folder / DEFAULTS_FILE).exists() else {}
    if scheduler_class in FLOW_SCHEDULERS:
        prediction = "flow"
    else:
        prediction = str(scheduler.get("prediction_type", "epsilon"))
    guided = not (family == "flux" and not denoiser.get("guidance_embeds", True))
    return ModelInfo(
        model_id=model,
        path=str(folder),
        revision=revision,
        native_width=int(width) * vae_factor,
        native_height=int(height) * vae_factor,
        default_steps=int(defaults.get("default_steps", FALLBACK_STEPS)),
        default_guidance=float(
            defaults.get("default_guidance", FALLBACK_GUIDANCE if guided else 0.0)
        ),
        scheduler=scheduler_class,
        local=local,
        fixed_size=bool(defaults.get("fixed_size", False)),
        family=family,
        prediction=prediction,
        img2img=img2img,
        inpainting=inpainting,
        negative_prompt=negative,
        guidance=guided,
        size_multiple=vae_factor * patch,
        karras=scheduler.get("beta_schedule") != "squaredcos_cap_v2",
        text_width=int(denoiser.get("cross_attention_dim") or 0)
        if isinstance(denoiser.get("cross_attention_dim"), int)
        else 0,
    )


def describe_checkpoint(model: str, models_dir: Path, options: CheckpointOptions) -> ModelInfo:
    """A single ``.safetensors`` checkpoint: refused unless its header is whole and its keys
    are a Stable Diffusion model's; its family from them (or the host's setting), its configs
    from the family's folder; its revision the file's sha256."""
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise ModelUnavailable(f"model file {path} does not exist: check IMAGINE_MODEL")
    check_pickle(path, options)
    detected, width = None, None
    if path.suffix.lower() in SAFE_SUFFIXES:
        header = read_header(path)
        detected, width = family_of(set(header), path), text_width(header)
    family = options.family or detected
    if family is None:
        raise ModelUnavailable(
            f"{path}: a pickle's layout is not read before it is loaded; set "
            "IMAGINE_MODEL_FAMILY (sd1, sd2 or sdxl)"
        )
    if detected is not None and family != detected:
        logger.warning("%s looks like %s; loading it as %s, as set", path, detected, family)
    folder = config_folder(family, options, path)
    needed = ["model_index.json", "unet/config.json", "vae/config.json"]
    needed.append("scheduler/scheduler_config.json")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailable(
            f"the configs for {path} in {folder} lack {', '.join(missing)}: point "
            f"IMAGINE_MODEL_CONFIG_DIR at a whole diffusers folder of the {family} family"
        )
    pipeline = _read_json(folder / "model_index.json")
    denoiser = _read_json(folder / "unet" / "config.json")
    configured = denoiser.get("cross_attention_dim")
    if pipeline.get("_class_name") != PIPELINE_CLASSES[family] or (
        width is not None and isinstance(configured, int) and configured != width
    ):
        raise ModelUnavailable(
            f"{path} is {family} (text width {width}), but the configs in {folder} are a "
            f"{pipeline.get('_class_name')} (text width {configured}): set "
            f"IMAGINE_MODEL_CONFIG_DIR to a {family} folder"
        )
    info = _from_configs(
        model,
        folder,
        file_sha256(path, models_dir / HASH_CACHE),
        True,
        pipeline=pipeline,
        denoiser=denoiser,
        vae=_read_json(folder / "vae" / "config.json"),
    )
    return dataclasses.replace(
        info,
        path=str(path),
        single_file=True,
        config_path=str(folder),
        prediction=options.prediction or info.prediction,
    )
