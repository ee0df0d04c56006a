"""The ``imagine-bot`` command line, run as a user runs it: a real process, a real data folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from generation.embedded.detector import detect
from generation.imaging import pixel_sha256
from generation.model_info import ModelInfo
from tests.ci import in_ci


def imagine(
    data_dir: Path, *args: str, model: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(data_dir),
        "IMAGINE_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "IMAGINE_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    environment.pop("IMAGINE_DATABASE_URL", None)
    if model:
        environment["IMAGINE_MODEL"] = model
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_generate_then_reproduce_on_the_embedded_defaults(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = ok_json(
        imagine(data, "generate", "a red circle on a blue background", "--seed", "7", "--json")
    )
    assert out["status"] == "succeeded" and out["seed"] == 7
    assert [(image["index"], image["seed"]) for image in out["images"]] == [
        (0, 7),
        (1, 8),
        (2, 9),
        (3, 10),
    ]
    for image in out["images"]:
        with Image.open(image["path"]) as png:
            assert pixel_sha256(png) == image["sha256"]
            assert Path(image["path"]).is_relative_to(data.resolve())
            # The README's first command draws what it says, with the trained embedded model.
            found = detect(png.convert("RGB"))
            assert (found.colour, found.shape, found.background) == ("red", "circle", "blue")
    with Image.open(out["grid"]) as grid:
        assert grid.size == (128, 128)
    assert (
        data / "imagine.db"
    ).exists()  # the default database is a SQLite file in the data folder

    again = ok_json(imagine(data, "reproduce", str(out["job_id"]), "--json"))
    assert again["identical"] is True and again["job_id"] == out["job_id"]

    listed = ok_json(imagine(data, "jobs", "--json"))
    assert [row["job_id"] for row in listed] == [out["job_id"]]
    assert listed[0]["started_at"] >= listed[0]["created_at"]
    assert listed[0]["finished_at"] >= listed[0]["started_at"]


def test_a_tampered_recipe_makes_reproduce_exit_1(tmp_path: Path, model: ModelInfo) -> None:
    data = tmp_path / "data"
    out = ok_json(
        imagine(
            data,
            "generate",
            "a blue square",
            "--seed",
            "3",
            "--count",
            "2",
            "--steps",
            "4",
            "--json",
            model=model.path,
        )
    )
    with sqlite3.connect(data / "imagine.db") as connection:
        connection.execute("UPDATE jobs SET seed = seed + 1 WHERE id = ?", (out["job_id"],))
    result = imagine(data, "reproduce", str(out["job_id"]), "--json", model=model.path)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["identical"] is False
    assert [image["identical"] for image in report["images"]] == [False, False]


def test_a_light_users_job_runs_second_behind_a_heavy_backlog(
    tmp_path: Path, model: ModelInfo
) -> None:
    data = tmp_path / "data"

    def queue(user: int, prompt: str) -> Any:
        return ok_json(
            imagine(
                data,
                *("generate", prompt, "--no-wait", "--json", "--steps", "2", "--count", "1"),
                *("--user", str(user)),
                model=model.path,
            )
        )

    heavy = [queue(1, f"a red circle {n}") for n in range(4)]
    light = queue(2, "a green square")
    assert [job["position"] for job in heavy] == [1, 2, 3, 4]
    # User 2 joins at user 1's level: behind the job user 1 asked for first, not all four.
    assert (light["status"], light["position"]) == ("queued", 2)
    listed = ok_json(imagine(data, "queue", "--json", model=model.path))
    assert [row["user_id"] for row in listed] == [1, 2, 1, 1, 1]
    worker = imagine(data, "worker", "--burst", model=model.path)
    assert worker.returncode == 0, worker.stderr
    assert "worker ran 5 jobs" in worker.stderr
    done = ok_json(imagine(data, "jobs", "--status", "succeeded", "--json", model=model.path))
    by_start = sorted(done, key=lambda job: job["started_at"])
    assert [job["user_id"] for job in by_start] == [1, 2, 1, 1, 1]
    mine = ok_json(imagine(data, "jobs", "--user", "2", "--json", model=model.path))
    assert [job["prompt"] for job in mine] == ["a green square"]


def test_quota_set_and_show_and_a_refusal_that_names_the_limit(
    tmp_path: Path, model: ModelInfo
) -> None:
    data = tmp_path / "data"
    changed = imagine(
        data,
        "quota",
        "set",
        "5",
        "--limit",
        "queued_per_user=1",
        "--weight",
        "2",
        model=model.path,
    )
    assert changed.returncode == 0, changed.stderr
    shown = ok_json(imagine(data, "quota", "show", "--user", "5", "--json", model=model.path))
    assert shown["limits"]["queued_per_user"] == 1 and shown["weight"] == 2.0
    first = imagine(data, "generate", "a cat", "--no-wait", "--user", "5", model=model.path)
    assert first.returncode == 0, first.stderr
    assert "queued (seed" in first.stdout and "1st in line" in first.stdout
    second = imagine(data, "generate", "a cat", "--no-wait", "--user", "5", model=model.path)
    assert second.returncode == 1
    assert "Error: you already have 1 job waiting or running, the most allowed (1)" in (
        second.stderr
    )
    bad = imagine(data, "quota", "set", "5", "--limit", "speed=3", model=model.path)
    assert bad.returncode == 1 and "speed: is not a per-user quota" in bad.stderr


def test_workers_lists_the_workers_that_ran(tmp_path: Path, model: ModelInfo) -> None:
    data = tmp_path / "data"
    assert imagine(data, "generate", "a cat", "--no-wait", model=model.path).returncode == 0
    assert imagine(data, "worker", "--burst", model=model.path).returncode == 0
    rows = ok_json(imagine(data, "workers", "--json", model=model.path))
    assert len(rows) == 1
    assert (rows[0]["device"], rows[0]["state"], rows[0]["current_job_id"]) == (
        "cpu",
        "stopped",
        None,
    )
    assert rows[0]["models"] == [str(model.path)], "it names the model it loaded"


def test_admin_ban_unban_logs_job_and_the_prompt_filter_from_the_command_line(
    tmp_path: Path, model: ModelInfo
) -> None:
    data = tmp_path / "data"
    env = {"IMAGINE_BLOCKED_TERMS": "gore"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return imagine(data, *args, model=model.path, env=env)

    banned = run("admin", "ban", "7", "--reason", "spam", "--duration", "2h", "--actor", "1")
    assert banned.returncode == 0 and "user 7 is banned until" in banned.stdout
    refused = run("generate", "a cat", "--no-wait", "--user", "7")
    assert refused.returncode == 1 and "banned" in refused.stderr and "spam" in refused.stderr
    assert run("admin", "unban", "7").returncode == 0
    queued = ok_json(run("generate", "a cat", "--no-wait", "--user", "7", "--json"))
    blocked = run("generate", "so much g0re", "--no-wait", "--user", "7")
    assert blocked.returncode == 1 and "Strike 1 of 3" in blocked.stderr
    assert "gore" not in blocked.stderr.lower()

    logs = ok_json(run("admin", "logs", "--user", "7", "--json"))
    assert [row["job_id"] for row in logs] == [queued["job_id"]]
    assert run("admin", "quota", "set", "7", "--limit", "queued_per_user=3").returncode == 0
    report = json.loads(run("admin", "job", str(queued["job_id"])).stdout)
    assert report["prompt"] == "a cat" and report["events"] == []
    bad = run("admin", "ban", "7", "--duration", "soon")
    assert bad.returncode == 1 and "duration: must be a number and a unit" in bad.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--steps", "0", "steps: must be from 1 to 50, not 0"),
        ("--width", "100", "width: must be a multiple of 8 pixels, not 100"),
        ("--guidance", "31", "guidance: must be from 0 to 30, not 31"),
    ],
)
def test_bad_input_names_the_option_and_stores_nothing(
    tmp_path: Path, model: ModelInfo, option: str, value: str, message: str
) -> None:
    data = tmp_path / "data"
    result = imagine(data, "generate", "a red circle", option, value, model=model.path)
    assert result.returncode != 0
    assert message in result.stderr
    assert ok_json(imagine(data, "jobs", "--json", model=model.path)) == []


def test_upscale_vary_reroll_and_cancel_from_the_command_line(
    tmp_path: Path, model: ModelInfo
) -> None:
    data = tmp_path / "data"
    parent = ok_json(
        imagine(
            data,
            "generate",
            "a yellow triangle",
            "--seed",
            "4",
            "--count",
            "2",
            "--steps",
            "3",
            "--json",
            model=model.path,
        )
    )
    up = ok_json(imagine(data, "upscale", str(parent["job_id"]), "1", "--json", model=model.path))
    assert (up["kind"], up["parent_job_id"], up["parent_image_index"]) == (
        "upscale",
        parent["job_id"],
        1,
    )
    with Image.open(up["images"][0]["path"]) as png:
        assert png.size == (128, 128)
    varied = ok_json(
        imagine(
            data,
            "vary",
            str(parent["job_id"]),
            "0",
            "--strength",
            "0.7",
            "--json",
            model=model.path,
        )
    )
    assert (varied["kind"], varied["strength"], len(varied["images"])) == ("variation", 0.7, 2)

    queued = ok_json(
        imagine(data, "reroll", str(parent["job_id"]), "--no-wait", "--json", model=model.path)
    )
    refused = imagine(data, "cancel", str(queued["job_id"]), "--user", "99", model=model.path)
    assert refused.returncode == 1
    assert f"job {queued['job_id']} is not yours to cancel" in refused.stderr
    cancelled = imagine(data, "cancel", str(queued["job_id"]), model=model.path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    bad_index = imagine(data, "upscale", str(parent["job_id"]), "5", model=model.path)
    assert "image: must be one of 0, 1" in bad_index.stderr


def test_a_missing_model_is_named_instead_of_a_traceback(tmp_path: Path) -> None:
    result = imagine(tmp_path / "data", "generate", "a red circle", model="nobody/no-such-model")
    assert result.returncode == 1
    assert "Error: model 'nobody/no-such-model' is not a local folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_hub_model_loads_by_id_from_the_hub_cache_at_its_commit(
    tmp_path: Path, model: ModelInfo
) -> None:
    # The hub's own cache layout, filled from the embedded model: the real hub-id loading path
    # (snapshot_download for the configs, from_pretrained of the id at that commit), offline.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--example--tiny-sd"
    shutil.copytree(model.path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    out = ok_json(
        imagine(
            tmp_path / "data",
            "generate",
            "a red circle",
            "--seed",
            "1",
            "--count",
            "1",
            "--steps",
            "2",
            "--json",
            model="example/tiny-sd",
            env=env,
        )
    )
    assert (out["model_id"], out["model_revision"]) == ("example/tiny-sd", commit)
    with Image.open(out["images"][0]["path"]) as png:
        assert "Model: example/tiny-sd" in png.text["parameters"]
        assert f"Model hash: {commit[:10]}" in png.text["parameters"]


def test_sigterm_lets_the_worker_finish_its_job_then_exit(tmp_path: Path, model: ModelInfo) -> None:
    data = tmp_path / "data"
    queued = ok_json(
        imagine(
            data,
            "generate",
            "a red circle",
            "--no-wait",
            "--json",
            "--steps",
            "30",
            "--width",
            "128",
            "--height",
            "128",
            model=model.path,
        )
    )
    environment = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(data),
        "IMAGINE_MODEL": model.path,
        "HF_HUB_OFFLINE": "1",
        "IMAGINE_LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "worker"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while status(data, queued["job_id"]) != "running":
            assert time.monotonic() < deadline, "the worker never started the job"
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "worker ran 1 jobs" in stderr
    assert status(data, queued["job_id"]) == "succeeded"


def status(data: Path, job_id: int) -> str | None:
    with sqlite3.connect(data / "imagine.db") as connection:
        row = connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


def test_the_settings_file_is_dot_env_or_the_one_imagine_env_file_names(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGINE_MAX_STEPS=0\n")  # a bad value, to see it is read
    elsewhere = tmp_path / "imagine.env"
    elsewhere.write_text("IMAGINE_MAX_STEPS=-1\n")

    def queue(env_file: str | None) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "IMAGINE_DATA_DIR": str(tmp_path / "data")}
        environment.pop("IMAGINE_ENV_FILE")
        if env_file is not None:
            environment["IMAGINE_ENV_FILE"] = env_file
        return subprocess.run(
            [sys.executable, "-m", "bot", "queue"],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    default = queue(None)
    assert default.returncode == 1 and "IMAGINE_MAX_STEPS" in default.stderr
    named = queue(str(elsewhere))
    assert named.returncode == 1 and "IMAGINE_MAX_STEPS" in named.stderr
    assert queue("").returncode == 0, "an empty IMAGINE_ENV_FILE reads no file"


@pytest.mark.parametrize(
    ("value", "ci"),
    [("true", True), ("1", True), ("yes", True), ("", False), ("0", False), ("false", False)],
)
def test_any_truthy_ci_is_ci(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_a_servers_settings_from_the_command_line(tmp_path: Path, model: ModelInfo) -> None:
    data = tmp_path / "data"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return imagine(data, "admin", "settings", *args, model=model.path)

    first = run("42", "--safety", "withhold", "--block", "teapot", "--quota", "queued_per_user=2")
    assert first.returncode == 0, first.stderr
    changed = ok_json(run("42", "--age-restricted-only", "--json"))
    assert changed["safety_policy"] == "withhold" and changed["safety_policy_is_servers"]
    assert changed["blocked_terms"] == ["teapot"] and changed["age_restricted_only"]
    assert changed["limits"]["queued_per_user"] == 2
    other = ok_json(run("43", "--json"))
    assert other["blocked_terms"] == [] and other["limits"]["queued_per_user"] == 16
    bad = run("42", "--quota", "queued_per_guild=lots")
    assert bad.returncode == 1 and "queued_per_guild: must be a whole number" in bad.stderr
    back = ok_json(run("42", "--safety", "host", "--clear-quota", "queued_per_user", "--json"))
    assert back["safety_policy"] == "spoiler" and back["quotas"] == {}
    assert back["blocked_terms"] == ["teapot"], "a refused change changed nothing"


def test_the_command_line_reads_the_same_parameters(tmp_path: Path) -> None:
    import asyncio

    from click.testing import CliRunner

    from bot.cli import main
    from storage.db import Database

    data = tmp_path / "data"
    env = {"IMAGINE_DATA_DIR": str(data), "IMAGINE_MODEL": "embedded-random"}
    prompt = "a red circle --ar 1:2 --no blue --seed 9 --steps 3"
    # --no-wait: queued, not run, so no model is loaded: this process is enough.
    queued = CliRunner().invoke(main, ["generate", prompt, "--seed", "5", "--no-wait"], env=env)
    assert queued.exit_code == 0, queued.output
    assert "--seed in the prompt: the command's option is used instead" in queued.output

    async def stored() -> Any:
        database = Database(f"sqlite+aiosqlite:///{data / 'imagine.db'}")
        try:
            async with database.uow() as uow:
                return (await uow.jobs.recent(limit=1))[0]
        finally:
            await database.close()

    job = asyncio.run(stored())
    assert (job.prompt, job.negative_prompt, job.seed, job.steps) == ("a red circle", "blue", 5, 3)
    assert (job.width, job.height, job.raw_prompt) == (64, 128, prompt)
    refused = CliRunner().invoke(main, ["generate", "a cat --tile"], env=env)
    assert refused.exit_code != 0 and "--tile is not a parameter here" in refused.output


def test_generate_for_a_user_takes_their_settings(tmp_path: Path) -> None:
    import asyncio

    from click.testing import CliRunner

    from bot.cli import main
    from generation.preferences import Preferences
    from storage.db import Database

    data = tmp_path / "data"
    env = {"IMAGINE_DATA_DIR": str(data), "IMAGINE_MODEL": "embedded-random"}
    made = CliRunner().invoke(main, ["generate", "a square", "--no-wait"], env=env)
    assert made.exit_code == 0, made.output  # the database is made

    async def in_database(prefs: Preferences | None = None) -> Any:
        database = Database(f"sqlite+aiosqlite:///{data / 'imagine.db'}")
        try:
            async with database.uow() as uow:
                if prefs is not None:
                    await uow.users.set_preferences(42, prefs.to_dict())
                    await uow.commit()
                return (await uow.jobs.recent(limit=1))[0]
        finally:
            await database.close()

    settings = Preferences(aspect="16:9", steps=3, guidance=2.5, sampler="Euler a")
    asyncio.run(in_database(settings))
    made = CliRunner().invoke(main, ["generate", "a circle", "--user", "42", "--no-wait"], env=env)
    assert made.exit_code == 0, made.output
    job = asyncio.run(in_database())
    assert (job.user_id, job.steps, job.guidance, job.sampler) == (42, 3, 2.5, "Euler a")
    assert job.width > job.height
    # Another user's job takes none of them; an option wins over them.
    CliRunner().invoke(main, ["generate", "a circle", "--user", "7", "--no-wait"], env=env)
    job = asyncio.run(in_database())
    assert job.steps != 3 and job.width == job.height
    CliRunner().invoke(
        main, ["generate", "a circle", "--user", "42", "--steps", "2", "--no-wait"], env=env
    )
    job = asyncio.run(in_database())
    assert (job.steps, job.guidance) == (2, 2.5)


def test_zoom_pan_and_region_edit_an_image_keeping_its_pixels(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"

    def run(*args: str) -> Any:
        return ok_json(imagine(data, *args, "--json", model="embedded-random"))

    def pixels(path: str) -> Any:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    parent = run("generate", "a red circle", "--count", "1", "--steps", "4", "--seed", "3")
    old = pixels(parent["images"][0]["path"])
    assert old.shape == (64, 64, 3)
    job = str(parent["job_id"])

    zoomed = run("zoom", job, "0", "--factor", "2", "--seed", "4")
    assert (zoomed["kind"], zoomed["status"], zoomed["parent_job_id"]) == (
        "edit",
        "succeeded",
        parent["job_id"],
    )
    half = np.asarray(
        Image.fromarray(old.astype(np.uint8)).resize((32, 32), Image.Resampling.LANCZOS),
        dtype=np.int16,
    )
    for image in zoomed["images"]:  # the same size, the old image half-size in the middle
        made = pixels(image["path"])
        assert made.shape == (64, 64, 3) and (made[16:48, 16:48] == half).all()

    # 🔄 on an edit is the same edit of the same image, with a new seed.
    again = run("reroll", str(zoomed["job_id"]), "--seed", "9")
    assert (again["kind"], again["parent_job_id"], again["seed"]) == ("edit", parent["job_id"], 9)
    assert (pixels(again["images"][0]["path"])[16:48, 16:48] == half).all()

    panned = run("pan", job, "0", "--direction", "right", "--seed", "4")
    made = pixels(panned["images"][0]["path"])
    assert made.shape == (64, 96, 3) and (made[:, :64] == old).all()

    varied = run("region", job, "0", "--cells", "5", "--prompt", "a blue square", "--seed", "4")
    assert varied["prompt"] == "a blue square"
    made = pixels(varied["images"][0]["path"])
    centre = np.zeros((64, 64), dtype=bool)
    centre[24:40, 24:40] = True  # cell 5 on the 8-pixel grid
    assert (made[~centre] == old[~centre]).all() and (made[centre] != old[centre]).any()

    refused = imagine(data, "pan", job, "0", "--direction", "north", model="embedded-random")
    assert refused.returncode != 0 and "north" in refused.stderr


def test_video_keeps_one_frame_per_step_ending_in_the_grid_as_made(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image, ImageSequence

    data = tmp_path / "data"
    made = ok_json(
        imagine(
            data,
            "generate",
            "a red circle --video",
            "--count",
            "2",
            "--steps",
            "5",
            "--seed",
            "3",
            "--json",
            model="embedded-random",
        )
    )
    assert (made["prompt"], made["video"]) == ("a red circle", True)
    with Image.open(made["video_file"]) as video, Image.open(made["grid"]) as grid:
        assert (video.format, video.is_animated, video.n_frames) == ("WEBP", True, 5)
        frames = [
            np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(video)
        ]
        assert video.size == grid.size  # the grid (128×64): under 512, kept at its size
        made_grid = np.asarray(grid.convert("RGB"), dtype=np.int16)
    apart = [np.abs(frame - made_grid).mean() for frame in frames]
    # The last frame is the grid as made (WebP is lossy, and the random model's images are
    # noise, its worst case); the steps' previews before it are far from it.
    assert apart[-1] < min(apart[:-1]) / 3, apart

    # A reroll asks for the video again.
    again = ok_json(imagine(data, "reroll", str(made["job_id"]), "--json", model="embedded-random"))
    assert again["video"] and again["video_file"]

    refused = imagine(data, "generate", "a cat --video 3", model="embedded-random")
    assert refused.returncode != 0 and "--video takes no value" in refused.stderr


def test_compare_swaps_a_word_each_cell_its_own_recipe_and_all_made_again(
    tmp_path: Path,
) -> None:
    from PIL import Image

    data = tmp_path / "data"

    def run(*args: str) -> Any:
        return ok_json(imagine(data, *args, "--json", model="embedded-random"))

    parent = run("generate", "a red circle", "--count", "2", "--steps", "2", "--seed", "3")
    job = str(parent["job_id"])
    compared = run("compare", job, "1", "--knob", "word:red", "--values", "red,blue,green")
    assert (compared["kind"], compared["parent_job_id"], compared["count"]) == (
        "compare",
        parent["job_id"],
        3,
    )
    assert compared["compare"]["knob"] == "word" and compared["compare"]["word"] == "red"
    prompts = []
    for image in compared["images"]:
        assert image["seed"] == 4  # image 2's seed, in every cell
        with Image.open(image["path"]) as made:
            recipe = json.loads(made.text["imagine-bot"])
            prompts.append(recipe["prompt"])
            assert recipe["image_seed"] == 4
    assert prompts == ["a red circle", "a blue circle", "a green circle"]
    # The red cell is image 2 of its parent, made again.
    assert compared["images"][0]["sha256"] == parent["images"][1]["sha256"]

    # Made again, the comparison is the same, cell by cell; so is an edit (its mask too).
    assert run("reproduce", str(compared["job_id"]))["identical"]
    zoomed = run("zoom", job, "0", "--factor", "2", "--seed", "4")
    assert run("reproduce", str(zoomed["job_id"]))["identical"]

    refused = imagine(
        data,
        "compare",
        *(str(zoomed["job_id"]), "0", "--knob", "steps", "--values", "2,3"),
        model="embedded-random",
    )
    assert refused.returncode != 0 and "made from another image" in refused.stderr


def test_the_web_console_refuses_to_start_without_what_it_needs(tmp_path: Path) -> None:
    result = imagine(tmp_path / "data", "web", "--port", "0", model="embedded-random")
    assert result.returncode == 1
    assert "IMAGINE_WEB_CLIENT_SECRET, IMAGINE_WEB_SESSION_SECRET" in result.stderr


def test_the_web_console_serves_until_sigterm(tmp_path: Path) -> None:
    import http.client
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(tmp_path / "data"),
        "IMAGINE_MODEL": "embedded-random",
        "HF_HUB_OFFLINE": "1",
        "IMAGINE_DISCORD_TOKEN": "a-token",
        "IMAGINE_WEB_CLIENT_ID": "123",
        "IMAGINE_WEB_CLIENT_SECRET": "a-secret",
        "IMAGINE_WEB_SESSION_SECRET": "k" * 40,
        "IMAGINE_GUILD_IDS": "1",
    }
    environment.pop("IMAGINE_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "web", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert body == {"database": "ok", "store": "ok"}, (
            process.stderr.read() if process.poll() is not None else "no answer"
        )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/")
        answer = connection.getresponse()
        assert (answer.status, answer.getheader("location")) == (303, "/login?next=%2F")
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0
