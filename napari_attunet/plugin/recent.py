"""Recently used checkpoints, persisted between sessions."""

from __future__ import annotations

import json
import os
from pathlib import Path

LIMIT = 8


def _store() -> Path:
    base = os.environ.get("NAPARI_ATTUNET_CONFIG") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "napari-attunet"
    )
    return Path(base) / "recent.json"


def recent_checkpoints() -> list[str]:
    """Existing files only, most recent first."""
    try:
        items = json.loads(_store().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in items if isinstance(p, str) and os.path.isfile(p)][:LIMIT]


def remember_checkpoint(path: str | os.PathLike) -> None:
    path = str(Path(path).resolve())
    items = [path] + [p for p in recent_checkpoints() if p != path]
    store = _store()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(items[:LIMIT], indent=1))
    except OSError:
        pass  # a read-only home must not break the tool
