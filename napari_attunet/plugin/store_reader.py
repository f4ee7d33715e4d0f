"""Open a result store (``predict(..., out="result.zarr")``) as lazy layers: labels,
uncertainty and gate maps, each at the scale and translation its NGFF metadata gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def is_result_store(path) -> bool:
    try:
        return "attunet" in json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError):
        return False


def _transform(attrs: dict) -> tuple[list[float], list[float], bool]:
    """(scale, translate) over the spatial axes, and whether the first axis is a channel."""
    meta = attrs["multiscales"][0]
    channel = meta["axes"][0].get("type") == "channel"
    scale, translate = None, None
    for t in meta["datasets"][0]["coordinateTransformations"]:
        if t["type"] == "scale":
            scale = t["scale"]
        elif t["type"] == "translation":
            translate = t["translation"]
    lead = 1 if channel else 0
    spatial = len(meta["axes"]) - lead
    scale = list(scale or [1.0] * len(meta["axes"]))[lead:]
    translate = list(translate or [0.0] * len(meta["axes"]))[lead:]
    return scale, translate or [0.0] * spatial, channel


def read_store(path) -> list[tuple]:
    import dask.array as da
    import zarr

    from .layers import label_colormap

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    root = zarr.open_group(str(path), mode="r")
    stem = path.name[:-5] if path.name.endswith(".zarr") else path.name
    meta = root.attrs["attunet"]
    names = list(meta["class_names"])
    names = (["background"] + names) if meta["output"] == "sigmoid" else names
    layers = []
    label_group = root["labels/attunet"]
    scale, translate, _ = _transform(dict(label_group.attrs))
    common = {"scale": scale, "translate": translate, "units": ("mm",) * len(scale)}
    unc_group = root["uncertainty"]
    layers.append(
        (
            da.from_zarr(unc_group["0"]) / 255.0,
            {
                "name": f"{stem} uncertainty",
                "colormap": "magma",
                "visible": False,
                "contrast_limits": (0.0, 1.0),
                "blending": "additive",
                **common,
            },
            "image",
        )
    )
    for k in sorted(root["gates"].group_keys()) if "gates" in root else []:
        group = root[f"gates/{k}"]
        g_scale, g_translate, _ = _transform(dict(group.attrs))
        data = da.from_zarr(group["0"])
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
                        "scale": g_scale,
                        "translate": g_translate,
                        "units": common["units"],
                    },
                    "image",
                )
            )
    counts = meta.get("label_voxels", [])
    voxel = float(np.prod(scale)) / 1000.0
    features = {
        "index": list(range(len(names))),
        "class": names,
        "volume_ml": [0.0] + [(counts[k] if k < len(counts) else 0) * voxel for k in range(1, len(names))],
    }
    layers.append(
        (
            da.from_zarr(label_group["0"]),
            {
                "name": f"{stem} attunet",
                "colormap": label_colormap(len(names)),
                "features": features,
                **common,
            },
            "labels",
        )
    )
    return layers
