"""Describing a model from its configs: sizes, revision, and clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from generation.errors import ModelUnavailable
from generation.model_info import HASH_CACHE, ModelInfo, content_hash, describe_model


def test_the_embedded_model_is_described_from_its_configs(model: ModelInfo) -> None:
    assert (model.native_width, model.native_height) == (64, 64)  # sample 16 × VAE factor 4
    assert (model.default_steps, model.default_guidance) == (10, 3.0)
    assert model.scheduler == "DPMSolverMultistepScheduler"
    assert model.local and len(model.revision) == 12


def test_a_local_folder_is_identified_by_its_content(model: ModelInfo, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model.path, copy)
    assert describe_model(str(copy), tmp_path / "models").revision == model.revision
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    assert describe_model(str(copy), tmp_path / "models").revision != model.revision


def test_the_content_hash_is_cached_until_a_file_changes(model: ModelInfo, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model.path, copy)
    cache = tmp_path / HASH_CACHE
    real = content_hash(copy, cache)
    stored = json.loads(cache.read_text())
    stored[str(copy.resolve())]["hash"] = "from-the-cache"
    cache.write_text(json.dumps(stored))
    assert content_hash(copy, cache) == "from-the-cache"  # no file changed: not hashed again
    with (copy / "model_index.json").open("a") as handle:
        handle.write("\n")
    assert content_hash(copy, cache) not in ("from-the-cache", real)


def test_a_folder_that_is_not_a_pipeline_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(
        ModelUnavailable, match=r"is not a diffusers pipeline: .* has no model_index"
    ):
        describe_model(str(tmp_path / "weights"), tmp_path / "models")


def test_an_unreachable_hub_model_is_refused_with_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="could not be had from the Hugging Face hub"):
        describe_model("nobody/no-such-model-here", tmp_path / "models")


def test_the_embedded_model_builds_to_the_same_bytes_every_time(
    model: ModelInfo, tmp_path: Path
) -> None:
    from generation.embedded import build_embedded_pipeline

    again = build_embedded_pipeline(tmp_path / "again")
    assert content_hash(again) == model.revision
    config = json.loads((again / "tokenizer" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config


def test_a_damaged_hash_cache_is_rebuilt_not_fatal(model: ModelInfo, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model.path, copy)
    cache = tmp_path / HASH_CACHE
    for damaged in ("{not json", "[1, 2]", json.dumps({str(copy.resolve()): "x"})):
        cache.write_text(damaged)
        assert content_hash(copy, cache) == model.revision
