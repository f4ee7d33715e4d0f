"""The layers a run leaves in the viewer, and threshold re-labelling from its cached probabilities.

``ResultLayers`` adds or updates the labels, attention-gate and uncertainty layers of the latest
run, keeps the volume table and colour legend, and never overwrites a Labels layer edited by hand
(``edits.EditWatch``): a re-run or a threshold change then goes to a new layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .edits import EditWatch
from .jobs import StoreResult
from .layers import (
    LABELS_OPACITY,
    OUTLINE,
    SourceGeometry,
    gate_image,
    gate_layers,
    labels_image,
    labels_layer,
    map_display,
    uncertainty_layer,
)
from .live_store import STORE_TAG, PaintWatch, StoreRun
from .notify import notify
from .readout import has_readout, readout, with_readout
from .store_views import ThresholdView, volumes_from_counts

VOLUME_COLUMNS = ("", "class", "mL", "uncertain mL")  # the first: each class's colour
AGREEMENT_COLUMNS = ("Dice", "HD95\nmm")  # while a reference is picked (plugin/reference.py)
LABEL_STYLES = ("auto", "outlines", "filled")  # auto: outlines while a gate or the uncertainty is shown


@dataclass(frozen=True)
class ViewSettings:
    """What the widget asks of the result layers, read when a layer is put."""

    thresholds: list[float] | None  # None: the default rule (Prediction.labels)
    show_attention: bool
    show_uncertainty: bool
    uncertainty_level: float
    gate: str | None = None  # the gate shown ("gate 2", "gate 1 head 2"); None: the finest
    label_style: str = LABEL_STYLES[0]

    @property
    def outlines(self) -> bool:
        """Labels drawn as outlines: chosen, or by default while a gate or the uncertainty is
        shown (filled labels under a map hide the anatomy twice over)."""
        if self.label_style == "outlines":
            return True
        return self.label_style == LABEL_STYLES[0] and (self.show_attention or self.show_uncertainty)


class RunState:
    """The latest finished run: its prediction, and the Labels layer showing it.

    The layer is found again by a tag in its metadata: napari hands plugins proxies of its
    layers, so identity comparisons do not hold.
    """

    def __init__(self, prediction, source: SourceGeometry, labels_layer, offset=None, store=None):
        self.prediction = prediction
        self.source = source
        self.tag = labels_layer.metadata["attunet"]["run"]
        self.offset = offset
        self.store: StoreResult | None = store  # a run that wrote a result store
        self.counts = store.counts if store is not None else None  # of the labels the table shows
        self.store_path = store.path if store is not None else None
        # a store-backed layer is never copied (it may not fit in memory): paint is what counts
        self.watch = PaintWatch(labels_layer) if store is not None else EditWatch(labels_layer)

    @property
    def edited(self) -> bool:
        """Painted, filled, or changed in any other way (``layer.data = ...``, in place)."""
        return self.watch.edited

    def layer(self, viewer):
        """The Labels layer of this run, or None when the user removed it."""
        for layer in viewer.layers:
            if (layer.metadata.get("attunet") or {}).get("run") == self.tag:
                return layer
        return None


def shifted(source: SourceGeometry, offset) -> SourceGeometry:
    """The geometry of a region of ``source`` starting at voxel ``offset`` (a Preview)."""
    if offset is None:
        return source
    shift = np.asarray(source.scale) * np.asarray(offset)
    return SourceGeometry(
        source.name,
        source.scale,
        tuple(np.asarray(source.translate) + shift),
        source.units,
        source.axis_labels,
        source.affine,
        source.metadata,
    )


def result_name(source_name: str, preview: bool) -> str:
    return f"{source_name} attunet" + (" preview" if preview else "")


def volume_rows(
    features: dict, uncertain: list[float], agreement: dict[int, list[str]] | None = None
) -> dict[str, list]:
    """The volume table from a Labels layer's features (row 0, the background, left out): one
    row per label value, named by it, volumes in mL to one decimal; with ``agreement`` (the
    cells of ``agreement_cells`` by label value) the Dice and HD95 columns."""
    classes = list(features["class"][1:])
    values = list(features.get("index", range(len(features["class"]))))[1:]
    rows = [
        ["", name, round(float(ml), 1), round(float(unsure), 1)]
        for name, ml, unsure in zip(classes, features["volume_ml"][1:], uncertain, strict=True)
    ]
    columns = list(VOLUME_COLUMNS)
    if agreement is not None:
        columns += AGREEMENT_COLUMNS
        rows = [row + agreement.get(int(v), ["", ""]) for row, v in zip(rows, values, strict=True)]
    return {"data": rows, "index": [str(v) for v in values], "columns": columns}


def agreement_cells(row) -> list[str]:
    """A ``review.ClassMetrics`` row as the table shows it: Dice to 3 decimals, HD95 in mm to
    one ("n/a" where a class is absent from one of the two, as its note says)."""
    hd95 = "n/a" if np.isnan(row.hd95_mm) else f"{row.hd95_mm:.1f}"
    return [f"{row.dice:.3f}", hd95]


def region_text(offset, shape, scan_shape, scale) -> str:
    """What a Preview covers: its voxels along each axis, and its size in mm."""
    spans = ", ".join(
        f"{o}-{o + n - 1} of {total}" for o, n, total in zip(offset, shape, scan_shape, strict=True)
    )
    size = " x ".join(f"{n * s:.0f}" for n, s in zip(shape, scale, strict=True))
    return f"preview region: voxels {spans} ({size} mm); the volumes are of this region only"


def warm_imports() -> None:
    """Modules napari loads when the first Labels layer with features appears (about 1 s).
    Imported when the widget opens, they freeze neither a run nor the landing of its result
    (imported in the worker instead, they hold the GIL and stall the window during the run)."""
    import pandas  # noqa: F401
    import skimage.color  # noqa: F401
    import skimage.exposure  # noqa: F401


class ResultLayers:
    """The latest run's layers in one viewer, and the volume table beside them."""

    def __init__(
        self,
        viewer,
        volumes,
        settings: Callable[[], ViewSettings],
        note=None,
        on_gates: Callable[[list[str]], None] | None = None,
    ):
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.volumes = volumes  # a magicgui Table with VOLUME_COLUMNS
        self.note = note  # a magicgui Label over the table: what a Preview covers
        self.on_gates = on_gates  # told the gates of each run ("gate 1", ...), for the selector
        self.settings = settings
        self.state: RunState | None = None
        self._pending: list = []
        self._pending_names: list[str] = []
        self._closed = False
        self.store_run: StoreRun | None = None
        self._counting = None  # the worker counting a thresholds view's volumes
        self.evaluation = None  # the review.Evaluation the Dice and HD95 columns show
        self.agreement: dict[int, list[str]] | None = None  # Dice and HD95 cells by label value
        self._shown: tuple | None = None  # the features and uncertain mL the table shows
        self.relabel_timer = QTimer()  # the whole volume, once a threshold slider rests
        self.relabel_timer.setSingleShot(True)
        self.relabel_timer.setInterval(150)
        self.relabel_timer.timeout.connect(self.relabel_all)
        _show_one_decimal(volumes.native)
        warm_imports()
        viewer.dims.events.ndisplay.connect(self.on_ndisplay)

    @property
    def pending(self) -> bool:
        """Layers of a finished run still on the way."""
        return bool(self._pending) or (self.store_run is not None and self.store_run.pending)

    def close(self) -> None:
        """The viewer went away: put nothing more."""
        self._closed = True
        self._pending.clear()
        if self.store_run is not None:
            self.store_run.close()

    def labels_layer(self):
        """The Labels layer of the latest run, or None."""
        return self.state.layer(self.viewer) if self.state is not None else None

    # ---- a finished run ------------------------------------------------------------------
    def show(self, pred, source: SourceGeometry, offset, preview: bool, scan_shape=()) -> None:
        """Show a finished run. Layer changes are spread over event-loop turns (one layer each),
        and layers from an earlier run are updated in place, so napari never freezes long.
        ``scan_shape`` is the whole scan's, of which a Preview's region is part."""
        if self._closed:
            return
        source = shifted(source, offset)
        labels = pred.labels(self.settings().thresholds)
        name = result_name(source.name, preview)
        if not preview:
            self._drop_preview(source.name)
        existing = self.labels_layer()
        reuse = (
            existing is not None
            and existing.name == name
            and not self.state.edited
            and existing.data.shape == labels.shape
        )
        data, kwargs, _ = labels_layer(pred, source, labels, name)
        if reuse:
            kwargs["metadata"]["attunet"]["run"] = existing.metadata["attunet"]["run"]
            existing.metadata = kwargs["metadata"]
            existing.scale, existing.translate = kwargs["scale"], kwargs["translate"]
            existing.features = kwargs["features"]
            existing.data = data
            layer = existing
        else:
            if name in self.viewer.layers:
                kwargs["name"] = name + " (new)"
            layer = self.viewer.add_layer(labels_image(data, kwargs))
        self.state = RunState(pred, source, layer, offset)
        self.show_volumes(kwargs["features"], labels)
        self._show_region(offset, labels.shape, scan_shape, source.scale)
        gates = gate_layers(pred, source, self.viewer.dims.ndisplay)
        self._pending_names = [k["name"] for _, k, _ in gates]
        if self.on_gates is not None:
            self.on_gates([gate_label(k["name"], source.name) for _, k, _ in gates])
        self._pending = [lambda d=d, k=k: self._put_gate(d, k) for d, k, _ in gates]
        self._pending.append(lambda: self._drop_stale_gates(source.name))
        if self.settings().show_uncertainty or f"{source.name} uncertainty" in self.viewer.layers:
            self._pending.append(self._put_uncertainty)
        self._pending.append(self._select_labels)
        self._pending.append(self.apply_label_style)
        self._drain()

    def _drop_preview(self, source_name: str) -> None:
        """Run replaces the Preview: its layer goes unless it was edited by hand (then it stays,
        and the user is told why)."""
        name = result_name(source_name, True)
        if name not in self.viewer.layers:
            return
        state = self.state
        layer = self.viewer.layers[name]
        ours = state is not None and (layer.metadata.get("attunet") or {}).get("run") == state.tag
        if ours and state.edited:
            notify("info", f"{name!r} was edited by hand, so it stays beside the run's labels.")
            return
        self.viewer.layers.remove(name)

    def _show_region(self, offset, shape, scan_shape, scale) -> None:
        """Say, over the table, that a Preview's volumes are of its region, and which."""
        if self.note is None:
            return
        preview = offset is not None
        self.note.visible = preview
        self.note.value = (
            region_text(offset, shape, scan_shape if len(scan_shape) == len(shape) else shape, scale)
            if preview
            else ""
        )
        self.volumes.label = "volumes (preview region)" if preview else "volumes"

    # ---- a run writing a result store ----------------------------------------------------
    def begin_store(self, source: SourceGeometry, out) -> StoreRun:
        """A run that writes ``out``: its layers come when the store exists (``on_store_step``)."""
        settings = self.settings()
        self.store_run = StoreRun(
            self.viewer, source, out, settings.show_uncertainty, settings.uncertainty_level
        )
        return self.store_run

    def on_store_step(self, step) -> None:
        """A step of the running store run: the store appeared, a block landed, or it is done."""
        from .live_store import StoreOpened

        run = self.store_run
        if run is None or self._closed:
            return
        if isinstance(step, StoreOpened):
            run.open(step.partial)
        elif step.stage == "predicting" and step.done > 0:
            run.block_done()
        elif step.stage == "stitching":
            run.stop()  # the store is renamed next: no reads of the partial one meanwhile

    def show_store(self, result: StoreResult, run: StoreRun) -> None:
        """The store is complete: its layers read the finished store, the labels are editable."""
        self.store_run = None
        if self._closed:
            return
        layer = run.finish(result.counts, result.gate_limits)
        if layer is None:
            return
        self.state = RunState(result.prediction, run.source, layer, store=result)
        self.show_volumes(layer.features.to_dict("list"))
        self._show_region(None, (), (), ())
        self._select_labels()
        self.apply_label_style()

    def discard_store(self, run: StoreRun, exc: BaseException) -> str:
        """A store run was cancelled or failed: the engine removed the partial store; remove its
        layers. Returns the sentence to show."""
        from ..errors import Cancelled

        self.store_run = None
        removed = run.discard()
        layers = f" and its {removed} layers" if removed else ""
        if isinstance(exc, Cancelled):
            return f"Cancelled: nothing was kept; the partial store {run.out.name}{layers} were removed."
        from .jobs import failure

        return f"{failure(exc)[1]} The partial store {run.out.name}{layers} were removed."

    def _drain(self) -> None:
        """Apply one pending layer change, then yield to the event loop."""
        from qtpy.QtCore import QTimer

        if self._pending and not self._closed:
            self._pending.pop(0)()
            QTimer.singleShot(0, self._drain)

    def _put_gate(self, data, kwargs) -> None:
        settings = self.settings()
        label = gate_label(kwargs["name"], kwargs["metadata"]["attunet_gate"]["source"])
        chosen = settings.gate if settings.gate else "gate 1"
        kwargs["visible"] = settings.show_attention and label == chosen
        name = kwargs["name"]
        if name in self.viewer.layers and self.viewer.layers[name].data.ndim == data.ndim:
            _update_image(
                self.viewer.layers[name], data, kwargs, ("contrast_limits", "iso_threshold", "visible")
            )
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_layer(gate_image(data, kwargs))

    def _put_uncertainty(self) -> None:
        """The ``<image> uncertainty`` layer of the latest run (shown when the toggle is on)."""
        if self.state is None:
            return
        settings = self.settings()
        data, kwargs, _ = uncertainty_layer(
            self.state.prediction,
            self.state.source,
            settings.uncertainty_level,
            self.viewer.dims.ndisplay,
        )
        kwargs["visible"] = settings.show_uncertainty
        name = kwargs["name"]
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == data.shape:
            _update_image(self.viewer.layers[name], data, kwargs, ("visible", "colormap", "iso_threshold"))
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(data, **kwargs)

    def _select_labels(self) -> None:
        layer = self.labels_layer()
        if layer is None:
            return
        if self.viewer.dims.ndisplay == 3 and self.viewer.cursor._view_direction is None:
            # napari 0.9 fails to compute a 3D Labels status before the cursor has moved
            return
        self.viewer.layers.selection.active = layer

    def _drop_stale_gates(self, source_name: str) -> None:
        """Gates of an earlier run with more gates than this one."""
        for layer in list(self.viewer.layers):
            meta = layer.metadata.get("attunet_gate") if hasattr(layer, "metadata") else None
            if meta and meta.get("source") == source_name and layer.name not in self._pending_names:
                self.viewer.layers.remove(layer)

    # ---- toggles -------------------------------------------------------------------------
    def _gate_layers(self) -> list:
        """The gate layers of the latest run's scan (in memory or in a store)."""
        source = self.state.source.name if self.state is not None else None
        if self.store_run is not None:
            source = self.store_run.source.name
        if source is None:  # no run yet (every layer without a gate's tag would match None)
            return []
        return [
            layer
            for layer in self.viewer.layers
            if (layer.metadata.get("attunet_gate") or {}).get("source") == source
        ]

    def toggle_gates(self, show: bool | None = None) -> None:
        """Show the chosen gate (the finest unless one is chosen) and hide the others: one at a
        time, so that no two maps are read as one."""
        settings = self.settings()
        chosen = settings.gate if settings.gate else "gate 1"
        for layer in self._gate_layers():
            source = layer.metadata["attunet_gate"]["source"]
            layer.visible = settings.show_attention and gate_label(layer.name, source) == chosen
        self.apply_label_style()

    def apply_label_style(self, value=None) -> None:
        """Labels as outlines or filled (``ViewSettings.outlines``), on every run's labels."""
        outlines = self.settings().outlines
        for layer in self.viewer.layers:
            if "attunet" not in layer.metadata or not hasattr(layer, "contour"):
                continue
            if bool(layer.contour) != outlines:
                layer.contour = OUTLINE if outlines else 0
                layer.opacity = 1.0 if outlines else LABELS_OPACITY

    def on_ndisplay(self, event=None) -> None:
        """Maps are iso-lines in 2D and translucent surfaces in 3D (``layers.map_display``)."""
        ndisplay = self.viewer.dims.ndisplay
        level = self.settings().uncertainty_level
        for layer in self.viewer.layers:
            meta = layer.metadata
            kind = "gate" if "attunet_gate" in meta else "uncertainty"
            if kind == "uncertainty" and "attunet_uncertainty" not in meta:
                if (meta.get(STORE_TAG) or {}).get("kind") != "uncertainty":
                    continue
            for key, value in map_display(kind, ndisplay, level).items():
                setattr(layer, key, value)

    def toggle_uncertainty(self, show: bool) -> None:
        if self.store_run is not None:  # a store run's layers are in before it ends
            self.store_run.show_uncertainty = bool(show)
            for layer in self.store_run.layers():
                if layer.metadata[STORE_TAG]["kind"] == "uncertainty":
                    layer.visible = bool(show)
                    return
        if self.state is None:
            return
        name = f"{self.state.source.name} uncertainty"
        if name in self.viewer.layers:
            self.viewer.layers[name].visible = bool(show)
        elif show:
            self._put_uncertainty()
            self._select_labels()
        self.apply_label_style()

    def on_uncertainty_level(self, value=None) -> None:
        level = self.settings().uncertainty_level
        if self.state is not None and f"{self.state.source.name} uncertainty" in self.viewer.layers:
            layer = self.viewer.layers[f"{self.state.source.name} uncertainty"]
            layer.iso_threshold = level
            layer.colormap = map_display("uncertainty", self.viewer.dims.ndisplay, level)["colormap"]
        layer = self.labels_layer()
        if layer is not None:
            store = self.state is not None and self.state.store is not None
            self.show_volumes(layer.features.to_dict("list"), None if store else np.asarray(layer.data))

    def on_status(self, event=None) -> None:
        """Append the readout under the cursor to napari's status bar text."""
        status = self.viewer.status
        state = self.state
        if state is None or has_readout(status) or not self.viewer.mouse_over_canvas:
            return
        try:
            line = readout(self.viewer, state.prediction, state.layer(self.viewer), state.source.name)
        except (ValueError, IndexError):  # a layer changed shape under the cursor
            return
        if line:
            self.viewer.status = with_readout(status, line)

    # ---- thresholds ----------------------------------------------------------------------
    def apply_thresholds(self) -> None:
        """Re-label from the cached probabilities: the network does not run again.

        The slice on screen is re-labelled at once (a few ms); the whole volume, its features
        and the volume table follow once the slider rests (about 0.1 s for 256^3).
        """
        state = self.state
        layer = self.labels_layer()
        if state is None or layer is None:
            return
        if state.store is not None:
            self._threshold_view(state, layer)
            return
        if not state.edited and self._relabel_visible_slice(state, layer):
            self.relabel_timer.start()
        else:
            self.relabel_all()

    def _relabel_visible_slice(self, state: RunState, layer) -> bool:
        hidden = [a - (self.viewer.dims.ndim - layer.ndim) for a in self.viewer.dims.not_displayed]
        hidden = [a for a in hidden if a >= 0]
        if layer.ndim != 3 or len(hidden) != 1:
            return False
        axis = hidden[0]
        index = int(round(layer.world_to_data(self.viewer.dims.point[-layer.ndim :])[axis]))
        if not 0 <= index < layer.data.shape[axis]:
            return False
        from ..inference.postprocess import threshold_labels

        pred = state.prediction
        plane = np.take(pred.quantized, index, axis=axis + 1)
        region: list = [slice(None)] * 3
        region[axis] = index
        if not state.watch.matches(tuple(region)):
            return False  # changed meanwhile: relabel_all puts the thresholds on a new layer
        values = threshold_labels(plane, pred.output, self.settings().thresholds)
        layer.data[tuple(region)] = values
        state.watch.record(values, tuple(region))
        layer.refresh()
        return True

    def _threshold_view(self, state: RunState, layer) -> None:
        """Thresholds on a stored result: a read-only layer labelled slice by slice from the
        stored probabilities as napari draws it. The store's labels, which the user may have
        painted, are never rewritten; the volumes follow from a count in a worker thread."""
        thresholds = self.settings().thresholds
        pred = state.prediction
        view = ThresholdView(pred.quantized, pred.output, thresholds)
        found = [
            other
            for other in self.viewer.layers
            if (other.metadata.get(STORE_TAG) or {}).get("thresholds_of") == state.tag
        ]
        if found:
            found[0].data = view
            found[0].editable = False
        else:
            _, kwargs, _ = labels_layer(pred, state.source, np.zeros((1,) * layer.ndim, np.uint8))
            kwargs["name"] = f"{layer.name} (thresholds)"
            kwargs["features"] = layer.features.to_dict("list")
            kwargs["metadata"][STORE_TAG] = {"thresholds_of": state.tag, "store": str(state.store_path)}
            self.viewer.add_labels(view, **kwargs).editable = False
            notify(
                "info",
                f"Thresholds on a stored result show in the read-only layer {kwargs['name']!r}, "
                f"computed from the stored probabilities; {layer.name!r} (editable, saved in the "
                "store) keeps the run's labels.",
            )
        self._count_view(state, view)

    def _count_view(self, state: RunState, view) -> None:
        """Count a thresholds view's voxels by uncertainty level in a worker, then show them."""
        from napari.qt.threading import thread_worker

        from .store_views import uncertainty_counts

        unc = state.prediction.uncertainty.array
        n = len(state.prediction.label_names)
        if self._counting is not None:
            self._counting.quit()

        @thread_worker
        def count():
            return uncertainty_counts(view, unc, n, unc.chunks, lambda: worker.abort_requested)

        def done(counts) -> None:
            if self.state is not state or worker.abort_requested or self._closed:
                return
            state.counts = counts
            voxel = float(np.prod(state.source.scale)) / 1000.0
            names = list(state.prediction.label_names)
            features = {
                "index": list(range(n)),
                "class": names,
                "volume_ml": [0.0] + [float(counts[k].sum()) * voxel for k in range(1, n)],
            }
            for other in self.viewer.layers:
                if (other.metadata.get(STORE_TAG) or {}).get("thresholds_of") == state.tag:
                    other.features = features
            self.show_volumes(features)

        worker = count()
        worker.returned.connect(done)
        worker.finished.connect(
            lambda: setattr(self, "_counting", None) if self._counting is worker else None
        )
        self._counting = worker
        worker.start()

    def relabel_all(self) -> None:
        state = self.state
        layer = self.labels_layer()
        if state is None or layer is None:
            return
        labels = state.prediction.labels(self.settings().thresholds)
        data, kwargs, _ = labels_layer(state.prediction, state.source, labels, f"{layer.name} (thresholds)")
        if state.edited:
            notify("info", f"{layer.name} was edited by hand; the new thresholds go to a new layer.")
            layer = self.viewer.add_layer(labels_image(data, kwargs))
            self.state = RunState(state.prediction, state.source, layer, state.offset)
        else:
            layer.features = kwargs["features"]
            layer.data = labels
            state.watch.record(labels)
        self.show_volumes(kwargs["features"], labels)

    # ---- volume table --------------------------------------------------------------------
    def show_volumes(self, features: dict, labels: np.ndarray | None = None) -> None:
        """The per-class table and colour legend, from a Labels layer's features (row 0 is the
        background), with the volume of each class's voxels over the uncertainty level (for a
        store, from the voxel counts by uncertainty level: nothing is read again)."""
        state = self.state
        uncertain = [0.0] * (len(features["class"]) - 1)
        if state is not None and state.counts is not None and labels is None:
            level = self.settings().uncertainty_level
            mls = volumes_from_counts(state.counts, state.source.scale, level)
            uncertain = [float(v) for v in mls[1 : len(features["class"])]]
        elif state is not None and labels is not None and labels.shape == state.prediction.shape:
            level = self.settings().uncertainty_level
            mls = state.prediction.uncertain_volumes_ml(labels, level, state.source.scale)
            uncertain = [mls.get(name, 0.0) for name in features["class"][1:]]
        self._shown = (features, uncertain)
        self._render()

    def show_agreement(self, rows) -> None:
        """Dice and HD95 per class against the reference picked (a ``review.Evaluation``), or
        None: the table without those columns."""
        self.evaluation = rows
        self.agreement = None if rows is None else {r.label: agreement_cells(r) for r in rows}
        if self._shown is not None:
            self._render()

    def _render(self) -> None:
        assert self._shown is not None
        features, uncertain = self._shown
        self.volumes.value = volume_rows(features, uncertain, self.agreement)
        self._paint_swatches(features)
        self._fit_columns()

    def clear_volumes(self) -> None:
        """No rows: after a failed run the table describes nothing on screen."""
        self._shown = None
        self.volumes.value = {"data": [], "index": [], "columns": list(VOLUME_COLUMNS)}
        if self.note is not None:
            self.note.visible = False

    def _fit_columns(self) -> None:
        """Columns as wide as their contents: the table fits the dock's width without
        scrolling sideways."""
        from qtpy.QtWidgets import QHeaderView

        header = self.volumes.native.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(0, 20)  # a swatch

    def _paint_swatches(self, features: dict) -> None:
        """Each row's swatch in its label value's colour (the layer's colormap)."""
        from qtpy.QtGui import QColor

        from .layers import label_colormap

        colours = label_colormap(len(features["class"])).color_dict
        table = self.volumes.native
        values = list(features.get("index", range(len(features["class"]))))[1:]
        for r, value in enumerate(values):
            item = table.item(r, 0)
            rgba = colours.get(int(value))
            if item is not None and rgba is not None:
                item.setBackground(QColor.fromRgbF(*[float(c) for c in rgba[:3]], 1.0))


def _show_one_decimal(table) -> None:
    """Numbers in ``table`` (a QTableWidget) shown with one decimal, as the values hold
    (magicgui's tables show four)."""
    from qtpy.QtWidgets import QStyledItemDelegate

    class OneDecimal(QStyledItemDelegate):
        def displayText(self, value, locale) -> str:  # noqa: N802 - Qt's name
            if isinstance(value, float):
                return f"{value:.1f}"
            return super().displayText(value, locale)

    table.setItemDelegate(OneDecimal(table))


def gate_label(layer_name: str, source_name: str) -> str:
    """A gate layer's name without its scan's: "gate 2", "gate 1 head 2"."""
    return layer_name[len(source_name) :].strip()


def _update_image(layer, data, kwargs: dict, extra: tuple[str, ...]) -> None:
    """Put a new run's data and placement into an existing Image layer (keeps its controls).
    The metadata first: a gate's extent follows it (``layers.GateImage``)."""
    layer.metadata = kwargs["metadata"]
    layer.data = data
    layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
    for key in extra:
        setattr(layer, key, kwargs[key])
