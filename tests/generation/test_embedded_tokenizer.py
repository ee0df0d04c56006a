"""The embedded world's tokenizer: caption words are one token each, anything else bytes."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from generation.embedded.tokenizer import WORLD_WORDS, bpe, word_merges, write_world_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_world_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=32)


def test_every_world_word_is_one_token(tokenizer: CLIPTokenizer) -> None:
    for word in WORLD_WORDS:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word


def test_a_merge_learnt_for_one_word_does_not_split_another(tokenizer: CLIPTokenizer) -> None:
    # (r, e) from "red" would cut "green" into g/re/e/n if ranked naively.
    assert tokenizer.tokenize("red green orange") == ["red</w>", "green</w>", "orange</w>"]
    ranks = {pair: rank for rank, pair in enumerate(word_merges(["red", "green"]))}
    assert bpe("green", ranks) == ["green</w>"]
    assert bpe("red", ranks) == ["red</w>"]


def test_other_text_falls_back_to_bytes_never_unknown(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer("a cat wearing a hat, 🎩").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>"
    assert tokens[-1] == "<|endoftext|>"
    assert "<|endoftext|>" not in tokens[1:-1]
    assert "cat" not in tokens  # not a world word: spelled out in pieces


def test_our_bpe_agrees_with_the_real_tokenizer(tokenizer: CLIPTokenizer) -> None:
    ranks = {pair: rank for rank, pair in enumerate(word_merges(WORLD_WORDS))}
    for word in ("greenish", "bluer", "triangles", "rectangle", "backgrounds", "at", "zebra"):
        assert tokenizer.tokenize(word) == bpe(word, ranks), word
