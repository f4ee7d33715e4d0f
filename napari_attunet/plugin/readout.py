"""What the model says under the cursor: class probabilities, uncertainty, each gate's value.

Appended to napari's status bar text, whichever layer is selected.
"""

from __future__ import annotations

import numpy as np

MARK = "attunet:"


def _index(layer, position, shape) -> tuple[int, ...] | None:
    """The voxel of ``layer`` under the world ``position``, or None outside it."""
    point = np.asarray(position, dtype=float)[-layer.ndim :]
    index = np.round(np.asarray(layer.world_to_data(point), dtype=float)).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(shape)):
        return None
    return tuple(int(i) for i in index)


def readout(viewer, prediction, labels_layer, source_name: str) -> str:
    """One line for the voxel under the cursor; "" when the cursor is off the prediction."""
    position = viewer.cursor.position
    if labels_layer is None or len(position) < labels_layer.ndim:
        return ""
    voxel = _index(labels_layer, position, prediction.shape)
    if voxel is None:
        return ""
    probs = prediction.quantized[(slice(None),) + voxel].astype(float) / 255
    parts = [" ".join(f"{name} {p:.2f}" for name, p in zip(prediction.class_names, probs, strict=True))]
    parts.append(f"uncertainty {float(prediction.uncertainty[voxel]):.2f}")
    gates = []
    for layer in viewer.layers:
        meta = (getattr(layer, "metadata", None) or {}).get("attunet_gate")
        if not meta or meta.get("source") != source_name:
            continue
        cell = _index(layer, position, layer.data.shape)
        if cell is not None:
            tag = f"gate {meta['index']}" + (f"/{meta['head']}" if "head" in layer.name else "")
            gates.append(f"{tag} {float(layer.data[cell]):.2f}")
    if gates:
        parts.append(" ".join(gates))
    return f"{MARK} " + " | ".join(parts)


def with_readout(status, line: str):
    """napari's status (a string or a dict of fields) with ``line`` appended."""
    if isinstance(status, dict):
        status = dict(status)
        status["coordinates"] = f"{status.get('coordinates', '')}  {line}"
        return status
    return f"{status}  {line}"


def has_readout(status) -> bool:
    text = status.get("coordinates", "") if isinstance(status, dict) else str(status)
    return MARK in text
