"""The image safety check: a classifier behind a small interface, and each guild's policy."""

from __future__ import annotations

import dataclasses
import importlib
import io
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from PIL import Image

logger = logging.getLogger(__name__)

ACTIONS = ("spoiler", "withhold", "off")
# NudeNet's labels that make an image one to flag; faces, feet and covered parts do not.
NUDENET_UNSAFE = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)


class SafetyChecker(Protocol):
    """Scores an image: label → confidence in [0, 1]; an empty dict when nothing was found.
    That is all a host's own checker needs; a ``name`` attribute is optional."""

    def scores(self, image: Image.Image) -> dict[str, float]: ...


def checker_name(checker: SafetyChecker | None) -> str:
    """How events name the checker: its ``name``, else its class's."""
    if checker is None:
        return "none"
    return str(getattr(checker, "name", type(checker).__name__))


class NudeNetChecker:
    """NudeNet's detector (an ONNX model inside its wheel): offline, CPU, about 0.1 s an image.

    NudeNet is an optional extra (``pip install 'imagine-bot[nudenet]'``): its wheel says MIT
    but ships AGPL-3.0 licence files, so a host opts in knowingly (see the README).
    """

    name = "nudenet"

    def __init__(self) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as error:
            raise RuntimeError(
                "IMAGINE_SAFETY_CHECKER=nudenet needs the nudenet extra: "
                "pip install 'imagine-bot[nudenet]' (AGPL-3.0; see the README)"
            ) from error
        self._detector = NudeDetector()

    def scores(self, image: Image.Image) -> dict[str, float]:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        found: dict[str, float] = {}
        for detection in self._detector.detect(buffer.getvalue()):
            label = str(detection["class"])
            if label in NUDENET_UNSAFE:
                found[label] = max(found.get(label, 0.0), round(float(detection["score"]), 4))
        return found


def load_checker(name: str) -> SafetyChecker | None:
    """``nudenet``, ``off``, ``auto`` (nudenet when installed), or ``module:Class`` for a
    host's own checker (built with no arguments)."""
    if name == "off":
        return None
    if name == "auto":
        try:
            return NudeNetChecker()
        except RuntimeError:
            logger.warning(
                "no image safety check: install the nudenet extra or set "
                "IMAGINE_SAFETY_CHECKER (off silences this)"
            )
            return None
    if name == "nudenet":
        return NudeNetChecker()
    module, _, attribute = name.partition(":")
    if not attribute:
        raise ValueError(
            f"IMAGINE_SAFETY_CHECKER must be auto, nudenet, off or module:Class, not {name!r}"
        )
    checker: Any = getattr(importlib.import_module(module), attribute)()
    return checker  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """What happens to a flagged image, per guild: ``spoiler`` (shown behind a spoiler),
    ``withhold`` (not shown; the user and moderators are told) or ``off`` (not checked)."""

    action: str = "spoiler"
    per_guild: Mapping[int, str] = dataclasses.field(default_factory=dict)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for action in (self.action, *self.per_guild.values()):
            if action not in ACTIONS:
                raise ValueError(
                    f"safety policy must be one of {', '.join(ACTIONS)}, not {action!r}"
                )

    def for_guild(self, guild_id: int | None) -> str:
        if guild_id is None:
            return self.action
        return self.per_guild.get(guild_id, self.action)

    def flagged(self, scores: Mapping[str, float]) -> bool:
        return max(scores.values(), default=0.0) >= self.threshold
