"""ModelSpec: everything needed to rebuild a network and to place its outputs in space."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

FAMILIES = ("official", "monai", "leejunhyun")
VARIANTS = {
    "official": ("single_att_dsv", "multi_att_dsv", "grid_attention"),
    "monai": ("attention_unet",),
    "leejunhyun": ("attu_net",),
}
GATE_MODES = ("concatenation", "concatenation_debug", "concatenation_residual")
OUTPUTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class GateGeometry:
    """Where one gate's map lies relative to the network input, per spatial axis.

    Map cell ``i`` is centred on input voxel ``offset + stride * i``.
    """

    stride: tuple[int, ...]
    offset: tuple[float, ...]
    heads: int


def _tuple(value: Any, n: int | None = None) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(_tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
    return (value,) * (n or 1)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and metadata of a loaded Attention U-Net.

    ``features`` are the channel counts of the encoder levels, finest first. ``strides`` gives,
    for each down-sampling step, its factor per spatial axis. The remaining architecture fields
    only matter for the families that use them (see ``models/<family>.py``).
    """

    family: str
    variant: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    features: tuple[int, ...]
    output: str = "softmax"
    class_names: tuple[str, ...] = ()
    normalization: dict | None = None
    spacing: tuple[float, ...] | None = None
    strides: tuple[tuple[int, ...], ...] = ()
    kernel_size: tuple[int, ...] = ()
    up_kernel_size: tuple[int, ...] = ()
    gate_mode: str = "concatenation"
    attention_dsample: tuple[int, ...] = ()
    batchnorm: bool = True
    deconv: bool = False
    align_corners: bool = False
    tile: tuple[int, ...] | None = None
    axes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        if self.variant not in VARIANTS[self.family]:
            raise ValueError(f"unknown {self.family} variant {self.variant!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {self.output!r}")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, not {self.gate_mode!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.axes and sorted(self.axes) != sorted("zyx"[-self.spatial_dims:]):
            raise ValueError(f"axes must order {'zyx'[-self.spatial_dims:]!r}, not {self.axes!r}")

    @property
    def network_axes(self) -> str:
        """The scan axes, in the order the network was trained to see them.

        Scans in napari are (z, y, x) arrays. The official code and MONAI's loaders (nibabel,
        ITK) hand 3D networks (x, y, z) arrays, so their 3D checkpoints default to "xyz";
        everything else defaults to the napari order. ``spacing`` is always in napari order.
        """
        if self.axes:
            return self.axes
        if self.spatial_dims == 3 and self.family in ("official", "monai"):
            return "xyz"
        return "zyx"[-self.spatial_dims:]

    # ---- derived geometry -------------------------------------------------------------
    @property
    def total_stride(self) -> tuple[int, ...]:
        """The factor the input size must be a multiple of, per axis."""
        total = [1] * self.spatial_dims
        for step in self.strides:
            total = [t * s for t, s in zip(total, step)]
        return tuple(total)

    @property
    def gates(self) -> tuple[GateGeometry, ...]:
        """Geometry of each attention gate's map, finest first."""
        from . import gate_geometry

        return gate_geometry(self)

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class names, falling back to ``class 0``, ``class 1``, ..."""
        if self.class_names:
            return tuple(self.class_names)
        return tuple(f"class {i}" for i in range(self.out_channels))

    def replace(self, **changes: Any) -> "ModelSpec":
        return replace(self, **changes)

    # ---- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown spec fields: {sorted(unknown)}")
        values = dict(data)
        for name in ("features", "class_names", "kernel_size", "up_kernel_size",
                     "attention_dsample"):
            if name in values:
                values[name] = _tuple(values[name])
        if "strides" in values:
            values["strides"] = tuple(tuple(s) for s in values["strides"])
        for name in ("spacing", "tile"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """One line for people: family, dimensions, classes, gates."""
        heads = sum(g.heads for g in self.gates)
        return (f"{self.family}/{self.variant}, {self.spatial_dims}D, "
                f"{self.in_channels} in -> {self.out_channels} {self.output} "
                f"({', '.join(self.class_labels)}), features {list(self.features)}, "
                f"{len(self.gates)} gates ({heads} maps)")
