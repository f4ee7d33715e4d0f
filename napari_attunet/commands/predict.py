"""``predict`` on this machine, scan by scan (``cohort`` runs the same on Dask).

Outputs never replace existing files without --overwrite, two inputs never share output
names, and a scan's files appear together or not at all (see ``scans.outputs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..inference.options import RunOptions

import argparse
import sys

from .common import check_orientation, parse_normalization, safe, sentence


def check_int8_runs(args: argparse.Namespace) -> None:
    """Without NNCF, int8 runs only from a model stored beside the checkpoint (convert
    --int8): refused before any scan is read when there is none."""
    from ..inference.calibrated import folder_for
    from ..inference.quantize import nncf_available, require_nncf

    if not nncf_available() and not folder_for(args.checkpoint).is_dir():
        require_nncf()


def predict_options(args: argparse.Namespace, spec) -> dict:
    """Every option checked before any scan is read: an error names the option."""
    from ..errors import InputError
    from ..inference.devices import resolve_device, resolve_precision
    from ..inference.preprocess import Normalization
    from ..inference.runtime import runtime_device

    try:
        normalization = parse_normalization(args.normalization)
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
        device = resolve_device(runtime_device("auto", args.device, args.precision))  # int8: the CPU
    except InputError as exc:
        raise InputError(f"--device {args.device}: {exc}") from None
    try:
        resolve_precision(args.precision, device)
    except InputError as exc:
        raise InputError(f"--precision {args.precision}: {exc}") from None
    if args.precision == "int8":
        check_int8_runs(args)
    if getattr(args, "calibrate", None) is not None:
        if args.precision != "int8":
            raise InputError("--calibrate is for --precision int8; add it, or leave --calibrate out.")
        from ..inference.quantize import scan_files

        scan_files(args.calibrate)  # a folder with scans, before any is run
    check_orientation(args.orientation, spec)
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
        from ..review.references import check_folder

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


def check_run_arguments(args: argparse.Namespace) -> None:
    """The options checked before a model is loaded or a scheduler started."""
    from ..inference.postprocess import check_thresholds

    check_thresholds(args.thresholds, "--thresholds")
    if getattr(args, "scheduler", None):
        from ..inference.cluster import parse

        parse(args.scheduler)


def gate_tag(k: int, head: int, heads: int) -> str:
    """What a gate map's file name adds to the scan's: ``_gate2``, or ``_gate2_head1`` for one
    of several heads (k and heads counted from 1 in names, ``head`` from 0)."""
    return f"_gate{k}" + (f"_head{head + 1}" if heads > 1 else "")


def output_names(name: str, spec, args: argparse.Namespace) -> list[str]:
    """The files ``predict`` writes for one scan, known before it runs."""
    images, seg = formats(args)
    names = [f"{name}_seg.dcm"] if seg else []
    for suffix in images or [args.format]:
        if suffix in images:
            names.append(f"{name}_labels{suffix}")
        if args.attention:
            for k, gate in enumerate(spec.gates, start=1):
                for h in range(gate.heads):
                    names.append(f"{name}{gate_tag(k, h, gate.heads)}{suffix}")
        if args.uncertainty:
            names.append(f"{name}_uncertainty{suffix}")
        if args.probabilities:
            for cname in spec.class_labels:
                names.append(f"{name}_prob_{safe(cname)}{suffix}")
    if getattr(args, "structures", False):
        names.append(f"{name}_structures.csv")
    return names


def formats(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The image formats asked for (labels in each; with dicom-seg alone, the other outputs
    asked for go to ``args.format``, .nii.gz by default), and whether a DICOM SEG is."""
    formats = getattr(args, "formats", None) or [args.format]
    return [f for f in dict.fromkeys(formats) if f != "dicom-seg"], "dicom-seg" in formats


class FormatAction(argparse.Action):
    """``--format`` may be repeated: ``formats`` lists every one, ``format`` keeps the last
    image format (what the store and cohort code reads)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.formats = [*(getattr(namespace, "formats", None) or []), values]
        if values != "dicom-seg":
            namespace.format = values


def check_formats(args: argparse.Namespace) -> None:
    from ..errors import InputError

    images, seg = formats(args)
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
        from ..scans.dicom_seg import require_highdicom

        require_highdicom("--format dicom-seg")


def run(args: argparse.Namespace) -> int:
    """Each scan in turn; a bad one gets one line on stderr and the next one runs.

    Outputs never replace existing files without --overwrite, two inputs never share output
    names, and a scan's files appear together or not at all (see ``outputs``).
    """
    from pathlib import Path

    from tqdm import tqdm

    from ..inference import iter_predict
    from ..models.checkpoint import load_model
    from ..scans import io, outputs

    check_formats(args)
    check_run_arguments(args)
    model = getattr(args, "model", None) or load_model(args.checkpoint)
    spec = model.spec
    options = predict_options(args, spec)
    thresholds = args.thresholds
    if thresholds is not None and len(thresholds) == 1:
        thresholds = thresholds[0]
    outdir = outputs.check_folder(args.output, "-o/--output")
    outputs.sweep_stale(outdir)  # a set a killed run left half in place is removed: it is redone
    names = getattr(args, "names", None) or outputs.unique_names(args.scans, io.stem)
    images, seg = formats(args)
    if seg:
        from ..scans.dicom_seg import Algorithm, check_scan, write_run

        algorithm = Algorithm.of_checkpoint(args.checkpoint)
    failures = 0
    for scan, name in zip(args.scans, names, strict=True):
        try:
            source = check_scan(scan) if seg else None  # before the run: it needs DICOM with UIDs
            planned = output_names(name, spec, args)
            if not args.overwrite:
                for planned_name in planned:
                    outputs.check_target(outdir / planned_name, False)
            volume = io.read(scan)
            with tqdm(total=1, desc=name, unit="batch", leave=False, disable=args.quiet) as bar:
                steps = iter_predict(volume, model, run_options(args, options, scan))
                pred = _follow(steps, bar, name, args.quiet)
            for note in volume.notes:  # after the run: a scan that fails gets one line only
                print(note, file=sys.stderr)
            for note in [n for n in pred.notes if "int8" in n and not args.quiet]:  # the guard's figures
                print(f"{name}: {note}", file=sys.stderr)
            labels = pred.labels(thresholds, min_size=args.min_size, fill_holes=args.fill_holes)
            scores = _scores(args, scan, name, labels, volume, pred)
            seg_notes: list[str] = []
            with outputs.staged(outdir, args.overwrite) as stage:
                if seg:
                    seg_notes = write_run(
                        stage, f"{name}_seg.dcm", labels, volume, pred, args.seg_type, algorithm, source
                    )
                for suffix in images or [args.format]:
                    _write_images(stage, name, suffix, suffix in images, labels, pred, volume, args)
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
            print(f"napari-attunet predict: {sentence(exc)}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one line per scan, the next one runs
            failures += 1
            print(
                f"napari-attunet predict: {scan}: failed ({sentence(exc)}); nothing was written for it.",
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


def _write_images(stage, name: str, suffix: str, labels_too: bool, labels, pred, volume, args) -> None:
    """One format's images of a scan into the staging folder: the labels (unless a SEG is the
    only output), each gate head on the scan grid, the uncertainty, each class's probability."""
    from ..inference.postprocess import gate_on_image_grid
    from ..scans import io

    if labels_too:
        io.write_staged(stage, f"{name}_labels{suffix}", labels, volume)
    if args.attention:
        for k, gate in enumerate(pred.gates, start=1):
            for h in range(gate.heads):
                image = gate_on_image_grid(gate, labels.shape, h)
                io.write_staged(stage, f"{name}{gate_tag(k, h, gate.heads)}{suffix}", image, volume)
    if args.uncertainty:
        io.write_staged(stage, f"{name}_uncertainty{suffix}", pred.uncertainty, volume)
    if args.probabilities:
        probs = pred.probabilities
        for c, cname in enumerate(pred.class_names):
            io.write_staged(stage, f"{name}_prob_{safe(cname)}{suffix}", probs[c], volume)


def _scores(args: argparse.Namespace, scan, name: str, labels, volume, pred) -> dict[str, list[str]]:
    """With --reference: the metric cells per class against the scan's reference, or {}."""
    if not getattr(args, "reference", None):
        return {}
    from ..review import references

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

    from ..review.references import summary

    text = summary(table, [str(Path(s).expanduser().absolute()) for s in scans])
    if text:
        print(text)


def _write_structures(stage, name: str, labels, pred, volume, args: argparse.Namespace) -> None:
    """``<name>_structures.csv``: each class and its components with their mean uncertainty."""
    from ..review.structures import structures, write_csv

    rows = structures(
        labels, pred.uncertainty, volume.spacing, pred.label_names, volume.affine, args.uncertain_over,
        args.structure_min_ml,
    )  # fmt: skip
    stage.write(f"{name}_structures.csv", lambda target: write_csv(target, rows))


def _follow(steps, bar, name: str, quiet: bool):
    """Run ``iter_predict``'s steps: the bar follows the batches, and a conversion for this
    CPU (tens of seconds, once per checkpoint) is said on stderr so a pause is not a hang."""
    from ..inference.quantize import CALIBRATING
    from ..inference.runtime_openvino import COMPILING

    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if step.stage == "predicting":
            bar.total = step.total
            bar.n = step.done
            bar.refresh()
        elif step.message in (COMPILING, CALIBRATING) and not quiet:
            bar.write(f"{name}: {step.message}", file=sys.stderr)


def run_options(args: argparse.Namespace, options: dict, scan) -> RunOptions:
    """The engine's options for one scan, from the command line (one place for `predict` and
    the cohort's stores)."""
    from ..inference.options import RunOptions

    return RunOptions(
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
        calibration=getattr(args, "calibrate", None),
    )


def done_line(name: str, shape, pred, target) -> str:
    """The line printed when one scan is done."""
    return (
        f"{name}: {tuple(shape)} in {pred.seconds:.1f} s on {pred.device} "
        f"({pred.precision}, {pred.runtime}) -> {target}"
    )
