"""The layers of a run that writes a result store: added as soon as the store exists, backed by
its arrays (read as napari asks), refreshed as blocks finish, moved onto the finished store, and
removed with the partial store when the run is cancelled or fails.

While the run goes, the labels are read-only (the engine is writing them). Once it is done they
are backed by the store's own labels array, writable: painting writes into the store on disk.
Threshold changes never write there; they show as a separate read-only layer computed slice by
slice from the stored probabilities, so no edit can be overwritten.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layers import (
    LABELS_OPACITY,
    SourceGeometry,
    gate_contrast,
    gate_image,
    gate_kwargs,
    label_colormap,
    uncertainty_layer,
)
from .store_views import StoreView

MIN_REFRESH_MS = 250  # at most four refreshes a second
MAX_REFRESH_MS = 3000
STORE_TAG = "attunet_store"
LABELS_KEY = "labels/attunet/0"
CHUNK_NAME = re.compile(r"\d+(\.\d+)*")  # a written chunk (not a file being written)


@dataclass(frozen=True)
class StoreOpened:
    """Yielded by the worker: the run's partial store exists at ``partial`` (``out`` at the end)."""

    partial: Path
    out: Path


class PaintWatch:
    """Edits of a store-backed Labels layer: paint and fill (they write into the store).

    No copy of the volume is kept (it may not fit in memory); nothing the widget does writes
    into a finished store's labels, so there is nothing an edit could be lost to."""

    def __init__(self, layer):
        self.painted = False
        layer.events.paint.connect(self._on_paint)

    def _on_paint(self, event=None) -> None:
        self.painted = True

    @property
    def edited(self) -> bool:
        return self.painted

    def record(self, data=None, region=None) -> None:
        pass

    def matches(self, region=None) -> bool:
        return not self.painted


def open_store_array(path: Path, key: str, mode: str = "r"):
    import zarr

    return zarr.open_array(str(path / key), mode=mode, zarr_format=2)


def store_names(path: Path) -> tuple[str, list[str]]:
    """(output, label names with the background first) from a store's metadata."""
    import zarr

    meta = dict(zarr.open_group(str(path), mode="r", zarr_format=2).attrs["attunet"])
    names = list(meta["class_names"])
    return meta["output"], (["background"] + names if meta["output"] == "sigmoid" else names)


def gate_groups(path: Path) -> list[tuple[int, str, dict]]:
    """(k, key of the array, its stride/offset) for each gate map in the store, in order."""
    import zarr

    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    if "gates" not in root:
        return []
    keys = sorted(root["gates"].group_keys(), key=lambda k: int(k[4:]))
    return [(int(k[4:]), f"gates/{k}/0", dict(root[f"gates/{k}"].attrs["attunet"])) for k in keys]


def sampled_contrast(array, lead: tuple) -> tuple[float, float]:
    """``gate_contrast`` of a stored gate head from a strided read (about 1e6 cells)."""
    shape = array.shape[len(lead) :]
    step = max(1, int(round((np.prod(shape) / 1e6) ** (1.0 / len(shape)))))
    return gate_contrast(np.asarray(array[lead + (slice(None, None, step),) * len(shape)]))


class StoreRun:
    """One store-writing run's layers in one viewer."""

    def __init__(self, viewer, source: SourceGeometry, out: Path, show_uncertainty: bool, level: float):
        from qtpy.QtCore import QTimer

        self.viewer, self.source, self.out = viewer, source, Path(out)
        self.show_uncertainty, self.level = show_uncertainty, level
        self.tag = uuid.uuid4().hex
        self.partial: Path | None = None
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.interval_ms = MIN_REFRESH_MS
        self._seen: set[str] = set()  # chunk files of the probabilities already shown
        self._pending: list = []  # layers to add, one per turn of the event loop
        self._chunks: tuple[int, ...] = ()
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.refresh)

    # ---- layers ----------------------------------------------------------------------------
    def layers(self) -> list:
        """This run's layers still in the viewer (found by tag: napari may hand out proxies)."""
        return [
            layer
            for layer in self.viewer.layers
            if (layer.metadata.get(STORE_TAG) or {}).get("tag") == self.tag
        ]

    def labels_layer(self):
        for layer in self.layers():
            if layer.metadata[STORE_TAG]["kind"] == "labels":
                return layer
        return None

    def _meta(self, kind: str, **more) -> dict:
        return {STORE_TAG: {"tag": self.tag, "kind": kind, "store": str(self.out), **more}}

    def open(self, partial: Path) -> None:
        """The store exists: add its layers (empty so far; labels read-only), one per turn of
        the event loop (a new layer's Qt controls take a few hundred ms under software GL)."""
        self.partial = Path(partial)
        output, names = store_names(self.partial)
        labels = open_store_array(self.partial, LABELS_KEY)
        self._chunks = tuple(labels.chunks)
        kwargs = {
            **self.source.kwargs(),
            "name": f"{self.source.name} attunet",
            "colormap": label_colormap(len(names)),
            "features": {"index": list(range(len(names))), "class": names, "volume_ml": [0.0] * len(names)},
            "metadata": {
                "attunet": {"source": self.source.name, "class_names": names, "run": uuid.uuid4().hex},
                **self._meta("labels"),
                **{k: v for k, v in self.source.metadata.items() if k == "attunet_geometry"},
            },
            "opacity": LABELS_OPACITY,
            "rendering": "iso_categorical",
        }
        self._pending = [lambda: self._add_labels(labels, kwargs)]
        for k, key, grid in gate_groups(self.partial):
            array = open_store_array(self.partial, key)
            heads = array.shape[0]
            for h in range(heads):
                gk = gate_kwargs(
                    self.source,
                    k,
                    h,
                    heads,
                    grid["stride"],
                    grid["offset"],
                    (0.5, 1.0),
                    self.viewer.dims.ndisplay,
                    scan_shape=labels.shape,
                )
                gk["metadata"].update(self._meta("gate", key=key, head=h))
                self._pending.append(
                    lambda a=array, h=h, gk=gk: self.viewer.add_layer(gate_image(StoreView(a, (h,)), gk))
                )
        view = StoreView(open_store_array(self.partial, "uncertainty/0"), factor=1.0 / 255)
        _, uk, _ = uncertainty_layer(_Uncertain(view), self.source, self.level)
        uk["visible"] = self.show_uncertainty
        uk["metadata"].update(self._meta("uncertainty"))
        self._pending.append(lambda: self.viewer.add_image(view, **{**uk, "visible": self.show_uncertainty}))
        self._pending.append(self._select_labels)  # napari selects each layer it adds
        self._drain()

    @property
    def pending(self) -> bool:
        """Layers still to be added."""
        return bool(self._pending)

    def _drain(self) -> None:
        from qtpy.QtCore import QTimer

        if self._pending:
            self._pending.pop(0)()
            QTimer.singleShot(0, self._drain)

    def _flush(self) -> None:
        while self._pending:
            self._pending.pop(0)()

    def _add_labels(self, labels, kwargs: dict) -> None:
        layer = self.viewer.add_labels(labels, **kwargs)
        layer.editable = False  # the engine writes these voxels until the run ends

    def _select_labels(self) -> None:
        layer = self.labels_layer()
        if layer is None or (self.viewer.dims.ndisplay == 3 and self.viewer.cursor._view_direction is None):
            return  # napari 0.9 fails to compute a 3D Labels status before the cursor has moved
        self.viewer.layers.selection.active = layer

    # ---- as blocks finish ------------------------------------------------------------------
    def block_done(self) -> None:
        """A block is in the store: refresh soon (throttled: at most one refresh per interval)."""
        if self.partial is not None and not self.timer.isActive():
            self.timer.start(self.interval_ms)

    def refresh(self) -> None:
        """Re-read what the visible layers show, when blocks landed there since the last time;
        the interval grows when a refresh is slow, so that refreshing never takes more than a
        fifth of the event loop's time."""
        if self.partial is None or not self._landed_in_view():
            return
        started = time.perf_counter()
        for layer in self.layers():
            if layer.visible:
                layer.refresh()
        cost = time.perf_counter() - started
        self.refreshes += 1
        self.refresh_seconds += cost
        self.interval_ms = int(min(MAX_REFRESH_MS, max(MIN_REFRESH_MS, 4000 * cost)))

    def _landed_in_view(self) -> bool:
        """Whether chunks written since the last call touch the slice on screen (in 3D: any).
        The store's chunk files tell, as the probabilities are never all zero (never skipped)."""
        try:
            names = {
                entry.name for entry in os.scandir(self.partial / "0") if CHUNK_NAME.fullmatch(entry.name)
            }
        except OSError:  # renamed or removed meanwhile
            return False
        new = names - self._seen
        self._seen |= new
        if not new:
            return False
        layer = self.labels_layer()
        if layer is None or self.viewer.dims.ndisplay == 3:
            return True
        lead = self.viewer.dims.ndim - layer.ndim
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        hidden = [a - lead for a in self.viewer.dims.not_displayed if a >= lead]
        chunks = self._chunks
        for name in new:
            index = [int(i) for i in name.split(".")[1:]]  # after the channel chunk
            if len(index) == layer.ndim and all(
                index[a] * chunks[a] <= round(point[a]) < (index[a] + 1) * chunks[a] for a in hidden
            ):
                return True
        return False

    def stop(self) -> None:
        self.timer.stop()

    def close(self) -> None:
        """The viewer went away: add and refresh nothing more."""
        self.timer.stop()
        self._pending.clear()
        self.partial = None

    # ---- the end ---------------------------------------------------------------------------
    def finish(self, counts: np.ndarray | None, gate_limits: dict):
        """The store is complete at ``out``: every layer reads from there, labels writable,
        gates with their contrast limits (``gate_limits[(key, head)]``). Returns the Labels
        layer (None if the user removed it)."""
        self.stop()
        self._flush()
        output, names = store_names(self.out)
        for layer in self.layers():
            meta = layer.metadata[STORE_TAG]
            if meta["kind"] == "labels":
                layer.data = open_store_array(self.out, LABELS_KEY, mode="r+")
                layer.editable = True
                if counts is not None:
                    voxel = float(np.prod(self.source.scale)) / 1000.0
                    layer.features = {
                        "index": list(range(len(names))),
                        "class": names,
                        "volume_ml": [0.0] + [float(counts[k].sum()) * voxel for k in range(1, len(names))],
                    }
            elif meta["kind"] == "gate":
                layer.data = StoreView(open_store_array(self.out, meta["key"]), (meta["head"],))
                limits = gate_limits.get((meta["key"], meta["head"]))
                if limits is not None:
                    layer.contrast_limits = limits
                    layer.iso_threshold = limits[0] + 0.8 * (limits[1] - limits[0])
            else:
                layer.data = StoreView(open_store_array(self.out, "uncertainty/0"), factor=1.0 / 255)
        self.partial = None
        return self.labels_layer()

    def discard(self) -> int:
        """The run was cancelled or failed (the engine removed the partial store): remove this
        run's layers. Returns how many were removed."""
        self.stop()
        self._pending.clear()
        self.partial = None
        layers = self.layers()
        for layer in layers:
            self.viewer.layers.remove(layer)
        return len(layers)


class _Uncertain:
    """What ``layers.uncertainty_layer`` reads of a prediction: its uncertainty map."""

    def __init__(self, view):
        self.uncertainty = view
