"""Where the widget writes a result store: beside the scan's own zarr store when that folder is
writable, else in the user cache folder; always under a name that nothing holds yet."""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS_ENV = "NAPARI_ATTUNET_RESULTS"


def cache_folder() -> Path:
    """The folder for result stores of scans read from nowhere writable:
    ``$NAPARI_ATTUNET_RESULTS``, else ``results`` in the platform's user cache."""
    override = os.environ.get(RESULTS_ENV)
    if override:
        return Path(override)
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "napari-attunet" / "results"
    return Path(user_cache_dir("napari-attunet")) / "results"


def _zarr_root(array) -> Path | None:
    """The folder of a zarr array's local store, or None (in memory, remote, not zarr)."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None)  # LocalStore
    if root is None:
        root = getattr(store, "path", None)  # FsspecStore (dask opens paths with it): local if it is here
    if not root:
        return None
    path = Path(str(root))
    return path if path.is_dir() else None


def source_store(data) -> Path | None:
    """The local zarr store a layer's data (a zarr array, or dask over one) reads from."""
    found = _zarr_root(data)
    if found is not None:
        return found
    graph = getattr(data, "dask", None)
    if graph is None:
        return None
    # from_zarr keeps the array alone in a small layer; large or blockwise layers (one task per
    # chunk) are not materialised here
    for layer in getattr(graph, "layers", {"graph": graph}).values():
        if type(layer).__name__ == "Blockwise" or len(layer) > 16:
            continue
        for value in layer.values():
            if type(value).__module__.split(".")[0] == "zarr":
                found = _zarr_root(value)
                if found is not None:
                    return found
    return None


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def default_folder(layer, data) -> Path:
    """Beside the store (or file) the layer was read from, when that folder is writable;
    else the user cache folder."""
    candidates = []
    store = source_store(data)
    if store is not None:
        candidates.append(store.parent)
    path = getattr(getattr(layer, "source", None), "path", None)
    if path:
        candidates.append(Path(path).parent)
    for folder in candidates:
        if _writable(folder):
            return folder
    return cache_folder()


def stem_of(name: str) -> str:
    """A file-name stem from a layer name (letters, digits, ``._-``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"
    return stem[:-5] if stem.endswith(".zarr") else stem


def taken(path: Path) -> bool:
    """``path`` exists, or a run is writing it (its hidden partial store is there)."""
    if path.exists():
        return True
    return any(path.parent.glob(f".{path.name}.partial-*")) if path.parent.is_dir() else False


def unique_store(folder: Path, name: str) -> Path:
    """``<folder>/<name>_attunet.zarr``, or ``..._attunet-2.zarr`` and up: never an existing one."""
    stem = stem_of(name)
    path = folder / f"{stem}_attunet.zarr"
    n = 2
    while taken(path):
        path = folder / f"{stem}_attunet-{n}.zarr"
        n += 1
    return path


def partial_store(out: Path) -> Path | None:
    """The hidden store a run writes before renaming it to ``out`` (see inference.store)."""
    found = sorted(Path(out).parent.glob(f".{Path(out).name}.partial-*"))
    return found[0] if len(found) == 1 else None
