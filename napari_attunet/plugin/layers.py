"""Prediction -> napari layer data tuples, aligned with the layer the run started from."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..inference import Prediction
from .transforms import data_to_world, layer_state

# Fixed label colours (RGBA): background transparent, then distinct, colour-blind-friendly hues.
LABEL_COLOURS = [
    (0.0, 0.0, 0.0, 0.0),
    (0.90, 0.62, 0.0, 1.0),
    (0.34, 0.71, 0.91, 1.0),
    (0.0, 0.62, 0.45, 1.0),
    (0.94, 0.89, 0.26, 1.0),
    (0.0, 0.45, 0.70, 1.0),
    (0.84, 0.37, 0.0, 1.0),
    (0.80, 0.47, 0.65, 1.0),
]


@dataclass(frozen=True)
class SourceGeometry:
    """What output layers copy from the source layer (docs/architecture.md: where each rule lives)."""

    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple = ()
    axis_labels: tuple = ()
    affine: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_layer(cls, layer, spatial_ndim: int | None = None) -> SourceGeometry:
        """The spatial part of an Image layer's geometry (dropping an RGB channel axis)."""
        n = spatial_ndim or layer.ndim
        affine = _physical_affine(layer, n)
        identity = np.allclose(affine, np.eye(affine.shape[0]))
        return cls(
            name=layer.name,
            scale=tuple(float(s) for s in layer.scale[-n:]),
            translate=tuple(float(t) for t in layer.translate[-n:]),
            units=tuple(str(u) for u in layer.units[-n:]) if getattr(layer, "units", None) else (),
            axis_labels=tuple(layer.axis_labels[-n:]) if getattr(layer, "axis_labels", None) else (),
            affine=None if identity else affine,
            metadata=dict(layer.metadata),
        )

    def kwargs(self) -> dict:
        out = {"scale": self.scale, "translate": self.translate}
        if self.units:
            out["units"] = self.units
        if self.axis_labels:
            out["axis_labels"] = self.axis_labels
        if self.affine is not None:
            out["affine"] = self.affine
        return out


def _physical_affine(layer, n: int) -> np.ndarray:
    """The layer's affine with its rotate and shear folded in (about its translate).

    Output layers on other grids (gate maps, crops) then place themselves with plain
    scale/translate arithmetic: affine * (scale * i + translate) stays right for them.
    """
    state = layer_state(layer)
    full = data_to_world(state, n)
    keep = list(range(len(state["scale"]) - n, len(state["scale"])))
    scale = np.asarray(state["scale"], dtype=float)[keep]
    translate = np.asarray(state["translate"], dtype=float)[keep]
    inner = np.eye(n + 1)
    inner[:n, :n] = np.diag(scale)
    inner[:n, n] = translate
    return full @ np.linalg.inv(inner)


LABELS_OPACITY = 0.7
OUTLINE = 1  # napari's contour thickness: labels drawn as outlines
# Maps are drawn in hues outside LABEL_COLOURS, as lines, so that they never read as a class.
GATE_RGB = (0.15, 1.0, 0.15)  # pure green: the palette's green is bluish (0.0, 0.62, 0.45)
UNCERTAINTY_RGB = (1.0, 0.0, 1.0)  # magenta: the palette's purple is pale (0.80, 0.47, 0.65)
GATE_LINES = (0.15, 0.5, 0.85)  # of a gate's contrast range: where its hot spots begin, and within
LINE_WIDTH = 0.015  # of the contrast range, either side of a line
UNSURE_ALPHA = 0.1  # the tint inside the uncertainty's line: which side is unsure


def iso_lines(rgb: tuple[float, float, float], levels: tuple[float, ...], label: str, inside: float = 0.0):
    """A colormap opaque only near ``levels`` (fractions of the contrast range), tinted by
    ``inside`` above the highest: drawn with linear interpolation, a map shows as thin
    iso-lines at screen resolution, and the anatomy between them stays readable. The low end
    of the range stays transparent (values clipped there would fill whole regions)."""
    from napari.utils.colormaps import Colormap

    t = np.linspace(0.0, 1.0, 1025)
    alpha = np.where(t > max(levels), inside, 0.0)
    for level in levels:
        alpha = np.maximum(alpha, np.clip(1.0 - np.abs(t - level) / LINE_WIDTH, 0.0, 1.0))
    colours = np.zeros((t.size, 4), np.float32)
    colours[:, :3] = rgb
    colours[:, 3] = alpha
    return Colormap(colors=colours, controls=t, name=f"{label} (lines)")


def surface_colormap(rgb: tuple[float, float, float], label: str):
    """A map's 3D colormap: one hue, opaque, darker at low values (the iso-surface's shading)."""
    from napari.utils.colormaps import Colormap

    t = np.linspace(0.0, 1.0, 16)
    colours = np.ones((t.size, 4), np.float32)
    colours[:, :3] = np.outer(0.35 + 0.65 * t, rgb)
    return Colormap(colors=colours, controls=t, name=f"{label} (surface)")


def map_colormap(kind: str, ndisplay: int, level: float = 0.5):
    """The colormap of a gate (``kind`` "gate") or the uncertainty: iso-lines in 2D (the
    uncertainty's one line at ``level``, the widget's "uncertain over"), a surface in 3D."""
    rgb = GATE_RGB if kind == "gate" else UNCERTAINTY_RGB
    if ndisplay == 3:
        return surface_colormap(rgb, kind)
    if kind == "gate":
        return iso_lines(rgb, GATE_LINES, kind)
    return iso_lines(rgb, (level,), kind, UNSURE_ALPHA)


MAP_OPACITY = {2: 1.0, 3: 0.6}  # 3D: translucent surfaces, the labels seen through them


def gate_contrast(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits from a gate's 90th percentile (its top decile, the hot spots, are
    within the lines) to its 99.5th: gate maps rarely span [0, 1] (the finest is often
    >= 0.25 everywhere)."""
    sample = np.asarray(data).reshape(-1)[:: max(1, data.size // 500_000)]
    lo, hi = (float(v) for v in np.percentile(sample, (90.0, 99.5)))
    if hi - lo < 0.05:
        lo, hi = max(0.0, hi - 0.05), max(hi, 0.05)
    return lo, hi


def label_colormap(n_labels: int):
    from napari.utils.colormaps import DirectLabelColormap

    colours = {
        k: LABEL_COLOURS[k % len(LABEL_COLOURS)]
        if k < len(LABEL_COLOURS)
        else tuple(np.random.default_rng(k).uniform(0.2, 1.0, 3)) + (1.0,)
        for k in range(n_labels)
    }
    colours[None] = (0.5, 0.5, 0.5, 1.0)
    return DirectLabelColormap(color_dict=colours)


def features_table(pred: Prediction, labels: np.ndarray, spacing) -> dict:
    """One row per label value: its class name and volume in mL."""
    names = pred.label_names
    volumes = pred.volumes_ml(labels, spacing)
    return {
        "index": list(range(len(names))),
        "class": list(names),
        "volume_ml": [0.0] + [volumes[n] for n in names[1:]],
    }


def labels_layer(
    pred: Prediction, source: SourceGeometry, labels: np.ndarray, name: str | None = None
) -> tuple:
    spacing = source.scale
    kwargs = {
        "name": name or f"{source.name} attunet",
        "colormap": label_colormap(len(pred.label_names)),
        "features": features_table(pred, labels, spacing),
        "metadata": {
            "attunet": {
                "source": source.name,
                "class_names": list(pred.label_names),
                "run": uuid.uuid4().hex,
            },
            **{k: v for k, v in source.metadata.items() if k == "attunet_geometry"},
        },
        "opacity": LABELS_OPACITY,
        "rendering": "iso_categorical",  # 3D: one shaded surface per class
        **source.kwargs(),
    }
    return labels, kwargs, "labels"


def one_sided_contours(labels: np.ndarray, thickness: int, background: int = 0) -> np.ndarray:
    """``labels`` kept only on each boundary's higher side: a voxel stays when an in-plane
    neighbour (within ``thickness``) holds a lower value. Each boundary is then one line, in
    the colour of the class inside it (grey matter against the background, white matter
    against grey matter), where napari's contours draw both sides of it: two lines side by
    side, which cover the thin cortex of a 2 mm scan whole."""
    from scipy import ndimage as ndi

    footprint = ndi.iterate_structure(ndi.generate_binary_structure(labels.ndim, 1), max(1, thickness))
    lower = ndi.grey_erosion(labels, footprint=footprint.astype(bool), mode="nearest") < labels
    out = np.full_like(labels, background)
    out[lower] = labels[lower]
    return out


def labels_image(data, kwargs: dict):
    """A run's napari Labels layer (``OutlinedLabels``) from ``labels_layer``'s keywords."""
    return _outlined_labels_class()(data, **kwargs)


@functools.cache
def _outlined_labels_class():
    """``OutlinedLabels``, made on first use: napari is imported only when a layer is made."""
    from napari.layers import Labels
    from napari.layers.labels._labels_utils import expand_slice

    class OutlinedLabels(Labels):
        """Labels whose outlines (``contour``) draw each boundary once (``one_sided_contours``)."""

        @property
        def _type_string(self) -> str:
            return "labels"  # napari picks writers, icons and layer tuples by this name

        def _calculate_contour(self, labels, data_slice):
            if self.contour < 1 or labels.ndim > 2:
                return None  # filled; in 3D without napari's warning on every redraw
            halo = max(1, int(self.contour))
            expanded = expand_slice(data_slice, labels.shape, halo)
            contours = one_sided_contours(
                np.asarray(labels[expanded]), self.contour, self.colormap.background_value
            )
            inner = tuple(
                slice(s.start - e.start, s.stop - e.start) for s, e in zip(data_slice, expanded, strict=True)
            )
            return contours[inner]

    return OutlinedLabels


def map_display(kind: str, ndisplay: int, level: float = 0.5) -> dict:
    """The drawing keywords of a gate or uncertainty layer in 2D or 3D (``map_colormap``)."""
    return {
        "colormap": map_colormap(kind, ndisplay, level),
        "opacity": MAP_OPACITY[3 if ndisplay == 3 else 2],
        # no depth test: in 3D a map's surface lies within the labels' (the uncertainty along
        # their borders), whose depth would hide it; drawn over them, translucent, it shows
        "blending": "translucent_no_depth",
    }


def gate_layers(pred: Prediction, source: SourceGeometry, ndisplay: int = 2) -> list[tuple]:
    """One Image layer per gate (and head), on the gate's own grid; only the finest visible.

    In 2D, green iso-lines where its hot spots begin (its 90th percentile) and within them,
    drawn at screen resolution over a barely tinted top; in 3D a translucent iso-surface near
    the top of the range (the layer's iso threshold)."""
    out = []
    for k, gate in enumerate(pred.gates, start=1):
        if gate.data.size == 0:  # a region narrower than this gate's cells holds none of them
            continue
        for h in range(gate.heads):
            kwargs = gate_kwargs(
                source,
                k,
                h,
                gate.heads,
                gate.stride,
                gate.offset,
                gate_contrast(gate.data[h]),
                ndisplay,
                scan_shape=pred.shape,
            )
            out.append((gate.data[h], kwargs, "image"))
    return out


def gate_kwargs(
    source: SourceGeometry,
    k: int,
    h: int,
    heads: int,
    stride,
    offset,
    limits: tuple[float, float],
    ndisplay: int = 2,
    scan_shape: tuple[int, ...] | None = None,
) -> dict:
    """The Image layer keywords of gate ``k`` (from 1), head ``h`` (from 0), on its own grid;
    ``scan_shape``, the grid the gate was computed for, bounds its extent (``GateImage``)."""
    scale = np.asarray(source.scale)
    translate = np.asarray(source.translate)
    meta = {
        "index": k,
        "head": h + 1,
        "stride": list(stride),
        "offset": list(offset),
        "source": source.name,
    }
    if scan_shape is not None:
        meta["scan_shape"] = [int(n) for n in scan_shape]
    return {
        **source.kwargs(),
        "name": f"{source.name} gate {k}" + (f" head {h + 1}" if heads > 1 else ""),
        "scale": tuple(scale * np.asarray(stride)),
        "translate": tuple(translate + scale * np.asarray(offset)),
        **map_display("gate", ndisplay),
        "contrast_limits": limits,
        "rendering": "iso",
        "iso_threshold": limits[0] + GATE_LINES[-1] * (limits[1] - limits[0]),
        "interpolation2d": "linear",  # iso-lines at screen resolution, not cell by cell
        "visible": k == 1,
        "metadata": {"attunet_gate": meta},
    }


def scan_extent_in_gate(meta: dict, shape: tuple[int, ...]) -> np.ndarray | None:
    """The extent (2, D) of a gate's data, in its cells, bounded by the centres of the scan's
    first and last voxels: the gate's last cells may reach past the scan (its grid covers the
    scan's shape rounded up to the stride), which would stretch napari's sliders."""
    scan = meta.get("scan_shape")
    if scan is None or len(scan) != len(shape):
        return None
    stride = np.asarray(meta["stride"], float)
    offset = np.asarray(meta["offset"], float)
    full = np.vstack([np.zeros(len(shape)), np.asarray(shape, float) - 1])
    low = np.maximum(full[0], (0.0 - offset) / stride)
    high = np.minimum(full[1], (np.asarray(scan, float) - 1 - offset) / stride)
    return np.vstack([low, np.maximum(low, high)])


def gate_image(data, kwargs: dict):
    """A gate's napari layer (``GateImage``) from ``gate_kwargs``."""
    return _gate_image_class()(data, **kwargs)


@functools.cache
def _gate_image_class():
    """``GateImage``, made on first use: napari is imported only when a layer is made."""
    from napari.layers import Image

    class GateImage(Image):
        """An attention gate on its own grid whose extent (which sets the sliders' ranges) ends
        at the scan's, though its last cells reach past it."""

        @property
        def _type_string(self) -> str:
            return "image"  # napari picks writers, icons and layer tuples by this name

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._clear_extent()  # napari measured it before the metadata was set
            self.events.metadata.connect(lambda _: self._clear_extent())

        @property
        def _extent_data(self) -> np.ndarray:
            extent = super()._extent_data
            meta = (getattr(self, "metadata", None) or {}).get("attunet_gate") or {}
            bounded = scan_extent_in_gate(meta, tuple(extent[1].astype(int) + 1))
            return extent if bounded is None else bounded

    return GateImage


def uncertainty_layer(
    pred: Prediction, source: SourceGeometry, level: float = 0.5, ndisplay: int = 2
) -> tuple:
    """``<image> uncertainty``: the prediction's per-voxel uncertainty on the scan grid: in 2D
    a magenta iso-line at ``level`` (the widget's "uncertain over") around a barely tinted
    inside, in 3D the translucent iso-surface at ``level``."""
    kwargs = {
        **source.kwargs(),
        "name": f"{source.name} uncertainty",
        **map_display("uncertainty", ndisplay, level),
        "contrast_limits": (0.0, 1.0),
        "rendering": "iso",
        "iso_threshold": level,
        "interpolation2d": "linear",
        "metadata": {"attunet_uncertainty": {"source": source.name}},
    }
    return pred.uncertainty, kwargs, "image"
