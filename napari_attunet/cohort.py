"""``napari-attunet predict`` on Dask: many scans spread over workers, and OME-Zarr outputs.

Each scan is one Dask task that runs the sequential command (``cli._predict``) on that scan
alone, with the output name the whole command would give it: its files appear together
(``outputs.staged``) and its rows are merged into ``volumes.csv`` under a lock, as in the
sequential command. A scan whose files all exist is skipped (resume; ``--overwrite`` runs it
again). Each worker process loads the checkpoint once. The error lines and the exit code are
those of the sequential command.
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import os
import sys
from pathlib import Path

from .errors import InputError

_MODELS: dict = {}


def run(args: argparse.Namespace) -> int:
    """The predict command when ``--scheduler`` or a zarr output is asked for."""
    if _to_store(args):
        return _predict_stores(args)
    return _predict_cohort(args)


def _to_store(args) -> bool:
    return args.format == "zarr" or str(args.output).rstrip("/").endswith(".zarr")


def _cached_model(checkpoint: str):
    """One model per worker process (and per checkpoint file version)."""
    from .checkpoint import load_model

    stat = os.stat(checkpoint)
    key = (os.path.abspath(checkpoint), stat.st_mtime_ns, stat.st_size)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(checkpoint)
    return _MODELS[key]


def scan_task(scan: str, name: str, options: dict) -> tuple[int, str, str]:
    """Run the sequential command on one scan: (exit code, stderr, stdout)."""
    from .cli import _predict

    args = argparse.Namespace(**options)
    args.scans, args.names, args.quiet, args.scheduler = [scan], [name], True, None
    err, out = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            args.model = _cached_model(args.checkpoint)
            code = _predict(args)
        except (ValueError, OSError) as exc:
            print(f"napari-attunet predict: {exc}", file=sys.stderr)
            code = 1
    return code, err.getvalue(), out.getvalue()


def _predict_cohort(args) -> int:
    from distributed import as_completed
    from tqdm import tqdm

    from . import io, outputs
    from .checkpoint import load_model
    from .cli import _output_names
    from .inference.cluster import close, connect

    spec = load_model(args.checkpoint).spec
    outdir = outputs.check_folder(args.output, "-o/--output")
    scans = [os.path.abspath(s) for s in args.scans]
    names = outputs.unique_names(args.scans, io._stem)
    pending = [
        (scan, name)
        for scan, name in zip(scans, names, strict=True)
        if args.overwrite or not all((outdir / f).exists() for f in _output_names(name, spec, args))
    ]
    options = {k: v for k, v in vars(args).items() if k not in ("func", "model", "names")}
    options["output"] = str(outdir.resolve())
    failures = 0
    bar = tqdm(total=len(scans), initial=len(scans) - len(pending), unit="scan", disable=args.quiet)
    if len(scans) > len(pending) and not args.quiet:
        tqdm.write(f"{len(scans) - len(pending)} scan(s) already done in {outdir}: skipped")
    client = connect(args.scheduler) if pending else None
    try:
        futures = {client.submit(scan_task, scan, name, options, pure=False): scan for scan, name in pending}
        for future in as_completed(list(futures)) if futures else ():
            try:
                code, err, out = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost: one line, the rest go on
                code, err, out = (
                    1,
                    f"napari-attunet predict: {futures[future]}: failed ({type(exc).__name__}: {exc}).",
                    "",
                )
            for line in err.splitlines():
                tqdm.write(line, file=sys.stderr)
            if not args.quiet:
                for line in out.splitlines():
                    tqdm.write(line)
            failures += code != 0
            bar.update(1)
    finally:
        bar.close()
        if client is not None:
            close(client)
    if getattr(args, "reference", None) and not args.quiet:
        from .cli import print_reference_summary

        print_reference_summary(outdir / "volumes.csv", args.scans)
    return 1 if failures else 0


def _predict_stores(args) -> int:
    """Each scan into an OME-Zarr store, block by block (on ``--scheduler`` when given)."""
    import shutil

    from tqdm import tqdm

    from . import io, outputs
    from .checkpoint import load_model
    from .cli import _predict_options, _sentence, done_line, run_options
    from .inference import predict

    given = [o for o, v in (("--min-size", args.min_size), ("--fill-holes", args.fill_holes)) if v]
    if given:
        raise InputError(
            f"{' and '.join(given)} cannot be used with zarr output: removing small components and "
            "filling holes follow components across the whole label volume, and a store is written "
            f"block by block; leave {'them' if len(given) > 1 else 'it'} out, or write NIfTI files "
            "(--format .nii.gz, a folder as -o) for scans that fit in memory."
        )
    single = str(args.output).rstrip("/").endswith(".zarr")
    if single and len(args.scans) != 1:
        raise InputError(f"-o {args.output} is one store; give one scan, or a folder with --format zarr.")
    outdir = outputs.check_folder(Path(args.output).parent if single else args.output, "-o/--output")
    model = load_model(args.checkpoint)
    options = _predict_options(args, model.spec)
    names = outputs.unique_names(args.scans, io._stem)
    failures = 0
    client, owned = None, False
    if getattr(args, "scheduler", None):
        from .inference.cluster import connect

        client, owned = connect(args.scheduler), True
    try:
        for scan, name in zip(args.scans, names, strict=True):
            try:
                target = Path(args.output) if single else outdir / f"{name}.zarr"
                if target.exists() and args.overwrite:
                    shutil.rmtree(target)
                elif target.exists() and not single:  # a store appears whole: it finished
                    if not args.quiet:
                        print(f"{name}: {target} already done, skipped")
                    _merge_rows(outdir, scan, name, target)
                    continue
                volume = io.read(scan)
                with tqdm(total=1, desc=name, unit="block", leave=False, disable=args.quiet) as bar:

                    def progress(done, total):
                        bar.total, bar.n = total, done
                        bar.refresh()

                    pred = predict(
                        volume,
                        model,
                        progress=progress,
                        out=target,
                        scheduler=client,
                        thresholds=args.thresholds,
                        **run_options(args, options, scan),
                    )
                for note in volume.notes:
                    print(note, file=sys.stderr)
                if not single:  # -o result.zarr names a store, not a folder to add a table to
                    _merge_rows(outdir, scan, name, target)
                if not args.quiet:
                    print(done_line(name, pred.shape, pred, target))
            except (ValueError, OSError) as exc:
                failures += 1
                print(f"napari-attunet predict: {_sentence(exc)}", file=sys.stderr)
    finally:
        if owned:
            from .inference.cluster import close

            close(client)
    return 1 if failures else 0


def _merge_rows(outdir: Path, scan: str, name: str, target: Path) -> None:
    """Merge a finished store's volumes (from the label counts it records) into volumes.csv."""
    import numpy as np
    import zarr

    from . import outputs

    root = zarr.open_group(str(target), mode="r")
    meta = root.attrs["attunet"]
    labels = list(meta["class_names"])
    labels = (["background"] + labels) if meta["output"] == "sigmoid" else labels
    counts = meta["label_voxels"]
    transforms = root["labels/attunet"].attrs["multiscales"][0]["datasets"][0]
    spacing = transforms["coordinateTransformations"][0]["scale"]
    voxel = float(np.prod(spacing)) / 1000.0
    path = str(Path(scan).expanduser().absolute())
    outputs.merge_volumes(
        outdir / "volumes.csv",
        [
            [name, label, f"{(counts[k] if k < len(counts) else 0) * voxel:.3f}", path]
            for k, label in enumerate(labels)
            if k > 0
        ],
    )
