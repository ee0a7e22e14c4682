"""Every declared dependency is used, and every import is declared (pyproject.toml against the code's imports)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Declared but used without an import statement in this repository, each for a reason.
USED_WITHOUT_IMPORT = {
    "pytest-asyncio": "pytest plugin: asyncio_mode = auto runs the async tests",
    "accelerate": "transformers' Trainer needs it at run time; `accelerate launch -m charbot train` spreads training",
    "fastapi": "`python -m llama_cpp.server`, the real OpenAI-compatible peer in the remote tests, needs it",
    "uvicorn": "likewise, llama_cpp.server",
    "sse-starlette": "likewise, llama_cpp.server",
    "starlette-context": "likewise, llama_cpp.server",
    "pyyaml": "likewise, llama_cpp.server",
    "zstandard": "discord.py compresses the gateway stream with it when present (tests/test_discord_ops.py)",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    return {_norm(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def imported(folders: tuple[str, ...]) -> set[str]:
    """Top-level module names imported anywhere under `folders`."""
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def distributions(modules: set[str]) -> set[str]:
    owners = packages_distributions()
    return {_norm(d) for m in modules for d in owners.get(m, [])}


def test_every_declared_dependency_is_imported_or_has_a_reason():
    used = distributions(imported(("src", "tests", "benchmarks")))
    unused = declared() - used - set(USED_WITHOUT_IMPORT)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"
    assert set(USED_WITHOUT_IMPORT) <= declared()  # no stale reasons


def local_modules() -> set[str]:
    """The tests' and benchmarks' own helper modules (conftest, fakediscord, …), imported by name."""
    return {p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).iterdir() if p.suffix == ".py" or p.is_dir()}


def test_every_import_is_declared():
    third_party = {m for m in imported(("src", "tests", "benchmarks")) if m not in sys.stdlib_module_names and m != "charbot"}
    third_party -= local_modules()
    undeclared = distributions(third_party) - declared()
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
    assert all(packages_distributions().get(m) for m in third_party), "an import no installed distribution provides"
