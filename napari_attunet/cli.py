"""The command line: ``napari-attunet predict | evaluate | info | convert | train | demo``.

Every failure is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .models.registry import FAMILIES, REGISTRY


def _info(args: argparse.Namespace) -> int:
    from .models.checkpoint import load_model, parameter_count, sha256

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


def _orientation_arg(text: str) -> str:
    from .models.spec import valid_orientation

    value = text if text in ("native", "display") else text.upper()
    if not valid_orientation(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an axis code such as RAS or LPS, nor 'native' or 'display'"
        )
    return value


def _parse_normalization(text: str | None) -> dict | None:
    """'zscore', 'none', 'percentile:0.5,99.5' or 'ct:-160,240' (a window in HU)."""
    if text is None:
        return None
    mode, _, values = text.partition(":")
    out: dict = {"mode": mode}
    if mode == "range":
        # range:a_min,a_max[,b_min,b_max[,noclip]], as MONAI's ScaleIntensityRanged
        parts = values.split(",")
        clip = parts[-1].strip().lower() != "noclip"
        numbers = [float(v) for v in (parts if clip else parts[:-1])]
        if len(numbers) not in (2, 4):
            raise ValueError(f"--normalization {text!r}: give a_min,a_max[,b_min,b_max[,noclip]]")
        out.update(window=numbers[:2], target=numbers[2:] or [0.0, 1.0], clip=clip)
        return out
    if values:
        numbers = [float(v) for v in values.split(",")]
        if len(numbers) != 2:
            raise ValueError(f"--normalization {text!r}: give two numbers after the colon")
        out["window" if mode == "ct" else "percentiles"] = numbers
    return out


def _convert(args: argparse.Namespace) -> int:
    from .models.checkpoint import load_model, save_model, sha256

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
    if args.orientation:
        overrides["orientation"] = args.orientation
    model = load_model(args.checkpoint, family=args.family, overrides=overrides or None)
    codes = None
    if args.class_codes:
        from .scans.dicom_seg import parse_class_codes

        codes = parse_class_codes(args.class_codes, args.class_names or model.spec.class_labels)
    out = save_model(
        model,
        args.out,
        class_names=args.class_names,
        normalization=_parse_normalization(args.normalization),
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


def _predict_options(args: argparse.Namespace, spec) -> dict:
    """Every option checked before any scan is read: an error names the option."""
    from .errors import InputError
    from .inference.devices import resolve_device, resolve_precision
    from .inference.preprocess import Normalization

    try:
        normalization = _parse_normalization(args.normalization)
        if normalization is not None:
            Normalization.parse(normalization)
    except InputError as exc:
        raise InputError(f"--normalization {args.normalization!r}: {exc}") from None
    except ValueError as exc:
        raise InputError(
            f"--normalization {args.normalization!r} is not understood "
            f"({str(exc).rstrip('.')}); give numbers after the colon, as in "
            "ct:-160,240 or percentile:0.5,99.5."
        ) from None
    try:
        device = resolve_device(args.device)
    except InputError as exc:
        raise InputError(f"--device {args.device}: {exc}") from None
    try:
        resolve_precision(args.precision, device)
    except InputError as exc:
        raise InputError(f"--precision {args.precision}: {exc}") from None
    if args.orientation not in (None, "display") and spec.spatial_dims == 2:
        raise InputError(
            f"--orientation {args.orientation}: a 2D model sees each plane as napari displays it "
            f"(axes {spec.axes or 'yx'!r}), so no orientation applies; leave --orientation out."
        )
    if args.thresholds is not None and len(args.thresholds) not in (1, spec.out_channels):
        raise InputError(
            f"--thresholds: {len(args.thresholds)} values given, but the model has "
            f"{spec.out_channels} classes ({', '.join(spec.class_labels)}); give one "
            "per class."
        )
    if args.tile is not None and (len(args.tile) not in (1, spec.spatial_dims) or min(args.tile) <= 0):
        raise InputError(
            f"--tile {' '.join(map(str, args.tile))}: give one positive size or "
            f"{spec.spatial_dims} (one per axis of this {spec.spatial_dims}D model)."
        )
    if not 0.0 <= args.overlap < 1.0:
        raise InputError(f"--overlap {args.overlap:g}: give a fraction in [0, 1).")
    if args.min_size < 0:
        raise InputError(f"--min-size {args.min_size}: give a number of voxels, 0 or more.")
    if getattr(args, "reference", None):
        from .review.references import check_folder

        check_folder(args.reference)
    if getattr(args, "structures", False) and not (
        0.0 <= args.uncertain_over <= 1.0 and args.structure_min_ml >= 0
    ):
        raise InputError(
            "--uncertain-over takes a level in [0, 1] and --structure-min-ml a volume of 0 mL or more."
        )
    return {
        "normalization": normalization,
        "tile": None if args.tile is None else (args.tile[0] if len(args.tile) == 1 else tuple(args.tile)),
    }


def _check_run_arguments(args: argparse.Namespace) -> None:
    """The options checked before a model is loaded or a scheduler started."""
    from .inference.postprocess import check_thresholds

    check_thresholds(args.thresholds, "--thresholds")
    if getattr(args, "scheduler", None):
        from .inference.cluster import parse

        parse(args.scheduler)


def _output_names(name: str, spec, args: argparse.Namespace) -> list[str]:
    """The files ``predict`` writes for one scan, known before it runs."""
    images, seg = _formats(args)
    names = [f"{name}_seg.dcm"] if seg else []
    for suffix in images or [args.format]:
        if suffix in images:
            names.append(f"{name}_labels{suffix}")
        if args.attention:
            for k, gate in enumerate(spec.gates, start=1):
                for h in range(gate.heads):
                    names.append(f"{name}_gate{k}" + (f"_head{h + 1}" if gate.heads > 1 else "") + suffix)
        if args.uncertainty:
            names.append(f"{name}_uncertainty{suffix}")
        if args.probabilities:
            for cname in spec.class_labels:
                names.append(f"{name}_prob_{_safe(cname)}{suffix}")
    if getattr(args, "structures", False):
        names.append(f"{name}_structures.csv")
    return names


def _formats(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The image formats asked for (labels in each; with dicom-seg alone, the other outputs
    asked for go to ``args.format``, .nii.gz by default), and whether a DICOM SEG is."""
    formats = getattr(args, "formats", None) or [args.format]
    return [f for f in dict.fromkeys(formats) if f != "dicom-seg"], "dicom-seg" in formats


class _FormatAction(argparse.Action):
    """``--format`` may be repeated: ``formats`` lists every one, ``format`` keeps the last
    image format (what the store and cohort code reads)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.formats = [*(getattr(namespace, "formats", None) or []), values]
        if values != "dicom-seg":
            namespace.format = values


def _check_formats(args: argparse.Namespace) -> None:
    from .errors import InputError

    images, seg = _formats(args)
    store = "zarr" in images or str(args.output).rstrip("/").endswith(".zarr")
    if store and (seg or len(images) > 1):
        raise InputError(
            "--format zarr (or an -o ending in .zarr) writes one store per scan and cannot be combined "
            "with other formats; run predict once per format."
        )
    if getattr(args, "seg_type", "binary") != "binary" and not seg:
        raise InputError(
            f"--seg-type {args.seg_type} applies to --format dicom-seg; add it, or leave it out."
        )
    if seg:
        from .scans.dicom_seg import require_highdicom

        require_highdicom("--format dicom-seg")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def _predict(args: argparse.Namespace) -> int:
    """Each scan in turn; a bad one gets one line on stderr and the next one runs.

    Outputs never replace existing files without --overwrite, two inputs never share output
    names, and a scan's files appear together or not at all (see ``outputs``).
    """
    from pathlib import Path

    from tqdm import tqdm

    from .inference import iter_predict
    from .inference.postprocess import gate_on_image_grid
    from .models.checkpoint import load_model
    from .scans import io, outputs

    _check_formats(args)
    _check_run_arguments(args)
    if (
        getattr(args, "scheduler", None)
        or args.format == "zarr"
        or str(args.output).rstrip("/").endswith(".zarr")
    ):
        from .commands.cohort import run

        zarr = args.format == "zarr" or str(args.output).rstrip("/").endswith(".zarr")
        given = [o for o in ("structures", "reference") if getattr(args, o, None)]
        if zarr and given:
            from .errors import InputError

            raise InputError(
                f"--{given[0]} needs file outputs (--format .nii.gz and a folder as -o), not zarr."
            )
        return run(args)
    model = getattr(args, "model", None) or load_model(args.checkpoint)
    spec = model.spec
    options = _predict_options(args, spec)
    thresholds = args.thresholds
    if thresholds is not None and len(thresholds) == 1:
        thresholds = thresholds[0]
    outdir = outputs.check_folder(args.output, "-o/--output")
    names = getattr(args, "names", None) or outputs.unique_names(args.scans, io._stem)
    images, seg = _formats(args)
    if seg:
        from .scans.dicom_seg import Algorithm, check_scan, write_run

        algorithm = Algorithm.of_checkpoint(args.checkpoint)
    failures = 0
    for scan, name in zip(args.scans, names, strict=True):
        try:
            source = check_scan(scan) if seg else None  # before the run: it needs DICOM with UIDs
            planned = _output_names(name, spec, args)
            if not args.overwrite:
                for planned_name in planned:
                    outputs.check_target(outdir / planned_name, False)
            volume = io.read(scan)
            with tqdm(total=1, desc=name, unit="batch", leave=False, disable=args.quiet) as bar:
                steps = iter_predict(volume, model, **run_options(args, options, scan))
                pred = _follow(steps, bar, name, args.quiet)
            for note in volume.notes:  # after the run: a scan that fails gets one line only
                print(note, file=sys.stderr)
            labels = pred.labels(thresholds, min_size=args.min_size, fill_holes=args.fill_holes)
            scores = _scores(args, scan, name, labels, volume, pred)
            seg_notes: list[str] = []
            with outputs.staged(outdir, args.overwrite) as stage:
                if seg:
                    seg_notes = write_run(
                        stage, f"{name}_seg.dcm", labels, volume, pred, args.seg_type, algorithm, source
                    )
                for suffix in images or [args.format]:
                    if suffix in images:
                        io.write_staged(stage, f"{name}_labels{suffix}", labels, volume)
                    if args.attention:
                        for k, gate in enumerate(pred.gates, start=1):
                            for h in range(gate.heads):
                                tag = f"_gate{k}" + (f"_head{h + 1}" if gate.heads > 1 else "")
                                io.write_staged(
                                    stage,
                                    f"{name}{tag}{suffix}",
                                    gate_on_image_grid(gate, labels.shape, h),
                                    volume,
                                )
                    if args.uncertainty:
                        io.write_staged(stage, f"{name}_uncertainty{suffix}", pred.uncertainty, volume)
                    if args.probabilities:
                        probs = pred.probabilities
                        for c, cname in enumerate(pred.class_names):
                            io.write_staged(stage, f"{name}_prob_{_safe(cname)}{suffix}", probs[c], volume)
                if getattr(args, "structures", False):
                    _write_structures(stage, name, labels, pred, volume, args)
            for note in seg_notes:
                print(f"{name}: {note}", file=sys.stderr)
            full_path = str(Path(scan).expanduser().absolute())
            rows = [
                (name, cname, f"{ml:.3f}", full_path, *scores.get(cname, ()))
                for cname, ml in pred.volumes_ml(labels, volume.spacing).items()
            ]
            outputs.merge_volumes(outdir / "volumes.csv", rows)  # per scan: an interrupt keeps it
            if not args.quiet:
                print(done_line(name, labels.shape, pred, outdir))
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"napari-attunet predict: {_sentence(exc)}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one line per scan, the next one runs
            failures += 1
            print(
                f"napari-attunet predict: {scan}: failed ({_sentence(exc)}); nothing was written for it.",
                file=sys.stderr,
            )
        except KeyboardInterrupt:  # the staging folder is gone; finished scans are kept
            done = " (the scans finished before it are kept)" if scan != args.scans[0] else ""
            print(
                f"napari-attunet predict: interrupted; nothing was written for {scan}{done}.", file=sys.stderr
            )
            return 130
    if getattr(args, "reference", None) and not args.quiet:
        print_reference_summary(outdir / "volumes.csv", args.scans)
    return 1 if failures else 0


def _scores(args: argparse.Namespace, scan, name: str, labels, volume, pred) -> dict[str, list[str]]:
    """With --reference: the metric cells per class against the scan's reference, or {}."""
    if not getattr(args, "reference", None):
        return {}
    from .review import references

    found = references.find(args.reference, scan, name)
    if found is None:
        print(f"{name}: no reference in {args.reference}; its rows have no metrics.", file=sys.stderr)
        return {}
    cells, notes = references.scores(found, labels, volume, pred.label_names)
    for note in notes:
        print(f"{name}: {note}", file=sys.stderr)
    return cells


def print_reference_summary(table, scans) -> None:
    """The mean and median per class of this run's scans, from volumes.csv."""
    from pathlib import Path

    from .review.references import summary

    text = summary(table, [str(Path(s).expanduser().absolute()) for s in scans])
    if text:
        print(text)


def _write_structures(stage, name: str, labels, pred, volume, args: argparse.Namespace) -> None:
    """``<name>_structures.csv``: each class and its components with their mean uncertainty."""
    from .review.structures import structures, write_csv

    rows = structures(
        labels, pred.uncertainty, volume.spacing, pred.label_names, volume.affine, args.uncertain_over,
        args.structure_min_ml,
    )  # fmt: skip
    stage.write(f"{name}_structures.csv", lambda target: write_csv(target, rows))


def _follow(steps, bar, name: str, quiet: bool):
    """Run ``iter_predict``'s steps: the bar follows the batches, and a conversion for this
    CPU (tens of seconds, once per checkpoint) is said on stderr so a pause is not a hang."""
    from .inference.runtime_openvino import COMPILING

    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if step.stage == "predicting":
            bar.total = step.total
            bar.n = step.done
            bar.refresh()
        elif step.message == COMPILING and not quiet:
            bar.write(f"{name}: {COMPILING}", file=sys.stderr)


def run_options(args: argparse.Namespace, options: dict, scan) -> dict:
    """The engine's options for one scan, from the command line (one place for `predict` and
    the cohort's stores)."""
    return dict(
        orientation=args.orientation,
        normalization=options["normalization"],
        tile=options["tile"],
        overlap=args.overlap,
        device=args.device,
        precision=args.precision,
        tta=args.tta,
        name=str(scan),
        attention=args.attention,
        runtime=args.runtime,
    )


def done_line(name: str, shape, pred, target) -> str:
    """The line printed when one scan is done."""
    return (
        f"{name}: {tuple(shape)} in {pred.seconds:.1f} s on {pred.device} "
        f"({pred.precision}, {pred.runtime}) -> {target}"
    )


def _sentence(exc: BaseException) -> str:
    """An exception as one line, whole (its remedy is at its end), without ``[Errno N]``
    prefixes, naming the command line's options where the core names the API's."""
    from .hints import for_interface

    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}."
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return for_interface(" ".join(lines), "cli") if lines else type(exc).__name__


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from .inference.preprocess import Normalization
    from .training import TrainConfig, default_spec, train
    from .training.data import find_pairs, load_case

    if args.recipe == "mni152":
        from .training.recipes import MNI_CLASSES, MNI_NORMALIZATION, mni152_cases

        cases, summary = mni152_cases(Path(args.export) if args.export else None)
        val, names, norm = cases, MNI_CLASSES, MNI_NORMALIZATION
    else:
        if not (args.images and args.labels):
            raise ValueError("give --images and --labels folders, or --recipe mni152.")
        norm = _parse_normalization(args.normalization) or {"mode": "zscore"}
        cases = [
            load_case(i, lab, Normalization.parse(norm)) for i, lab in find_pairs(args.images, args.labels)
        ]
        n_val = max(1, len(cases) // 5) if len(cases) > 1 else 0
        val = cases[-n_val:] if n_val else cases
        cases = cases[:-n_val] if n_val else cases
        classes = int(max(c.labels.max() for c in cases + val)) + 1
        names = args.class_names or ["background"] + [f"class {k}" for k in range(1, classes)]
        summary = {
            "images": str(args.images),
            "labels": str(args.labels),
            "train": [c.name for c in cases],
            "validation": [c.name for c in val],
        }
    dims = cases[0].labels.ndim
    spec = default_spec(dims, cases[0].image.shape[0], len(names), args.features, args.family, args.variant)
    patch = tuple(args.patch or ((64,) * 3 if dims == 3 else (256,) * 2))
    config = TrainConfig(
        out=Path(args.output),
        spec=spec,
        patch=patch,
        normalization=norm,
        batch=args.batch,
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        resume=args.resume,
    )
    rank = int(__import__("os").environ.get("RANK", "0"))
    bar = tqdm(total=args.epochs * args.steps, disable=args.quiet or rank != 0, unit="step")
    steps = train(config, cases, val, names, summary)
    while True:
        try:
            record = next(steps)
        except StopIteration as stop:
            result = stop.value
            break
        if record["kind"] == "step":
            bar.n = record["epoch"] * args.steps + record["step"] + 1
            bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.3f}", refresh=False)
            bar.refresh()
        elif rank == 0 and not args.quiet:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in record.get("dice", {}).items())
            tqdm.write(
                f"epoch {record['epoch']}: loss {record['loss']:.3f}; validation Dice "
                f"{dice}{' (best, saved)' if record.get('best') else ''}"
            )
    bar.close()
    if rank == 0 and not args.quiet:
        print(f"best mean Dice {result['best_mean_dice']:.3f} -> {args.output}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """A prediction against a reference: a table per foreground class, and the CSV."""
    from .review import evaluate
    from .review.table import check_csv, text, write_csv

    if args.csv:
        check_csv(args.csv, args.overwrite)
    names = None
    if args.checkpoint:
        from .models.checkpoint import load_model

        spec = load_model(args.checkpoint).spec
        names = (("background",) if spec.output == "sigmoid" else ()) + spec.class_labels
    rows = evaluate(args.prediction, args.reference, class_names=names)
    for note in rows.notes + [r.note for r in rows if r.note]:
        print(note, file=sys.stderr)
    print(text(rows))
    if args.csv:
        print(f"-> {write_csv(args.csv, rows, args.overwrite)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .plugin.demo import run_demo

    return run_demo(args.screenshot, args.checkpoint)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-attunet", description="Attention U-Net inference and attention maps."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--family", choices=FAMILIES)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    conv = sub.add_parser("convert", help="turn any checkpoint into a native .safetensors")
    conv.add_argument("checkpoint")
    conv.add_argument("out", help="the .safetensors file to write")
    conv.add_argument("--family", choices=FAMILIES)
    conv.add_argument("--class-names", nargs="+", metavar="NAME")
    conv.add_argument(
        "--class-codes",
        metavar="JSON",
        help='DICOM SEG codes per class, a JSON file or text: {"NAME": {"category": '
        '"SCT:91723000:Anatomical Structure", "type": "SCT:...:..."}} (default: Tissue)',
    )
    conv.add_argument(
        "--normalization",
        metavar="MODE",
        help="none | zscore (NormalizeIntensityd) | zscore_nonzero (nonzero=True) | "
        "zscore_foreground | ct:LOW,HIGH | percentile:LOW,HIGH | "
        "range:A_MIN,A_MAX[,B_MIN,B_MAX[,noclip]] (ScaleIntensityRanged)",
    )
    conv.add_argument(
        "--spacing",
        nargs="+",
        type=float,
        metavar="MM",
        help="the voxel spacing the model was trained at, in array axis order",
    )
    conv.add_argument(
        "--gate-mode", choices=("concatenation", "concatenation_debug", "concatenation_residual")
    )
    conv.add_argument(
        "--align-corners", action="store_true", help="for official checkpoints trained with PyTorch 0.3"
    )
    conv.add_argument("--strides", metavar="S,S,...", help="MONAI down-sampling strides")
    conv.add_argument("--output", choices=("softmax", "sigmoid"))
    conv.add_argument(
        "--orientation",
        type=_orientation_arg,
        metavar="CODE",
        help="how the training pipeline laid scans out: an axis code such as RAS "
        "(MONAI's Orientationd) or LPS, 'native' (as each file stores it) or "
        "'display' (as napari shows it); default by family",
    )
    conv.add_argument(
        "--axes",
        choices=("xyz", "zyx", "yxz", "xzy", "zxy", "yzx", "yx", "xy"),
        help="for orientation 'display' (and 2D networks): the order in which the "
        "network saw the displayed axes",
    )
    conv.set_defaults(func=_convert)

    pred = sub.add_parser("predict", help="segment scans, writing labels, gates and volumes")
    pred.add_argument("scans", nargs="+", help="NIfTI, NRRD, MHA/MHD files or DICOM folders")
    pred.add_argument("-c", "--checkpoint", required=True)
    pred.add_argument("-o", "--output", required=True, help="output folder")
    pred.add_argument(
        "--attention", action="store_true", help="also write every gate map, resampled to the scan grid"
    )
    pred.add_argument("--probabilities", action="store_true", help="also write probabilities")
    pred.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write the per-voxel uncertainty in [0, 1] (normalised entropy; "
        "with --tta, or the flips' disagreement where larger)",
    )
    pred.add_argument("--device", default="auto")
    pred.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    pred.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "torch", "openvino"),
        help="auto: OpenVINO on the CPU when installed (pip install "
        '"napari-attunet[openvino]"), else PyTorch',
    )
    pred.add_argument(
        "--normalization",
        metavar="MODE",
        help="none | zscore (NormalizeIntensityd) | zscore_nonzero (nonzero=True) | "
        "zscore_foreground | ct:LOW,HIGH | percentile:LOW,HIGH | "
        "range:A_MIN,A_MAX[,B_MIN,B_MAX[,noclip]] (ScaleIntensityRanged)",
    )
    pred.add_argument(
        "--orientation",
        type=_orientation_arg,
        metavar="CODE",
        help="override the checkpoint's orientation for this run (see convert)",
    )
    pred.add_argument("--tile", type=int, nargs="+", metavar="N")
    pred.add_argument("--overlap", type=float, default=0.5)
    pred.add_argument("--tta", action="store_true", help="average over mirrored flips")
    pred.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        metavar="T",
        help="one per class (softmax: background's ignored); default: the most "
        "probable class for softmax models, 0.5 per channel for sigmoid",
    )
    pred.add_argument(
        "--min-size",
        type=int,
        default=0,
        metavar="VOXELS",
        help="drop connected components smaller than this",
    )
    pred.add_argument("--fill-holes", action="store_true")
    pred.add_argument(
        "--reference",
        metavar="REF_DIR",
        help="score each scan against its reference label map in this folder (same stem, or "
        "stem_seg, stem_labels, stem_gt...): Dice, HD95, ASSD columns in volumes.csv",
    )
    pred.add_argument(
        "--structures",
        action="store_true",
        help="also write <scan>_structures.csv: each class and connected component with its volume, "
        "mean uncertainty, uncertain mL and centroid",
    )
    pred.add_argument("--uncertain-over", type=float, default=0.5, metavar="LEVEL", help="for --structures")
    pred.add_argument("--structure-min-ml", type=float, default=0.1, metavar="ML", help="for --structures")
    pred.add_argument(
        "--format",
        default=".nii.gz",
        action=_FormatAction,
        choices=(".nii.gz", ".nii", ".nrrd", ".mha", "zarr", "dicom-seg"),
        help="zarr: one OME-Zarr store per scan, written block by block (also when -o ends in .zarr); "
        "dicom-seg: a DICOM SEG of a DICOM series, <name>_seg.dcm (alone, other outputs asked for "
        "go to .nii.gz); may be given more than once",
    )
    pred.add_argument(
        "--seg-type",
        default="binary",
        choices=("binary", "labelmap", "fractional"),
        help="with --format dicom-seg: BINARY segments (default), one LABELMAP, or FRACTIONAL probabilities",
    )
    pred.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on Dask: local:N (N worker processes here) or tcp://host:8786; "
        "scans are spread over the workers and finished ones skipped",
    )
    pred.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist (default: refuse)"
    )
    pred.add_argument("-q", "--quiet", action="store_true")
    pred.set_defaults(func=_predict)

    tr = sub.add_parser("train", help="train an Attention U-Net (torchrun for several GPUs)")
    tr.add_argument("--images", help="folder of scans")
    tr.add_argument("--labels", help="folder of label maps, matched to the scans by name")
    tr.add_argument("--recipe", choices=("mni152",), help="a built-in data recipe")
    tr.add_argument("--export", help="with --recipe: also write its volumes to this folder")
    tr.add_argument("-o", "--output", required=True, help="the .safetensors to write (best epoch)")
    tr.add_argument("--class-names", nargs="+", metavar="NAME")
    tr.add_argument("--normalization", metavar="MODE", help="as for predict (default zscore)")
    tr.add_argument("--family", default="official", choices=FAMILIES)
    tr.add_argument(
        "--variant",
        choices=REGISTRY["official"].variants,
        help="official variant (default single_att_dsv, the paper's design)",
    )
    tr.add_argument(
        "--features",
        type=int,
        nargs="+",
        default=(8, 16, 32, 64, 128),
        help="encoder widths, finest first (official: exactly 5)",
    )
    tr.add_argument("--patch", type=int, nargs="+")
    tr.add_argument("--batch", type=int, default=2)
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--steps", type=int, default=50, help="steps per epoch")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT's .state.pt")
    tr.add_argument("-q", "--quiet", action="store_true")
    tr.set_defaults(func=_train)

    ev = sub.add_parser(
        "evaluate", help="Dice, HD95, ASSD and volumes of a prediction against a reference, per class"
    )
    ev.add_argument("prediction", help="labels: a scan file (NIfTI, NRRD, MHA...) or a result store (.zarr)")
    ev.add_argument("reference", help="the ground truth, in any of those formats, on any grid")
    ev.add_argument(
        "--csv", metavar="PATH", help="also write class,dice,hd95_mm,assd_mm,volume_pred_ml,volume_ref_ml"
    )
    ev.add_argument("--checkpoint", help="name the classes as this checkpoint does")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    ev.set_defaults(func=_evaluate)

    demo = sub.add_parser("demo", help="napari with the MNI152 sample and the demo checkpoint")
    demo.add_argument("--screenshot", metavar="PNG", help="save the window after the run, and exit")
    demo.add_argument("--checkpoint", help="another checkpoint instead of the bundled demo")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # our errors are ValueErrors; each is one sentence
        print(f"napari-attunet {args.command}: {_sentence(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-attunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
