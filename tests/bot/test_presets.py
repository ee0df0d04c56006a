"""Model presets through the local Discord: the host offers a model to one server, whose
moderator makes it the default; members of another server are neither offered it nor may use
it; the command line manages the same presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from generation.model_info import ModelInfo
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_access import two_server_settings
from tests.bot.test_imagine import png_of
from tests.bot.test_loras import lora_engine, lora_folder
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser
from tests.test_cli import imagine, ok_json


async def said(server: LocalDiscord, user: FakeUser, command: str, **options: object) -> str:
    asked = await server.invoke(command, user, **options)
    return await server.wait_for(lambda: server.ephemeral_answer(asked), what=f"/{command}")


async def test_a_preset_for_one_server_its_default_there_and_nowhere_else(
    local_discord: LocalDiscord, tmp_path: Path, trained_model: ModelInfo
) -> None:
    server = local_discord
    settings = two_server_settings(server, tmp_path, lora_dir=lora_folder(tmp_path), max_count=1)
    engine = await lora_engine(settings, trained_model)
    async with running_bot(settings, engine):
        server.show_to_everyone("admin")
        add = {"name": "tri", "source": "embedded", "steps": 6, "loras": "triangles:0.8"}
        assert "host's admins" in await said(server, server.admin, "admin model add", **add)
        answer = await said(
            server, server.host, "admin model add", **add, negative="blurry", servers="here"
        )
        assert "Model **tri** is offered (embedded)" in answer
        refused = await said(
            server, server.host, "admin model add", name="bad", source="embedded", loras="nope"
        )
        assert "there is no LoRA called 'nope'" in refused

        offered = await server.suggestions("imagine", server.alice, "model", "")
        assert [c["value"] for c in offered] == ["tri", "embedded"]
        elsewhere = await server.suggestions("imagine", server.carol, "model", "")
        assert [c["value"] for c in elsewhere] == ["embedded"]
        not_here = await said(server, server.carol, "imagine", prompt="a cat", model="tri")
        assert "must be one of embedded, not 'tri'" in not_here  # as if there were none
        assert "not a model this server may use" in await said(
            server, server.dave, "admin model default", name="tri"
        )
        assert "/imagine here now uses **tri**" in await said(
            server, server.admin, "admin model default", name="tri"
        )
        offered = await server.suggestions("imagine", server.alice, "model", "t")
        assert offered == [{"name": "tri (this server's default)", "value": "tri"}]

        asked = await server.invoke(
            "imagine", server.alice, prompt="a red circle on a blue background", seed=3
        )
        recipe = json.loads(png_of(server, await server.wait_for_result(asked)).text["imagine-bot"])
        assert (recipe["preset"], recipe["steps"], recipe["negative_prompt"]) == (
            "tri",
            6,
            "blurry",
        )
        assert [(x["name"], x["weight"]) for x in recipe["loras"]] == [("triangles", 0.8)]
        listed = await said(server, server.admin, "admin model list")
        assert "**Default here:** tri" in listed and "**tri**: embedded; steps 6" in listed

        removed = await said(server, server.host, "admin model remove", name="tri")
        assert "no longer offered" in removed
        asked = await server.invoke("imagine", server.alice, prompt="a red circle", seed=3)
        recipe = json.loads(png_of(server, await server.wait_for_result(asked)).text["imagine-bot"])
        assert recipe["preset"] is None and recipe["steps"] == trained_model.default_steps


def test_the_command_line_adds_lists_defaults_and_removes_presets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = imagine(
        data, "admin", "model", "add", "quick", "embedded", "--steps", "4", "--guild", "7"
    )
    assert added.returncode == 0, added.stderr
    bad = imagine(data, "admin", "model", "add", "slow", "embedded", "--sampler", "DPM++ 2M Karras")
    assert bad.returncode != 0 and "does not suit embedded's cosine" in bad.stderr
    assert imagine(data, "admin", "model", "default", "7", "quick").returncode == 0
    other = imagine(data, "admin", "model", "default", "8", "quick")
    assert other.returncode != 0 and "not a model this server may use" in other.stderr
    listed = ok_json(imagine(data, "admin", "model", "list", "--json"))
    assert [(row["name"], row["steps"], row["guild_ids"], row["default_in"]) for row in listed] == [
        ("quick", 4, [7], [7])
    ]
    # The command line acts outside any server: a preset for server 7 is not offered there.
    outside = imagine(data, "generate", "a cat", "--model", "quick", "--no-wait")
    assert outside.returncode != 0 and "must be one of embedded, not 'quick'" in outside.stderr
    assert imagine(data, "admin", "model", "remove", "quick").returncode == 0
    assert ok_json(imagine(data, "admin", "model", "list", "--json")) == []


async def test_a_preset_of_a_model_of_its_own_runs_on_the_worker_that_has_its_files(
    local_discord: LocalDiscord, tmp_path: Path, model: ModelInfo, trained_model: ModelInfo
) -> None:
    """The host adds a preset whose source is a folder on this host (the trained model's
    copy) while the bot's own model is the random-weight one: the worker loads it when the
    job comes, and the picture is the copy's, not the host model's."""
    from generation.engine import DiffusersEngine

    server = local_discord
    settings = bot_settings(
        server,
        tmp_path / "data",
        model="embedded-random",
        max_count=1,
        admin_user_ids=[server.host.id],
    )
    folder = settings.models_dir / "shapes"
    shutil.copytree(trained_model.path, folder)
    engine = DiffusersEngine(model, device="cpu", dtype="float32", memory_budget=0)
    async with running_bot(settings, engine) as running:
        server.show_to_everyone("admin")
        answer = await said(
            server, server.host, "admin model add", name="shapes", source=str(folder), steps=4
        )
        assert f"Model **shapes** is offered ({folder})" in answer
        refused = await said(
            server, server.host, "admin model add", name="gone", source=str(tmp_path / "none")
        )
        assert "could not be described here" in refused and "embedded-random" in refused
        offered = await server.suggestions("imagine", server.alice, "model", "")
        assert [c["value"] for c in offered][:1] == ["shapes"]
        asked = await server.invoke(
            "imagine", server.alice, prompt="a red circle", model="shapes", seed=3
        )
        png = png_of(server, await server.wait_for_result(asked, seconds=120))
        recipe = json.loads(png.text["imagine-bot"])
        assert (recipe["preset"], recipe["model_id"], recipe["steps"]) == ("shapes", str(folder), 4)
        assert engine.loaded == [str(folder)]
        assert running.worker is not None
        async with running.runtime.db.uow() as uow:
            (row,) = await uow.workers.all()
        assert str(folder) in row.models["ids"]
