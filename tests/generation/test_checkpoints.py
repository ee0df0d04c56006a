"""Single-file checkpoints (SD 1.x, 2.x, XL in the original key layout, as model sites share
them): told apart by their keys, loaded with their family's configs from a local folder (the
hub is out of reach here, as it is for an offline host), hashed once, and refused with a
clear reason when truncated, foreign or a pickle."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from generation.checkpoints import CheckpointOptions
from generation.engine import DiffusersEngine, RenderSpec
from generation.errors import ModelUnavailable
from generation.imaging import pixel_sha256
from generation.model_info import HASH_CACHE, ModelInfo, describe_model
from tests.generation.single_file import to_single_file
from tests.generation.tiny_families import build_family
from tests.test_cli import imagine, ok_json


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build_family(family, root / family) for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def files(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    return {
        family: to_single_file(folder, root / f"tiny-{family}.safetensors")
        for family, folder in folders.items()
    }


def configs_only(folder: Path, out: Path) -> Path:
    """A family's configs and tokenizers without any weights: what a host downloads once."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return out


def describe(file: Path, config: Path, models_dir: Path, **options: str) -> ModelInfo:
    return describe_model(
        str(file), models_dir, checkpoint=CheckpointOptions(config=str(config), **options)
    )


@pytest.mark.parametrize(
    ("family", "label", "prediction"),
    [("sd1", "SD 1.x", "epsilon"), ("sd2", "SD 2.x", "v_prediction"), ("sdxl", "SDXL", "epsilon")],
)
def test_a_checkpoint_file_is_told_by_its_keys_and_draws_as_its_folder_does(
    family: str,
    label: str,
    prediction: str,
    folders: dict[str, Path],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    config = configs_only(folders[family], tmp_path / "configs")
    info = describe(files[family], config, tmp_path / "models")
    assert (info.family_label, info.prediction, info.single_file) == (label, prediction, True)
    assert info.name == f"tiny-{family}"
    assert info.revision == hashlib.sha256(files[family].read_bytes()).hexdigest()
    from_file = DiffusersEngine(info, device="cpu", dtype="float32", torch_threads=1)
    folder_info = describe_model(str(folders[family]), tmp_path / "models")
    from_folder = DiffusersEngine(folder_info, device="cpu", dtype="float32", torch_threads=1)
    spec = RenderSpec("a red circle", "blurry", (5, 6), 3, 4.0, 64, 64, info.scheduler)
    assert [pixel_sha256(i) for i in from_file.render(spec)] == [
        pixel_sha256(i) for i in from_folder.render(spec)
    ]
    # The same weights, the same pixels: through img2img too (the loaded weights are shared).
    start = from_folder.render(spec)[0]
    again = RenderSpec("a blue square", "", (1,), 4, 4.0, 64, 64, info.scheduler, 0.5, start)
    assert pixel_sha256(from_file.render(again)[0]) == pixel_sha256(from_folder.render(again)[0])


def test_the_prediction_setting_overrides_the_configs_for_a_v_model_keys_cannot_tell(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    config = configs_only(folders["sd2"], tmp_path / "configs")
    info = describe(files["sd2"], config, tmp_path / "models", prediction="epsilon")
    assert info.prediction == "epsilon" and info.family_label == "SD 1.x"
    engine = DiffusersEngine(info, device="cpu", dtype="float32", torch_threads=1)
    assert engine.txt2img.scheduler.config.prediction_type == "epsilon"


def test_the_files_hash_is_computed_once_and_again_when_the_file_changes(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    config = configs_only(folders["sd1"], tmp_path / "configs")
    file = tmp_path / "model.safetensors"
    shutil.copy(files["sd1"], file)
    models = tmp_path / "models"
    first = describe(file, config, models).revision
    cache = json.loads((models / HASH_CACHE).read_text())
    (entry,) = [value for key, value in cache.items() if key.startswith("file:")]
    entry["hash"] = "0" * 64  # what a second hash would overwrite, were it computed
    (models / HASH_CACHE).write_text(json.dumps(cache))
    assert describe(file, config, models).revision == "0" * 64
    file.write_bytes(file.read_bytes())  # the same bytes, a new modification time
    assert describe(file, config, models).revision == first


def test_a_truncated_foreign_or_partial_file_is_refused_naming_what_to_fix(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    config = configs_only(folders["sd1"], tmp_path / "configs")
    models = tmp_path / "models"
    data = files["sd1"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelUnavailable, match=r"is truncated: .* download it again"):
        describe(truncated, config, models)
    picture = tmp_path / "picture.safetensors"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ModelUnavailable, match="not a safetensors file"):
        describe(picture, config, models)
    header = json.dumps(
        {"lora_unet_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    )
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(4))
    with pytest.raises(ModelUnavailable, match=r"not a Stable Diffusion checkpoint .* a LoRA"):
        describe(lora, config, models)
    for bad in (
        [],
        {"x": [1, 2]},
        {"x": {"dtype": "F32", "shape": [1]}},
        {"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, -1]}},
    ):
        raw = json.dumps(bad).encode()
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
        with pytest.raises(ModelUnavailable, match=r"not a (valid )?safetensors file"):
            describe(broken, config, models)
    for name, text in (("unet/config.json", "{"), ("model_index.json", "[]")):
        malformed = configs_only(folders["sd1"], tmp_path / f"malformed-{name[:4]}")
        (malformed / name).write_text(text)
        with pytest.raises(ModelUnavailable, match=r"cannot be read as a config|no JSON object"):
            describe(files["sd1"], malformed, models)
    partial = configs_only(folders["sd1"], tmp_path / "partial")
    (partial / "unet" / "config.json").unlink()
    with pytest.raises(ModelUnavailable, match=r"lack unet/config\.json"):
        describe(files["sd1"], partial, models)
    xl_config = configs_only(folders["sdxl"], tmp_path / "xl-configs")
    with pytest.raises(ModelUnavailable, match="set IMAGINE_MODEL_CONFIG_DIR to a sd1 folder"):
        describe(files["sd1"], xl_config, models)


def test_a_pickle_checkpoint_is_refused_unless_the_host_allows_it(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    config = configs_only(folders["sd1"], tmp_path / "configs")
    ckpt = tmp_path / "old-model.ckpt"
    ckpt.write_bytes(b"not opened")
    with pytest.raises(ModelUnavailable, match=r"is a pickle .* runs any code it holds"):
        describe(ckpt, config, tmp_path / "models")
    # Allowed, its layout cannot be read before it is unpickled: the family must be named.
    with pytest.raises(ModelUnavailable, match="set IMAGINE_MODEL_FAMILY"):
        describe_model(
            str(ckpt),
            tmp_path / "models",
            checkpoint=CheckpointOptions(config=str(config), allow_pickle=True),
        )


def test_the_command_line_generates_and_reproduces_from_a_checkpoint_file(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    """The host's code path: IMAGINE_MODEL names the file, IMAGINE_MODEL_CONFIG_DIR its
    configs; the recipe's revision and the infotext's Model hash are the file's sha256."""
    config = configs_only(folders["sdxl"], tmp_path / "configs")
    env = {"IMAGINE_MODEL_CONFIG_DIR": str(config), "IMAGINE_MAX_COUNT": "2"}
    made = ok_json(
        imagine(
            tmp_path / "data",
            "generate",
            "a red circle",
            "--seed",
            "3",
            "--steps",
            "3",
            "--sampler",
            "Euler a",
            "--json",
            model=str(files["sdxl"]),
            env=env,
        )
    )
    sha256 = hashlib.sha256(files["sdxl"].read_bytes()).hexdigest()
    assert made["status"] == "succeeded"
    assert made["model_revision"] == sha256 and made["sampler"] == "Euler a"
    from PIL import Image

    with Image.open(made["images"][0]["path"]) as png:
        parameters = png.text["parameters"]  # type: ignore[attr-defined]
    assert f"Model hash: {sha256[:10]}, Model: tiny-sdxl," in parameters
    assert "Sampler: Euler a," in parameters
    again = ok_json(
        imagine(
            tmp_path / "data",
            "reproduce",
            str(made["job_id"]),
            "--json",
            model=str(files["sdxl"]),
            env=env,
        )
    )
    assert again["identical"] is True


def test_a_corrupt_model_stops_the_worker_with_the_reason_not_a_traceback(
    files: dict[str, Path], folders: dict[str, Path], tmp_path: Path
) -> None:
    """A truncated checkpoint, and a folder whose weights were cut short: the process says
    what to fix and exits non-zero (a worker that cannot load its model cannot go on)."""
    data = files["sd1"].read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    config = configs_only(folders["sd1"], tmp_path / "configs")
    env = {"IMAGINE_MODEL_CONFIG_DIR": str(config)}
    result = imagine(tmp_path / "a", "generate", "a cat", model=str(truncated), env=env)
    assert result.returncode != 0
    assert "is truncated" in result.stderr and "Traceback" not in result.stderr
    folder = tmp_path / "folder"
    shutil.copytree(folders["sd1"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = imagine(tmp_path / "b", "generate", "a cat", model=str(folder))
    assert result.returncode != 0
    assert "could not be loaded from" in result.stderr and "download it again" in result.stderr
    assert "Traceback" not in result.stderr
