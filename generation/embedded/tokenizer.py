"""A small CLIP tokenizer for the embedded world: its words are single tokens, the rest bytes.

CLIP's BPE merges the lowest-ranked adjacent pair first, so merges learnt for one word can
split another ("red" would cut "green" into g/re/e/n). The merges are built word by word,
each new merge ranked after all earlier ones and taken from the word as the merges so far
leave it; a word that is already one token has no pair left to merge, so later merges never
disturb it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from generation.embedded.world import COLOURS, POSITIONS, SHAPES, SIZES

END = "</w>"
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
MAX_LENGTH = 32
WORLD_WORDS = (
    *COLOURS,
    *SHAPES,
    *SIZES,
    *POSITIONS,
    "a",
    "an",
    "the",
    "on",
    "at",
    "in",
    "of",
    "with",
    "and",
    "background",
    "middle",
    "shape",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lower-case word: merge the lowest-ranked adjacent pair while any is."""
    tokens = [*word[:-1], word[-1] + END]
    while len(tokens) > 1:
        pairs = [
            (ranks.get(pair, len(ranks) + 1), i, pair)
            for i, pair in enumerate(itertools.pairwise(tokens))
        ]
        rank, index, pair = min(pairs)
        if rank > len(ranks):
            break
        tokens[index : index + 2] = ["".join(pair)]
    return tokens


def word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges, in rank order, that make each of ``words`` one token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        while len(tokens := bpe(word, ranks)) > 1:
            pair = (tokens[0], tokens[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def write_world_tokenizer(
    folder: Path, words: Iterable[str] = WORLD_WORDS, max_length: int = MAX_LENGTH
) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; return the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    merges = word_merges(words)
    vocab: dict[str, int] = {}
    for token in [
        *alphabet,
        *(char + END for char in alphabet),
        *("".join(m) for m in merges),
        *SPECIALS,
    ]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "model_max_length": max_length,
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
        "unk_token": SPECIALS[1],
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)
