"""LoRAs: small adapter files a job may add to its model, by name and weight.

The host keeps ``.safetensors`` LoRAs in one folder (``IMAGINE_LORA_DIR``); a LoRA's name is
its file name without the suffix. The catalogue lists them (for autocomplete), reads a file's
header without torch (the bot process checks requests too) to refuse what is not a LoRA or
was made for another family, and hashes it: the recipe records each LoRA's name, sha256 and
weight, and the infotext carries A1111's short hash (``Lora hashes``). The worker loads a
LoRA once per pipeline (peft, through diffusers' ``load_lora_weights``) and switches the
active set per job, unfused, so a weight of 0 gives the base model's pixels exactly.

A1111's ``<lora:NAME:WEIGHT>`` in a prompt is taken out of the text here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from generation.checkpoints import read_safetensors
from generation.errors import InvalidRequest, ModelUnavailable
from generation.model_info import ModelInfo, _cached_hash

logger = logging.getLogger(__name__)

MAX_LORAS = 5  # per job: each costs a little at every step, and a grid of them means little
MAX_LORA_WEIGHT = 4.0  # |weight|: slider LoRAs go negative; beyond this a LoRA only breaks
SUFFIX = ".safetensors"
_LORA_KEY_PARTS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up")
# <lora:NAME> or <lora:NAME:WEIGHT>, as A1111 writes them in a prompt.
_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
# modelspec.architecture / kohya's ss_base_model_version prefixes → family.
_ARCHITECTURES = (
    ("stable-diffusion-xl", "sdxl"),
    ("sdxl", "sdxl"),
    ("stable-diffusion-v1", "sd"),
    ("stable-diffusion-v2", "sd"),
    ("sd_v1", "sd"),
    ("sd_v2", "sd"),
    ("stable-diffusion-3", "sd3"),
    ("sd3", "sd3"),
    ("flux", "flux"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class LoraChoice:
    """A LoRA a request asks for: its name and weight; ``sha256`` when the job must use that
    exact file (making a job again)."""

    name: str
    weight: float = 1.0
    sha256: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LoraFile:
    """A LoRA file as its header and bytes describe it."""

    name: str
    path: Path
    sha256: str  # of the whole file: the recipe's record
    short_hash: str  # A1111's: sha256 of the tensor data after the header, 12 hex digits
    family: str | None  # sd, sdxl, sd3, flux; None: its layout does not say
    text_width: int | None  # the cross-attention width its UNet layers expect
    base_model: str | None  # what it says it was trained on, if it says


def take_tags(prompt: str) -> tuple[str, list[LoraChoice]]:
    """The prompt without its ``<lora:NAME[:WEIGHT]>`` tags, and the LoRAs they ask for."""
    choices = []
    for match in _TAG.finditer(prompt):
        parts = match.group(1).split(":")
        name = parts[0].strip()
        if not name or len(parts) > 2:
            raise InvalidRequest(
                "prompt",
                f"{match.group(0)} is not a LoRA tag: write <lora:NAME> or <lora:NAME:WEIGHT>",
            )
        weight = 1.0
        if len(parts) == 2:
            try:
                weight = float(parts[1])
            except ValueError:
                raise InvalidRequest(
                    "prompt", f"{match.group(0)}: the weight must be a number, like 0.8"
                ) from None
        choices.append(LoraChoice(name, weight))
    text = _TAG.sub(" ", prompt)
    if "<lora:" in text.lower():  # a tag inside a tag: what is left would be read next time
        raise InvalidRequest(
            "prompt", "has a <lora: that is not a whole tag: write <lora:NAME:WEIGHT>"
        )
    return " ".join(text.split()) if choices else prompt, choices


def parse_choice(text: str) -> LoraChoice:
    """``NAME`` or ``NAME:WEIGHT`` (the command line's --lora)."""
    name, colon, weight = text.rpartition(":")
    if not colon:
        name, weight = text, "1"
    try:
        value = float(weight)
    except ValueError:
        raise InvalidRequest("lora", f"{text!r}: write NAME or NAME:WEIGHT, like x:0.8") from None
    if not name.strip():
        raise InvalidRequest("lora", f"{text!r} names no LoRA")
    return LoraChoice(name.strip(), value)


def file_stamp(path: Path) -> tuple[int, ...]:
    """What tells a file changed without reading it: its size, modification and change
    times, and inode (a copy that keeps the old modification time still changes the rest)."""
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


_UNUSABLE = re.compile(r"[<>:,\"\n\r\t]")


def usable_name(name: str) -> bool:
    """A name a prompt tag, ``--lora NAME:WEIGHT``, A1111's ``Lora hashes`` and a Discord
    choice (1-100 characters) can all carry."""
    return 0 < len(name) <= 100 and name == name.strip() and not _UNUSABLE.search(name)


def tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{weight:g}>"


def describe(path: Path, cache_file: Path | None = None) -> LoraFile:
    """Read a LoRA file's header and hash it; refuse a file that is not a LoRA."""
    header, metadata = read_safetensors(path)
    keys = set(header)
    if not any(part in key for key in keys for part in _LORA_KEY_PARTS):
        raise ModelUnavailable(
            f"{path.name} is not a LoRA (none of its tensors is a lora_A/lora_B or "
            "lora_down/lora_up pair): it may be a full model, a VAE or an embedding"
        )
    width = _text_width(header)
    sha256, short = _hashes(path, cache_file)
    return LoraFile(
        name=path.name.removesuffix(SUFFIX),
        path=path,
        sha256=sha256,
        short_hash=short,
        family=_family(keys, metadata, width),
        text_width=width,
        base_model=metadata.get("imagine.base_model") or metadata.get("ss_sd_model_name"),
    )


def _hashes(path: Path, cache_file: Path | None) -> tuple[str, str]:
    """The whole file's sha256 and A1111's short hash, in one read, cached by size and
    modification time."""

    def compute() -> str:
        whole, data = hashlib.sha256(), hashlib.sha256()
        with path.open("rb") as handle:
            head = handle.read(8)
            whole.update(head)
            header = handle.read(int.from_bytes(head, "little"))
            whole.update(header)
            for block in iter(lambda: handle.read(1 << 20), b""):
                whole.update(block)
                data.update(block)
        return f"{whole.hexdigest()}:{data.hexdigest()[:12]}"

    stamp = list(file_stamp(path))
    both = _cached_hash(cache_file, f"lora:{path.resolve()}", stamp, compute)
    sha256, _, short = both.partition(":")
    return sha256, short


def _text_width(header: dict[str, Any]) -> int | None:
    """The text width its cross-attention key layers read (the down matrix's inputs)."""
    for name, entry in header.items():
        flat = name.replace(".", "_")
        if "attn2_to_k" in flat and any(
            part in name for part in ("lora_A.", "lora_down.", "lora.down.")
        ):
            shape = entry.get("shape") or []
            if len(shape) >= 2:
                return int(shape[1])
    return None


def _family(keys: set[str], metadata: dict[str, str], width: int | None) -> str | None:
    said = metadata.get("modelspec.architecture") or metadata.get("ss_base_model_version") or ""
    for prefix, family in _ARCHITECTURES:
        if said.lower().startswith(prefix):
            return family
    starts = tuple(key.split(".")[0] for key in keys)
    if any(key.startswith(("lora_te2_", "text_encoder_2.")) for key in keys) or any(
        start.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle"))
        for start in starts
    ):
        return "sdxl"
    if any(
        key.startswith(("lora_unet_double_blocks", "lora_unet_single_blocks"))
        or "single_transformer_blocks" in key
        for key in keys
    ):
        return "flux"
    if any(key.startswith(("transformer.", "lora_transformer_")) for key in keys):
        return "sd3"
    if any(key.startswith(("unet.", "lora_unet_", "lora_te_", "text_encoder.")) for key in keys):
        return "sdxl" if width == 2048 else "sd"
    return None


class LoraLayout(Protocol):
    """What a LoRA's header says it was made for."""

    @property
    def name(self) -> str: ...
    @property
    def family(self) -> str | None: ...
    @property
    def text_width(self) -> int | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    name: str
    family: str | None
    text_width: int | None


def check_fits(lora: LoraLayout, model: ModelInfo) -> None:
    """Refuse a LoRA made for another family (or another text width) than ``model``."""
    if model.engine != "diffusers" or model.family == "upscaler":
        raise InvalidRequest("lora", f"{model.name} takes no LoRA")
    made_for = lora.family
    if made_for is not None and made_for != model.family:
        raise InvalidRequest(
            "lora",
            f"{lora.name} was made for {_label(made_for)} models; {model.name} is "
            f"{model.family_label}: pick a LoRA made for it",
        )
    if lora.text_width and model.text_width and lora.text_width != model.text_width:
        raise InvalidRequest(
            "lora",
            f"{lora.name} was made for a model whose text encoder is {lora.text_width} wide; "
            f"{model.name}'s is {model.text_width}: it was trained on another model",
        )


def _fits(family: str | None, width: int | None, model: ModelInfo) -> bool:
    try:
        check_fits(_Layout("", family, width), model)
    except InvalidRequest:
        return False
    return True


def _label(family: str) -> str:
    return {"sd": "SD 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}.get(family, family)


class LoraCatalogue:
    """The LoRAs in one folder, by name; described (header and hashes) when first asked for."""

    def __init__(self, folder: Path | None, cache_file: Path | None = None) -> None:
        self.folder = folder
        self.cache_file = cache_file
        self._described: dict[str, tuple[tuple[int, ...], LoraFile]] = {}
        self._layouts: dict[str, tuple[tuple[int, ...], tuple[str | None, int | None]]] = {}
        self._listing: tuple[tuple[int, int], list[str]] | None = None

    def names(self) -> list[str]:
        """Every usable LoRA's name, sorted; the folder is listed again when it changes. A
        name a prompt tag, the infotext or Discord could not carry is left out (see
        ``usable_name``)."""
        if self.folder is None:
            return []
        try:
            stat = self.folder.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if self._listing is not None and self._listing[0] == stamp:
                return self._listing[1]
            listed = sorted(
                path.name.removesuffix(SUFFIX)
                for path in self.folder.iterdir()
                if path.name.endswith(SUFFIX)
                and usable_name(path.name.removesuffix(SUFFIX))
                and path.is_file()
            )
        except OSError:  # gone, or not readable: no LoRAs, said when one is asked for
            return []
        self._listing = (stamp, listed)
        return listed

    def search(self, text: str, limit: int = 25) -> list[str]:
        """Names for autocomplete: those starting with ``text`` first, then containing it."""
        needle = text.strip().lower()
        names = self.names()
        first = [name for name in names if name.lower().startswith(needle)]
        then = [name for name in names if needle in name.lower() and name not in first]
        return (first + then)[:limit]

    def suggest(self, text: str, model: ModelInfo, limit: int = 25) -> list[str]:
        """Names for autocomplete that fit ``model`` (judged from headers alone, cached:
        hashing waits until a LoRA is asked for) and Discord can carry (100 characters)."""
        fitting = []
        for name in self.search(text, limit=len(self.names())):
            if len(name) > 100:
                continue
            assert self.folder is not None
            try:
                family, width = self._layout(self.folder / f"{name}{SUFFIX}")
            except Exception as error:  # asked for by name, it is refused with the reason
                logger.debug("LoRA %s not suggested: %s", name, error)
                continue
            if _fits(family, width, model):
                fitting.append(name)
                if len(fitting) == limit:
                    break
        return fitting

    def _layout(self, path: Path) -> tuple[str | None, int | None]:
        stamp = file_stamp(path)
        known = self._layouts.get(path.name)
        if known is None or known[0] != stamp:
            header, metadata = read_safetensors(path)
            width = _text_width(header)
            known = (stamp, (_family(set(header), metadata, width), width))
            self._layouts[path.name] = known
        return known[1]

    def warm(self) -> None:
        """Describe and hash every LoRA now (a thread at start), so that no request waits on
        hashing a file; what cannot be used is logged."""
        for name in self.names():
            try:
                self.find(name)
            except InvalidRequest as error:
                logger.warning("LoRA %s cannot be used: %s", name, error.message)

    def find(self, name: str) -> LoraFile:
        """The LoRA called ``name``; refused naming the ones there are."""
        names = self.names()
        if name not in names:
            if self.folder is None or not self.folder.is_dir():
                where = f"this host has no LoRA folder ({self.folder} is not one: IMAGINE_LORA_DIR)"
            elif not names:
                where = f"this host has no LoRAs ({self.folder} holds no *.safetensors)"
            else:
                close = self.search(name[:3], limit=10) or names[:10]
                where = f"some there are: {', '.join(close)}"
            raise InvalidRequest("lora", f"there is no LoRA called {name!r}; {where}")
        assert self.folder is not None
        path = self.folder / f"{name}{SUFFIX}"
        try:
            stamp = file_stamp(path)
        except OSError as error:
            raise InvalidRequest("lora", f"{name} cannot be read ({error.strerror})") from None
        known = self._described.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            lora = describe(path, self.cache_file)
        except ModelUnavailable as error:
            raise InvalidRequest("lora", str(error)) from error
        except OSError as error:
            raise InvalidRequest("lora", f"{name} cannot be read ({error.strerror})") from None
        self._described[name] = (stamp, lora)
        return lora

    def resolve(
        self, choices: Sequence[LoraChoice], model: ModelInfo
    ) -> tuple[tuple[LoraFile, float], ...]:
        """Each asked-for LoRA, checked: it exists, fits the model, is named once, its weight
        is within range, and (when the request pins one) it is the same file."""
        if len(choices) > MAX_LORAS:
            raise InvalidRequest("lora", f"at most {MAX_LORAS} LoRAs a job, not {len(choices)}")
        seen: set[str] = set()
        resolved: list[tuple[LoraFile, float]] = []
        for choice in choices:
            if choice.name in seen:
                raise InvalidRequest("lora", f"{choice.name} is named twice: name it once")
            seen.add(choice.name)
            if not -MAX_LORA_WEIGHT <= choice.weight <= MAX_LORA_WEIGHT:
                raise InvalidRequest(
                    "lora_weight",
                    f"must be between {-MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}, not "
                    f"{choice.weight:g} ({choice.name})",
                )
            lora = self.find(choice.name)
            check_fits(lora, model)
            twin = next((other for other, _ in resolved if other.sha256 == lora.sha256), None)
            if twin is not None:
                raise InvalidRequest(
                    "lora", f"{choice.name} and {twin.name} are the same file: name it once"
                )
            if choice.sha256 is not None and choice.sha256 != lora.sha256:
                raise InvalidRequest(
                    "lora",
                    f"{choice.name} has changed since the job was made (sha256 "
                    f"{choice.sha256[:12]}…, now {lora.sha256[:12]}…): it cannot be made again",
                )
            resolved.append((lora, float(choice.weight)))
        return tuple(resolved)


def recorded(loras: Iterable[tuple[LoraFile, float]]) -> list[dict[str, Any]]:
    """What a job row keeps of its LoRAs."""
    return [
        {"name": lora.name, "sha256": lora.sha256, "short_hash": lora.short_hash, "weight": weight}
        for lora, weight in loras
    ]


def choices_of(recorded_loras: Iterable[dict[str, Any]], *, exact: bool) -> tuple[LoraChoice, ...]:
    """A job's LoRAs as a request asks for them again (``exact``: the same files)."""
    return tuple(
        LoraChoice(
            str(entry["name"]),
            float(entry["weight"]),
            str(entry["sha256"]) if exact else None,
        )
        for entry in recorded_loras
    )
