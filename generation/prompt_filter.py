"""The prompt filter: blocked terms and patterns, matched after undoing the usual disguises.

A term matches a whole word (or several, for a phrase) unless it says otherwise with ``*``:
``*term*`` anywhere, even inside a longer word; ``term*`` at a word's start; ``*term`` at its
end. ``re:PATTERN`` is a regular expression. Before matching, text and terms are folded:
case, accents and other diacritics, leetspeak (4→a, 3→e, 0→o, 1→i, $→s, ...), and spacing or
punctuation inside a word ("n.u.d.e", "n u d e", "nu-de").

A host's ``re:`` patterns run on RE2, which matches in time linear in the text: no pattern can
hold the bot up on a crafted prompt (Python's ``re`` took hours on ``re:(a+)+$`` and forty a's
and a b). A pattern RE2 cannot compile (backreferences, lookaround) is refused at start.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import re2

LEET = str.maketrans(
    {"4": "a", "@": "a", "3": "e", "0": "o", "1": "i", "!": "i", "|": "i", "$": "s", "5": "s",
     "7": "t", "+": "t"}
)  # fmt: skip
REGEX_PREFIX = "re:"


def fold(text: str) -> str:
    """Lower case, without diacritics, leetspeak read as letters."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return plain.casefold().translate(LEET)


def variants(text: str) -> set[str]:
    """The ways a folded text may be read: punctuation inside a word dropped ("n.u.d.e"),
    punctuation as a space ("gore-fest"), runs of single letters joined ("n u d e")."""
    folded = fold(text)
    chunks = folded.split()
    joined = " ".join(re.sub(r"[^a-z]", "", chunk) for chunk in chunks)
    spaced = " ".join(re.findall(r"[a-z]+", folded))
    runs = re.sub(r"\b[a-z](?: [a-z]\b){2,}", lambda m: m.group().replace(" ", ""), spaced)
    return {joined, spaced, runs}


class Matcher(Protocol):
    def search(self, text: str) -> Any: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Term:
    """One blocked term as written, and the pattern that finds it in folded text."""

    source: str
    pattern: Matcher
    anywhere: bool  # ``*term*``: also matched with every space and punctuation removed

    @classmethod
    def parse(cls, written: str) -> Term:
        written = written.strip()
        if written.startswith(REGEX_PREFIX):
            try:
                pattern = re2.compile("(?i)" + written[len(REGEX_PREFIX) :])
            except re2.error as error:
                why = error.args[0] if error.args else error
                why = why.decode() if isinstance(why, bytes) else str(why)
                raise ValueError(
                    f"blocked pattern {written!r} cannot be used: {why} (patterns run on "
                    "RE2: no backreferences or lookaround)"
                ) from error
            return cls(written, pattern, anywhere=False)
        start, end = written.startswith("*"), written.endswith("*")
        words = re.findall(r"[a-z]+", fold(written.strip("*")))
        if not words:
            raise ValueError(f"blocked term {written!r} has no letters to match")
        body = r"\s+".join(map(re.escape, words))
        left = "" if start else r"(?<![a-z])"
        right = "" if end else r"(?![a-z])"
        return cls(written, re.compile(left + body + right), anywhere=start and end)

    def found_in(self, readings: set[str], collapsed: str) -> bool:
        if any(self.pattern.search(reading) for reading in readings):
            return True
        return self.anywhere and self.pattern.search(collapsed) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Blocked:
    """What matched: the term as written and in which option (never shown to the user)."""

    term: str
    option: str


def read_blocklist(path: Path) -> list[str]:
    """One term per line; blank lines and lines starting with ``#`` are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class PromptFilter:
    """Blocked terms for every guild, plus each guild's own."""

    def __init__(
        self, terms: Iterable[str] = (), per_guild: Mapping[int, Iterable[str]] | None = None
    ) -> None:
        self.terms = [Term.parse(t) for t in terms if t.strip()]
        self.per_guild = {
            guild: [Term.parse(t) for t in guild_terms if t.strip()]
            for guild, guild_terms in (per_guild or {}).items()
        }

    def with_terms(self, guild_id: int, terms: Iterable[str]) -> PromptFilter:
        """This filter with more terms for one server (a server's own, from its settings)."""
        joined = PromptFilter()
        joined.terms = self.terms
        joined.per_guild = dict(self.per_guild)
        own = [Term.parse(t) for t in terms if t.strip()]
        joined.per_guild[guild_id] = [*self.per_guild.get(guild_id, []), *own]
        return joined

    def check(
        self, prompt: str, negative_prompt: str = "", guild_id: int | None = None
    ) -> Blocked | None:
        """The first blocked term in the prompt or negative prompt, or None."""
        terms = self.terms + self.per_guild.get(guild_id, []) if guild_id else self.terms
        if not terms:
            return None
        for option, text in (("prompt", prompt), ("negative", negative_prompt)):
            if not text:
                continue
            readings = variants(text) | {fold(text)}
            collapsed = re.sub(r"[^a-z]", "", fold(text))
            for term in terms:
                if term.found_in(readings, collapsed):
                    return Blocked(term.source, option)
        return None
