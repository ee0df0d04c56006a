"""A member's own defaults (``/settings``): the model, aspect, sampler, steps and guidance a new
job takes when its command says nothing of them, and whether the Vary and 🔄 buttons open the
remix form first.

Stored on the member's user row as a small dict; a value that no longer makes sense (a sampler
the host dropped, a number outside the limits) is left out when read, never an error. Where a
job's preset sets a value of its own, the preset's wins: it is the host's tuning of that model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from generation.errors import InvalidRequest
from generation.samplers import SAMPLER_NAMES

# The aspect ratios a member picks from (in /imagine's option and in /settings).
ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
}
MAX_GUIDANCE = 30.0
MAX_NAME = 64  # a model's or preset's name


@dataclasses.dataclass(frozen=True, slots=True)
class Preferences:
    """None (and False) is "not set": the model's or the server's own default."""

    model: str | None = None
    aspect: str | None = None  # one of ASPECTS
    sampler: str | None = None  # one of SAMPLER_NAMES
    steps: int | None = None
    guidance: float | None = None
    remix: bool = False
    private: bool = False  # results to the member alone (a server may forbid or force it)

    @property
    def ratio(self) -> tuple[int, int] | None:
        return ASPECTS.get(self.aspect) if self.aspect else None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, max_steps: int = 150) -> Preferences:
        """The stored settings, keeping only the values that still make sense."""
        values = values or {}
        model = values.get("model")
        steps, guidance = values.get("steps"), values.get("guidance")
        return cls(
            model=model if isinstance(model, str) and 0 < len(model) <= MAX_NAME else None,
            aspect=values.get("aspect") if values.get("aspect") in ASPECTS else None,
            sampler=values.get("sampler") if values.get("sampler") in SAMPLER_NAMES else None,
            steps=steps
            if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= max_steps
            else None,
            guidance=float(guidance)
            if isinstance(guidance, int | float)
            and not isinstance(guidance, bool)
            and math.isfinite(guidance)
            and 0 <= guidance <= MAX_GUIDANCE
            else None,
            remix=values.get("remix") is True,
            private=values.get("private") is True,
        )

    def to_dict(self) -> dict[str, Any] | None:
        """What is stored: the values set (None when nothing is)."""
        values = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) not in (None, False)
        }
        return values or None

    def changed(self, max_steps: int, **values: Any) -> Preferences:
        """These settings with ``values`` changed, each checked: a bad one is refused naming
        the setting and what it takes."""
        for name, value in values.items():
            _check(name, value, max_steps)
        return dataclasses.replace(self, **values)

    def under(self, preset: Any | None) -> Preferences:
        """The settings a job on ``preset`` takes: without those the preset sets itself."""
        if preset is None:
            return self
        return dataclasses.replace(
            self,
            sampler=None if preset.sampler is not None else self.sampler,
            steps=None if preset.steps is not None else self.steps,
            guidance=None if preset.guidance is not None else self.guidance,
            aspect=None if preset.width is not None or preset.height is not None else self.aspect,
        )

    def describe(self) -> list[tuple[str, str]]:
        """Each setting and its value, as /settings shows them."""
        return [
            ("Model", self.model or "the server's default"),
            ("Aspect", self.aspect or "the model's own"),
            ("Sampler", self.sampler or "the model's own"),
            ("Steps", str(self.steps) if self.steps is not None else "the model's own"),
            ("Guidance", f"{self.guidance:g}" if self.guidance is not None else "the model's own"),
            ("Remix", "on: Vary and 🔄 open the prompt to edit first" if self.remix else "off"),
            ("Private mode", "on: results only you see" if self.private else "off"),
        ]


def _check(name: str, value: Any, max_steps: int) -> None:
    if value is None:
        return
    if name == "aspect" and value not in ASPECTS:
        raise InvalidRequest("aspect", f"must be one of {', '.join(ASPECTS)}, not {value!r}")
    if name == "sampler" and value not in SAMPLER_NAMES:
        raise InvalidRequest("sampler", f"must be one of {', '.join(SAMPLER_NAMES)}")
    if name == "steps" and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_steps
    ):
        raise InvalidRequest("steps", f"must be a whole number from 1 to {max_steps}")
    if name == "guidance" and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_GUIDANCE
    ):
        raise InvalidRequest("guidance", f"must be a number from 0 to {MAX_GUIDANCE:g}")
    if name == "model" and (not isinstance(value, str) or not 0 < len(value) <= MAX_NAME):
        raise InvalidRequest("model", f"must be a model's name of at most {MAX_NAME} characters")
    if name in ("remix", "private") and not isinstance(value, bool):
        raise InvalidRequest(name, "must be on or off")
