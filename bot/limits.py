"""Discord's documented limits, and a message that keeps within them.

Every message the bot sends is a ``Message`` built in ``bot.messages``; this module knows the
numbers (counted as Discord counts them, in UTF-16 code units) and the means to stay under
them: clipping, escaping what users typed, and a check that names what is over.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from typing import Any

import discord

logger = logging.getLogger(__name__)

CONTENT = 2000
EMBEDS = 10
EMBED_TOTAL = 6000
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
ROWS = 5
PER_ROW = 5
CUSTOM_ID = 100
BUTTON_LABEL = 80
ATTACHMENTS = 10
# What a file may weigh where nothing else is known: a server without boosts, and DMs.
DEFAULT_FILE_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
MORE = "…"
# A link in what a user typed: shown as <link>, which Discord never unfurls into a preview.
LINK = re.compile(r"(?:https?|steam|discord)://[^\s<>]*[^\s<>.,;:!?'\"()\[\]]", re.IGNORECASE)
# Everything Discord's markdown gives a meaning to (emphasis, spoilers, code, quotes, headings,
# lists, masked links, mentions, channels, timestamps, emoji), a dot inside a word, so
# "discord.gg/x" is no invite, and the colon of a "://" that is no whole link (a cut one).
MARKUP = re.compile(r"[\\*_~`|>#\-\[\]()<]|\.(?=\w)|:(?=//)")


def units(text: str) -> int:
    """A string's length as Discord counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le", errors="surrogatepass")) // 2


def clip(text: str, limit: int, marker: str = MORE) -> str:
    """``text`` if it fits in ``limit`` units, else its start and ``marker``; never splits a
    character."""
    if units(text) <= limit:
        return text
    room = limit - units(marker)
    kept: list[str] = []
    used = 0
    for character in text:
        size = units(character)
        if used + size > room:
            break
        kept.append(character)
        used += size
    return "".join(kept) + marker


def escape(text: str) -> str:
    """What a user typed, shown as typed, on one line: every markdown character escaped (so
    no masked link, spoiler or heading), mentions broken, links in <> so none unfurls."""
    shown: list[str] = []
    start = 0
    for link in LINK.finditer(text):
        shown += [_escape_words(text[start : link.start()]), f"<{link.group()}>"]
        start = link.end()
    shown.append(_escape_words(text[start:]))
    return "".join(shown)


def _escape_words(text: str) -> str:
    flat = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return discord.utils.escape_mentions(MARKUP.sub(lambda m: "\\" + m.group(), flat))


def quote(text: str, limit: int) -> str:
    """``text`` escaped and, if need be, cut (before escaping, so no escape is split) to fit
    ``limit`` units with a trailing "…"."""
    escaped = escape(text)
    if units(escaped) <= limit:
        return escaped
    low, high = 0, len(text)
    while low < high:  # the longest prefix whose escaped form fits beside the marker
        middle = (low + high + 1) // 2
        if units(escape(text[:middle])) + units(MORE) <= limit:
            low = middle
        else:
            high = middle - 1
    return escape(text[:low]) + MORE


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    """A file to attach, as bytes: a ``discord.File`` can be sent only once, this any time."""

    filename: str
    data: bytes

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


@dataclasses.dataclass
class Message:
    """What one message holds, within Discord's limits when built by ``bot.messages``."""

    content: str = ""
    embeds: list[discord.Embed] = dataclasses.field(default_factory=list)
    view: discord.ui.View | None = None
    uploads: list[Upload] = dataclasses.field(default_factory=list)

    def problems(self, file_limit: int = DEFAULT_FILE_LIMIT) -> list[str]:
        """What Discord would refuse in this message; empty when it fits."""
        found = []
        if units(self.content) > CONTENT:
            found.append(f"content is {units(self.content)} units, over {CONTENT}")
        if not (self.content or self.embeds or self.uploads or self.view):
            found.append("the message is empty")
        found += _embed_problems(self.embeds)
        found += _component_problems(self.view.to_components() if self.view else [])
        if len(self.uploads) > ATTACHMENTS:
            found.append(f"{len(self.uploads)} files, over {ATTACHMENTS}")
        found += [
            f"{upload.filename} is {len(upload.data)} bytes, over {file_limit}"
            for upload in self.uploads
            if len(upload.data) > file_limit
        ]
        return found

    def _guarded(self) -> Message:
        """The last line of defence: a builder's bug is logged and the content cut, rather than
        the whole message refused."""
        problems = self.problems(file_limit=2**63)
        if problems:
            logger.error("a message breaks Discord's limits: %s", "; ".join(problems))
        if units(self.content) > CONTENT:
            return dataclasses.replace(self, content=clip(self.content, CONTENT))
        return self

    def send_kwargs(self) -> dict[str, Any]:
        """For ``send``, ``send_message`` and ``followup.send``."""
        message = self._guarded()
        kwargs: dict[str, Any] = {"content": message.content or None}
        if message.embeds:
            kwargs["embeds"] = message.embeds
        if message.view is not None:
            kwargs["view"] = message.view
        if message.uploads:
            kwargs["files"] = [upload.file() for upload in message.uploads]
        return kwargs

    def edit_kwargs(self, *, keep_files: bool = False) -> dict[str, Any]:
        """For edits: replaces the content, embeds, components and files that were there (the
        files stay when ``keep_files`` and this message brings none)."""
        message = self._guarded()
        kwargs: dict[str, Any] = {
            "content": message.content or None,
            "embeds": message.embeds,
            "view": message.view,
        }
        if message.uploads or not keep_files:
            kwargs["attachments"] = [upload.file() for upload in message.uploads]
        return kwargs


def _embed_problems(embeds: list[discord.Embed]) -> list[str]:
    found = []
    if len(embeds) > EMBEDS:
        found.append(f"{len(embeds)} embeds, over {EMBEDS}")
    total = 0
    for number, embed in enumerate(embeds):
        texts = {
            "title": (embed.title or "", EMBED_TITLE),
            "description": (embed.description or "", EMBED_DESCRIPTION),
            "footer": (embed.footer.text or "", FOOTER),
        }
        for position, field in enumerate(embed.fields):
            texts[f"field {position} name"] = (field.name or "", FIELD_NAME)
            texts[f"field {position} value"] = (field.value or "", FIELD_VALUE)
        if len(embed.fields) > EMBED_FIELDS:
            found.append(f"embed {number} has {len(embed.fields)} fields, over {EMBED_FIELDS}")
        for name, (text, limit) in texts.items():
            total += units(text)
            if units(text) > limit:
                found.append(f"embed {number} {name} is {units(text)} units, over {limit}")
    if total > EMBED_TOTAL:
        found.append(f"embeds hold {total} units, over {EMBED_TOTAL}")
    return found


def _component_problems(rows: list[dict[str, Any]]) -> list[str]:
    found = []
    if len(rows) > ROWS:
        found.append(f"{len(rows)} rows, over {ROWS}")
    seen: set[str] = set()
    for row in rows:
        items = row.get("components", [])
        if len(items) > PER_ROW:
            found.append(f"a row of {len(items)}, over {PER_ROW}")
        for item in items:
            custom_id = item.get("custom_id", "")
            if units(custom_id) > CUSTOM_ID:
                found.append(f"custom id {custom_id!r} is over {CUSTOM_ID}")
            if custom_id and custom_id in seen:
                found.append(f"custom id {custom_id!r} is repeated")
            seen.add(custom_id)
            if units(item.get("label") or "") > BUTTON_LABEL:
                found.append(f"label {item['label']!r} is over {BUTTON_LABEL}")
    return found
