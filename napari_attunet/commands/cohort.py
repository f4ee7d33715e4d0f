"""``napari-attunet predict`` on Dask: many scans spread over workers, and OME-Zarr outputs.

Each scan is one Dask task that runs the sequential command (``predict.run``) on that scan
alone, with the output name the whole command would give it: its files appear together
(``outputs.staged``) and its rows are merged into ``volumes.csv`` under a lock, as in the
sequential command. Each worker process loads the checkpoint once. The error lines and the
exit code are those of the sequential command.

A scan is done when its files all exist *and* its rows are in ``volumes.csv``; a re-run skips
it (``--overwrite`` runs it again). Files without rows are what a process killed between the
two left (or a second cohort writing the same scans): their rows are counted from the labels
file, by a re-run, by Dask's retry of the task, or by the task that lost the race, instead of
predicting again. Staging folders of processes that no longer run are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError

_MODELS: dict = {}


def wanted(args: argparse.Namespace) -> bool:
    """Whether ``predict`` runs as a cohort: on a Dask scheduler, or into OME-Zarr stores (which
    take neither --structures nor --reference: those need file outputs)."""
    zarr = args.format == "zarr" or str(args.output).rstrip("/").endswith(".zarr")
    if not (getattr(args, "scheduler", None) or zarr):
        return False
    given = [o for o in ("structures", "reference") if getattr(args, o, None)]
    if zarr and given:
        raise InputError(f"--{given[0]} needs file outputs (--format .nii.gz and a folder as -o), not zarr.")
    return True


def run(args: argparse.Namespace) -> int:
    """The predict command when ``--scheduler`` or a zarr output is asked for."""
    if _to_store(args):
        return _predict_stores(args)
    return _predict_cohort(args)


def _to_store(args) -> bool:
    return args.format == "zarr" or str(args.output).rstrip("/").endswith(".zarr")


def _cached_model(checkpoint: str):
    """One model per worker process (and per checkpoint file version)."""
    from ..models.checkpoint import load_model

    stat = os.stat(checkpoint)
    key = (os.path.abspath(checkpoint), stat.st_mtime_ns, stat.st_size)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(checkpoint)
    return _MODELS[key]


def scan_task(scan: str, name: str, options: dict) -> tuple[int, str, str]:
    """Run the sequential command on one scan: (exit code, stderr, stdout). Files already all
    there (an earlier try of this task, killed after it wrote them; or another cohort) are
    finished by adding their rows, not predicted again."""
    from ..scans import outputs
    from .predict import run as predict_scans

    args = argparse.Namespace(**options)
    args.scans, args.names, args.quiet, args.scheduler = [scan], [name], True, None
    outdir = Path(args.output)
    err, out = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            outputs.sweep_stale(outdir)
            args.model = _cached_model(args.checkpoint)
            if not args.overwrite and _files_there(outdir, name, args.model.spec, args):
                _add_rows(outdir, scan, name, args.model.spec, args)
                return 0, "", f"{name}: its files were written by an earlier try; rows added\n"
            code = predict_scans(args)
            if code and not args.overwrite and _files_there(outdir, name, args.model.spec, args):
                _add_rows(outdir, scan, name, args.model.spec, args)  # another run wrote them meanwhile
                return 0, "", f"{name}: written by another run meanwhile; rows checked\n"
        except (ValueError, OSError) as exc:
            print(f"napari-attunet predict: {exc}", file=sys.stderr)
            code = 1
    return code, err.getvalue(), out.getvalue()


def _done(outdir: Path, scan: str, name: str, spec, args) -> bool:
    """A scan is done when its files all exist and its rows are in the table."""
    return _files_there(outdir, name, spec, args) and str(Path(scan).absolute()) in tabled(outdir)


def _files_there(outdir: Path, name: str, spec, args) -> bool:
    from .predict import output_names

    return all((outdir / f).exists() for f in output_names(name, spec, args))


def _add_rows(outdir: Path, scan: str, name: str, spec, args) -> None:
    """Merge a scan's rows into volumes.csv, counted from its labels file (as ``predict.run``
    counts them from the labels it wrote)."""
    from ..inference.postprocess import class_volumes
    from ..scans import io, outputs

    labels = io.read(outdir / f"{name}_labels{args.format}")
    names = (("background",) if spec.output == "sigmoid" else ()) + tuple(spec.class_labels)
    path = str(Path(scan).expanduser().absolute())
    volumes = class_volumes(np.asarray(labels.array).astype(np.int64), labels.spacing, names)
    outputs.merge_volumes(
        outdir / "volumes.csv", [(name, cname, f"{ml:.3f}", path) for cname, ml in volumes.items()]
    )


def tabled(outdir: Path) -> set[str]:
    """The input paths that have rows in ``outdir/volumes.csv``."""
    import csv

    try:
        with open(outdir / "volumes.csv", newline="") as fh:
            table = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    if not table or "path" not in table[0]:
        return set()
    column = table[0].index("path")
    return {row[column] for row in table[1:] if len(row) > column}


def _predict_cohort(args) -> int:
    from distributed import as_completed
    from tqdm import tqdm

    from ..inference.cluster import close, connect
    from ..models.checkpoint import load_model
    from ..scans import io, outputs
    from .common import sentence
    from .predict import output_names

    spec = load_model(args.checkpoint).spec
    outdir = outputs.check_folder(args.output, "-o/--output")
    outputs.sweep_stale(outdir)
    scans = [os.path.abspath(s) for s in args.scans]
    names = outputs.unique_names(args.scans, io.stem)
    pending = []
    failures = 0
    for scan, name in zip(scans, names, strict=True):
        if args.overwrite or not all((outdir / f).exists() for f in output_names(name, spec, args)):
            pending.append((scan, name))
        elif str(Path(scan).absolute()) not in tabled(outdir):  # files without rows: add them
            try:
                _add_rows(outdir, scan, name, spec, args)
            except (ValueError, OSError) as exc:
                failures += 1
                print(
                    f"napari-attunet predict: {scan}: its files are in {outdir} but its rows are not "
                    f"in volumes.csv, and they could not be counted ({sentence(exc)}); pass "
                    "--overwrite to predict it again.",
                    file=sys.stderr,
                )
    options = {k: v for k, v in vars(args).items() if k not in ("func", "model", "names")}
    options["output"] = str(outdir.resolve())
    bar = tqdm(total=len(scans), initial=len(scans) - len(pending), unit="scan", disable=args.quiet)
    if len(scans) > len(pending) and not args.quiet:
        tqdm.write(f"{len(scans) - len(pending)} scan(s) already done in {outdir}: skipped")
    _quiet_dask()
    client = connect(args.scheduler) if pending else None
    try:
        futures = {client.submit(scan_task, scan, name, options, pure=False): scan for scan, name in pending}
        for future in as_completed(list(futures)) if futures else ():
            try:
                code, err, out = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost: one line, the rest go on
                if _scheduler_gone(client, exc):
                    done = sum(_done(outdir, scan, name, spec, args) for scan, name in pending)
                    raise _Gone(done, len(pending) - done) from None
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
    except KeyboardInterrupt:
        done = sum(_done(outdir, scan, name, spec, args) for scan, name in pending)
        tqdm.write(
            f"napari-attunet predict: interrupted; {done} scan(s) of this run finished and are kept "
            f"in {outdir}, the others were not written; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except _Gone as gone:
        tqdm.write(
            f"napari-attunet predict: the Dask scheduler at {args.scheduler} went away; {gone.done} "
            f"scan(s) finished and are kept in {outdir}, {gone.left} did not finish; run the same "
            "command again to resume.",
            file=sys.stderr,
        )
        failures += 1
    finally:
        bar.close()
        if client is not None:
            with contextlib.suppress(Exception):  # a scheduler that went away has nothing to close
                if client.status == "running":
                    close(client)
                else:
                    client.close(timeout=2)
        outputs.sweep_stale(outdir)  # what a killed worker left
    if getattr(args, "reference", None) and not args.quiet:
        from .predict import print_reference_summary

        print_reference_summary(outdir / "volumes.csv", args.scans)
    return 1 if failures else 0


def _quiet_dask() -> None:
    """Dask's own logging off: a lost scheduler or worker is said in one line by this run
    (distributed would print tracebacks while it tries to reconnect)."""
    import logging

    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _Gone(Exception):
    def __init__(self, done: int, left: int):
        super().__init__(done, left)
        self.done, self.left = done, left


def _scheduler_gone(client, exc: BaseException) -> bool:
    """Whether the client lost its scheduler: it cancels every future then (this run cancels
    none itself)."""
    lost = isinstance(exc, OSError) or "Cancelled" in type(exc).__name__  # CommClosedError is an OSError
    return lost or client.status not in ("running", "newly-created")


def _predict_stores(args) -> int:
    """Each scan into an OME-Zarr store, block by block (on ``--scheduler`` when given)."""

    from tqdm import tqdm

    from ..inference import iter_predict
    from ..inference.local import drive
    from ..models.checkpoint import load_model
    from ..scans import io, outputs
    from .common import sentence
    from .predict import done_line, predict_options, run_options

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
    outputs.sweep_stale(outdir)
    model = load_model(args.checkpoint)
    options = predict_options(args, model.spec)
    names = outputs.unique_names(args.scans, io.stem)
    failures = 0
    client, owned = None, False
    if getattr(args, "scheduler", None):
        from ..inference.cluster import connect

        client, owned = connect(args.scheduler), True
    try:
        for scan, name in zip(args.scans, names, strict=True):
            target = Path(args.output) if single else outdir / f"{name}.zarr"
            before = _identity(target)
            try:
                if before is not None and not args.overwrite and not single:
                    _check_ours(target)
                    if not args.quiet:
                        print(f"{name}: {target} already done, skipped")
                    _merge_rows(outdir, scan, name, target)
                    continue
                volume = io.read(scan)  # a store there is replaced only once the new one is whole
                with tqdm(total=1, desc=name, unit="block", leave=False, disable=args.quiet) as bar:

                    def progress(done, total):
                        bar.total, bar.n = total, done
                        bar.refresh()

                    run = run_options(args, options, scan).replace(
                        out=target, overwrite=args.overwrite, scheduler=client, thresholds=args.thresholds
                    )
                    pred = drive(iter_predict(volume, model, run), progress)
                for note in volume.notes:
                    print(note, file=sys.stderr)
                if not single:  # -o result.zarr names a store, not a folder to add a table to
                    _merge_rows(outdir, scan, name, target)
                if not args.quiet:
                    print(done_line(name, pred.shape, pred, target))
            except (ValueError, OSError) as exc:
                failures += 1
                print(f"napari-attunet predict: {sentence(exc)}", file=sys.stderr)
            except KeyboardInterrupt:
                written = _identity(target) not in (None, before)
                what = (
                    f"{target} was written before the interrupt and is kept"
                    if written
                    else (
                        f"nothing was written to {target}"
                        + (" (it is as it was)" if before is not None else "")
                    )
                )
                print(f"napari-attunet predict: interrupted; {what}.", file=sys.stderr)
                return 130
    finally:
        if owned:
            from ..inference.cluster import close

            close(client)
    return 1 if failures else 0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _check_ours(target: Path) -> None:
    """A finished result store of this tool at ``target``, or an OutputError naming what is in
    the way (it is left as it is)."""
    from ..scans.outputs import OutputError

    what = None
    if not target.is_dir():
        what = "a file, not a result store"
    else:
        import zarr

        try:
            root = zarr.open_group(str(target), mode="r")
            meta = dict(root.attrs.get("attunet") or {})
            ours = "label_voxels" in meta and "class_names" in meta and "labels/attunet" in root
        except Exception:  # noqa: BLE001 - whatever it holds, it is not ours
            what = "not a zarr store"
        else:
            what = None if ours else "a zarr store that napari-attunet did not write"
    if what is not None:
        raise OutputError(
            f"{target} is in the way: it is {what}, and was left as it is; move it away, pass "
            "--overwrite to replace it, or choose another output folder."
        )


def _merge_rows(outdir: Path, scan: str, name: str, target: Path) -> None:
    """Merge a finished store's volumes (from the label counts it records) into volumes.csv."""
    import numpy as np
    import zarr

    from ..scans import outputs

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
