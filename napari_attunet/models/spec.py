"""ModelSpec: everything needed to rebuild a network and to place its outputs in space."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .registry import FAMILIES, REGISTRY

GATE_MODES = ("concatenation", "concatenation_debug", "concatenation_residual")
OUTPUTS = ("softmax", "sigmoid")
ORIENTATION_WORDS = ("native", "display")


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
    orientation: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        if self.variant not in REGISTRY[self.family].variants:
            raise ValueError(f"unknown {self.family} variant {self.variant!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {self.output!r}")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, not {self.gate_mode!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.axes and sorted(self.axes) != sorted("zyx"[-self.spatial_dims :]):
            raise ValueError(f"axes must order {'zyx'[-self.spatial_dims :]!r}, not {self.axes!r}")
        if self.orientation and not valid_orientation(self.orientation, self.spatial_dims):
            raise ValueError(
                f"orientation must be an axis code such as 'RAS' or 'LPS', 'native' "
                f"or 'display', not {self.orientation!r}"
            )
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Counts and sizes that would otherwise fail deep inside the network's construction."""

        def positive_ints(values) -> bool:
            return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)

        if not positive_ints((self.in_channels, self.out_channels)):
            raise ValueError(
                f"in_channels and out_channels must be positive integers, not "
                f"{self.in_channels} and {self.out_channels}"
            )
        if len(self.features) < 2 or not positive_ints(self.features):
            raise ValueError(f"features must be two or more positive integers, not {list(self.features)}")
        if len(self.strides) != len(self.features) - 1 or not all(
            len(step) == self.spatial_dims and positive_ints(step) for step in self.strides
        ):
            raise ValueError(
                f"strides must give {len(self.features) - 1} steps of "
                f"{self.spatial_dims} positive integers (one per level below the "
                f"first), not {[list(step) for step in self.strides]}"
            )
        for name in ("kernel_size", "up_kernel_size", "attention_dsample", "tile"):
            values = getattr(self, name) or ()
            if not positive_ints(values):
                raise ValueError(f"{name} must be positive integers, not {list(values)}")
        if self.spacing is not None and not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.spacing
        ):
            raise ValueError(f"spacing must be positive millimetres, not {list(self.spacing)}")

    @property
    def network_orientation(self) -> str:
        """How scans are laid out for the network: an axis code, "native" or "display".

        An axis code (e.g. "RAS": array axis 0 toward the patient's Right, 1 toward Anterior,
        2 toward Superior) is what MONAI's ``Orientationd`` produces. "native" is the scan as its
        file stores it, "display" the array as napari shows it, in ``network_axes`` order. 2D
        networks see images as displayed; 3D ones take the checkpoint's orientation, else the
        axes it states, else their family's training convention (``models.registry``).
        """
        if self.orientation:
            return self.orientation if self.orientation in ORIENTATION_WORDS else self.orientation.upper()
        if self.spatial_dims == 2 or self.axes:
            return "display"
        return REGISTRY[self.family].orientation

    @property
    def network_axes(self) -> str:
        """The scan axes, in the order the network was trained to see them.

        Scans in napari are (z, y, x) arrays. The official code and MONAI's loaders (nibabel,
        ITK) hand 3D networks (x, y, z) arrays, so their 3D checkpoints default to "xyz";
        everything else defaults to the napari order. ``spacing`` is always in napari order.
        """
        if self.axes:
            return self.axes
        if self.spatial_dims == 3:
            return REGISTRY[self.family].axes_3d
        return "yx"

    # ---- derived geometry -------------------------------------------------------------
    @property
    def total_stride(self) -> tuple[int, ...]:
        """The factor the input size must be a multiple of, per axis."""
        total = [1] * self.spatial_dims
        for step in self.strides:
            total = [t * s for t, s in zip(total, step, strict=True)]
        return tuple(total)

    @property
    def gates(self) -> tuple[GateGeometry, ...]:
        """Geometry of each attention gate's map, finest first."""
        return REGISTRY[self.family].gates(self)

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class names, falling back to ``class 0``, ``class 1``, ..."""
        if self.class_names:
            return tuple(self.class_names)
        return tuple(f"class {i}" for i in range(self.out_channels))

    def replace(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    # ---- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown spec fields: {sorted(unknown)}")
        values = dict(data)
        for name in ("features", "class_names", "kernel_size", "up_kernel_size", "attention_dsample"):
            if name in values:
                values[name] = _tuple(values[name])
        if "strides" in values:
            values["strides"] = tuple(tuple(s) for s in values["strides"])
        for name in ("spacing", "tile"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def summary(self) -> str:
        """One line for people: family, dimensions, classes, gates."""
        heads = sum(g.heads for g in self.gates)
        return (
            f"{self.family}/{self.variant}, {self.spatial_dims}D, "
            f"{self.in_channels} in -> {self.out_channels} {self.output} "
            f"({', '.join(self.class_labels)}), features {list(self.features)}, "
            f"{len(self.gates)} gates ({heads} maps), sees scans {self.orientation_label}"
        )

    @property
    def orientation_label(self) -> str:
        """The orientation convention in words, for ``info`` and the widget."""
        value = self.network_orientation
        if value == "native":
            return "as the file stores them (native)"
        if value == "display":
            return f"as displayed ({self.network_axes} order)"
        return f"reoriented to {value}"


def valid_orientation(value: str, spatial_dims: int = 3) -> bool:
    """An axis code naming each of the spatial axes once, or "native" / "display"."""
    if value in ORIENTATION_WORDS:
        return True
    letters = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    code = value.upper()
    return (
        len(code) == spatial_dims == 3
        and all(c in letters for c in code)
        and len({letters[c] for c in code}) == 3
    )
