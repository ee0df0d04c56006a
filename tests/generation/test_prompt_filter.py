"""The prompt filter: blocked after each normalisation, and near-misses that must pass."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from generation.prompt_filter import Blocked, PromptFilter, Term, read_blocklist

FILTER = PromptFilter(
    ["nude", "gore", "blood bath", "*porn*", "kill*", "re:\\bswas?tika\\b", "ass"],
    per_guild={42: ["spider"]},
)


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        ("a nude figure", "nude"),
        ("A NUDE figure", "nude"),  # case
        ("a nüde figure", "nude"),  # diacritics
        ("a ňùďé figure", "nude"),  # several diacritics
        ("a nud3 figure", "nude"),  # leetspeak 3→e
        ("g0re everywhere", "gore"),  # 0→o
        ("$w4stika flag", "re:\\bswas?tika\\b"),  # $→s, 4→a, into a regex
        ("n.u.d.e", "nude"),  # punctuation inside a word
        ("n u d e portrait", "nude"),  # spacing inside a word
        ("nu-de portrait", "nude"),
        ("gore-fest", "gore"),  # a word joined to another by punctuation
        ("a blood   bath", "blood bath"),  # a phrase, whatever the spacing
        ("a blood-bath", "blood bath"),
        ("pornographic", "*porn*"),  # a term marked to match inside words
        ("p o r n", "*porn*"),
        ("xxxp0rnxxx", "*porn*"),
        ("killing spree", "kill*"),  # a term marked to match word starts
        ("an ass", "ass"),
    ],
)
def test_blocked_after_each_normalisation(prompt: str, term: str) -> None:
    blocked = FILTER.check(prompt)
    assert blocked is not None, prompt
    assert (blocked.term, blocked.option) == (term, "prompt")


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle on a blue background",
        "a class portrait",  # "ass" is a whole-word term: inside "class" it passes
        "passionate brass band",
        "denuded hills",  # "nude" inside a longer word
        "a nudibranch sea slug",
        "skill tree, overkill",  # "kill*" only at a word's start
        "blood orange on a bathroom shelf",  # the phrase's words, apart
        "the spider",  # blocked in guild 42 only
        "1 girl, 4 cats",
    ],
)
def test_near_misses_pass(prompt: str) -> None:
    assert FILTER.check(prompt) is None, FILTER.check(prompt)


def test_the_negative_prompt_is_checked_and_named() -> None:
    blocked = FILTER.check("a portrait", "gore")
    assert blocked is not None and blocked.option == "negative"


def test_a_guild_adds_its_own_terms() -> None:
    assert FILTER.check("the spider", guild_id=42) is not None
    assert FILTER.check("the spider", guild_id=7) is None


def test_a_blocklist_file_and_bad_entries(tmp_path: Path) -> None:
    listing = tmp_path / "blocked.txt"
    listing.write_text("# comment\nnude\n\n  re:^bad.*word$  \n", encoding="utf-8")
    assert read_blocklist(listing) == ["nude", "re:^bad.*word$"]
    with pytest.raises(ValueError, match=r"re:\(. cannot be used: missing \)"):
        Term.parse("re:(")
    with pytest.raises(ValueError, match="no letters"):
        Term.parse("***")


def test_a_pattern_that_backtracks_runs_in_linear_time() -> None:
    """On Python's re, this pattern and a 41-character prompt took hours on the event loop."""
    catastrophic = PromptFilter(["re:(a+)+$"])
    started = time.perf_counter()
    assert catastrophic.check("a" * 40 + "b") is None
    assert catastrophic.check("a" * 10_000 + "b") is None
    assert time.perf_counter() - started < 0.5
    assert catastrophic.check("aaaa") == Blocked("re:(a+)+$", "prompt")


def test_a_pattern_re2_cannot_run_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"re:\(a\)\\\\1.*backreferences"):
        PromptFilter(["re:(a)\\1"])
    with pytest.raises(ValueError, match="lookaround"):
        PromptFilter((), per_guild={42: ["re:foo(?=bar)"]})
