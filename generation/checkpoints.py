"""Single-file checkpoints, as model sites share them: one ``.safetensors`` file of SD 1.x,
2.x or XL in the original (CompVis/LDM) key layout.

The file is read twice: here, its header only (no torch: the bot process describes models
too), to refuse what is not a usable checkpoint and to tell its family from its key layout;
then by the worker, through diffusers' ``from_single_file`` with the family's configs (a local
folder the host names, or the family's reference repository on the hub when online). Its
revision, and the infotext's Model hash, is the file's sha256, computed once and cached
(``model_info.file_sha256``).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

from generation.errors import ModelUnavailable

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES
FAMILIES = ("sd1", "sd2", "sdxl")
# Where a family's configs and tokenizers come from when the host names no folder (online).
REFERENCE_CONFIGS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
# What each family's configs say their pipeline is.
PIPELINE_CLASSES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
# ModelInfo.family (SD 1.x and 2.x share one pipeline class) → that class.
LOADERS = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
_MAX_HEADER = 100 * 1024 * 1024  # a safetensors header is JSON; real ones are under 1 MB


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointOptions:
    """What a host says about its single-file checkpoints (settings ``IMAGINE_MODEL_*``)."""

    family: str | None = None  # sd1, sd2 or sdxl; None: told from the key layout
    prediction: str | None = None  # epsilon or v_prediction; None: the configs' own
    config: str | None = None  # a local diffusers folder of configs, or a hub id
    allow_pickle: bool = False  # .ckpt files run code when loaded


def is_checkpoint_file(model: str) -> bool:
    return Path(model).suffix.lower() in CHECKPOINT_SUFFIXES


def read_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (tensor names, dtypes, shapes, offsets), checked against
    the file's size: a truncated or foreign file is refused here, naming what is wrong."""
    return read_safetensors(path)[0]


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors file's tensor entries (checked as ``read_header`` says) and its
    ``__metadata__`` (strings; empty when it has none)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelUnavailable(f"{path} is not a safetensors file: it has {size} bytes")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise ModelUnavailable(
                f"{path} is not a safetensors file, or is truncated: its header claims "
                f"{length} bytes of a {size}-byte file; download it again"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelUnavailable(
            f"{path} is not a safetensors file (its header is not JSON): download it again"
        ) from error
    if not isinstance(header, dict):
        raise ModelUnavailable(f"{path} is not a safetensors file: download it again")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict):
        metadata = {}
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ModelUnavailable(
                f"{path} is not a valid safetensors file (tensor {str(name)[:80]!r} has no "
                "proper shape and offsets): download it again"
            )
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise ModelUnavailable(
            f"{path} is truncated: its tensors need {8 + length + end} bytes, the file has "
            f"{size}; download it again"
        )
    return header, {str(key): str(value) for key, value in metadata.items()}


def family_of(keys: set[str], path: Path) -> str:
    """The family a checkpoint's key layout says it is (as diffusers' loaders tell them)."""
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        kind = "a LoRA" if any("lora" in key for key in keys) else "a VAE, LoRA or embedding"
        raise ModelUnavailable(
            f"{path} is not a Stable Diffusion checkpoint (no model.diffusion_model.* weights; "
            f"it looks like {kind}): point IMAGINE_MODEL at a full checkpoint"
        )
    if any(key.startswith("conditioner.embedders.1.model.") for key in keys):
        return "sdxl"
    if any(key.startswith("conditioner.embedders.0.model.") for key in keys):
        raise ModelUnavailable(
            f"{path} is an SDXL refiner, which refines images and does not make them from "
            "text: use an SDXL base model"
        )
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return "sd1"
    raise ModelUnavailable(
        f"{path}: its text encoder's layout is not SD 1.x, 2.x or XL; set IMAGINE_MODEL_FAMILY "
        f"({', '.join(FAMILIES)}) if you know which it is"
    )


def text_width(header: dict[str, Any]) -> int | None:
    """The width of the text the UNet attends to (768: SD 1.x, 1024: SD 2.x, 2048: SDXL),
    from its cross-attention keys' shapes; None if it has none."""
    for name, entry in header.items():
        if name.startswith("model.diffusion_model.") and name.endswith("attn2.to_k.weight"):
            shape = entry.get("shape") or []
            return int(shape[-1]) if shape else None
    return None


def config_folder(family: str, options: CheckpointOptions, path: Path) -> Path:
    """The folder of the family's configs and tokenizers: the host's, or the hub's."""
    source = options.config or REFERENCE_CONFIGS[family]
    if family == "sd2" and options.prediction == "epsilon" and not options.config:
        source = "stabilityai/stable-diffusion-2-1-base"  # the 512 epsilon one
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source,
                allow_patterns=["*.json", "*.txt"],
                ignore_patterns=["*.safetensors", "*.bin", "*.ckpt"],
            )
        )
    except Exception as error:  # the hub client raises many kinds; all mean the same here
        raise ModelUnavailable(
            f"{path} needs its family's configs and tokenizers ({family}: {source}), which "
            f"could not be had from the Hugging Face hub ({type(error).__name__}). Offline, "
            "set IMAGINE_MODEL_CONFIG_DIR to a local diffusers folder of that family (its "
            "model_index.json, */config.json, scheduler/ and tokenizer*/; no weights needed)"
        ) from error


def check_pickle(path: Path, options: CheckpointOptions) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES and not options.allow_pickle:
        raise ModelUnavailable(
            f"{path} is a pickle ({path.suffix}): loading one runs any code it holds. Use the "
            ".safetensors version of the model, or set IMAGINE_ALLOW_PICKLE_CHECKPOINTS=true "
            "if you trust where this file came from"
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return
    if path.suffix.lower() not in SAFE_SUFFIXES:
        raise ModelUnavailable(f"{path} is not a checkpoint file ({', '.join(SAFE_SUFFIXES)})")


def load_single_file(model: Any, torch_dtype: Any) -> Any:
    """The worker's load of a described checkpoint (``model``: a ModelInfo), with the
    scheduler its description recorded (its prediction type included)."""
    import diffusers

    folder = Path(model.config_path)
    pipeline_class = getattr(diffusers, LOADERS[model.family])
    try:
        scheduler_config = json.loads(
            (folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
        )
        scheduler_class = getattr(diffusers, scheduler_config["_class_name"])
        scheduler = scheduler_class.from_config(scheduler_config, prediction_type=model.prediction)
        return pipeline_class.from_single_file(
            model.path,
            config=str(folder),
            scheduler=scheduler,
            local_files_only=True,
            torch_dtype=torch_dtype,
        )
    except Exception as error:  # a file that passed the header check and still fails
        raise ModelUnavailable(
            f"{model.path} could not be loaded as {model.family_label} with the configs in "
            f"{folder} ({type(error).__name__}: {error}); if it is another family, set "
            "IMAGINE_MODEL_FAMILY"
        ) from error
