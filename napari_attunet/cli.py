"""The command line: ``napari-attunet info | convert | ...``.

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
    model = load_model(args.checkpoint, family=args.family, overrides=overrides or None)
    out = save_model(model, args.out, class_names=args.class_names,
                     normalization=_parse_normalization(args.normalization),
                     spacing=args.spacing,
                     provenance={"converted_from": str(model.source),
                                 "source_sha256": sha256(model.source),
                                 "source_family": model.spec.family})
    print(f"wrote {out}: {load_model(out).spec.summary()}")
    return 0


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
    conv.set_defaults(func=_convert)
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
