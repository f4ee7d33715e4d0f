"""The command line: ``napari-attunet predict | info | convert``.

Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, parameter_count, sha256

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
        ("input axes", f"{spec.network_axes} (the scan axes in the order the network sees them)"),
    ]
    if spec.family == "official":
        rows.append(("gate mode", spec.gate_mode))
    for k, g in enumerate(spec.gates, start=1):
        rows.append((f"gate {k}", f"stride {'x'.join(map(str, g.stride))}, offset "
                     f"{'/'.join(f'{o:g}' for o in g.offset)} voxels, {g.heads} map(s)"))
    if spec.normalization:
        rows.append(("normalization", json.dumps(spec.normalization)))
    if spec.spacing:
        rows.append(("training spacing", " x ".join(f"{s:g}" for s in spec.spacing) + " mm"))
    provenance = (model.metadata or {}).get("provenance")
    if provenance:
        rows.append(("provenance", json.dumps(provenance, sort_keys=True)))
    if args.json:
        print(json.dumps({"spec": spec.to_dict(), "sha256": rows[1][1],
                          "parameters": parameter_count(model),
                          "gates": [g.__dict__ for g in spec.gates]}, indent=2, default=list))
        return 0
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _parse_normalization(text: str | None) -> dict | None:
    """'zscore', 'none', 'percentile:0.5,99.5' or 'ct:-160,240' (a window in HU)."""
    if text is None:
        return None
    mode, _, values = text.partition(":")
    out: dict = {"mode": mode}
    if values:
        numbers = [float(v) for v in values.split(",")]
        if len(numbers) != 2:
            raise ValueError(f"--normalization {text!r}: give two numbers after the colon")
        out["window" if mode == "ct" else "percentiles"] = numbers
    return out


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, save_model, sha256

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
    out = save_model(model, args.out, class_names=args.class_names,
                     normalization=_parse_normalization(args.normalization),
                     spacing=args.spacing,
                     provenance={"converted_from": str(model.source),
                                 "source_sha256": sha256(model.source),
                                 "source_family": model.spec.family})
    print(f"wrote {out}: {load_model(out).spec.summary()}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Each scan in turn; a bad one gets one line on stderr and the next one runs."""
    from pathlib import Path

    from tqdm import tqdm

    from . import io
    from .checkpoint import load_model
    from .inference import predict
    from .inference.postprocess import gate_on_image_grid

    model = load_model(args.checkpoint)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, failures = [], 0
    for scan in args.scans:
        try:
            volume = io.read(scan)
            for note in volume.notes:
                print(note, file=sys.stderr)
            with tqdm(total=1, desc=volume.name, unit="batch", leave=False,
                      disable=args.quiet) as bar:
                def progress(done, total):
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                pred = predict(volume.array, model, spacing=volume.spacing,
                               normalization=_parse_normalization(args.normalization),
                               tile=args.tile, overlap=args.overlap, device=args.device,
                               precision=args.precision, tta=args.tta, progress=progress,
                               name=str(scan), attention=args.attention)
            labels = pred.labels(args.thresholds, min_size=args.min_size,
                                 fill_holes=args.fill_holes)
            suffix = args.format
            io.write(outdir / f"{volume.name}_labels{suffix}", labels, volume)
            if args.attention:
                for k, gate in enumerate(pred.gates, start=1):
                    for h in range(gate.heads):
                        tag = f"_gate{k}" + (f"_head{h + 1}" if gate.heads > 1 else "")
                        io.write(outdir / f"{volume.name}{tag}{suffix}",
                                 gate_on_image_grid(gate, labels.shape, h), volume)
            if args.probabilities:
                probs = pred.probabilities
                for c, cname in enumerate(pred.class_names):
                    safe = "".join(ch if ch.isalnum() else "_" for ch in cname)
                    io.write(outdir / f"{volume.name}_prob_{safe}{suffix}", probs[c], volume)
            for cname, ml in pred.volumes_ml(labels, volume.spacing).items():
                rows.append((volume.name, cname, f"{ml:.3f}"))
            if not args.quiet:
                print(f"{volume.name}: {labels.shape} in {pred.seconds:.1f} s on {pred.device} "
                      f"({pred.precision}) -> {outdir}")
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"napari-attunet predict: {exc}", file=sys.stderr)
    if rows:
        import csv

        with open(outdir / "volumes.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["scan", "class", "volume_ml"])
            writer.writerows(rows)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-attunet",
                                     description="Attention U-Net inference and attention maps.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--family", choices=("official", "monai", "leejunhyun"))
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    conv = sub.add_parser("convert", help="turn any checkpoint into a native .safetensors")
    conv.add_argument("checkpoint")
    conv.add_argument("out", help="the .safetensors file to write")
    conv.add_argument("--family", choices=("official", "monai", "leejunhyun"))
    conv.add_argument("--class-names", nargs="+", metavar="NAME")
    conv.add_argument("--normalization", metavar="MODE",
                      help="none | zscore | ct:LOW,HIGH | percentile:LOW,HIGH")
    conv.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                      help="the voxel spacing the model was trained at, in array axis order")
    conv.add_argument("--gate-mode", choices=("concatenation", "concatenation_debug",
                                              "concatenation_residual"))
    conv.add_argument("--align-corners", action="store_true",
                      help="for official checkpoints trained with PyTorch 0.3")
    conv.add_argument("--strides", metavar="S,S,...", help="MONAI down-sampling strides")
    conv.add_argument("--output", choices=("softmax", "sigmoid"))
    conv.add_argument("--axes", choices=("xyz", "zyx", "yxz", "xzy", "zxy", "yzx", "yx", "xy"),
                      help="the order in which the network saw the scan axes during training "
                           "(official and MONAI 3D default: xyz, as nibabel/ITK arrays)")
    conv.set_defaults(func=_convert)

    pred = sub.add_parser("predict", help="segment scans, writing labels, gates and volumes")
    pred.add_argument("scans", nargs="+", help="NIfTI, NRRD, MHA/MHD files or DICOM folders")
    pred.add_argument("-c", "--checkpoint", required=True)
    pred.add_argument("-o", "--output", required=True, help="output folder")
    pred.add_argument("--attention", action="store_true",
                      help="also write every gate map, resampled to the scan grid")
    pred.add_argument("--probabilities", action="store_true", help="also write probabilities")
    pred.add_argument("--device", default="auto")
    pred.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    pred.add_argument("--normalization", metavar="MODE",
                      help="none | zscore | zscore_foreground | ct:LOW,HIGH | percentile:LOW,HIGH")
    pred.add_argument("--tile", type=int, nargs="+", metavar="N")
    pred.add_argument("--overlap", type=float, default=0.5)
    pred.add_argument("--tta", action="store_true", help="average over mirrored flips")
    pred.add_argument("--thresholds", type=float, nargs="+", metavar="T")
    pred.add_argument("--min-size", type=int, default=0, metavar="VOXELS",
                      help="drop connected components smaller than this")
    pred.add_argument("--fill-holes", action="store_true")
    pred.add_argument("--format", default=".nii.gz", choices=(".nii.gz", ".nii", ".nrrd", ".mha"))
    pred.add_argument("-q", "--quiet", action="store_true")
    pred.set_defaults(func=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # our errors are ValueErrors; each is one sentence
        print(f"napari-attunet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-attunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
