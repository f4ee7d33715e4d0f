"""Attention U-Net families: one configurable class each, built from a ModelSpec.

Which families exist, and what tells them apart, is in ``registry``. Importing this package
imports no torch; the networks load when first built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import FAMILIES, REGISTRY, Family, family
from .spec import GATE_MODES, GateGeometry, ModelSpec

if TYPE_CHECKING:
    from .blocks import AttentionUNetBase


def build(spec: ModelSpec) -> AttentionUNetBase:
    """A freshly initialised network for ``spec`` (load weights into it afterwards)."""
    return family(spec.family).build(spec)


def gate_geometry(spec: ModelSpec) -> tuple[GateGeometry, ...]:
    """Stride, offset and number of maps of each gate, finest first, in input voxels."""
    return family(spec.family).gates(spec)


def __getattr__(name: str) -> Any:
    if name == "AttentionUNetBase":  # the torch base class, imported when first asked for
        from .blocks import AttentionUNetBase

        return AttentionUNetBase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttentionUNetBase",
    "FAMILIES",
    "GATE_MODES",
    "Family",
    "GateGeometry",
    "ModelSpec",
    "REGISTRY",
    "build",
    "family",
    "gate_geometry",
]
