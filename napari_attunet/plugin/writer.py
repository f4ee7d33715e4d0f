"""Writers: Labels and Image layers to NIfTI, NRRD or MHA, where the layer is shown.

The geometry comes from the layer's own world transform, so a mask painted by hand, a Preview
result or a layer from another plugin saves where napari draws it. When the layer lies on a
scan this plugin opened, the scan's file orientation and header are restored as well.
"""

from __future__ import annotations

import numpy as np

from .. import io
from .transforms import GEOMETRY_KEY, data_to_world


def _geometry(meta: dict, ndim: int) -> dict:
    kept = (meta.get("metadata") or {}).get(GEOMETRY_KEY) or {}
    return {"affine": data_to_world(meta, ndim).tolist(), "source": kept.get("source") or {}}


def write_layer(path: str, data, meta: dict) -> list[str]:
    """napari asked for this path (its save dialog confirms a replacement), so an existing file
    is replaced; the new one appears whole or not at all. A failure raises an OutputError,
    which napari shows, and never reports a fragment as saved."""
    from ..outputs import OutputError

    array = np.asarray(data)
    try:
        out = io.write(path, array, _geometry(meta, array.ndim), overwrite=True)
    except OutputError as exc:
        # napari turns a ValueError from a writer into "not a valid writer"; an OSError
        # reaches the caller (and, from the Save dialog, the user as an error notification).
        raise OSError(str(exc)) from None
    return [str(out)]
