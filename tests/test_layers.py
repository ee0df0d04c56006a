"""Layers run one way: bot and web → generation → storage; Discord stops at bot/, torch before
storage/, and the web console never imports the bot."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "web": {"discord", "bot"},
    "generation": {"discord", "bot", "web"},
    "storage": {"discord", "bot", "generation", "web", "torch", "diffusers", "transformers"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_a_layer_above_it(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / package).rglob("*.py")
        for module in imported_modules(path) & FORBIDDEN[package]
    }
    assert not offenders, sorted(offenders)


def test_the_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch\n    from discord.ext import commands\n")
    assert imported_modules(sample) == {"torch", "discord"}


def _full_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_discord_side_of_bot_never_imports_the_command_lines_modules() -> None:
    """Text both front doors use lives in generation.wording, not in a cli_* module."""
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "bot").glob("*.py")
        if not path.name.startswith(("cli", "__main__"))
        for module in _full_imports(path)
        if module == "bot.cli" or module.startswith("bot.cli_")
    }
    assert not offenders, sorted(offenders)
