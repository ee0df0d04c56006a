"""Midjourney's parameters typed in a prompt: ``neon city --ar 16:9 --no text --seed 7``.

``parse`` takes them out of the text (a ``--`` inside a word, ``well--known``, is left alone;
the em dash phones type for ``--`` counts too); ``apply`` puts them into a request where its
options say nothing. The options win, and the names of the parameters they overrode are
returned for the reply to say so. The request keeps the text as typed (``raw_prompt``): the
prompt filter reads it, parameter values included, and the job records it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from generation.errors import InvalidRequest
from generation.model_info import ModelInfo
from generation.preferences import Preferences
from generation.requests import GenerationRequest, nearest_size

# A parameter starts a word: "--name", or "—name" / "–name" (the dashes phones type for "--"),
# after a space or at the start.
_START = re.compile(r"(?:^|(?<=\s))(--|\u2014|\u2013)(?=[A-Za-z])")
_WHOLE = re.compile(r"[0-9]{1,10}")  # ASCII digits only: int() of anything else may raise
_NUMBER = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,6})?|\.[0-9]{1,6}")
_NAME = re.compile(r"[A-Za-z]+")
# What each parameter sets, and what its value is.
PARAMETERS = {
    "ar": "aspect ratio W:H",
    "seed": "a whole number from 0 to 4294967295",
    "no": "what to keep out, comma-separated (joined to the negative prompt)",
    "steps": "a whole number",
    "cfg": "guidance, a number",
    "sampler": "a sampler's name",
    "iw": "image weight with an attached image, 0-3: higher is closer to the image",
    "model": "a model's name",
    "video": "no value: keep every step, offered as an animated WebP",
}
FLAGS = ("video",)  # parameters that take no value
ALIASES = {"aspect": "ar", "negative": "no", "guidance": "cfg"}
MAX_SEED = 2**32 - 1
MAX_RATIO = 4.0  # 1:4 to 4:1; the size caps check the rest
MAX_IMAGE_WEIGHT = 3.0


@dataclasses.dataclass(frozen=True, slots=True)
class Parameters:
    """The prompt's text without its parameters, and their values by name."""

    text: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)


def listed() -> str:
    return ", ".join(f"--{name} ({what})" for name, what in PARAMETERS.items())


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest("prompt", f"{message}. The parameters are: {listed()}")


def parse(prompt: str) -> Parameters:
    """The parameters typed in ``prompt``; refused, naming the parameter, when one is unknown,
    malformed or given twice."""
    # A dash before a word that is no parameter is prose ("a castle —gothic"); "--" never is.
    starts = [
        match.start()
        for match in _START.finditer(prompt)
        if match.group(1) == "--" or _known(prompt[match.end() :])
    ]
    if not starts:
        return Parameters(prompt)
    values: dict[str, Any] = {}
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(prompt)
        body = prompt[start:end].lstrip("-\u2014\u2013")
        name_match = _NAME.match(body)
        assert name_match is not None  # the pattern's lookahead saw a letter
        typed = name_match.group().lower()
        name = ALIASES.get(typed, typed)
        if name not in PARAMETERS:
            raise _refuse(f"--{typed} is not a parameter here")
        if name in values:
            raise _refuse(f"--{name} is given twice")
        values[name] = _value(name, body[name_match.end() :].strip())
    text = " ".join(prompt[: starts[0]].split())  # parameters end the prompt, as there
    if not text:
        raise InvalidRequest("prompt", "has only parameters: say what to draw before them")
    return Parameters(text, values)


def _known(rest: str) -> bool:
    name = _NAME.match(rest)
    return (
        name is not None and ALIASES.get(name.group().lower(), name.group().lower()) in PARAMETERS
    )


def asks_aspect(prompt: str) -> bool:
    """Whether the prompt types an aspect ratio (so a size refusal names --ar)."""
    try:
        return "ar" in parse(prompt).values
    except InvalidRequest:
        return False


def _value(name: str, text: str) -> Any:
    if name in FLAGS:
        if text:
            raise _refuse(f"--{name} takes no value, and parameters end the prompt: {text!r}")
        return True
    if not text:
        raise _refuse(f"--{name} needs a value: {PARAMETERS[name]}")
    if name == "ar":
        match = re.fullmatch(r"([0-9]{1,4})\s*:\s*([0-9]{1,4})", text)
        if not match or not int(match[1]) or not int(match[2]):
            raise _refuse(f"--ar takes W:H, such as 16:9, not {text!r}")
        across, down = int(match[1]), int(match[2])
        if max(across / down, down / across) > MAX_RATIO:
            raise _refuse(f"--ar {across}:{down} is past 4:1")
        return across, down
    if name in {"seed", "steps"}:
        if not _WHOLE.fullmatch(text) or (name == "seed" and int(text) > MAX_SEED):
            raise _refuse(f"--{name} takes {PARAMETERS[name]}, not {text!r}")
        return int(text)
    if name in {"cfg", "iw"}:
        if not _NUMBER.fullmatch(text):
            raise _refuse(f"--{name} takes a number from 0, such as 4.5, not {text!r}")
        number = float(text)
        if name == "iw" and number > MAX_IMAGE_WEIGHT:
            raise _refuse(f"--iw is from 0 to {MAX_IMAGE_WEIGHT:g}, not {text}")
        return number
    return text  # no, sampler, model: the words as typed


def strength_of(image_weight: float) -> float:
    """Image weight (Midjourney's --iw, 0-3, 1 by default) as img2img strength: 1 / (1 + iw),
    so 0 ignores the image (strength 1), 1 is halfway (0.5), 3 stays closest (0.25)."""
    return 1.0 / (1.0 + image_weight)


def size_for(
    aspect: tuple[int, int],
    native: tuple[int, int],
    sizes: tuple[tuple[int, int], ...] = (),
    multiple: int = 8,
    min_side: int = 0,
) -> tuple[int, int]:
    """A width and height with the model's native area in the given aspect ratio (its short
    side at least ``min_side``, the host's smallest), each a multiple of the model's (8; 16
    for Flux and SD3); for a model with a list of sizes (an image API), the listed size
    nearest that ratio."""
    across, down = aspect
    area = native[0] * native[1]
    width = math.sqrt(area * across / down)
    height = area / width
    if sizes:
        return nearest_size(sizes, width, height)
    grow = max(1.0, min_side / min(width, height))
    step = max(8, multiple)
    return round(width * grow / step) * step, round(height * grow / step) * step


def sized_on(model: ModelInfo, aspect: tuple[int, int], min_side: int = 0) -> tuple[int, int]:
    """``size_for`` on ``model``; refused on a model that draws its native size only."""
    if model.fixed_size and aspect[0] * model.native_height != aspect[1] * model.native_width:
        raise InvalidRequest(
            "aspect",
            f"{model.name} draws {model.native_width}×{model.native_height} only: leave out "
            "the aspect ratio, or pick another model",
        )
    native = (model.native_width, model.native_height)
    return size_for(aspect, native, model.sizes, model.size_multiple, min_side)


def apply(
    request: GenerationRequest,
    *,
    aspect: tuple[int, int] | None = None,
    model_of: Callable[[str | None], ModelInfo],
    min_side: int = 0,
    defaults: Preferences | None = None,
    preset_of: Callable[[str | None], Any] = lambda _: None,
) -> tuple[GenerationRequest, list[str]]:
    """The request with its prompt's parameters where its options (and ``aspect``, the aspect
    option) say nothing, then the member's ``defaults`` (/settings) where neither does (less
    what the job's preset, ``preset_of`` its model's name, sets itself); its size from the
    aspect on the model it will run (``model_of`` its model's name); and the parameters the
    options overrode. A width or height option is a size option too: it wins over --ar and
    the default aspect."""
    typed = parse(request.prompt)
    values = typed.values
    sized = request.width is not None or request.height is not None
    options: dict[str, Any] = {
        "seed": request.seed,
        "steps": request.steps,
        "cfg": request.guidance,
        "sampler": request.sampler,
        "model": request.model,
        "ar": aspect or (True if sized else None),
        "iw": request.strength,
    }
    overridden = [name for name, option in options.items() if option is not None and name in values]
    if "iw" in values and request.init_image is None:
        raise InvalidRequest("prompt", "--iw weighs an image to start from: attach one")

    def chosen(name: str) -> Any:
        return options[name] if options[name] is not None else values.get(name)

    model = chosen("model")
    if defaults is not None:
        model = model or defaults.model
        defaults = defaults.under(preset_of(model))
    else:
        defaults = Preferences()

    def fallback(name: str, default: Any) -> Any:
        value = chosen(name)
        return default if value is None else value

    negative = ", ".join(part for part in (request.negative_prompt, values.get("no", "")) if part)
    strength = request.strength
    if strength is None and "iw" in values:
        strength = strength_of(values["iw"])
    # The filter reads the words typed in parameters with the prompt; not their numbers,
    # which it would read as letters (a seed of 84552 is not a word).
    words = " ".join(str(values[name]) for name in ("no", "sampler", "model") if name in values)
    changed = dataclasses.replace(
        request,
        prompt=typed.text,
        raw_prompt=request.prompt if values else request.raw_prompt,
        parameter_words=words,
        negative_prompt=negative,
        seed=chosen("seed"),
        steps=fallback("steps", defaults.steps),
        guidance=fallback("cfg", defaults.guidance),
        sampler=fallback("sampler", defaults.sampler),
        model=model,
        strength=strength,
        video=request.video or bool(values.get("video")),
    )
    ratio = aspect if aspect is not None else (None if sized else values.get("ar"))
    model_info = model_of(changed.model)
    # The member's default aspect: for a picture made from nothing (one from an image keeps
    # its shape), on a model that draws more than one size.
    if ratio is None and not sized and request.init_image is None and not model_info.fixed_size:
        ratio = defaults.ratio
    if ratio is not None:
        width, height = sized_on(model_info, ratio, min_side)
        changed = dataclasses.replace(changed, width=width, height=height)
    return changed, overridden


# The setting a refusal of an option may come from.
FROM_SETTINGS = {
    "sampler": "sampler",
    "guidance": "guidance",
    "steps": "steps",
    "width": "aspect",
    "height": "aspect",
    "aspect": "aspect",
    "model": "model",
}


def apply_fitting(
    request: GenerationRequest,
    *,
    check: Callable[[GenerationRequest], object],
    defaults: Preferences | None,
    lenient: Callable[[GenerationRequest], object] | None = None,
    **options: Any,
) -> tuple[GenerationRequest, list[str], list[str]]:
    """``apply``, then ``check`` the result: a refusal that one of the member's settings
    caused (a sampler or guidance the model cannot take, an aspect past its size caps) drops
    that setting and tries again, so a default never makes every job fail. Also the names of
    the settings dropped, for the member to be told. Any other refusal is the ``lenient``
    check's to judge (the service's, which serves a broken server default with the host's
    model), or stands."""
    dropped: list[str] = []
    while True:
        changed, overridden = apply(request, defaults=defaults, **options)
        try:
            check(changed)
        except InvalidRequest as error:
            name = FROM_SETTINGS.get(error.option)
            without = None
            if defaults is not None and name is not None and getattr(defaults, name) is not None:
                unset: dict[str, Any] = {name: None}
                without = dataclasses.replace(defaults, **unset)
            # The setting caused it only if it was applied (a preset's own value wins over it).
            if without is None or apply(request, defaults=without, **options)[0] == changed:
                if lenient is None:
                    raise
                lenient(changed)
                return changed, overridden, dropped
            dropped.append(name)  # type: ignore[arg-type]
            defaults = without
            continue
        return changed, overridden, dropped


# What a remix (the prompt edited before a variation or a reroll) cannot change: the job is
# its parent's picture made again, at its size, on its model, from its image.
FIXED_IN_REMIX = ("ar", "model", "iw")


def remix(request: GenerationRequest, text: str, negative: str) -> GenerationRequest:
    """A derived job's request with its prompt and negative prompt edited in the remix form:
    the parameters typed in the new text (--no, --seed, --steps, --cfg, --sampler) apply to
    it; those that would make another picture (--ar, --model, --iw) are refused."""
    typed = parse(text)
    values = typed.values
    fixed = [f"--{name}" for name in FIXED_IN_REMIX if name in values]
    if fixed:
        raise InvalidRequest(
            "prompt",
            f"{', '.join(fixed)} cannot change in a remix: it varies its parent's picture, at "
            "its size and on its model; ask /imagine for a new one instead",
        )
    negative = ", ".join(part for part in (negative.strip(), values.get("no", "")) if part)
    words = " ".join(str(values[name]) for name in ("no", "sampler") if name in values)
    edited = typed.text != request.prompt or negative != request.negative_prompt
    return dataclasses.replace(
        request,
        remixed=edited,  # the member's own text (the parent's as it was is not theirs)
        prompt=typed.text,
        raw_prompt=text if values else None,
        parameter_words=words,
        negative_prompt=negative,
        seed=values.get("seed", request.seed),
        steps=values.get("steps", request.steps),
        guidance=values.get("cfg", request.guidance),
        sampler=values.get("sampler", request.sampler),
        video=request.video or bool(values.get("video")),
    )
