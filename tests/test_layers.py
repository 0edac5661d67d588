"""Layers point one way: a module imports only from its own layer's package or the ones below.

model (familial) -> strategies, collab -> federation -> clients -> server -> simulations, and
the command line (``famflow.__main__``, ``famflow.commands``) on top, imported by nothing. Lazy
imports inside functions count too: every ``import`` statement in the file is read.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Rank of each subpackage of famflow; a package may import a lower rank or itself only.
LAYERS = {
    "familial": 0,
    "strategies": 1,
    "collab": 1,
    "federation": 2,
    "clients": 3,
    "server": 4,
    "simulations": 5,
    "commands": 6,
    "__main__": 6,
}
COMMAND_LINE = ("famflow.commands", "famflow.__main__")


def package_dirs() -> dict[str, Path]:
    """``famflow.<layer>`` -> its folder, as pyproject.toml maps them."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = mapping["package-dir"]
    return {name.split(".", 1)[1]: ROOT / path for name, path in dirs.items() if "." in name}


def famflow_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported famflow module) for every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from famflow import server`` names the package in the alias
            names = [f"famflow.{a.name}" for a in node.names] if node.module == "famflow" else [
                node.module
            ]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] == "famflow"]
    return found


def violations(layer: str, path: Path) -> list[str]:
    rank = LAYERS[layer]
    bad = []
    for line, module in famflow_imports(path):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else None
        if target not in LAYERS or target == layer:
            continue  # the root (its version), configs (data), or the module's own package
        if LAYERS[target] >= rank:
            bad.append(f"{path}:{line} ({layer}) imports {module} ({target})")
    return bad


def test_the_package_dirs_cover_every_layer():
    assert set(LAYERS) - {"__main__", "commands"} <= set(package_dirs())


@pytest.mark.parametrize("layer", sorted(set(LAYERS) - {"__main__", "commands"}))
def test_no_layer_imports_one_above_it(layer):
    folder = package_dirs()[layer]
    bad = [v for path in sorted(folder.rglob("*.py")) for v in violations(layer, path)]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_command_line():
    bad = []
    for folder in package_dirs().values():
        for path in folder.rglob("*.py"):
            bad += [
                f"{path}:{line}"
                for line, module in famflow_imports(path)
                if module.startswith(COMMAND_LINE)
            ]
    assert not bad, bad


def test_the_walk_catches_upward_imports_lazy_or_not(tmp_path):
    """The check itself fails on a familial module that imports the server and the CLI."""
    module = tmp_path / "upward.py"
    module.write_text(
        "from famflow import collab\n"
        "def f():\n"
        "    from famflow.server.export import export_branches\n"
        "    import famflow.__main__\n"
    )
    assert violations("familial", module) == [
        f"{module}:1 (familial) imports famflow.collab (collab)",
        f"{module}:3 (familial) imports famflow.server.export (server)",
        f"{module}:4 (familial) imports famflow.__main__ (__main__)",
    ]
    assert violations("simulations", module) == [
        f"{module}:4 (simulations) imports famflow.__main__ (__main__)"
    ]
