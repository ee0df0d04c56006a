"""The embedded models: small Stable Diffusion pipelines that need no download.

``embedded`` is the trained model shipped inside this package (``weights/``, made by
``imagine-bot embedded train``); ``embedded-random`` is the same architecture with seeded
random weights, built on first use, for fast tests. Both are standard diffusers folders
loaded through ``from_pretrained`` like any hub model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from generation.embedded.tokenizer import write_world_tokenizer

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "embedded"
RANDOM_MODEL_NAME = "embedded-random"
EMBEDDED_VERSION = "random-v1"
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"
TOKENIZER_MAX_LENGTH = 77


def write_byte_level_tokenizer(folder: Path) -> int:
    """Write a CLIP tokenizer with a byte-level vocab and no merges; return its vocab size."""
    return write_world_tokenizer(folder, words=(), max_length=TOKENIZER_MAX_LENGTH)


def _drop_loading_options(config_file: Path) -> None:
    """transformers saves how the tokenizer was loaded (HF_HUB_OFFLINE shows up as
    ``local_files_only``); drop it, so the same seed builds the same bytes everywhere."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for key in ("local_files_only", "is_local", "name_or_path", "_name_or_path"):
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_tokenizer(tokenizer_dir: Path, max_length: int) -> Any:
    """The CLIP tokenizer written to ``tokenizer_dir``, as a pipeline loads it."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=max_length)


def make_components(
    tokenizer_dir: Path, seed: int, max_length: int, *, vae_attention: bool = False
) -> dict[str, Any]:
    """The embedded pipeline's parts, built from configs with seeded weights.

    ``vae_attention`` adds self-attention to the VAE's middle block: a path for image-wide
    information, without which a decoder learns to pass it through one loud latent pixel
    (and draws a blob there).
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer(tokenizer_dir, max_length)
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        mid_block_add_attention=vae_attention,
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        steps_offset=1,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def save_pipeline(components: dict[str, Any], folder: Path, defaults: dict[str, Any]) -> None:
    """Save the parts as a StableDiffusionPipeline folder, with imagine-bot's defaults file."""
    from diffusers import StableDiffusionPipeline

    pipeline: Any = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    _drop_loading_options(folder / "tokenizer" / "tokenizer_config.json")
    (folder / "imagine-bot.json").write_text(json.dumps(defaults), encoding="utf-8")


def build_embedded_pipeline(folder: Path, seed: int = 0) -> Path:
    """Build the embedded pipeline from configs with seeded weights and save it to ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".embedded-", dir=folder.parent))
    try:
        write_byte_level_tokenizer(staging / "tokenizer")
        components = make_components(staging / "tokenizer", seed, TOKENIZER_MAX_LENGTH)
        defaults = {
            "embedded_version": EMBEDDED_VERSION,
            "default_steps": 10,
            "default_guidance": 3.0,
        }
        save_pipeline(components, staging, defaults)
        try:
            staging.rename(folder)
        except OSError:
            # Another process built it first: keep theirs, it is the same seeded model.
            if not (folder / "model_index.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("built the embedded model in %s", folder)
    return folder


def embedded_model_folder(name: str, models_dir: Path) -> Path:
    """The folder of embedded model ``name``: the shipped weights, or the random model
    under ``models_dir`` (built on first use)."""
    if name == EMBEDDED_MODEL_NAME:
        return SHIPPED_WEIGHTS
    if name != RANDOM_MODEL_NAME:
        raise ValueError(f"no embedded model is called {name!r}")
    folder = Path(models_dir) / f"{EMBEDDED_MODEL_NAME}-{EMBEDDED_VERSION}"
    if not (folder / "model_index.json").exists():
        build_embedded_pipeline(folder)
    return folder
