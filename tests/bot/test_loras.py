"""LoRAs through the local Discord and the command line: /imagine suggests the host's LoRAs
that fit the model, records the one picked (buttons keep it), and refuses one that does not
fit, or a weight without a LoRA, naming what to change."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from bot.settings import Settings
from generation.engine import DiffusersEngine
from generation.model_info import ModelInfo
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord
from tests.generation.test_loras import SHIPPED_LORA
from tests.test_cli import imagine, ok_json


def lora_folder(root: Path) -> Path:
    folder = root / "loras"
    folder.mkdir(parents=True)
    shutil.copy(SHIPPED_LORA, folder / "triangles.safetensors")
    pair = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    save_file(
        {
            f"{pair}.lora_down.weight": torch.zeros(4, 1280),
            f"{pair}.lora_up.weight": torch.zeros(1280, 4),
        },
        str(folder / "triangles-xl.safetensors"),
    )
    (folder / "triangles-broken.safetensors").write_bytes(b"not a safetensors file")
    return folder


async def lora_engine(settings: Settings, model: ModelInfo) -> DiffusersEngine:
    """The trained model's engine with the settings' LoRA folder, built off the loop."""
    return await asyncio.to_thread(
        DiffusersEngine,
        model,
        device="cpu",
        dtype="float32",
        torch_threads=1,
        loras=settings.lora_catalogue(),
    )


async def test_imagine_suggests_fitting_loras_and_records_the_one_picked(
    local_discord: LocalDiscord, tmp_path: Path, trained_model: ModelInfo
) -> None:
    server = local_discord
    folder = lora_folder(tmp_path)
    settings = bot_settings(server, tmp_path / "data", lora_dir=folder, max_count=1)
    engine = await lora_engine(settings, trained_model)
    async with running_bot(settings, engine) as running:
        # Typed "tri": the SDXL one and the broken file are not offered for this model.
        shown = await server.suggestions("imagine", server.alice, "lora", "tri")
        assert shown == [{"name": "triangles", "value": "triangles"}]
        assert await server.suggestions("imagine", server.alice, "lora", "zzz") == []

        asked = await server.invoke(
            "imagine",
            server.alice,
            prompt="a red circle on a blue background",
            seed=3,
            lora="triangles",
            lora_weight=0.75,
        )
        result = await server.wait_for_result(asked)
        grid = png_of(server, result)
        recipe = json.loads(grid.text["imagine-bot"])
        assert [(lora["name"], lora["weight"]) for lora in recipe["loras"]] == [("triangles", 0.75)]
        assert grid.text["parameters"].startswith(
            "a red circle on a blue background <lora:triangles:0.75>\n"
        )
        assert 'Lora hashes: "triangles: ' in grid.text["parameters"]

        pressed = await server.click(int(result["id"]), "V1", server.alice)
        await server.wait_for_result(pressed)
        jobs = await running.runtime.service.recent(limit=5)
        child = next(view.job for view in jobs if view.job.parent_job_id == recipe["job_id"])
        assert [lora["weight"] for lora in child.loras] == [0.75]

        for options, reason in [
            ({"lora_weight": 0.5}, "**lora_weight** weighs a LoRA: name one in the lora option"),
            ({"lora": "triangles-xl"}, "triangles-xl was made for SDXL models; embedded is SD 2.x"),
            ({"lora": "nothing"}, "there is no LoRA called 'nothing'; some there are: "),
        ]:
            refused = await server.invoke("imagine", server.alice, prompt="a cat", **options)
            answer = await server.wait_for(
                lambda refused=refused: server.ephemeral_answer(refused), what="the refusal"
            )
            assert reason in answer, answer
        tagged = await server.invoke(
            "imagine", server.alice, prompt="a cat <lora:triangles-broken>"
        )
        answer = await server.wait_for(lambda: server.ephemeral_answer(tagged), what="the refusal")
        assert "triangles-broken" in answer and "not a safetensors file" in answer


def test_the_command_line_lists_generates_with_and_reproduces_loras(tmp_path: Path) -> None:
    data = tmp_path / "data"
    from click.testing import CliRunner

    from bot.cli import main

    env = {"IMAGINE_LORA_DIR": str(lora_folder(tmp_path)), "IMAGINE_DATA_DIR": str(data)}
    # Listing and a malformed --lora need no model: run in this process.
    shown = CliRunner().invoke(main, ["loras", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    listed = {row["name"]: row for row in json.loads(shown.output)}
    assert (listed["triangles"]["family"], listed["triangles"]["text_width"]) == ("sd", 64)
    assert "not a safetensors file" in listed["triangles-broken"]["refused"]
    out = ok_json(
        imagine(
            data,
            "generate",
            "a red circle on a blue background",
            "--seed",
            "5",
            "--count",
            "1",
            "--lora",
            "triangles:0.5",
            "--json",
            env=env,
        )
    )
    assert out["status"] == "succeeded"
    again = ok_json(imagine(data, "reproduce", str(out["job_id"]), "--json", env=env))
    assert again["identical"] is True
    bad = CliRunner().invoke(main, ["generate", "a cat", "--lora", "triangles:heavy"], env=env)
    assert bad.exit_code != 0 and "write NAME or NAME:WEIGHT" in bad.output
