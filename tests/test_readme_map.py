"""The README's map of the package (its "one line per part" list) names every module, and only
those that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "neuralcodes"


def _map_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("`src/neuralcodes/`, one line per part")
    return text[start:text.index("The layers (", start)]


def _modules() -> set[str]:
    """File names of the package's modules (and its subpackages, as ``name/``)."""
    names = {p.name for p in PACKAGE.rglob("*.py")
             if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts}
    names |= {f"{p.name}/" for p in PACKAGE.rglob("*")
              if p.is_dir() and (p / "__init__.py").exists()}
    return names


def _present() -> set[str]:
    """What the map may name: the modules, ``__init__.py`` and any folder of the package."""
    folders = {f"{p.name}/" for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    return _modules() | folders | {"__init__.py"}


def _named(section: str) -> set[str]:
    """Every `name.py` and `name/` the section writes in backticks."""
    quoted = re.findall(r"`([^`\s]+)`", section)
    return {q.rsplit("/", 1)[-1] if q.endswith(".py") else q
            for q in quoted if q.endswith(".py") or re.fullmatch(r"[a-z_]+/", q)}


def test_every_module_is_on_the_map() -> None:
    missing = sorted(_modules() - _named(_map_section()))
    assert not missing, f"README's package map does not name: {missing}"


def test_the_map_names_no_module_that_is_gone() -> None:
    gone = sorted(_named(_map_section()) - _present())
    assert not gone, f"README's package map names what the package no longer has: {gone}"
