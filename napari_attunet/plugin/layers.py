"""Prediction -> napari layer data tuples, aligned with the layer the run started from."""

from __future__ import annotations

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


def alpha_ramp(name: str, start: float = 0.0, power: float = 1.0):
    """A napari colormap whose opacity rises from 0 (at ``start`` of the contrast range) to 1:
    low values are transparent, so what lies under them stays readable."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(name)
    t = np.linspace(0.0, 1.0, 64)
    colours = np.asarray(base.map(t), dtype=np.float32)
    colours[:, 3] = np.clip((t - start) / (1.0 - start), 0.0, 1.0) ** power
    return Colormap(colors=colours, controls=t, name=f"{name} (transparent low)")


def gate_contrast(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits that leave all but a gate's top decile transparent and its top 0.5 %
    opaque: gate maps rarely span [0, 1] (the finest is often >= 0.25 everywhere)."""
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


def gate_layers(pred: Prediction, source: SourceGeometry, colormap: str = "inferno") -> list[tuple]:
    """One Image layer per gate (and head), on the gate's own grid; only the finest visible.

    Transparent where attention is low (under the map's 90th percentile) and opaque at its top
    0.5 %, drawn translucently (not added), so the labels keep their colours outside the hot
    spots; in 3D an iso-surface at the top of the range (the layer's iso threshold) shows them."""
    out = []
    for k, gate in enumerate(pred.gates, start=1):
        if gate.data.size == 0:  # a region narrower than this gate's cells holds none of them
            continue
        for h in range(gate.heads):
            kwargs = gate_kwargs(
                source, k, h, gate.heads, gate.stride, gate.offset, gate_contrast(gate.data[h]), colormap
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
    colormap: str = "inferno",
) -> dict:
    """The Image layer keywords of gate ``k`` (from 1), head ``h`` (from 0), on its own grid."""
    scale = np.asarray(source.scale)
    translate = np.asarray(source.translate)
    return {
        **source.kwargs(),
        "name": f"{source.name} gate {k}" + (f" head {h + 1}" if heads > 1 else ""),
        "scale": tuple(scale * np.asarray(stride)),
        "translate": tuple(translate + scale * np.asarray(offset)),
        "colormap": alpha_ramp(colormap, power=1.5),
        "blending": "translucent_no_depth",
        "contrast_limits": limits,
        "rendering": "iso",
        "iso_threshold": limits[0] + 0.8 * (limits[1] - limits[0]),
        "opacity": 0.8,
        "visible": k == 1,
        "metadata": {
            "attunet_gate": {
                "index": k,
                "head": h + 1,
                "stride": list(stride),
                "offset": list(offset),
                "source": source.name,
            }
        },
    }


def uncertainty_layer(pred: Prediction, source: SourceGeometry, level: float = 0.5) -> tuple:
    """``<image> uncertainty``: the prediction's per-voxel uncertainty on the scan grid, magenta
    where the model is unsure, transparent where it is sure; in 3D the iso-surface at ``level``
    (the widget's "uncertain over")."""
    kwargs = {
        **source.kwargs(),
        "name": f"{source.name} uncertainty",
        "colormap": alpha_ramp("magenta", power=0.7),
        "blending": "translucent_no_depth",
        "contrast_limits": (0.0, 0.5),
        "rendering": "iso",
        "iso_threshold": level,
        "opacity": 0.9,
        "metadata": {"attunet_uncertainty": {"source": source.name}},
    }
    return pred.uncertainty, kwargs, "image"
