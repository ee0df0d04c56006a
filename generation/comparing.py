"""Comparison grids: one image made again with one knob turned, a cell per value, everything
else equal (the same seed, unless the seed is the knob).

A comparison is one job of kind ``compare``; ``jobs.compare`` holds the knob, its values and
each cell's own recipe (``cells``: the fields that differ from the job's), as validated. Cell
*i* is its own picture, so its upscale, variation or reproduction starts from its recipe
(``cell``), never from "seed + i".
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from generation.errors import InvalidRequest
from generation.loras import LoraChoice
from generation.requests import MAX_SEED, GenerationRequest, Recipe
from storage.models import JobKind
from storage.records import JobRecord

# What may be turned, and what a value of each is.
KNOBS = {
    "guidance": "numbers, such as 3, 5, 7, 9",
    "steps": "whole numbers, such as 10, 20, 30",
    "sampler": "samplers' names, such as Euler, DDIM",
    "seed": "whole numbers",
    "lora": "weights of the image's one LoRA, such as 0.25, 0.5, 1",
    "word": "words, each put in the place of one word of the prompt (word:WORD)",
}
# How each is named to a member (Discord's picker and forms).
KNOB_NAMES = {
    "guidance": "guidance",
    "steps": "steps",
    "sampler": "samplers",
    "seed": "seeds",
    "lora": "LoRA weight",
    "word": "a word of the prompt",
}
MIN_VALUES, MAX_VALUES = 2, 4
MAX_WORD = 40  # a word of the prompt, or what takes its place
# The fields of a cell's recipe that may differ from its comparison's.
CELL_FIELDS = (
    "prompt",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "scheduler",
    "scheduler_options",
    "loras",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    knob: str
    values: tuple[Any, ...]
    word: str = ""  # knob "word": the prompt's word each value takes the place of

    @classmethod
    def parse(cls, knob: str, values: str | Sequence[str]) -> Comparison:
        """From what a member typed: ``knob`` (``word:WORD`` for a word of the prompt) and
        the values, comma-separated or listed."""
        knob = knob.strip()
        name, _, word = knob.partition(":")
        name = name.strip().lower()
        if name not in KNOBS:
            listed = ", ".join(KNOBS)
            raise InvalidRequest("knob", f"must be one of {listed}, not {knob!r}")
        if name == "word" and not word.strip():
            raise InvalidRequest("knob", "names the word to swap: word:WORD, such as word:red")
        if name != "word" and word:
            raise InvalidRequest("knob", f"{name} takes no word after it")
        typed = values.split(",") if isinstance(values, str) else list(values)
        return cls.of(name, [value.strip() for value in typed if value.strip()], word.strip())

    @classmethod
    def of(cls, knob: str, values: Sequence[Any], word: str = "") -> Comparison:
        if not MIN_VALUES <= len(values) <= MAX_VALUES:
            raise InvalidRequest(
                "values", f"must be {MIN_VALUES} to {MAX_VALUES} values, not {len(values)}"
            )
        read = tuple(_value(knob, value) for value in values)
        if len(set(read)) != len(read):
            raise InvalidRequest("values", "must differ from each other")
        if knob == "word":
            word = word.strip()
            if not word or len(word) > MAX_WORD or not re.fullmatch(r"[\w'-]+", word):
                raise InvalidRequest("knob", f"word:{word} is not one word of the prompt")
        return cls(knob, read, word if knob == "word" else "")

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"knob": self.knob, "values": list(self.values)}
        if self.word:
            values["word"] = self.word
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Comparison:
        """The recorded comparison, checked again (a refusal, never a crash)."""
        try:
            return cls.of(str(values["knob"]), list(values["values"]), str(values.get("word", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidRequest(
                "compare", f"is not a comparison this bot reads: {error}"
            ) from None

    def again(self) -> Comparison:
        """The comparison a reroll makes: new seeds, where the seed is the knob."""
        if self.knob != "seed":
            return self
        return Comparison.of("seed", [secrets.randbelow(MAX_SEED + 1) for _ in self.values])

    def labels(self) -> list[str]:
        """What each cell of the grid is labelled with."""
        short = {"guidance": "cfg ", "steps": "steps ", "seed": "seed ", "lora": "lora "}
        return [
            f"{short.get(self.knob, '')}{value:g}"
            if isinstance(value, float)
            else f"{short.get(self.knob, '')}{value}"
            for value in self.values
        ]

    def describe(self) -> str:
        what = f"“{self.word}” as" if self.knob == "word" else self.knob
        return f"Compare {what} {', '.join(self.labels())}"

    def request_for(self, request: GenerationRequest, index: int) -> GenerationRequest:
        """Cell ``index``'s request: ``request`` with the knob at that value."""
        value = self.values[index]
        if self.knob == "guidance":
            return dataclasses.replace(request, guidance=value)
        if self.knob == "steps":
            return dataclasses.replace(request, steps=value)
        if self.knob == "sampler":  # its own scheduler (a recorded one is the source's)
            return dataclasses.replace(
                request, sampler=value, scheduler=None, scheduler_options=None
            )
        if self.knob == "seed":
            return dataclasses.replace(request, seed=value)
        if self.knob == "lora":
            if len(request.loras) != 1:
                raise InvalidRequest(
                    "knob",
                    "lora compares the weight of an image's one LoRA; this image has "
                    f"{len(request.loras) or 'none'}",
                )
            (lora,) = request.loras
            return dataclasses.replace(request, loras=(LoraChoice(lora.name, value, lora.sha256),))
        pattern = re.compile(rf"(?<![\w'-]){re.escape(self.word)}(?![\w'-])", re.IGNORECASE)
        if not pattern.search(request.prompt):
            raise InvalidRequest("knob", f"the prompt has no word {self.word!r} to swap")
        # A function, not a template: a value's backslashes are text.
        return dataclasses.replace(
            request, prompt=pattern.sub(lambda _: str(value), request.prompt)
        )


def _value(knob: str, value: Any) -> Any:
    text = str(value).strip()
    try:
        if knob in ("guidance", "lora"):
            return float(text)
        if knob in ("steps", "seed"):
            return int(text)
    except ValueError:
        raise InvalidRequest("values", f"{knob} takes {KNOBS[knob]}, not {text!r}") from None
    if not text or len(text) > MAX_WORD:
        raise InvalidRequest("values", f"must be 1 to {MAX_WORD} characters each")
    return text


def cell_fields(recipe: Recipe) -> dict[str, Any]:
    """What a validated cell's recipe records in its comparison."""
    return {name: getattr(recipe, name) for name in CELL_FIELDS}


def cell(job: JobRecord, index: int) -> JobRecord:
    """Cell ``index`` of a comparison as a job of its own: one image made from the prompt
    with the cell's settings (what its upscale, variation or edit starts from)."""
    if not job.compare:
        return job
    cells = job.compare.get("cells") or []
    if not 0 <= index < len(cells):
        raise InvalidRequest("image", f"must be one of 0 to {len(cells) - 1}")
    fields = {name: cells[index][name] for name in CELL_FIELDS if name in cells[index]}
    return dataclasses.replace(job, kind=JobKind.TXT2IMG, count=1, **fields)


def validate_comparison(
    request: GenerationRequest, validate: Callable[[GenerationRequest], Recipe], max_count: int
) -> Recipe:
    """A comparison's recipe: its own fields are the image it remakes (``request``, its seed
    that image's), validated as that image; each cell is that request with the knob at one
    value, validated on its own (so a value the model refuses is named), and recorded."""
    if request.kind is not JobKind.COMPARE or request.compare is None:
        raise InvalidRequest("compare", "a comparison names its knob and values, and only it")
    comparison = Comparison.from_dict(request.compare)
    if len(comparison.values) > max_count:
        raise InvalidRequest(
            "values",
            f"this host makes at most {max_count} images a job, not {len(comparison.values)}",
        )
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    base = dataclasses.replace(
        request, kind=JobKind.TXT2IMG, compare=None, count=1, seed=seed, video=False
    )
    source = validate(base)
    # Made again (/reproduce): each cell's scheduler as it ran, not as its sampler maps today.
    recorded = request.compare.get("cells") if request.reproduces_job_id is not None else None
    cells = []
    for index in range(len(comparison.values)):
        asked = comparison.request_for(base, index)
        if recorded and index < len(recorded) and recorded[index].get("scheduler"):
            asked = dataclasses.replace(
                asked,
                scheduler=recorded[index]["scheduler"],
                scheduler_options=dict(recorded[index].get("scheduler_options") or {}),
            )
        cells.append(validate(asked))
    return dataclasses.replace(
        source,
        kind=JobKind.COMPARE,
        count=len(cells),
        compare={**comparison.to_dict(), "cells": [cell_fields(recipe) for recipe in cells]},
    )
