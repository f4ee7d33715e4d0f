"""Open a result store (``predict(..., out="result.zarr")``) as lazy layers: labels,
uncertainty and gate maps, each at the scale and translation its NGFF metadata gives, turned by
the scan's rotation where the store keeps one (NGFF 0.4 has no affine; see ``inference.store``).

Everything is checked before any layer data is returned: napari adds a reader's layers one by
one, so a store it cannot show is one notification and no layer at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..models.spec import OUTPUTS

REWRITE = "predict again to write a new store"


class StoreProblem(ValueError):
    """What is wrong with a store, as the end of a sentence naming it."""


def is_result_store(path) -> bool:
    try:
        return "attunet" in json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Image:
    """One stored image: its level-0 array and NGFF placement over its spatial axes."""

    array: Any
    scale: list[float]
    translate: list[float]


def _numbers(values, count: int, what: str) -> list[float]:
    if not isinstance(values, list) or len(values) != count:
        raise StoreProblem(f"its {what} has {_count(values)} values for {count} axes")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise StoreProblem(f"its {what} {values} holds values that are not numbers")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise StoreProblem(f"its {what} {values} is not finite")
    return out


def _count(values) -> str:
    return str(len(values)) if isinstance(values, list) else "no list of"


def _transform(attrs: dict, ndim: int, key: str) -> tuple[list[float], list[float]]:
    """(scale, translate) of level 0 over all ``ndim`` axes, checked: as many as the axes,
    finite, the scale positive."""
    try:
        meta = attrs["multiscales"][0]
        axes, transforms = meta["axes"], meta["datasets"][0]["coordinateTransformations"]
    except (KeyError, IndexError, TypeError):
        raise StoreProblem(f"{key} has no NGFF multiscales metadata (axes and datasets)") from None
    if not isinstance(axes, list) or len(axes) != ndim:
        raise StoreProblem(f"its {key} metadata names {_count(axes)} axes but its array has {ndim}")
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for t in transforms if isinstance(transforms, list) else []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "scale":
            scale = _numbers(t.get("scale"), ndim, f"{key} scale")
        elif kind == "translation":
            translate = _numbers(t.get("translation"), ndim, f"{key} translation")
    if any(s <= 0 for s in scale):
        raise StoreProblem(f"its {key} scale {scale} is not positive (voxel sizes must be over 0)")
    return scale, translate


def _image(root, key: str, what: str, kinds: str, lead: int = 0) -> Image:
    """The group ``key``'s level-0 array (dtype kind in ``kinds``), ``lead`` non-spatial axes."""
    if key not in root:
        raise StoreProblem(f"it has no {what} ({key})")
    group = root[key]
    if "0" not in group or not hasattr(group["0"], "dtype"):
        raise StoreProblem(f"it has no {what} array ({key}/0)")
    array = group["0"]
    if np.dtype(array.dtype).kind not in kinds:
        wanted = {"ui": "integers", "u": "unsigned integers", "f": "floats"}[kinds]
        raise StoreProblem(f"its {what} ({key}/0) are stored as {array.dtype}, not {wanted}")
    scale, translate = _transform(dict(group.attrs), array.ndim, key)
    if array.ndim - lead not in (2, 3):
        raise StoreProblem(f"its {what} ({key}/0) have {array.ndim - lead} spatial axes, not 2 or 3")
    return Image(array, scale[lead:], translate[lead:])


def _metadata(root) -> tuple[str, list[str], list[int]]:
    """(output, label names with the background first, stored voxel count per label)."""
    meta = root.attrs.get("attunet")
    if not isinstance(meta, dict):
        raise StoreProblem("its 'attunet' metadata is not a mapping")
    output, names = meta.get("output"), meta.get("class_names")
    if output not in OUTPUTS:
        raise StoreProblem(f"its 'attunet' output is {output!r}, not one of {', '.join(OUTPUTS)}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise StoreProblem("its 'attunet' class_names is not a list of names")
    counts = meta.get("label_voxels", [])
    if not isinstance(counts, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise StoreProblem("its 'attunet' label_voxels is not a list of voxel counts")
    return output, (["background"] + names if output == "sigmoid" else names), counts


def world_turn(root, labels: Image) -> np.ndarray | None:
    """napari's ``affine`` that takes the labels' NGFF placement to the stored world affine
    (a rotation about the origin, as the scan reader draws an oblique scan), or None."""
    stored = root.attrs["attunet"].get("affine")
    if stored is None:
        return None
    n = len(labels.scale)
    try:
        world = np.asarray(stored, dtype=float)
    except (TypeError, ValueError):
        world = np.empty(0)
    if world.shape != (n + 1, n + 1) or not np.isfinite(world).all():
        raise StoreProblem(f"its 'attunet' affine is not a finite {n + 1}x{n + 1} matrix")
    if not np.allclose(world[n], np.eye(n + 1)[n]) or abs(np.linalg.det(world[:n, :n])) < 1e-12:
        raise StoreProblem("its 'attunet' affine does not map voxels to world (last row or zero volume)")
    ngff = np.eye(n + 1)
    ngff[:n, :n] = np.diag(labels.scale)
    ngff[:n, n] = labels.translate
    turn = world @ np.linalg.inv(ngff)
    return None if np.allclose(turn, np.eye(n + 1), atol=1e-9) else turn


def _gates(root, spatial: int) -> list[tuple[str, Image]]:
    if "gates" not in root:
        return []
    keys = list(root["gates"].group_keys())
    if not all(k.startswith("gate") and k[4:].isdigit() for k in keys):
        raise StoreProblem(f"its gate groups {sorted(keys)} are not named gate1, gate2, ...")
    gates = []
    for k in sorted(keys, key=lambda k: int(k[4:])):
        image = _image(root, f"gates/{k}", f"gate map {k[4:]}", "f", lead=1)
        if len(image.scale) != spatial:
            raise StoreProblem(
                f"its gate map {k[4:]} has {len(image.scale)} spatial axes, the labels {spatial}"
            )
        gates.append((k, image))
    return gates


def _check(root) -> tuple[tuple, Image, Image, list[tuple[str, Image]], np.ndarray | None]:
    """Everything read_store needs, checked."""
    meta = _metadata(root)
    labels = _image(root, "labels/attunet", "labels", "ui")
    uncertainty = _image(root, "uncertainty", "uncertainty map", "u")
    if tuple(uncertainty.array.shape) != tuple(labels.array.shape):
        raise StoreProblem(
            f"its uncertainty map is {uncertainty.array.shape}, its labels {labels.array.shape}"
        )
    return meta, labels, uncertainty, _gates(root, len(labels.scale)), world_turn(root, labels)


def _open_checked(path: Path) -> tuple[tuple, Image, Image, list[tuple[str, Image]], np.ndarray | None]:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=2)
    except Exception as exc:  # noqa: BLE001 - said in the one notification
        raise StoreProblem(f"it is not a zarr (v2) group ({type(exc).__name__})") from None
    return _check(root)


def read_store(path) -> list[tuple]:
    from .notify import notify

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        checked = _open_checked(path)
        layers = _layers(path, *checked)
    except StoreProblem as exc:
        notify("error", f"{path} cannot be shown: {exc}; {REWRITE}.")
        return [(None,)]
    except Exception as exc:  # noqa: BLE001 - a notification, never a half-added layer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        notify("error", f"{path} cannot be shown ({type(exc).__name__}: {first}); {REWRITE}.")
        return [(None,)]
    return layers


def _layers(path: Path, meta, labels: Image, uncertainty: Image, gates, turn) -> list[tuple]:
    import dask.array as da

    from .layers import label_colormap

    output, names, counts = meta
    stem = path.name[:-5] if path.name.endswith(".zarr") else path.name
    units = ("mm",) * len(labels.scale)
    placed = {"affine": turn} if turn is not None else {}
    layers: list[tuple] = [
        (
            da.from_zarr(uncertainty.array) / 255.0,
            {
                "name": f"{stem} uncertainty",
                "colormap": "magma",
                "visible": False,
                "contrast_limits": (0.0, 1.0),
                "blending": "additive",
                "scale": uncertainty.scale,
                "translate": uncertainty.translate,
                "units": units,
                **placed,
            },
            "image",
        )
    ]
    for k, gate in gates:
        data = da.from_zarr(gate.array)
        for h in range(data.shape[0]):
            name = f"{stem} gate {k[4:]}" + (f" head {h + 1}" if data.shape[0] > 1 else "")
            layers.append(
                (
                    data[h],
                    {
                        "name": name,
                        "colormap": "inferno",
                        "opacity": 0.5,
                        "blending": "additive",
                        "contrast_limits": (0.0, 1.0),
                        "visible": k == "gate1" and h == 0,
                        "scale": gate.scale,
                        "translate": gate.translate,
                        "units": units,
                        **placed,
                    },
                    "image",
                )
            )
    voxel = float(np.prod(labels.scale)) / 1000.0
    if turn is not None:  # the stored world affine's voxel volume
        voxel *= abs(float(np.linalg.det(turn[:-1, :-1])))
    features = {
        "index": list(range(len(names))),
        "class": names,
        "volume_ml": [0.0] + [(counts[k] if k < len(counts) else 0) * voxel for k in range(1, len(names))],
    }
    layers.append(
        (
            da.from_zarr(labels.array),
            {
                "name": f"{stem} attunet",
                "colormap": label_colormap(len(names)),
                "features": features,
                "scale": labels.scale,
                "translate": labels.translate,
                "units": units,
                **placed,
            },
            "labels",
        )
    )
    return layers
