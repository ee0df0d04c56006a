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
