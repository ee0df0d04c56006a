"""Train the embedded model on drawn scenes: a small VAE first, then text encoder and UNet,
then the VAE's decoder alone on the latents the UNet learned (sharper edges, same latents).

Every batch, noise draw and caption dropout comes from a generator seeded by (seed, phase,
step), so a run is repeatable and a resumed run continues exactly where it stopped.
Training counts steps, not minutes, for the same reason.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generation.embedded.model import load_tokenizer, make_components, save_pipeline
from generation.embedded.tokenizer import MAX_LENGTH, write_world_tokenizer
from generation.embedded.world import caption, draw, random_scene

logger = logging.getLogger(__name__)
VERSION = "trained-v1"


@dataclasses.dataclass(frozen=True, slots=True)
class TrainConfig:
    out: Path
    seed: int = 0
    images: int = 16000
    batch: int = 32
    # The shipped weights' recipe (see the README): 68 min on one thread of a shared 2-core CPU.
    vae_steps: int = 2000
    unet_steps: int = 6500
    decoder_steps: int = 1500
    vae_attention: bool = True
    vae_lr: float = 1e-3
    decoder_lr: float = 3e-4
    unet_lr: float = 1e-3
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    checkpoint_every: int = 250
    device: str = "cpu"


def make_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` drawn training scenes as uint8 [N, 3, 64, 64] and one caption each."""
    rng = random.Random(seed)
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    captions = []
    for index in range(count):
        scene = random_scene(rng)
        images[index] = np.asarray(draw(scene, rng))
        captions.append(caption(scene, rng))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def _generator(seed: int, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + phase * 100_000_007 + step)


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def _lr(step: int, total: int, peak: float) -> float:
    """3 % linear warm-up, then cosine down to 10 % of the peak."""
    warmup = max(1, int(total * 0.03))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    """Resumable: state goes to ``<out>.train/checkpoint.pt`` every ``checkpoint_every`` steps."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.work = config.out.parent / f".{config.out.name}.train"
        write_world_tokenizer(self.work / "tokenizer")
        self.parts = make_components(
            self.work / "tokenizer", config.seed, MAX_LENGTH, vae_attention=config.vae_attention
        )
        self.images, self.captions = make_dataset(config.images, config.seed)
        from diffusers import DDPMScheduler

        self.noise: Any = DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="v_prediction",
        )
        self.vae_optimizer = torch.optim.AdamW(self.parts["vae"].parameters(), lr=config.vae_lr)
        denoiser = [*self.parts["unet"].parameters(), *self.parts["text_encoder"].parameters()]
        self.unet_optimizer = torch.optim.AdamW(denoiser, lr=config.unet_lr, weight_decay=0.01)
        vae = self.parts["vae"]
        self.decoder_parameters = [
            *vae.decoder.parameters(),
            *vae.post_quant_conv.parameters(),
        ]
        self.decoder_optimizer = torch.optim.AdamW(self.decoder_parameters, lr=config.decoder_lr)
        self.ema = {
            name: copy.deepcopy(self.parts[name].state_dict()) for name in ("unet", "text_encoder")
        }
        self.phase = 0  # 0: VAE, 1: UNet and text encoder, 2: decoder, 3: done
        self.step = 0
        self.latents: torch.Tensor | None = None

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.work / "checkpoint.pt"

    def _save_checkpoint(self) -> None:
        state = {
            "phase": self.phase,
            "step": self.step,
            "models": {
                name: self.parts[name].state_dict() for name in ("vae", "unet", "text_encoder")
            },
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "unet_optimizer": self.unet_optimizer.state_dict(),
            "decoder_optimizer": self.decoder_optimizer.state_dict(),
            "ema": self.ema,
            "scaling_factor": self.parts["vae"].config.scaling_factor,
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def _load_checkpoint(self) -> None:
        if not self.checkpoint_path.exists():
            return
        state = torch.load(self.checkpoint_path, weights_only=False)
        for name, weights in state["models"].items():
            self.parts[name].load_state_dict(weights)
        self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.unet_optimizer.load_state_dict(state["unet_optimizer"])
        self.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
        self.ema = state["ema"]
        self.parts["vae"].register_to_config(scaling_factor=state["scaling_factor"])
        self.phase, self.step = state["phase"], state["step"]
        logger.info("resuming at phase %d, step %d", self.phase, self.step)

    # -- training ----------------------------------------------------------------------------

    def run(self, *, stop_after: int | None = None, progress: bool = True) -> bool:
        """Train (resuming if a checkpoint exists); True once the model is saved to ``out``."""
        torch.manual_seed(self.config.seed)
        self._load_checkpoint()
        budget = stop_after if stop_after is not None else math.inf
        done = 0
        phases = [
            (0, self.config.vae_steps, self._vae_step),
            (1, self.config.unet_steps, self._unet_step),
            (2, self.config.decoder_steps, self._decoder_step),
        ]
        for phase, total, train_step in phases:
            if self.phase > phase:
                continue
            if phase >= 1 and self.latents is None:
                self._prepare_latents()
            bar = tqdm(
                total=total,
                initial=self.step,
                desc=("VAE", "UNet", "decoder")[phase],
                disable=not progress,
            )
            with bar:
                while self.step < total:
                    if done >= budget:
                        self._save_checkpoint()
                        return False
                    loss = train_step(self.step, total)
                    self.step += 1
                    done += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if self.step % self.config.checkpoint_every == 0:
                        self._save_checkpoint()
            self.phase, self.step = phase + 1, 0
            self._save_checkpoint()
        self._export()
        return True

    def _batch(self, phase: int, step: int) -> tuple[torch.Tensor, torch.Generator]:
        generator = _generator(self.config.seed, phase, step)
        indices = torch.randint(len(self.captions), (self.config.batch,), generator=generator)
        return indices, generator

    def _vae_step(self, step: int, total: int) -> float:
        vae = self.parts["vae"]
        for group in self.vae_optimizer.param_groups:
            group["lr"] = _lr(step, total, self.config.vae_lr)
        indices, generator = self._batch(0, step)
        pixels = _unit(self.images[indices])
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = (
            F.mse_loss(reconstruction, pixels)
            + 0.5 * F.l1_loss(reconstruction, pixels)
            + 1e-4 * posterior.kl().mean()
        )
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        self.vae_optimizer.step()
        return float(loss.item())

    @torch.no_grad()
    def _prepare_latents(self) -> None:
        """Encode every image once (the posterior mean) and set the VAE's scaling factor."""
        vae = self.parts["vae"]
        means = torch.cat(
            [
                vae.encode(_unit(self.images[start : start + 256])).latent_dist.mean
                for start in range(0, len(self.captions), 256)
            ]
        )
        if self.step == 0:
            vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        self.latents = means * vae.config.scaling_factor

    def _unet_step(self, step: int, total: int) -> float:
        assert self.latents is not None
        unet, text_encoder, tokenizer = (
            self.parts[n] for n in ("unet", "text_encoder", "tokenizer")
        )
        for group in self.unet_optimizer.param_groups:
            group["lr"] = _lr(step, total, self.config.unet_lr)
        indices, generator = self._batch(1, step)
        drop = torch.rand(len(indices), generator=generator) < self.config.caption_dropout
        texts = [
            "" if dropped else self.captions[i]
            for i, dropped in zip(indices.tolist(), drop.tolist(), strict=True)
        ]
        tokens = tokenizer(
            texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        latents = self.latents[indices]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, self.noise.config.num_train_timesteps, (len(indices),), generator=generator
        )
        noisy = self.noise.add_noise(latents, noise, timesteps)
        target = self.noise.get_velocity(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(tokens)[0]).sample
        loss = F.mse_loss(prediction, target)
        self.unet_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [*unet.parameters(), *text_encoder.parameters()]
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        self.unet_optimizer.step()
        self._update_ema()
        return float(loss.item())

    def _decoder_step(self, step: int, total: int) -> float:
        """Fine-tune the decoder on the fixed latents (the encoder and so the latents stay)."""
        assert self.latents is not None
        vae = self.parts["vae"]
        for group in self.decoder_optimizer.param_groups:
            group["lr"] = _lr(step, total, self.config.decoder_lr)
        indices, _ = self._batch(2, step)
        pixels = _unit(self.images[indices])
        latents = self.latents[indices] / vae.config.scaling_factor
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, pixels) + 0.5 * F.l1_loss(reconstruction, pixels)
        self.decoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.decoder_parameters, 1.0)
        self.decoder_optimizer.step()
        return float(loss.item())

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema_decay
        for name in ("unet", "text_encoder"):
            live = self.parts[name].state_dict()
            for key, shadow in self.ema[name].items():
                if shadow.dtype.is_floating_point:
                    shadow.mul_(decay).add_(live[key], alpha=1 - decay)
                else:
                    shadow.copy_(live[key])

    def _export(self) -> None:
        """Save the EMA weights as a StableDiffusionPipeline folder at ``out``, stored in
        float16 (half the bytes; adherence measured the same) and loaded in any dtype."""
        for name in ("unet", "text_encoder"):
            self.parts[name].load_state_dict(self.ema[name])
        # A fast tokenizer saves the padding and truncation of its last call: save a fresh one,
        # so the folder's bytes do not depend on whether this process tokenized anything.
        self.parts["tokenizer"] = load_tokenizer(self.work / "tokenizer", MAX_LENGTH)
        defaults: dict[str, Any] = {
            "embedded_version": VERSION,
            "default_steps": 10,
            "default_guidance": 3.0,
            "fixed_size": True,  # 64×64 only; larger text-to-image falls apart
            "training": {
                field.name: str(getattr(self.config, field.name))
                for field in dataclasses.fields(self.config)
                if field.name != "out"
            },
        }
        self.config.out.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "text_encoder", "vae"):
            self.parts[name].to(torch.float16)
        save_pipeline(self.parts, self.config.out, defaults)
        logger.info("saved the trained embedded model to %s", self.config.out)
