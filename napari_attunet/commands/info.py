"""``info`` (what a checkpoint holds) and ``convert`` (a checkpoint to native safetensors, and a
calibrated int8 model beside the weights)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
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
    int8 = int8_status(model)
    if int8 is not None:
        rows.append(("int8 model", int8["text"]))
    if args.json:
        print(
            json.dumps(
                {
                    "spec": spec.to_dict(),
                    "sha256": rows[1][1],
                    "parameters": parameter_count(model),
                    "gates": [g.__dict__ for g in spec.gates],
                    "int8": int8,
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

    check_int8_arguments(args)
    refuse_existing_out(args)
    if args.out is None:  # --int8 alone: the int8 model beside CHECKPOINT
        return store_int8(args, args.checkpoint)
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
    return store_int8(args, out) if getattr(args, "int8", False) else 0


def refuse_existing_out(args: argparse.Namespace) -> None:
    """convert never replaces a file without --overwrite (nor the checkpoint it reads)."""
    if args.out is None:
        return
    out, source = Path(args.out), Path(args.checkpoint)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise InputError(f"{out}: OUT is the checkpoint being converted; write to another file.")
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it, or choose another OUT.")


# ---- convert --int8: a calibrated int8 model beside the weights ------------------------------


def int8_status(model) -> dict | None:
    """The int8 model stored beside the checkpoint: its folder, manifest, whether an int8 run
    would use it and, if not, why; None when there is none."""
    from ..inference.calibrated import describe, folder_for, read_manifest

    folder = folder_for(model.source)
    if not (folder.exists() or folder.is_symlink()):
        return None
    manifest = read_manifest(folder)
    if manifest is None:
        why: str | None = "its manifest.json cannot be read"
    else:
        try:
            from ..inference.quantize import normalization_of, scope_for, stored_int8

            found = stored_int8(model, scope_for(model), normalization_of(model))
            why = found if isinstance(found, str) else None
        except ImportError as exc:
            why = f"{exc.name} is not installed"
    usable = why is None
    text = f"{folder}: " + (describe(manifest) if manifest else "no manifest")
    text += "; used by predict --precision int8" if usable else f"; not used: {why}"
    return {"folder": str(folder), "used": usable, "why_not": why, "manifest": manifest, "text": text}


_SAVE_ONLY = ("class_names", "class_codes", "normalization", "spacing", "gate_mode", "align_corners",
              "strides", "output", "axes", "orientation")  # fmt: skip


def check_int8_arguments(args: argparse.Namespace) -> None:
    """One sentence for each way convert's int8 options do not fit together, before any work."""
    int8 = getattr(args, "int8", False)
    if not int8:
        for name in ("calibrate", "tile"):
            if getattr(args, name, None):
                raise InputError(f"--{name} is for convert --int8; add --int8, or leave --{name} out.")
        if args.out is None:
            raise InputError(
                "OUT is missing: give the .safetensors file to write, or --int8 --calibrate DIR "
                "to store an int8 model beside the checkpoint."
            )
        return
    if args.calibrate is None:
        raise InputError(
            "convert --int8 needs --calibrate DIR, a folder of scans like those the model will "
            "segment, to calibrate int8 on; add it (predict --precision int8 alone calibrates on "
            "each scan instead)."
        )
    if args.out is None:
        given = [n for n in _SAVE_ONLY if getattr(args, n, None)]
        if given:
            raise InputError(
                f"--{given[0].replace('_', '-')} changes the .safetensors that convert writes; give "
                "OUT too, or leave it out to store only the int8 model beside the checkpoint."
            )
    from ..inference.calibrated import folder_for, refuse_existing
    from ..inference.quantize import require_nncf, scan_files

    require_nncf()
    scan_files(args.calibrate)
    refuse_existing(folder_for(args.out or args.checkpoint), args.overwrite)


def store_int8(args: argparse.Namespace, checkpoint) -> int:
    """Calibrate on ``--calibrate`` and store ``<stem>.int8/`` beside ``checkpoint``."""
    from ..inference.calibrated import folder_for
    from ..inference.quantize import CALIBRATING, store_beside
    from ..models.checkpoint import load_model

    model = load_model(checkpoint, family=args.family if args.out is None else None)
    print(f"{checkpoint}: {CALIBRATING} on the scans in {args.calibrate}", file=sys.stderr)
    plan_for = CalibrationPlanner(model, tuple(args.tile) if args.tile else None)
    folder, manifest = store_beside(
        model, args.calibrate, folder_for(checkpoint), plan_for, overwrite=args.overwrite
    )
    calibration = manifest["calibration"]
    print(
        f"wrote {folder}: int8 calibrated on {calibration['windows']} windows of "
        f"{len(calibration['files'])} scans in {calibration['folder']} in {calibration['seconds']:g} s "
        f"(scope {manifest['scope']}, tile {'x'.join(map(str, manifest['tile']))}); "
        "predict --precision int8 with this checkpoint uses it"
    )
    return 0


class CalibrationPlanner:
    """``plan_for(volume)``: a calibration scan planned as an int8 run plans its scan (the
    checkpoint's normalization and orientation). The first scan's plan chooses the tile (the
    one given, else the run's default), and the others are cut on the same tile."""

    def __init__(self, model, tile: tuple[int, ...] | None) -> None:
        self.model = model
        self.tile = tile

    def __call__(self, volume):
        import torch

        from ..inference.options import RunOptions
        from ..inference.plan import Target, make_plan

        target = Target(torch.device("cpu"), "int8", "openvino", False)
        options = RunOptions(precision="int8", tile=self.tile, name=str(volume.name))
        image, options, _ = options.with_volume(volume)
        plan = yield from make_plan(image, self.model, target, options.checked(self.model.spec))
        self.tile = plan.tile
        return plan
