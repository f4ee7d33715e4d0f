"""docs/architecture.md is the map of the package: every module is on it, and nothing on it is
gone; the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "napari_attunet"


def _modules() -> set[str]:
    """Every module as its path in the package, e.g. ``inference/options.py``."""
    return {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE
    }


def test_every_module_is_on_the_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {
        n
        for n in re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)`", text)
        if n.split("/")[0] not in ("tests", "bench", "docs", "scripts")
    }
    missing = sorted(_modules() - named)
    assert not missing, f"docs/architecture.md does not name: {missing}"
    gone = sorted(n for n in named if not (PACKAGE / n).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


def test_few_modules_at_the_package_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    for page in re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines)):
        assert (ROOT / page).exists(), page
