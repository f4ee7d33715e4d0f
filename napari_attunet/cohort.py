"""``napari-attunet predict`` on Dask: many scans spread over workers, and OME-Zarr outputs.

Each scan is one Dask task that runs the sequential command (``cli._predict``) on that scan
alone, into a private folder; its files are then moved into the output folder (``os.replace``,
atomic) and a record of them is kept in ``OUTDIR/.attunet-done/``, so a rerun skips the scans
that finished. Each worker process loads the checkpoint once. The error lines and the exit code
are those of the sequential command.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io as _io
import json
import os
import shutil
import sys
from pathlib import Path

from .errors import InputError

DONE = ".attunet-done"
WORK = ".attunet-work"
_MODELS: dict = {}


def run(args: argparse.Namespace) -> int:
    """The predict command when ``--scheduler`` or a zarr output is asked for."""
    if _to_store(args):
        return _predict_stores(args)
    return _predict_cohort(args)


def _to_store(args) -> bool:
    return args.format == "zarr" or str(args.output).rstrip("/").endswith(".zarr")


def _key(scan: str) -> str:
    return hashlib.sha1(os.path.abspath(scan).encode()).hexdigest()[:16]


def _finished(outdir: Path, scan: str) -> dict | None:
    """The record of a scan that finished, if all its files are still there."""
    record = outdir / DONE / f"{_key(scan)}.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if data.get("scan") != os.path.abspath(scan):
        return None
    return data if all((outdir / f).exists() for f in data["files"]) else None


def _cached_model(checkpoint: str):
    """One model per worker process (and per checkpoint file version)."""
    from .checkpoint import load_model

    stat = os.stat(checkpoint)
    key = (os.path.abspath(checkpoint), stat.st_mtime_ns, stat.st_size)
    if key not in _MODELS:
        _MODELS[key] = load_model(checkpoint)
    return _MODELS[key]


def scan_task(scan: str, options: dict, workdir: str) -> tuple[int, str, str]:
    """Run the sequential command on one scan into ``workdir``: (exit code, stderr, stdout)."""
    from .cli import _predict

    args = argparse.Namespace(**options)
    args.scans, args.output, args.quiet, args.scheduler = [scan], workdir, True, None
    err, out = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            args.model = _cached_model(args.checkpoint)
            code = _predict(args)
        except (ValueError, OSError) as exc:
            print(f"napari-attunet predict: {exc}", file=sys.stderr)
            code = 1
    return code, err.getvalue(), out.getvalue()


def _collect(outdir: Path, scan: str, workdir: Path) -> list[list[str]]:
    """Move a finished scan's files into ``outdir`` and record them; returns its volume rows."""
    rows: list[list[str]] = []
    table = workdir / "volumes.csv"
    if table.exists():
        with open(table, newline="") as fh:
            rows = [r for r in csv.reader(fh)][1:]
        table.unlink()
    files = sorted(p.name for p in workdir.iterdir())
    for name in files:
        target = outdir / name
        if target.exists() and not _owned(outdir, scan, name):
            raise InputError(f"{scan}: {target} already exists (another scan with the same "
                             "name?); it was left as it was.")
    for name in files:
        os.replace(workdir / name, outdir / name)
    record = outdir / DONE / f"{_key(scan)}.json"
    record.parent.mkdir(exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"scan": os.path.abspath(scan), "files": files, "rows": rows}))
    os.replace(tmp, record)
    return rows


def _owned(outdir: Path, scan: str, name: str) -> bool:
    record = outdir / DONE / f"{_key(scan)}.json"
    try:
        return name in json.loads(record.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False


def _write_table(outdir: Path, rows: list[list[str]]) -> None:
    if not rows:
        return
    tmp = outdir / ".volumes.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scan", "class", "volume_ml"])
        writer.writerows(rows)
    os.replace(tmp, outdir / "volumes.csv")


def _predict_cohort(args) -> int:
    from distributed import as_completed
    from tqdm import tqdm

    from .inference.cluster import close, connect

    outdir = Path(args.output).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    scans = [os.path.abspath(s) for s in args.scans]
    rows: dict[str, list] = {}
    pending = []
    for scan in scans:
        record = _finished(outdir, scan)
        if record is not None:
            rows[scan] = record["rows"]
        else:
            pending.append(scan)
    options = {k: v for k, v in vars(args).items() if k not in ("func", "model")}
    failures = 0
    bar = tqdm(total=len(scans), initial=len(scans) - len(pending), unit="scan",
               disable=args.quiet)
    if len(scans) > len(pending) and not args.quiet:
        tqdm.write(f"{len(scans) - len(pending)} scan(s) already done in {outdir}: skipped")
    client = connect(args.scheduler) if pending else None
    try:
        work = outdir / WORK
        futures = {}
        for i, scan in enumerate(pending):
            folder = work / f"{i}-{_key(scan)}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            future = client.submit(scan_task, scan, options, str(folder), pure=False)
            futures[future] = (scan, folder)
        for future in as_completed(list(futures)) if futures else ():
            scan, folder = futures[future]
            try:
                code, err, out = future.result()
                for line in err.splitlines():
                    tqdm.write(line, file=sys.stderr)
                if code == 0:
                    rows[scan] = _collect(outdir, scan, folder)
                    if not args.quiet:
                        for line in out.splitlines():
                            tqdm.write(line)
                else:
                    failures += 1
            except (ValueError, OSError) as exc:
                failures += 1
                tqdm.write(f"napari-attunet predict: {exc}", file=sys.stderr)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            bar.update(1)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        bar.close()
        if client is not None:
            close(client)
    _write_table(outdir, [r for scan in scans for r in rows.get(scan, [])])
    return 1 if failures else 0


def _predict_stores(args) -> int:
    """Each scan into an OME-Zarr store, block by block (on ``--scheduler`` when given)."""
    from tqdm import tqdm

    from . import io
    from .checkpoint import load_model
    from .cli import _parse_normalization
    from .inference import predict

    if args.min_size or args.fill_holes:
        raise InputError("--min-size and --fill-holes need the whole volume in memory; they "
                         "are not available with zarr output.")
    single = str(args.output).rstrip("/").endswith(".zarr")
    if single and len(args.scans) != 1:
        raise InputError(f"-o {args.output} is one store; give one scan, or a folder with "
                         "--format zarr.")
    outdir = Path(args.output).parent if single else Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    model = load_model(args.checkpoint)
    rows, failures = [], 0
    client, owned = None, False
    if getattr(args, "scheduler", None):
        from .inference.cluster import connect

        client, owned = connect(args.scheduler), True
    try:
        for scan in args.scans:
            try:
                volume = io.read(scan)
                for note in volume.notes:
                    print(note, file=sys.stderr)
                target = Path(args.output) if single else outdir / f"{volume.name}.zarr"
                if target.exists() and not single:  # stores appear whole: this one finished
                    if not args.quiet:
                        print(f"{volume.name}: {target} already done, skipped")
                    rows += _store_rows(volume, target)
                    continue
                with tqdm(total=1, desc=volume.name, unit="block", leave=False,
                          disable=args.quiet) as bar:
                    def progress(done, total):
                        bar.total, bar.n = total, done
                        bar.refresh()

                    pred = predict(volume, model, orientation=args.orientation,
                                   normalization=_parse_normalization(args.normalization),
                                   tile=args.tile, overlap=args.overlap, device=args.device,
                                   precision=args.precision, tta=args.tta, progress=progress,
                                   name=str(scan), attention=args.attention, out=target,
                                   scheduler=client, thresholds=args.thresholds)
                rows += _store_rows(volume, target)
                if not args.quiet:
                    print(f"{volume.name}: {pred.shape} in {pred.seconds:.1f} s on {pred.device} "
                          f"({pred.precision}) -> {target}")
            except (ValueError, OSError) as exc:
                failures += 1
                print(f"napari-attunet predict: {exc}", file=sys.stderr)
    finally:
        if owned:
            from .inference.cluster import close

            close(client)
    if not single:
        _write_table(outdir, rows)
    return 1 if failures else 0


def _store_rows(volume, target: Path) -> list[list[str]]:
    """volumes.csv rows from the label counts a finished store records."""
    import numpy as np
    import zarr

    meta = zarr.open_group(str(target), mode="r").attrs["attunet"]
    names = list(meta["class_names"])
    names = (["background"] + names) if meta["output"] == "sigmoid" else names
    counts = meta["label_voxels"]
    voxel = float(np.prod(volume.spacing)) / 1000.0
    return [[volume.name, name, f"{(counts[k] if k < len(counts) else 0) * voxel:.3f}"]
            for k, name in enumerate(names) if k > 0]
