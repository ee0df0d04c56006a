"""Tiny pipelines of four model families, built from configs with seeded weights.

As diffusers' own fast tests build them: each component from a small config after
``torch.manual_seed(seed)``, tokenizers written locally (nothing is downloaded), the whole
pipeline saved as a diffusers folder with ``save_pretrained``, plus an ``imagine-bot.json``
of defaults. Two builds with the same seed are byte-identical.

Families and their native sizes (what the pipeline draws when no size is given):

- ``sd1``: StableDiffusionPipeline, epsilon prediction, PNDMScheduler with SD 1.5's config.
  UNet ``sample_size`` 32 × VAE factor 2 → 64×64; sizes are multiples of 8. PNDM, as
  in SD 1.5, runs one step more than asked (n steps call the step callback n + 1 times).
- ``sd2``: the same class as SD 2.x 768-v: v_prediction (EulerDiscreteScheduler),
  ``attention_head_dim`` a list, ``use_linear_projection``, ``upcast_attention``. 64×64.
- ``sdxl``: StableDiffusionXLPipeline with two CLIP text encoders (the second with a
  projection), ``addition_embed_type="text_time"``, EulerDiscreteScheduler with SDXL's config,
  a VAE with ``force_upcast``. 64×64; sizes are multiples of 8.
- ``flux``: FluxPipeline (FLUX.1-dev-like: ``guidance_embeds``, dynamic shifting) with a
  CLIP and a T5 text encoder; the T5 tokenizer is a small Unigram model built with
  ``tokenizers``. Flux's default size is a fixed 128 latent pixels × the VAE factor, and the
  one-block VAE of diffusers' tiny Flux test has factor 1, so native is 128×128; any multiple
  of 2 works (64×64 is the cheap size). Step-callback latents are packed as
  (batch, (h / 2) · (w / 2), 4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from generation.embedded import write_byte_level_tokenizer

FAMILIES = ("sd1", "sd2", "sdxl", "flux")
NATIVE_SIZES: dict[str, tuple[int, int]] = {
    "sd1": (64, 64),
    "sd2": (64, 64),
    "sdxl": (64, 64),
    "flux": (128, 128),
}
DEFAULTS = {"default_steps": 4, "default_guidance": 5.0}
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# SD 1.x / 2.x / XL noise schedule (their scheduler_config.json values).
SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
}

T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's SentencePiece model
T5_WORD_LINES = (
    "a an the of and with in on at to for from by over under near behind between into out up",
    "down is are was be it its this that as or not no very more most all some one two three four",
    "five six seven eight nine ten many few small big large tiny huge tall short long wide round",
    "square old new young little",
    "red green blue yellow orange purple pink brown black white grey gray gold silver colour color",
    "dark light bright soft warm cold",
    "cat cats dog dogs bird birds fish horse cow squirrel fox bear lion tiger wolf rabbit mouse",
    "owl duck man woman boy girl child person people face portrait eye eyes hand hair",
    "tree trees flower flowers forest garden grass leaf leaves mountain mountains river lake sea",
    "ocean beach sky cloud clouds sun moon star stars rain snow fire water stone rock field",
    "house city street road car boat ship train plane castle tower bridge window door room table",
    "chair book cup bottle food apple burger pizza cake bread",
    "painting photo photograph picture drawing sketch illustration art style render image scene",
    "landscape background detailed realistic abstract cinematic watercolor oil digital pixel",
    "circle triangle shape middle left right top bottom center corner side",
    "eating sitting standing running flying walking sleeping wearing holding playing looking",
    "night day morning evening sunset sunrise summer winter spring autumn",
    "beautiful cute happy sad strong high quality best masterpiece lighting studio",
)
T5_WORDS = tuple(dict.fromkeys(" ".join(T5_WORD_LINES).split()))
T5_SUFFIXES = ("s", "es", "ed", "ing", "er", "est", "ly", "y", "en", "ion", "al", "ful")


def write_t5_tokenizer(folder: Path, max_length: int = T5_MAX_LENGTH) -> int:
    """Write a small T5 tokenizer (tokenizer.json + configs); return its vocabulary size.

    A Unigram model, as T5's SentencePiece one: specials first (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2), then ``▁word`` pieces, suffix pieces and every printable ASCII character,
    so that any ASCII prompt tokenizes; a word piece scores better than its letters.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pieces: list[tuple[str, float]] = [(token, 0.0) for token in T5_SPECIALS]
    pieces.append(("▁", -3.0))
    pieces += [("▁" + word, -6.0 - len(word) / 100) for word in T5_WORDS]
    pieces += [(suffix, -8.0) for suffix in T5_SUFFIXES]
    characters = (chr(code) for code in range(ord("!"), ord("~") + 1))
    pieces += [(char, -10.0) for char in characters if char not in T5_SUFFIXES]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"],
        pair=["$A", "</s>", "$B", "</s>"],
        special_tokens=[("</s>", 1)],
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in T5_SPECIALS])
    tokenizer.save(str(folder / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        **specials,
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": max_length,
        "extra_ids": 0,
        "additional_special_tokens": [],
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", specials)
    return tokenizer.get_vocab_size()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tidy_tokenizer_config(folder: Path) -> None:
    """Drop how the tokenizer was loaded (``local_files_only`` under HF_HUB_OFFLINE, paths),
    which transformers saves too, so the same seed builds the same bytes everywhere."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for key in ("local_files_only", "is_local", "name_or_path", "_name_or_path"):
        config.pop(key, None)
    if not config.get("extra_special_tokens", True):  # transformers 4 wants a dict here
        del config["extra_special_tokens"]
    _write_json(config_file, config)


def _clip_tokenizer(folder: Path) -> tuple[CLIPTokenizer, int]:
    write_byte_level_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)
    return tokenizer, len(tokenizer)


def _clip_config(vocab_size: int, **extra: Any) -> CLIPTextConfig:
    """A tiny CLIP text config for the project's byte-level tokenizer (bos, eos last)."""
    values: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 37} | extra
    return CLIPTextConfig(
        vocab_size=vocab_size,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        layer_norm_eps=1e-05,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **values,
    )


def _sd_vae(seed: int, **extra: Any) -> AutoencoderKL:
    """A two-block VAE: scale factor 2, four latent channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        **extra,
    )


def _sd_components(folder: Path, seed: int, *, v2: bool) -> dict[str, Any]:
    tokenizer, vocab_size = _clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        **(
            {"attention_head_dim": (2, 4), "use_linear_projection": True, "upcast_attention": True}
            if v2
            else {"attention_head_dim": 8}
        ),
    )
    vae = _sd_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        _clip_config(vocab_size, hidden_act="gelu", projection_dim=32)
        if v2
        else _clip_config(vocab_size)
    )
    if v2:  # stabilityai/stable-diffusion-2: Euler, v-prediction
        scheduler: Any = EulerDiscreteScheduler(
            **SD_BETAS,
            prediction_type="v_prediction",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            use_karras_sigmas=False,
        )
    else:  # stable-diffusion-v1-5: PNDM, epsilon
        scheduler = PNDMScheduler(
            **SD_BETAS,
            prediction_type="epsilon",
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _sdxl_components(folder: Path, seed: int) -> dict[str, Any]:
    tokenizer, vocab_size = _clip_tokenizer(folder / "tokenizer")
    tokenizer_2, vocab_size_2 = _clip_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + the pooled 32
        # Both encoders' hidden states side by side: 32 + 48 (of different widths, as CLIP-L
        # and bigG are, or a single-file loader cannot tell them apart).
        cross_attention_dim=80,
        norm_num_groups=4,
    )
    vae = _sd_vae(seed, force_upcast=True, scaling_factor=0.13025)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(vocab_size, hidden_act="quick_gelu"))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(
        _clip_config(vocab_size_2, hidden_act="gelu", projection_dim=32, hidden_size=48)
    )
    scheduler = EulerDiscreteScheduler(
        **SD_BETAS,
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def _flux_components(folder: Path, seed: int) -> dict[str, Any]:
    tokenizer, vocab_size = _clip_tokenizer(folder / "tokenizer")
    t5_vocab_size = write_t5_tokenizer(folder / "tokenizer_2")
    tokenizer_2 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")
    assert len(tokenizer_2) == t5_vocab_size
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,  # 2×2 patches of the VAE's one latent channel
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=32,  # CLIP's hidden size
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(vocab_size, hidden_act="quick_gelu"))
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=t5_vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        # With factor 1 the VAE works at full image size, where a mid-block self-attention
        # over 128×128 pixels would cost most of the generation's time.
        mid_block_add_attention=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler_config.json
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_family(family: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` pipeline (one of ``FAMILIES``) with weights seeded by
    ``seed`` and save it to ``folder`` as a diffusers folder with an imagine-bot.json."""
    folder = Path(folder)
    pipeline: Any
    if family in {"sd1", "sd2"}:
        pipeline = StableDiffusionPipeline(**_sd_components(folder, seed, v2=family == "sd2"))
    elif family == "sdxl":
        pipeline = StableDiffusionXLPipeline(**_sdxl_components(folder, seed))
    elif family == "flux":
        pipeline = FluxPipeline(**_flux_components(folder, seed))
    else:
        raise ValueError(f"no tiny family is called {family!r}; choose from {FAMILIES}")
    pipeline.save_pretrained(folder, safe_serialization=True)
    for tokenizer_dir in sorted(folder.glob("tokenizer*")):
        _tidy_tokenizer_config(tokenizer_dir)
    if family == "flux":
        # transformers 5 no longer writes special_tokens_map.json; older loaders look for it.
        specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        _write_json(folder / "tokenizer_2" / "special_tokens_map.json", specials)
        # transformers 5 records its T5Tokenizer (T5TokenizerFast is an alias of it), which
        # transformers 4 reads as the SentencePiece class; name the fast one, as FLUX.1 does.
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
        _write_json(index_file, index)
    _write_json(folder / "imagine-bot.json", DEFAULTS)
    return folder
