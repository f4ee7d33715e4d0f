"""Writers: Labels and Image layers to NIfTI, NRRD or MHA with the source scan's geometry."""

from __future__ import annotations

import numpy as np

from .. import io


def _geometry(meta: dict, ndim: int) -> dict:
    """The scan geometry kept in the layer metadata, adjusted to this layer's own grid."""
    scale = tuple(float(s) for s in meta.get("scale", (1.0,) * ndim))
    translate = tuple(float(t) for t in meta.get("translate", (0.0,) * ndim))
    kept = (meta.get("metadata") or {}).get("attunet_geometry")
    if kept is None:
        return {"spacing": scale, "origin": translate, "direction": np.eye(ndim).tolist(),
                "source": {}}
    return {**kept, "spacing": scale, "origin": translate}


def write_layer(path: str, data, meta: dict) -> list[str]:
    array = np.asarray(data)
    out = io.write(path, array, _geometry(meta, array.ndim))
    return [str(out)]
