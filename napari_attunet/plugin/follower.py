"""One comparison kept up to date in napari: a result Labels layer against a reference Labels
layer (a ground truth opened from disk, one painted by hand, or another run or model's result).

``Follower`` is shared by the "Compare with a reference" dock and the main widget's reference
picker. It follows edits to either layer (painting, filling, the data replaced), recomputes at
most once per ``THROTTLE_MS`` in a worker thread (``review.evaluate`` and the disagreement
map), so that painting stays fluid, and keeps the ``<image> disagreement`` layer: the voxels
only the result labels (false positives, or another class) in one colour, those only the
reference labels (false negatives) in another. Layers on different grids are compared in world
coordinates, the reference resampled onto the result's grid, as ``review`` does for files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .legend import hex_colour

THROTTLE_MS = 400
FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2
DISAGREEMENT_NAMES = ("agree", "only the result (false positive)", "only the reference (false negative)")
# hues apart from the class palette (orange, sky blue, ...: layers.LABEL_COLOURS), the gates'
# green and the uncertainty's magenta, so that no disagreement reads as a class or a map
DISAGREEMENT_COLOURS = {
    0: (0.0, 0.0, 0.0, 0.0),
    FALSE_POSITIVE: (1.0, 0.1, 0.1, 1.0),  # red
    FALSE_NEGATIVE: (0.2, 0.3, 1.0, 1.0),  # deep blue
    None: (0.0, 0.0, 0.0, 0.0),
}
SUFFIX = " disagreement"
TAG = "attunet_compare"  # the disagreement layer's metadata key


def legend(layer_name: str, rows=None) -> str:
    """What the disagreement layer's colours and the numbers mean, and the comparison's notes
    (a resampled reference, a class absent from one of the two), as rich text."""
    import html

    red, blue = (hex_colour(DISAGREEMENT_COLOURS[v]) for v in (FALSE_POSITIVE, FALSE_NEGATIVE))
    lines = [
        f"<span style='color:{red}'>&#9632;</span> red: only the result labels it (false positive, "
        "or another class)",
        f"<span style='color:{blue}'>&#9632;</span> blue: only the reference labels it (false negative)",
        f"in the layer '{html.escape(layer_name)}'. Dice: overlap, 1 = the same; HD95: "
        "95th-percentile distance between the two surfaces, in mm.",
    ]
    if rows is not None:
        lines += [html.escape(n) for n in (*rows.notes, *(r.note for r in rows if r.note))]
    return "<br>".join(lines)


def disagreement(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 where the result labels a voxel otherwise than the reference (it says foreground there),
    2 where only the reference labels it; 0 where they agree."""
    out = np.zeros(result.shape, dtype=np.uint8)
    differ = result != reference
    out[differ & (result != 0)] = FALSE_POSITIVE
    out[differ & (result == 0)] = FALSE_NEGATIVE
    return out


def layer_labels(layer, role: str):
    """A ``review`` LabelMap of a Labels layer: its data, world placement and class names."""
    from ..review.labelmaps import LabelMap
    from ..scans.geometry import compose, decompose

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    array = np.array(data)  # a copy: painting may go on while the worker reads it
    ndim = array.ndim
    world = np.asarray(layer.affine.affine_matrix, dtype=float)[-ndim - 1 :, -ndim - 1 :] @ compose(
        layer.scale, layer.translate
    )
    spacing, origin, direction = decompose(world)
    names = (layer.metadata.get("attunet") or {}).get("class_names")
    return LabelMap(
        array,
        f"{role} layer '{layer.name}'",
        spacing=spacing,
        origin=origin,
        direction=direction,
        names=tuple(names) if names else None,
    )


def compare(result, reference) -> tuple[Any, np.ndarray]:
    """In the worker: the evaluation rows and the disagreement map on the result's grid."""
    from ..review import evaluate
    from ..review.labelmaps import integer_labels, onto

    rows = evaluate(result, reference, class_names=result.names)
    ref = integer_labels(reference)
    pred = integer_labels(result)
    on_grid, _ = onto(ref, pred)
    return rows, disagreement(pred.array, on_grid)


def is_disagreement(layer) -> bool:
    """A disagreement layer (of either widget, or one saved and opened again by its name)."""
    return _ours(layer) or layer.name.endswith(SUFFIX)


def _ours(layer) -> bool:
    return TAG in (getattr(layer, "metadata", None) or {})


def default_name(result) -> str:
    """``<image> disagreement`` for ``<image> attunet`` (else the result's name + the suffix)."""
    name = result.name
    return (name[: -len(" attunet")] if name.endswith(" attunet") else name) + SUFFIX


def _key(layer) -> int:
    """One layer's identity: napari hands plugins proxies, new ones at each access."""
    return id(getattr(layer, "__wrapped__", layer))


class Follower:
    """Keeps the comparison of ``pair()`` (result layer, reference layer; either may be None)
    up to date. ``on_rows(rows)`` gets each new ``review.Evaluation`` and ``on_rows(None)`` when
    there is nothing to compare; ``on_error(sentence)`` when the two cannot be compared (the
    sentence names the layer, and a label value the result has no class for)."""

    def __init__(
        self,
        viewer,
        pair: Callable[[], tuple[Any, Any]],
        on_rows: Callable[[Any], None],
        on_error: Callable[[str], None],
        name: Callable[[Any], str] = default_name,
    ):
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.pair = pair
        self.on_rows = on_rows
        self.on_error = on_error
        self.name = name
        self.busy = False
        self._pending = False
        self._closed = False
        self._generation = 0  # a result computed for an earlier pair, or before clear(), is dropped
        self._watched: list = []
        self._keys: tuple = ()
        self._layer_name: str | None = None  # the disagreement layer this follower keeps
        self._wanted: str | None = None  # the name asked for (napari numbers one already taken)
        self._last_error = ""
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(THROTTLE_MS)
        self._timer.timeout.connect(self.refresh)

    @property
    def layer_name(self) -> str | None:
        """The disagreement layer's name, while there is one."""
        return self._layer_name

    def close(self) -> None:
        """The dock closed (or the viewer): follow nothing more."""
        self._closed = True
        try:
            self._timer.stop()
        except RuntimeError:  # Qt deleted it first (the application is quitting)
            pass
        self._unwatch()

    # ---- which layers to follow ----------------------------------------------------------
    def _unwatch(self) -> None:
        for layer in self._watched:
            for event in (layer.events.paint, layer.events.data):
                event.disconnect(self.schedule)
        self._watched = []
        self._keys = ()

    def follow(self) -> None:
        """Follow the edits of the pair as it is now (and of no other layers), and compare."""
        if self._closed:
            return
        self._rewatch(*self.pair())
        self.schedule()

    def _rewatch(self, result, reference) -> None:
        keys = tuple(_key(x) if x is not None else None for x in (result, reference))
        if keys == self._keys:
            return
        self._unwatch()
        self._generation += 1
        self._keys = keys
        for layer in {_key(x): x for x in (result, reference) if x is not None}.values():
            for event in (layer.events.paint, layer.events.data):
                event.connect(self.schedule)
            self._watched.append(layer)

    def schedule(self, _event=None) -> None:
        """A throttled refresh: the first edit starts the timer, later ones ride along."""
        if not self._closed and not self._timer.isActive():
            self._timer.start()

    # ---- comparing -----------------------------------------------------------------------
    def refresh(self) -> None:
        """Compare the pair now, in a worker; a refresh asked for meanwhile runs after it."""
        from napari.qt.threading import thread_worker

        if self._closed:
            return
        result, reference = self.pair()
        self._rewatch(result, reference)
        if result is None or reference is None or _key(result) == _key(reference):
            self.clear()
            return
        if self.busy:
            self._pending = True
            return
        try:
            pred, ref = layer_labels(result, "result"), layer_labels(reference, "reference")
        except ValueError as exc:
            self._failed(exc)
            return
        self.busy = True
        generation = self._generation

        def done(out) -> None:
            if not self._closed and generation == self._generation:
                self._show(result, reference, *out)

        def failed(exc: Exception) -> None:
            if not self._closed and generation == self._generation:
                self._failed(exc)

        worker = thread_worker(compare, ignore_errors=True)(pred, ref)  # errors go to failed()
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(self._finished)
        worker.start()

    def _finished(self) -> None:
        self.busy = False
        if self._pending and not self._closed:
            self._pending = False
            self.schedule()

    def _show(self, result, reference, rows, disagree: np.ndarray) -> None:
        self._last_error = ""
        self._put_layer(result, reference, disagree)
        self.on_rows(rows)

    def _failed(self, exc: BaseException) -> None:
        """One sentence (a notification once per new sentence, not at every brush stroke);
        the numbers and the disagreement layer no longer describe the layers: both go."""
        from ..errors import InputError
        from .notify import notify

        message = str(exc) if isinstance(exc, InputError) else f"the comparison failed ({exc})."
        self._remove_layer()
        self.on_rows(None)
        self.on_error(message)
        if message != self._last_error:
            notify("warning", message)
        self._last_error = message

    def clear(self) -> None:
        """Nothing to compare: no numbers, no disagreement layer."""
        self._generation += 1
        self._last_error = ""
        self._remove_layer()
        self.on_rows(None)

    # ---- the disagreement layer ----------------------------------------------------------
    def _remove_layer(self) -> None:
        name = self._layer_name
        self._layer_name = self._wanted = None
        if name is not None and name in self.viewer.layers and _ours(self.viewer.layers[name]):
            self.viewer.layers.remove(name)

    def _put_layer(self, result, reference, disagree: np.ndarray) -> None:
        """Update the disagreement layer in place, or add it on the result's grid; the layer
        the user was working on stays the selected one."""
        from napari.utils.colormaps import DirectLabelColormap

        wanted = self.name(result)
        if self._wanted not in (None, wanted):  # another result: its layer, not the last one's
            self._remove_layer()
        self._wanted = wanted
        name = self._layer_name or wanted
        features = {"index": [0, 1, 2], "class": list(DISAGREEMENT_NAMES)}
        meta = {TAG: {"result": result.name, "reference": reference.name}}
        place = {
            "scale": result.scale,
            "translate": result.translate,
            "affine": result.affine,
            "units": result.units,
            "axis_labels": result.axis_labels,
        }
        if name in self.viewer.layers and _ours(self.viewer.layers[name]):
            layer = self.viewer.layers[name]
            layer.metadata = meta
            for key, value in place.items():
                setattr(layer, key, value)
            layer.data = disagree
            layer.features = features
            self._layer_name = name
            return
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_labels(
            disagree,
            name=wanted,
            colormap=DirectLabelColormap(color_dict=DISAGREEMENT_COLOURS),
            features=features,
            opacity=0.8,
            metadata=meta,
            **place,
        )
        self._layer_name = layer.name
        if active is not None:
            self.viewer.layers.selection.active = active
