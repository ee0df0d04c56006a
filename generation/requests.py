"""What a user asks for, and its validation into a complete recipe."""

from __future__ import annotations

import dataclasses
import math
import secrets

from generation.errors import InvalidRequest
from generation.model_info import ModelInfo
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
    model_id: str
    model_revision: str
    parent_job_id: int | None
    parent_image_index: int | None

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


def _check_size(option: str, value: int, low: int, high: int) -> int:
    _check_int(option, value, low, high, " pixels")
    if value % SIZE_STEP:
        lower = max(low, value - value % SIZE_STEP)
        raise InvalidRequest(
            option, f"must be a multiple of {SIZE_STEP} pixels, not {value} (try {lower})"
        )
    return value


def _check_float(option: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidRequest(option, f"must be a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise InvalidRequest(option, f"must be from {low:g} to {high:g}, not {value:g}")
    return float(value)


def validate(request: GenerationRequest, limits: Limits, model: ModelInfo) -> Recipe:
    """Check every option and fill the defaults; raises InvalidRequest naming the option."""
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidRequest("prompt", "must not be empty")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise InvalidRequest(
            "prompt", f"must be at most {MAX_PROMPT_LENGTH} characters, not {len(prompt)}"
        )
    negative = request.negative_prompt.strip()
    if len(negative) > MAX_PROMPT_LENGTH:
        raise InvalidRequest(
            "negative", f"must be at most {MAX_PROMPT_LENGTH} characters, not {len(negative)}"
        )
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    _check_int("seed", seed, 0, MAX_SEED)
    steps = model.default_steps if request.steps is None else request.steps
    _check_int("steps", steps, 1, limits.max_steps)
    guidance = model.default_guidance if request.guidance is None else request.guidance
    _check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
    width = model.native_width if request.width is None else request.width
    height = model.native_height if request.height is None else request.height
    if model.sizes:  # an image API: its own list of sizes, whatever the host's limits
        if request.kind is JobKind.UPSCALE:  # made here, by resizing: bounded all the same
            _check_int("width", width, 1, API_UPSCALE_MAX, " pixels")
            _check_int("height", height, 1, API_UPSCALE_MAX, " pixels")
        elif (width, height) not in model.sizes:
            listed = ", ".join(f"{w}×{h}" for w, h in model.sizes)
            raise InvalidRequest("size", f"{model.name} makes {listed} only, not {width}×{height}")
    else:
        _check_size("width", width, limits.min_size, limits.max_width)
        _check_size("height", height, limits.min_size, limits.max_height)
    native = (model.native_width, model.native_height)
    if model.fixed_size and request.kind not in RESIZED_KINDS and (width, height) != native:
        option = "width" if width != native[0] else "height"
        raise InvalidRequest(
            option,
            f"{model.name} draws {native[0]}×{native[1]} only, not {width}×{height}: leave "
            "the size out, then upscale an image (U1–U4) for a larger one",
        )
    count = limits.default_count if request.count is None else request.count
    _check_int("count", count, 1, limits.max_count)
    strength = request.strength
    if request.kind in IMAGE_KINDS:
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
        scheduler=model.scheduler,
        model_id=model.model_id,
        model_revision=model.revision,
        parent_job_id=request.parent_job_id,
        parent_image_index=request.parent_image_index,
    )
