"""Attention U-Net families: one configurable class each, built from a ModelSpec."""

from __future__ import annotations

from .blocks import AttentionUNetBase
from .spec import FAMILIES, GATE_MODES, GateGeometry, ModelSpec


def build(spec: ModelSpec) -> AttentionUNetBase:
    """A freshly initialised network for ``spec`` (load weights into it afterwards)."""
    if spec.family == "official":
        from .official import OfficialAttentionUNet
        return OfficialAttentionUNet(spec)
    if spec.family == "monai":
        from .monai_unet import MonaiAttentionUNet
        return MonaiAttentionUNet(spec)
    from .leejunhyun import LeeAttUNet
    return LeeAttUNet(spec)


def gate_geometry(spec: ModelSpec) -> tuple[GateGeometry, ...]:
    """Stride, offset and number of maps of each gate, finest first, in input voxels."""
    if spec.family == "official":
        from .official import official_gates
        return official_gates(spec)
    if spec.family == "monai":
        from .monai_unet import monai_gates
        return monai_gates(spec)
    from .leejunhyun import leejunhyun_gates
    return leejunhyun_gates(spec)


__all__ = ["AttentionUNetBase", "FAMILIES", "GATE_MODES", "GateGeometry", "ModelSpec", "build",
           "gate_geometry"]
