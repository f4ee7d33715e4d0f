"""The model families, one row each: the only place where the code tells them apart.

A row names the module that holds a family's network and says what its checkpoints leave
unsaid: the variants, the intensity normalization and the orientation its training pipelines
used, and the axis order its 3D networks see arrays in. The code is named, not imported, and
loaded on first use, so that reading the table (``ModelSpec`` validation, the command line's
``--family`` choices, the napari reader) never imports torch.

Who asks the table: ``models.build`` and ``ModelSpec.gates`` (network class, gate geometry),
``checkpoint.detect`` (signature keys, spec inference), ``ModelSpec.network_orientation`` and
``network_axes``, ``inference.preprocess.resolve_normalization`` (family defaults),
``training.default_spec`` and ``cli`` (choices, family-only fields shown by ``info``).

Each family module ``models/<module>.py`` provides:

- the network class (a subclass of ``blocks.AttentionUNetBase``) built from a ``ModelSpec``;
- ``SIGNATURE``: state-dict keys that every checkpoint of the family holds;
- ``infer_spec(state_dict) -> ModelSpec``: the hyper-parameters, from tensor names and shapes;
  raise KeyError, IndexError or ValueError when the names match but the shapes make no sense;
- ``gate_geometry(spec) -> tuple[GateGeometry, ...]``: each gate's stride, offset and maps,
  finest first, in input voxels (``blocks.pooled_geometry`` and ``blocks.gate`` help);
- ``default_spec(dims, in_channels, out_channels, features, variant=None, **fields)``: a
  network to train.

Adding a fifth family:

1. Write ``models/<name>.py`` with the five names above (``leejunhyun.py`` is the smallest
   example). Its ``forward_with_attention`` returns the gate maps finest first.
2. Add one ``Family`` row to ``REGISTRY`` below.
3. Add a test that saves the original code's ``state_dict()`` with ``torch.save``, loads it
   with ``load_model`` (detection picks the family) and compares logits and gate maps with the
   original, in 2D and 3D where the family has both (see tests/test_leejunhyun.py).

Nothing else changes: detection, building, gates, default normalization and orientation,
training and the command line all read this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blocks import AttentionUNetBase
    from .spec import GateGeometry, ModelSpec


@dataclass(frozen=True)
class Family:
    """One family of Attention U-Nets, and the conventions of the code that trains them."""

    name: str
    title: str  # the original code, as people know it; used in messages
    module: str  # models/<module>.py
    network: str  # the class in that module
    variants: tuple[str, ...]
    normalization: str  # intensity preset of its training pipelines (inference.preprocess)
    orientation: str  # how its 3D pipelines lay scans out: an axis code or "native"
    axes_3d: str  # the array axis order its 3D networks see, in napari's z, y, x names
    info_fields: tuple[str, ...] = ()  # ModelSpec fields only this family reads

    def code(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.{self.module}")

    @property
    def signature(self) -> tuple[str, ...]:
        return tuple(self.code().SIGNATURE)

    def build(self, spec: ModelSpec) -> AttentionUNetBase:
        network: AttentionUNetBase = getattr(self.code(), self.network)(spec)
        return network

    def infer_spec(self, state_dict: dict[str, Any]) -> ModelSpec:
        spec: ModelSpec = self.code().infer_spec(state_dict)
        return spec

    def gates(self, spec: ModelSpec) -> tuple[GateGeometry, ...]:
        return tuple(self.code().gate_geometry(spec))

    def default_spec(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        features: tuple[int, ...],
        variant: str | None = None,
        **fields: Any,
    ) -> ModelSpec:
        spec: ModelSpec = self.code().default_spec(
            dims, in_channels, out_channels, tuple(features), variant, **fields
        )
        return spec


# The official code and MONAI's loaders (nibabel, ITK) hand 3D networks (x, y, z) arrays;
# MONAI pipelines reorient to RAS (Orientationd in its tutorials, bundles and MONAI Label); the
# official code and LeeJunHyun's read arrays as the file stores them (nib.load(f).get_data()).
REGISTRY: dict[str, Family] = {
    row.name: row
    for row in (
        Family(
            "official",
            "official (Attention-Gated-Networks)",
            "official",
            "OfficialAttentionUNet",
            variants=("single_att_dsv", "multi_att_dsv", "grid_attention"),
            normalization="zscore",
            orientation="native",
            axes_3d="xyz",
            info_fields=("gate_mode",),
        ),
        Family(
            "monai",
            "MONAI AttentionUnet",
            "monai_unet",
            "MonaiAttentionUNet",
            variants=("attention_unet",),
            normalization="none",
            orientation="RAS",
            axes_3d="xyz",
        ),
        Family(
            "leejunhyun",
            "LeeJunHyun AttU_Net",
            "leejunhyun",
            "LeeAttUNet",
            variants=("attu_net",),
            normalization="none",
            orientation="native",
            axes_3d="zyx",
        ),
    )
}
FAMILIES: tuple[str, ...] = tuple(REGISTRY)


def family(name: str) -> Family:
    """The row of family ``name``; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; expected one of {FAMILIES}") from None
