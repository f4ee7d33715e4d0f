"""``info`` (what a checkpoint holds) and ``convert`` (a checkpoint to native safetensors)."""

from __future__ import annotations

import argparse
import json

from ..models.registry import REGISTRY
from .common import check_orientation, parse_normalization


def info(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model, parameter_count, sha256

    model = load_model(args.checkpoint, family=args.family)
    spec = model.spec
    rows = [
        ("file", str(model.source)),
        ("sha256", sha256(model.source)),
        ("family", spec.family),
        ("variant", spec.variant),
        ("dimensions", f"{spec.spatial_dims}D"),
        ("input channels", spec.in_channels),
        ("classes", f"{spec.out_channels} ({spec.output}): {', '.join(spec.class_labels)}"),
        ("features", ", ".join(map(str, spec.features))),
        ("parameters", f"{parameter_count(model):,}"),
        ("total stride", " x ".join(map(str, spec.total_stride))),
        ("orientation", f"{spec.network_orientation}: the network sees scans {spec.orientation_label}"),
    ]
    for name in REGISTRY[spec.family].info_fields:
        rows.append((name.replace("_", " "), getattr(spec, name)))
    for k, g in enumerate(spec.gates, start=1):
        rows.append(
            (
                f"gate {k}",
                f"stride {'x'.join(map(str, g.stride))}, offset "
                f"{'/'.join(f'{o:g}' for o in g.offset)} voxels, {g.heads} map(s)",
            )
        )
    if spec.normalization:
        rows.append(("normalization", json.dumps(spec.normalization)))
    if spec.spacing:
        rows.append(("training spacing", " x ".join(f"{s:g}" for s in spec.spacing) + " mm"))
    provenance = (model.metadata or {}).get("provenance")
    if provenance:
        rows.extend(_provenance_rows(provenance))
    if args.json:
        print(
            json.dumps(
                {
                    "spec": spec.to_dict(),
                    "sha256": rows[1][1],
                    "parameters": parameter_count(model),
                    "gates": [g.__dict__ for g in spec.gates],
                },
                indent=2,
                default=list,
            )
        )
        return 0
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _provenance_rows(provenance, prefix: str = "provenance") -> list[tuple[str, str]]:
    """Provenance as readable rows: one per field, nested fields as "provenance / key"."""
    if not isinstance(provenance, dict):
        return [(prefix, _plain(provenance))]
    rows: list[tuple[str, str]] = []
    for key in sorted(provenance):
        value = provenance[key]
        name = f"{prefix} / {str(key).replace('_', ' ')}"
        rows.extend(_provenance_rows(value, name) if isinstance(value, dict) else [(name, _plain(value))])
    return rows


def _plain(value) -> str:
    """A provenance value as text: lists joined with commas, no quotes or brackets."""
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def convert(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_model, save_model, sha256

    overrides = {}
    if args.gate_mode:
        overrides["gate_mode"] = args.gate_mode
    if args.align_corners:
        overrides["align_corners"] = True
    if args.strides:
        overrides["strides"] = [int(s) for s in args.strides.split(",")]
    if args.output:
        overrides["output"] = args.output
    if args.axes:
        overrides["axes"] = args.axes
    model = load_model(args.checkpoint, family=args.family, overrides=overrides or None)
    check_orientation(args.orientation, model.spec)  # before the spec takes it: one sentence
    if args.orientation:
        model.spec = model.spec.replace(orientation=args.orientation)
    codes = None
    if args.class_codes:
        from ..scans.dicom_seg import parse_class_codes

        codes = parse_class_codes(args.class_codes, args.class_names or model.spec.class_labels)
    out = save_model(
        model,
        args.out,
        class_names=args.class_names,
        normalization=parse_normalization(args.normalization),
        spacing=args.spacing,
        provenance={
            "converted_from": str(model.source),
            "source_sha256": sha256(model.source),
            "source_family": model.spec.family,
        },
        class_codes=codes,
    )
    print(f"wrote {out}: {load_model(out).spec.summary()}")
    return 0
