"""napari layer transforms as the core's affines (see ``napari_attunet.scans.geometry``)."""

from __future__ import annotations

import numpy as np

from ..scans import geometry as geo

GEOMETRY_KEY = "attunet_geometry"


def data_to_world(state: dict, ndim: int | None = None) -> np.ndarray:
    """The (n + 1) x (n + 1) matrix napari uses to draw a layer: affine * (rotate * shear * scale
    + translate), from a layer's state (``layer.as_layer_data_tuple()[1]`` or a writer's meta).

    With ``ndim``, only the last ``ndim`` axes (an RGB layer's channel axis is not in the state).
    """
    from napari.utils.transforms import Affine, CompositeAffine

    n = len(state["scale"])
    composite = CompositeAffine(
        scale=state["scale"],
        translate=state["translate"],
        rotate=state.get("rotate"),
        shear=state.get("shear"),
        ndim=n,
    )
    physical = Affine(affine_matrix=np.asarray(state.get("affine", np.eye(n + 1)), dtype=float), ndim=n)
    full = physical.affine_matrix @ composite.affine_matrix
    if ndim is None or ndim == n:
        return full
    keep = list(range(n - ndim, n)) + [n]
    return full[np.ix_(keep, keep)]


def layer_state(layer) -> dict:
    return {
        "scale": list(layer.scale),
        "translate": list(layer.translate),
        "rotate": np.asarray(layer.rotate).tolist(),
        "shear": list(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix).tolist(),
    }


def display_kwargs(affine: np.ndarray) -> dict:
    """scale, translate and (for a rotated grid) affine that draw a grid at ``affine``.

    The rotation is applied about the origin so that derived grids (gate maps, crops) are
    placed with plain ``scale``/``translate`` arithmetic.
    """
    spacing, origin, _ = geo.decompose(affine)
    out = {"scale": spacing, "translate": origin}
    rotation = geo.rotation_about_origin(affine)
    if rotation is not None:
        out["affine"] = rotation
    return out


def same_grid(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=tolerance))
