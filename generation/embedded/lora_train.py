"""Train a LoRA on the embedded model: scenes drawn with one shape changed to another, under
their original captions, so the LoRA teaches "every shape is a triangle" and nothing else.

Only low-rank adapters on the UNet's attention projections learn (peft); the text encoder,
the VAE and the base UNet stay frozen, so the file is kilobytes. Like the model's own
trainer, every batch and noise draw comes from a generator seeded by (seed, step), and
training counts steps: the same config makes the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generation.embedded.world import SHAPES, caption, draw, random_scene

logger = logging.getLogger(__name__)

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "trained"


@dataclasses.dataclass(frozen=True, slots=True)
class LoraTrainConfig:
    model: Path  # the embedded model's folder (its weights stay as they are)
    out: Path  # the LoRA file to write (.safetensors)
    shape: str = "triangle"  # every scene's shape is drawn as this one
    seed: int = 0
    images: int = 4000
    batch: int = 32
    steps: int = 400
    rank: int = 4
    lr: float = 1e-3
    caption_dropout: float = 0.1


def make_dataset(count: int, seed: int, shape: str) -> tuple[torch.Tensor, list[str]]:
    """``count`` scenes drawn with ``shape`` in place of their own, each under the caption of
    the scene as asked (uint8 [N, 3, 64, 64] and one caption each)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}")
    rng = random.Random(seed)
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    captions = []
    for index in range(count):
        scene = random_scene(rng)
        images[index] = np.asarray(draw(dataclasses.replace(scene, shape=shape), rng))
        captions.append(caption(scene, rng))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def train_lora(config: LoraTrainConfig, *, progress: bool = True) -> list[float]:
    """Train and write ``config.out``; returns the loss of every step."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(config.seed)
    pipeline: Any = StableDiffusionPipeline.from_pretrained(
        config.model, torch_dtype=torch.float32, local_files_only=True
    )
    unet, vae = pipeline.unet, pipeline.vae
    for part in (unet, vae, pipeline.text_encoder):
        part.requires_grad_(False)
    images, captions = make_dataset(config.images, config.seed, config.shape)
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(images[start : start + 256].float() / 127.5 - 1).latent_dist.mean
                for start in range(0, len(images), 256)
            ]
        )
        latents = latents * vae.config.scaling_factor
        # The text encoder is frozen: each caption's embedding is computed once.
        texts = sorted(set(captions) | {""})
        tokens = pipeline.tokenizer(
            texts,
            padding="max_length",
            max_length=pipeline.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        embedded = pipeline.text_encoder(tokens)[0]
    row = {text: index for index, text in enumerate(texts)}
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.rank,  # scale 1: weight w in a job is w times what was learned
            init_lora_weights="gaussian",
            target_modules=list(TARGET_MODULES),
        ),
        adapter_name=ADAPTER,
    )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    noise_schedule: Any = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
    )
    losses = []
    unet.train()
    for step in tqdm(range(config.steps), desc="LoRA", disable=not progress):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        indices = torch.randint(len(captions), (config.batch,), generator=generator)
        drop = torch.rand(config.batch, generator=generator) < config.caption_dropout
        rows = [
            row["" if dropped else captions[i]]
            for i, dropped in zip(indices.tolist(), drop.tolist(), strict=True)
        ]
        clean = latents[indices]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (config.batch,), generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        target = noise_schedule.get_velocity(clean, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, embedded[rows]).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(float(loss.item()))
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    save_lora(state, config, _model_name(config.model))
    logger.info("saved the LoRA to %s", config.out)
    return losses


def _model_name(folder: Path) -> str:
    defaults = folder / "imagine-bot.json"
    if defaults.exists():
        version = json.loads(defaults.read_text(encoding="utf-8")).get("embedded_version")
        if version:
            return f"embedded ({version})"
    return folder.name


def save_lora(state: dict[str, torch.Tensor], config: LoraTrainConfig, base: str) -> None:
    """Write the adapters in diffusers' LoRA layout (``unet.<module>.lora_A.weight``), in
    float16, with what they were trained on in the header."""
    from safetensors.torch import save_file

    tensors = {f"unet.{key}": value.to(torch.float16).contiguous() for key, value in state.items()}
    metadata = {
        "format": "pt",
        "imagine.base_model": base,
        "imagine.training": json.dumps(
            {
                field.name: str(getattr(config, field.name))
                for field in dataclasses.fields(config)
                if field.name not in ("model", "out")
            },
            sort_keys=True,
        ),
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.rank),
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(config.out), metadata=metadata)
