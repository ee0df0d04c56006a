"""Turn a diffusers Stable Diffusion folder into one original-layout ``.safetensors`` file.

Model sites and A1111 share checkpoints in the CompVis/LDM key layout: the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, the text encoder under
``cond_stage_model.`` (SD 1.x/2.x) or ``conditioner.embedders.N.`` (SDXL). Tests cannot download
one, so :func:`to_single_file` writes one from a tiny diffusers folder. The key mapping is the
inverse of diffusers' own converters in ``diffusers.loaders.single_file_utils``, derived from the
folder's configs so that any block layout works, and every file is checked by loading it back
through diffusers' single-file loaders before it is written.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_CLIP_PREFIX = "cond_stage_model.transformer."
SD_OPEN_CLIP_PREFIX = "cond_stage_model.model."
XL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
XL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
XL_REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
# diffusers drops OpenCLIP's 24th layer (index 23) of SD 2.x checkpoints, which SD 2 never used.
SD2_DROPPED_LAYER = 23

TextLayout = Literal["auto", "clip", "open_clip"]
StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict, str], StateDict]

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPEN_CLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split(rest: str, table: dict[str, str], what: str) -> str:
    """``rest`` (``module.param``) with its module renamed through ``table``."""
    module, _, param = rest.rpartition(".")
    if module not in table:
        raise ValueError(f"no original-layout name for {what} parameter {rest!r}")
    return f"{table[module]}.{param}"


def _first_match(
    key: str, rules: list[tuple[str, Callable[[re.Match[str]], str]]], what: str
) -> str:
    """The name the first rule whose pattern matches all of ``key`` gives it."""
    for pattern, name in rules:
        if match := re.fullmatch(pattern, key):
            return name(match)
    raise ValueError(f"no original-layout name for {what} parameter {key!r}")


def _unet_name(key: str, layers: int, has_up_attention: set[int]) -> str:
    """The LDM name (without prefix) of one diffusers UNet parameter."""
    stride = layers + 1

    def down(match: re.Match[str]) -> str:
        index = 1 + int(match[1]) * stride + int(match[3])
        if match[2] == "resnets":
            return f"input_blocks.{index}.0.{_split(match[4], _UNET_RESNET, 'resnet')}"
        return f"input_blocks.{index}.1.{match[4]}"

    def up(match: re.Match[str]) -> str:
        index = int(match[1]) * stride + int(match[3])
        if match[2] == "resnets":
            return f"output_blocks.{index}.0.{_split(match[4], _UNET_RESNET, 'resnet')}"
        return f"output_blocks.{index}.1.{match[4]}"

    def upsampler(match: re.Match[str]) -> str:
        block = int(match[1])
        slot = 2 if block in has_up_attention else 1
        return f"output_blocks.{block * stride + layers}.{slot}.conv.{match[2]}"

    fixed = "|".join(re.escape(module) for module in _UNET_FIXED)
    return _first_match(
        key,
        [
            (rf"({fixed})\.(\w+)", lambda m: f"{_UNET_FIXED[m[1]]}.{m[2]}"),
            (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", down),
            (
                r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)",
                lambda m: f"input_blocks.{1 + int(m[1]) * stride + layers}.0.op.{m[2]}",
            ),
            (
                r"mid_block\.resnets\.([01])\.(.+)",
                lambda m: f"middle_block.{2 * int(m[1])}.{_split(m[2], _UNET_RESNET, 'resnet')}",
            ),
            (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
            (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", up),
            (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", upsampler),
        ],
        "UNet",
    )


def unet_to_ldm(state: StateDict, config: dict[str, Any]) -> StateDict:
    """A diffusers ``UNet2DConditionModel`` state dict in the ``model.diffusion_model.`` layout."""
    if not isinstance(config["layers_per_block"], int):
        raise ValueError("diffusers' converter needs one int layers_per_block for the UNet")
    if any(key.startswith("mid_block.resnets.2.") for key in state) or (
        any(key.startswith("mid_block.resnets.") for key in state)
        and not any(key.startswith("mid_block.attentions.0.") for key in state)
    ):
        raise ValueError("the LDM layout needs a resnet-attention-resnet UNet middle block")
    has_up_attention = {
        int(match[1])
        for key in state
        if (match := re.match(r"up_blocks\.(\d+)\.attentions\.", key))
    }
    layers = config["layers_per_block"]
    return {UNET_PREFIX + _unet_name(key, layers, has_up_attention): t for key, t in state.items()}


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1)


def _vae_name(key: str, num_up_blocks: int) -> str:
    """The LDM name (without prefix) of one diffusers ``AutoencoderKL`` parameter."""

    def up(block: str) -> int:
        return num_up_blocks - 1 - int(block)

    return _first_match(
        key,
        [
            (
                r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
                lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}",
            ),
            (
                r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(conv\.\w+)",
                lambda m: f"encoder.down.{m[1]}.downsample.{m[2]}",
            ),
            (
                r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
                lambda m: f"decoder.up.{up(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}",
            ),
            (
                r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(conv\.\w+)",
                lambda m: f"decoder.up.{up(m[1])}.upsample.{m[2]}",
            ),
            (
                r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)",
                lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}",
            ),
            (
                r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)",
                lambda m: f"{m[1]}.mid.attn_1.{_split(m[2], _VAE_ATTENTION, 'VAE attention')}",
            ),
            (r"(encoder|decoder)\.conv_norm_out\.(\w+)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
            (r"(encoder\.|decoder\.|post_)?(conv_in|conv_out|quant_conv)\.\w+", lambda m: m[0]),
        ],
        "VAE",
    )


def vae_to_ldm(state: StateDict, config: dict[str, Any]) -> StateDict:
    """A diffusers ``AutoencoderKL`` state dict in the ``first_stage_model.`` layout.

    The middle block's attention projections become the 1×1 convolutions the LDM VAE has.
    """
    num_up_blocks = len(config["up_block_types"])
    ldm = {}
    for key, tensor in state.items():
        name = _vae_name(key, num_up_blocks)
        attention_projection = re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", name)
        as_conv = attention_projection and tensor.ndim == 2
        ldm[VAE_PREFIX + name] = tensor[:, :, None, None] if as_conv else tensor
    return ldm


def _hf_clip_key(key: str) -> str:
    """transformers ≥ 5.6 saves ``CLIPTextModel`` without its ``text_model.`` level; LDM files
    (and diffusers' detection keys) have it."""
    if key.startswith("text_model.") or key == "text_projection.weight":
        return key
    return "text_model." + key


def clip_to_ldm(state: StateDict, prefix: str) -> StateDict:
    """A transformers CLIP text encoder in the HF key layout that SD 1.x and SDXL files keep."""
    return {prefix + _hf_clip_key(key): t for key, t in state.items() if "position_ids" not in key}


def open_clip_to_ldm(state: StateDict, prefix: str) -> StateDict:
    """A transformers CLIP text encoder in OpenCLIP's layout (SD 2.x, SDXL's second encoder).

    q/k/v projections are fused into ``in_proj_weight``/``in_proj_bias``; a projection layer
    becomes the transposed ``text_projection`` matrix.
    """
    state = {_hf_clip_key(key): t for key, t in state.items() if "position_ids" not in key}
    ldm: StateDict = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _OPEN_CLIP_FIXED:
            ldm[prefix + _OPEN_CLIP_FIXED[key]] = tensor
        elif key == "text_projection.weight":
            ldm[prefix + "text_projection"] = tensor.T
        elif match := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            block = f"{prefix}transformer.resblocks.{match[1]}."
            projection = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", match[2])
            if projection:
                fused.setdefault((block, projection[2]), {})[projection[1]] = tensor
            else:
                ldm[block + _split(match[2], _OPEN_CLIP_LAYER, "CLIP layer")] = tensor
        else:
            raise ValueError(f"no OpenCLIP name for text encoder parameter {key!r}")
    for (block, param), parts in fused.items():
        ldm[f"{block}attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return ldm


def _component_class(entry: list[str | None]) -> type[Any]:
    library, name = entry
    assert library is not None and name is not None
    return getattr(importlib.import_module(library), name)  # type: ignore[no-any-return]


def _text_layout(model: Any, layout: TextLayout) -> Literal["clip", "open_clip"]:
    """SD 2.x's OpenCLIP ViT-H uses GELU where OpenAI's CLIP-L (SD 1.x) uses quick GELU."""
    if layout != "auto":
        return layout
    config = model.config
    if config.hidden_act == "gelu" and config.num_hidden_layers <= SD2_DROPPED_LAYER:
        return "open_clip"
    return "clip"


def _text_encoder_plan(
    components: dict[str, Any], layout: TextLayout
) -> dict[str, tuple[str, Converter]]:
    """For each text encoder: its prefix in the single file and the layout it is written in."""
    if "text_encoder_2" in components:
        plan: dict[str, tuple[str, Converter]] = {}
        if "text_encoder" in components:
            plan["text_encoder"] = (XL_CLIP_PREFIX, clip_to_ldm)
            plan["text_encoder_2"] = (XL_OPEN_CLIP_PREFIX, open_clip_to_ldm)
            sizes = {components[name].config.hidden_size for name in plan}
            if len(sizes) == 1:
                raise ValueError(
                    "from_single_file tells SDXL's two text encoders apart by hidden size "
                    "(the width of their position embeddings): give them different hidden_size, "
                    "e.g. 32 and 48 with the UNet's cross_attention_dim 80"
                )
        else:
            plan["text_encoder_2"] = (XL_REFINER_OPEN_CLIP_PREFIX, open_clip_to_ldm)
        return plan
    if "text_encoder" not in components:
        return {}
    if _text_layout(components["text_encoder"], layout) == "open_clip":
        if components["text_encoder"].config.num_hidden_layers > SD2_DROPPED_LAYER:
            raise ValueError("diffusers ignores OpenCLIP layer 23 of SD 2.x files: use ≤ 23 layers")
        return {"text_encoder": (SD_OPEN_CLIP_PREFIX, open_clip_to_ldm)}
    return {"text_encoder": (SD_CLIP_PREFIX, clip_to_ldm)}


def _load_components(folder: Path) -> dict[str, Any]:
    """The UNet, VAE and text encoders the folder's ``model_index.json`` names."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        entry = index.get(name)
        if entry and entry[0] is not None:
            cls = _component_class(entry)
            components[name] = cls.from_pretrained(folder / name, local_files_only=True)
    if "unet" not in components or "vae" not in components:
        raise ValueError(f"{folder} has no UNet and VAE: not a Stable Diffusion folder")
    return components


def _check_round_trip(folder: Path, checkpoint: StateDict, components: dict[str, Any]) -> None:
    """Load every component back through diffusers' single-file loaders, as
    ``from_single_file(path, config=folder)`` does, and require exactly the original weights."""
    from diffusers.loaders.single_file_utils import (
        create_diffusers_clip_model_from_ldm,
        is_clip_model_in_single_file,
    )

    for name, original in components.items():
        cls = type(original)
        dtype = next(original.parameters()).dtype
        if name in ("unet", "vae"):
            loaded = cls.from_single_file(
                checkpoint, config=str(folder), subfolder=name, local_files_only=True
            )
        else:
            if not is_clip_model_in_single_file(cls, checkpoint):
                raise AssertionError(f"diffusers finds no text encoder for {name} in the file")
            loaded = create_diffusers_clip_model_from_ldm(
                cls, checkpoint, subfolder=name, config=str(folder), local_files_only=True
            )
        expected, actual = original.state_dict(), loaded.to(dtype).state_dict()
        if expected.keys() != actual.keys():
            raise AssertionError(f"{name}: keys differ: {set(expected) ^ set(actual)}")
        for key, tensor in expected.items():
            if not torch.equal(tensor, actual[key]):
                raise AssertionError(f"{name}: {key} does not survive the round trip")


def to_single_file(
    folder: Path, out: Path, *, text_layout: TextLayout = "auto", check: bool = True
) -> Path:
    """Write the diffusers SD 1.x/2.x or SDXL pipeline in ``folder`` to ``out`` as one
    original-layout ``.safetensors`` file, as model sites share checkpoints.

    ``text_layout`` picks SD 1.x/2.x's text encoder layout: ``"clip"`` (SD 1.x, HF keys under
    ``cond_stage_model.transformer.``), ``"open_clip"`` (SD 2.x, ``cond_stage_model.model.``) or
    ``"auto"``: OpenCLIP when the encoder uses GELU as SD 2.x's does. SDXL always gets CLIP-L
    at ``conditioner.embedders.0.transformer.`` and OpenCLIP bigG, with its ``text_projection``,
    at ``conditioner.embedders.1.model.`` (a refiner, with only ``text_encoder_2``: at
    ``conditioner.embedders.0.model.``). ``check`` loads the result back through diffusers and
    requires every parameter to come back bit for bit.
    """
    from safetensors.torch import save_file

    folder, out = Path(folder), Path(out)
    with torch.no_grad():
        components = _load_components(folder)
        checkpoint = unet_to_ldm(components["unet"].state_dict(), components["unet"].config)
        checkpoint |= vae_to_ldm(components["vae"].state_dict(), components["vae"].config)
        for name, (prefix, convert) in _text_encoder_plan(components, text_layout).items():
            checkpoint |= convert(components[name].state_dict(), prefix)
        checkpoint = {
            key: tensor.detach().contiguous().clone() for key, tensor in checkpoint.items()
        }
        if check:
            _check_round_trip(folder, checkpoint, components)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(out), metadata={"format": "pt"})
    return out
