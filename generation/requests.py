"""What a user asks for, and its validation into a complete recipe."""

from __future__ import annotations

import dataclasses
import math
import secrets
from typing import Any

from generation.editing import Edit
from generation.errors import InvalidRequest
from generation.loras import LoraCatalogue, LoraChoice, LoraFile, recorded, take_tags
from generation.model_info import ModelInfo
from generation.presets import Preset
from generation.samplers import SAMPLER_NAMES, find_sampler
from storage.models import JobKind

MAX_SEED = 2**32 - 1
MAX_PROMPT_LENGTH = 1000
MAX_GUIDANCE = 30.0
SIZE_STEP = 8
IMAGE_KINDS = frozenset({JobKind.VARIATION, JobKind.UPSCALE, JobKind.IMG2IMG})
# Kinds whose size follows the image they start from, not the model's native one.
RESIZED_KINDS = frozenset({JobKind.VARIATION, JobKind.UPSCALE})
# The largest local upscale of an image API's picture.
API_UPSCALE_MAX = 4096
# Decodes larger than this many times the model's native area go through the VAE in tiles.
TILED_DECODE_AREA = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The host's caps on what one request may ask for."""

    max_steps: int = 50
    min_size: int = 64
    max_width: int = 1024
    max_height: int = 1024
    max_count: int = 4
    default_count: int = 4
    default_strength: float = 0.6
    upscale_factor: int = 2
    upscale_strength: float = 0.3
    # Upscales (and variations of them) are made by diffusion up to this longest side (None:
    # twice the model's native size), by a resize only beyond it, and never past the cap.
    upscale_diffusion_side: int | None = None
    upscale_max_side: int = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One request as the user gave it; ``None`` means "use the default"."""

    prompt: str
    user_id: int
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    strength: float | None = None
    kind: JobKind = JobKind.TXT2IMG
    parent_job_id: int | None = None
    parent_image_index: int | None = None
    model: str | None = None  # a model's name or id among the host's; None: the default
    init_image: bytes | None = None  # PNG of the image to start from (img2img)
    user_name: str = ""
    role_ids: tuple[int, ...] = ()  # the member's Discord roles, for their fair-share weight
    guild_id: int | None = None
    channel_id: int | None = None
    # The channel as Discord describes it: age-restricted; visible to @everyone. None: not
    # known (a DM, the command line).
    channel_nsfw: bool | None = None
    channel_public: bool | None = None
    interaction_id: int | None = None
    reproduces_job_id: int | None = None  # /reproduce: the job whose recipe this is, exactly
    sampler: str | None = None  # a familiar name ("DPM++ 2M Karras"); None: the model's own
    # A recorded job's scheduler class and options, to run it exactly as it ran (/reproduce):
    # the sampler table may have changed since.
    scheduler: str | None = None
    scheduler_options: dict[str, Any] | None = None
    vae_tiling: bool | None = None  # likewise: how the job it makes again was decoded
    # LoRAs by name and weight (the prompt's <lora:NAME:WEIGHT> tags are added to these).
    loras: tuple[LoraChoice, ...] = ()
    # A job made from another: its parent's preset, for the record and its fair-share factor
    # (its defaults are in the recipe already, never applied again).
    preset: str | None = None
    # The prompt as typed when parameters (--ar, --no, ...) were taken out of it, and the
    # words its parameters gave (--no, --sampler, --model): the filter reads them too.
    raw_prompt: str | None = None
    parameter_words: str = ""
    # Private mode asked for (the member's setting; the server may forbid or force it).
    private: bool = False
    # Its prompt was edited in the remix form: the member's own text, judged as theirs.
    remixed: bool = False
    # An edit of its parent image (generation.editing.Edit.to_dict), for kind EDIT.
    edit: dict[str, Any] | None = None
    # --video: keep a frame per denoising step (a model drawn on this host shows its steps).
    video: bool = False
    # A comparison (generation.comparing.Comparison.to_dict), for kind COMPARE.
    compare: dict[str, Any] | None = None

    @property
    def filtered_text(self) -> str:
        """What the prompt filter reads as the prompt: the text, the words typed in its
        parameters, and the LoRAs' names."""
        words = [self.prompt, self.parameter_words, *(c.name for c in self.loras)]
        return " ".join(word for word in words if word)

    @property
    def made_from(self) -> int | None:
        """The job whose recipe this request carries (a button's parent, or the job it makes
        again): its prompt is that job's, not the requester's."""
        return self.reproduces_job_id or self.parent_job_id


@dataclasses.dataclass(frozen=True, slots=True)
class Recipe:
    """A validated request with every default filled in: what the job row stores."""

    kind: JobKind
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    count: int
    strength: float | None
    scheduler: str
    scheduler_options: dict[str, Any]
    sampler: str | None
    vae_tiling: bool
    model_id: str
    model_revision: str
    parent_job_id: int | None
    parent_image_index: int | None
    # Each LoRA's name, sha256, A1111 short hash and weight (loras.recorded).
    loras: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    preset: str | None = None  # the preset it was asked through (its defaults are above)
    raw_prompt: str | None = None  # the prompt as typed, when parameters were taken out
    edit: dict[str, Any] | None = None  # an edit's description (generation.editing)
    video: bool = False  # --video: its steps kept as an animated WebP
    compare: dict[str, Any] | None = None  # a comparison's knob, values and cells

    @property
    def seeds(self) -> tuple[int, ...]:
        """One seed per image: image *i* of a grid is seeded ``seed + i``."""
        return tuple(self.seed + i for i in range(self.count))


def nearest_size(
    sizes: tuple[tuple[int, int], ...], width: float, height: float
) -> tuple[int, int]:
    """Of a model's sizes, the one nearest in aspect ratio, then in area, to width × height."""
    return min(
        sizes,
        key=lambda size: (
            round(abs(math.log(size[0] / size[1] * height / width)), 6),
            abs(size[0] * size[1] - width * height),
        ),
    )


def _check_int(option: str, value: int, low: int, high: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(option, f"must be a whole number from {low} to {high}{unit}")
    if not low <= value <= high:
        raise InvalidRequest(option, f"must be from {low} to {high}{unit}, not {value}")
    return value


def _check_size(option: str, value: int, low: int, high: int, step: int = SIZE_STEP) -> int:
    _check_int(option, value, low, high, " pixels")
    if value % step:
        lower = max(low, value - value % step)
        raise InvalidRequest(
            option, f"must be a multiple of {step} pixels, not {value} (try {lower})"
        )
    return value


def _check_float(option: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidRequest(option, f"must be a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise InvalidRequest(option, f"must be from {low:g} to {high:g}, not {value:g}")
    return float(value)


def _scheduler(
    request: GenerationRequest, model: ModelInfo
) -> tuple[str, dict[str, Any], str | None]:
    """The scheduler class, its options and the sampler's name a job runs with."""
    if request.scheduler is not None:  # a recorded job made again: exactly as it ran
        return request.scheduler, dict(request.scheduler_options or {}), request.sampler
    if not request.sampler:
        return model.scheduler, {}, None
    if model.engine != "diffusers":
        raise InvalidRequest("sampler", f"{model.name} is an image API: it picks its own sampler")
    if model.family == "upscaler":  # a diffusion upscaler keeps the scheduler it was made with
        return model.scheduler, {}, None
    sampler = find_sampler(request.sampler, flow=model.flow, model_name=model.name)
    if sampler.options.get("use_karras_sigmas") and sampler.steps_once and not model.karras:
        others = ", ".join(
            name for name in SAMPLER_NAMES if "Karras" not in name or name == "DPM++ SDE Karras"
        )
        raise InvalidRequest(
            "sampler",
            f"{sampler.name} does not suit {model.name}'s cosine noise schedule (its Karras "
            f"sigmas repeat steps): pick one of {others}",
        )
    return sampler.scheduler, dict(sampler.options), sampler.name


def _check_capabilities(request: GenerationRequest, model: ModelInfo, negative: str) -> None:
    """Refuse what this model's family cannot do, naming the option."""
    if model.engine != "diffusers":
        if request.video:
            raise InvalidRequest(
                "prompt",
                f"--video keeps the steps of a model drawn on this host; {model.name} is an "
                "image service's, which shows none: leave --video out or choose another model",
            )
        return
    if negative and not model.negative_prompt:
        raise InvalidRequest(
            "negative",
            f"{model.name} ({model.family_label}) takes no negative prompt: leave it out",
        )
    if (
        request.guidance is not None
        and not model.guidance
        and request.guidance != model.default_guidance
    ):
        raise InvalidRequest(
            "guidance",
            f"{model.name} ({model.family_label}) is distilled to run without guidance: "
            "leave it out",
        )
    if request.kind in IMAGE_KINDS and request.kind is not JobKind.UPSCALE and not model.img2img:
        raise InvalidRequest(
            "image", f"{model.name} ({model.family_label}) cannot start from an image"
        )


def _check_edit(request: GenerationRequest, model: ModelInfo) -> None:
    """An edit: of one image of a finished job, a description this bot reads, on a model
    that paints into an image at more than one size."""
    if request.edit is None or request.parent_image_index is None:
        raise InvalidRequest("edit", "edits one image of a finished job: name both")
    Edit.from_dict(request.edit)
    if model.engine != "diffusers" or not (model.img2img and model.inpainting):
        raise InvalidRequest("edit", f"{model.name} cannot paint into an image")
    if model.fixed_size and (request.width, request.height) != (
        model.native_width,
        model.native_height,
    ):
        raise InvalidRequest(
            "edit",
            f"{model.name} draws {model.native_width}×{model.native_height} only: a Zoom Out "
            "or a Vary (Region) keeps that size; Pan and Make Square do not",
        )


def is_resize_only(kind: str, strength: float | None) -> bool:
    """An upscale past what diffusion may make (or on a model that cannot start from an
    image): a Lanczos resize, recorded as strength 0, with no model call."""
    return kind == JobKind.UPSCALE and strength == 0


def tiled_decode(model: ModelInfo, width: int, height: int) -> bool:
    """Whether a job's decode goes through the VAE in tiles (recorded, so a job made again
    decodes the way it was made): images larger than TILED_DECODE_AREA × the native area."""
    native = model.native_width * model.native_height
    return model.engine == "diffusers" and width * height > TILED_DECODE_AREA * native


def diffusion_side(limits: Limits, base: ModelInfo) -> int:
    """The longest side an upscale or a variation of one may be made at by diffusion."""
    return limits.upscale_diffusion_side or 2 * max(base.native_width, base.native_height)


def _check_resized(kind: JobKind, width: int, height: int, limits: Limits, base: ModelInfo) -> bool:
    """An upscale, or a variation at an upscale's size: their own caps, not text-to-image's.
    True when the upscale is past what diffusion may make and is a resize only."""
    longest, by_diffusion = max(width, height), diffusion_side(limits, base)
    _check_int("width", width, limits.min_size, 1 << 20, " pixels")
    _check_int("height", height, limits.min_size, 1 << 20, " pixels")
    if longest > limits.upscale_max_side:
        raise InvalidRequest(
            "size",
            f"this host makes images at most {limits.upscale_max_side} pixels on their longest "
            f"side, not {longest}: this image is as large as it gets",
        )
    if kind is JobKind.VARIATION and longest > by_diffusion:
        raise InvalidRequest(
            "size",
            f"a variation is made at most {by_diffusion} pixels on its longest side on "
            f"{base.name}, not {longest}: vary a smaller image",
        )
    return kind is JobKind.UPSCALE and longest > by_diffusion


def _size(
    request: GenerationRequest, limits: Limits, model: ModelInfo, base: ModelInfo
) -> tuple[int, int, bool]:
    """The job's size, checked against the caps of its kind; and whether an upscale is a
    resize only."""
    width = model.native_width if request.width is None else request.width
    height = model.native_height if request.height is None else request.height
    resize_only = False
    if model.sizes:  # an image API: its own list of sizes, whatever the host's limits
        if request.kind is JobKind.UPSCALE:  # made here, by resizing: bounded all the same
            cap = min(API_UPSCALE_MAX, limits.upscale_max_side)
            _check_int("width", width, 1, cap, " pixels")
            _check_int("height", height, 1, cap, " pixels")
        elif (width, height) not in model.sizes:
            listed = ", ".join(f"{w}×{h}" for w, h in model.sizes)
            raise InvalidRequest("size", f"{model.name} makes {listed} only, not {width}×{height}")
    elif request.kind in RESIZED_KINDS:
        resize_only = _check_resized(request.kind, width, height, limits, base)
        if request.reproduces_job_id is not None and request.kind is JobKind.UPSCALE:
            # Made again as it was made: a resize stays one; a diffusion past today's cap
            # is not made at all.
            if resize_only and request.strength != 0:
                raise InvalidRequest(
                    "size",
                    f"job {request.reproduces_job_id} was upscaled by diffusion to "
                    f"{width}×{height}, past what this host now makes that way: it cannot be "
                    "made again here",
                )
            resize_only = request.strength == 0
        elif request.kind is JobKind.UPSCALE and not (model.img2img or model.family == "upscaler"):
            resize_only = True  # a model that cannot start from an image only resizes
    else:
        step = max(SIZE_STEP, model.size_multiple)
        _check_size("width", width, limits.min_size, limits.max_width, step)
        _check_size("height", height, limits.min_size, limits.max_height, step)
    native = (model.native_width, model.native_height)
    if model.fixed_size and request.kind not in RESIZED_KINDS and (width, height) != native:
        option = "width" if width != native[0] else "height"
        raise InvalidRequest(
            option,
            f"{model.name} draws {native[0]}×{native[1]} only, not {width}×{height}: leave "
            "the size out, then upscale an image (U1–U4) for a larger one",
        )
    return width, height, resize_only


def validate(
    request: GenerationRequest,
    limits: Limits,
    model: ModelInfo,
    base: ModelInfo | None = None,
    *,
    loras: LoraCatalogue | None = None,
    preset: Preset | None = None,
) -> Recipe:
    """Check every option and fill the defaults; raises InvalidRequest naming the option.
    ``base`` is the model an upscale's image was made with, when another model upscales it
    (its native size sets the upscale's caps); ``loras`` the host's LoRAs; ``preset`` the
    preset the request was asked through, whose defaults come before the model's."""
    if request.compare is not None or request.kind is JobKind.COMPARE:
        from generation.comparing import validate_comparison  # it validates each cell here

        return validate_comparison(
            request,
            lambda cell: validate(cell, limits, model, base, loras=loras, preset=preset),
            limits.max_count,
        )
    if len(request.negative_prompt.strip()) > MAX_PROMPT_LENGTH:  # the member's own, alone
        raise InvalidRequest(
            "negative",
            f"must be at most {MAX_PROMPT_LENGTH} characters, not {len(request.negative_prompt)}",
        )
    if preset is not None:
        request = _with_preset(request, preset)
    prompt = request.prompt.strip()
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise InvalidRequest(
            "prompt", f"must be at most {MAX_PROMPT_LENGTH} characters, not {len(prompt)}"
        )
    # Tags are read from what a member typed, never again from a stored recipe's prompt (a
    # job from before LoRAs may hold <lora:…> text, which its model saw as text).
    prompt, tagged = (prompt, []) if request.made_from is not None else take_tags(prompt)
    if not prompt:
        raise InvalidRequest("prompt", "must not be empty")
    asked = (*request.loras, *tagged)
    chosen = _chosen_loras(preset.with_loras(asked) if preset else asked, model, loras)
    negative = request.negative_prompt.strip()
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    _check_int("seed", seed, 0, MAX_SEED)
    steps = model.default_steps if request.steps is None else request.steps
    _check_int("steps", steps, 1, limits.max_steps)
    guidance = model.default_guidance if request.guidance is None else request.guidance
    _check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
    if request.kind is JobKind.EDIT:  # before the size: its refusal is the clearer one
        _check_edit(request, model)
    width, height, resize_only = _size(request, limits, model, base or model)
    count = limits.default_count if request.count is None else request.count
    _check_int("count", count, 1, limits.max_count)
    strength = request.strength
    if resize_only:  # past what diffusion may make: a Lanczos resize, recorded as strength 0
        strength = 0.0
    elif request.kind is JobKind.EDIT:
        strength = 1.0  # the masked area is painted anew; the rest is the parent's
    elif request.kind in IMAGE_KINDS:
        strength = limits.default_strength if strength is None else strength
        _check_float("strength", strength, 0.0, 1.0)
        if model.engine == "diffusers" and int(strength * steps) < 1:
            # img2img runs int(steps × strength) steps; zero would run no denoising at all.
            raise InvalidRequest(
                "strength",
                f"runs no step at {strength:g} × {steps} steps: use at least {1 / steps:.2f}",
            )
    elif strength is not None:
        raise InvalidRequest("strength", "only applies when starting from an image")
    if (request.kind is JobKind.IMG2IMG) != (request.init_image is not None):
        raise InvalidRequest("image", "is needed to start from an image, and only then")
    _check_capabilities(request, model, negative)
    scheduler, options, sampler = _scheduler(request, model)
    return Recipe(
        kind=request.kind,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        width=width,
        height=height,
        count=count,
        strength=strength,
        scheduler=scheduler,
        scheduler_options=options,
        sampler=sampler,
        vae_tiling=bool(request.vae_tiling)
        if request.reproduces_job_id is not None
        else tiled_decode(model, width, height),
        model_id=model.model_id,
        model_revision=model.revision,
        parent_job_id=request.parent_job_id,
        parent_image_index=request.parent_image_index,
        loras=recorded(chosen),
        preset=preset.name if preset else request.preset,
        raw_prompt=request.raw_prompt,
        edit=request.edit,
        video=request.video,
    )


def _with_preset(request: GenerationRequest, preset: Preset) -> GenerationRequest:
    """The preset's defaults where the request says nothing (a size only as a whole)."""
    sized = request.width is not None or request.height is not None
    return dataclasses.replace(
        request,
        steps=preset.steps if request.steps is None else request.steps,
        guidance=preset.guidance if request.guidance is None else request.guidance,
        sampler=preset.sampler if request.sampler is None else request.sampler,
        width=request.width if sized else preset.width,
        height=request.height if sized else preset.height,
        negative_prompt=preset.negative(request.negative_prompt.strip()),
    )


def _chosen_loras(
    choices: tuple[LoraChoice, ...], model: ModelInfo, catalogue: LoraCatalogue | None
) -> tuple[tuple[LoraFile, float], ...]:
    if not choices:
        return ()
    if catalogue is None:
        raise InvalidRequest("lora", "this host has no LoRAs")
    return catalogue.resolve(choices, model)
