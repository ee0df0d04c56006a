"""Settings: .env.example documents every setting, with the defaults the code really has."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("IMAGINE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_env_example_lists_every_setting() -> None:
    listed = set(re.findall(r"^(IMAGINE_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert listed == {f"IMAGINE_{name.upper()}" for name in Settings.model_fields}


def test_env_example_values_are_the_defaults() -> None:
    from_example = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert from_example.model_dump() == Settings().model_dump()


def test_default_database_is_a_sqlite_file_in_the_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.database_url == f"sqlite+aiosqlite:///{(tmp_path / 'd' / 'imagine.db')}"


def test_token_is_secret_and_limits_reach_the_request_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGINE_DISCORD_TOKEN", "abc.def.ghi")
    monkeypatch.setenv("IMAGINE_MAX_STEPS", "30")
    settings = Settings()
    assert "abc.def.ghi" not in repr(settings)
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "abc.def.ghi"
    assert settings.limits().max_steps == 30


def test_a_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_MAX_COUNT", "9")
    with pytest.raises(ValueError, match="max_count"):
        Settings()


@pytest.mark.parametrize(
    "written", ["123", "123,456", "123, 456", "123 456", "[123, 456]", "123;456"]
)
def test_id_lists_are_read_as_hosts_write_them(
    monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    for name in ("GUILD_IDS", "ADMIN_USER_IDS", "ADMIN_ROLE_IDS"):
        monkeypatch.setenv(f"IMAGINE_{name}", written)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    expected = [123] if written == "123" else [123, 456]
    assert settings.guild_ids == settings.admin_user_ids == settings.admin_role_ids == expected


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("IMAGINE_ADMIN_USER_IDS", "123,bob", "IMAGINE_ADMIN_USER_IDS"),
        ("IMAGINE_GUILD_IDS", "[1,", "IMAGINE_GUILD_IDS"),
        ("IMAGINE_ROLE_WEIGHTS", "123=2", "role_weights"),
    ],
)
def test_the_command_line_names_a_bad_setting_without_a_traceback(
    tmp_path: Path, name: str, value: str, named: str
) -> None:
    from click.testing import CliRunner

    from bot.cli import main

    result = CliRunner().invoke(
        main, ["jobs"], env={name: value, "IMAGINE_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1, result.output
    assert "bad setting" in result.output and named in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), "a clean exit, not an error raised"
