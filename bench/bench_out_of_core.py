"""Out-of-core prediction and cohorts on Dask: peak memory against volume size, throughput against
the in-memory engine, and cohort throughput on a LocalCluster against the sequential command.

    python bench/bench_out_of_core.py rss [--sizes 256 512] [--memory-sizes 256] [--repeats 3]
    python bench/bench_out_of_core.py rss --shape 1536 2048 2048 --features 2 4 8 8 8 --tile 128
    python bench/bench_out_of_core.py cohort [--scans 20] [--workers 1 2]

``rss``: every run is a fresh process (peak RSS = VmHWM of that process). A uint16 volume of
smooth noise is written to a zarr store on disk chunk by chunk; ``store`` runs read it lazily and
write an OME-Zarr result; ``memory`` runs hold it as numpy and call the in-memory ``predict``
(reading the store into memory is part of its time). With ``--repeats`` the two alternate and
the best of each is kept (the machine is shared). Each store run prints its windows against one
in-memory run's (blocks rerun the windows of their halos). Same random network (official
single_att_dsv 3D, features 4..64 unless ``--features``), tile 128, fp32. ``--shape`` runs one
volume of that shape (store only), logging blocks done and the peak RSS so far to stderr.
``cohort``: 20 small NIfTI scans; the sequential ``napari-attunet predict`` (in process) against
``--scheduler local:N``. Figures, not pass/fail: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, official_network  # noqa: E402 - puts the checkout first

FEATURES = (4, 8, 16, 32, 64)


def write_volume(path: Path, shape, chunk: int = 128) -> None:
    """Smooth uint16 noise, written one chunk slab at a time (never whole in memory). Volumes of
    more than 2^30 voxels get a coarser, cheaper texture: noise smoothed on a grid 8 times
    coarser, each of its voxels repeated 8 x 8 x 8 times."""
    import zarr
    from scipy import ndimage

    shape = tuple(shape)
    array = zarr.create_array(str(path), shape=shape, chunks=(chunk,) * 3, dtype="uint16")
    rng = np.random.default_rng(shape[0])
    coarse = None
    if np.prod(shape) > 2**30:
        coarse = ndimage.gaussian_filter(
            rng.standard_normal(size=tuple(-(-n // 8) for n in shape), dtype=np.float32), 1.5
        )
        coarse *= 1.0 / max(float(coarse.std()), 1e-6)
    for z in range(0, shape[0], chunk):
        depth = min(chunk, shape[0] - z)
        if coarse is None:
            noise = rng.standard_normal(size=(depth,) + shape[1:], dtype=np.float32)
            slab = ndimage.gaussian_filter(noise, 3, output=noise) * 8000
        else:
            part = coarse[z // 8 : -(-(z + depth) // 8)]
            slab = part.repeat(8, 0).repeat(8, 1).repeat(8, 2)[:depth, : shape[1], : shape[2]] * 1000
        array[z : z + chunk] = np.clip(slab + 2000, 0, 65535).astype(np.uint16)


def peak_rss() -> int:
    """This process's own peak resident memory in bytes (VmHWM). Not ru_maxrss: Linux carries
    that over from the forked parent, so a child started by a bench that has just written a
    large volume would report the parent's memory."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, source: str, out: str, options: str) -> None:
    """One run in this (fresh) process; prints a JSON line (and blocks done to stderr)."""
    import zarr

    import napari_attunet as na

    options = json.loads(options)
    model = official_network(options.pop("features"))
    array = zarr.open_array(source, mode="r")
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rss = peak_rss() / 1024**3
        print(
            f"[{time.strftime('%H:%M:%S')}] {done}/{total} blocks, {time.perf_counter() - started:.0f} s,"
            f" peak RSS so far {rss:.2f} GB",
            file=sys.stderr,
            flush=True,
        )

    common = dict(normalization="zscore", precision="fp32", device="cpu", **options)
    if mode == "memory":
        image = array[:]
        pred = na.predict(image, model, **common)
        pred.labels()
    else:
        pred = na.predict(array, model, out=out, progress=progress, **common)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = peak_rss()
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(
        json.dumps(
            {
                "mode": mode,
                "voxels": int(np.prod(array.shape)),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_bytes": peak,
                "notes": pred.notes,
                "runtime": pred.runtime,
            }
        )
    )


def run_child(mode: str, source: Path, out: Path, options: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "_child", mode, str(source), str(out), json.dumps(options)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="attunet-ooc-", dir=args.workdir))
    options = {"features": args.features, "tile": args.tile, "overlap": args.overlap}
    print(f"{machine()}; torch threads default; results in fresh processes")
    print(f"network features {tuple(args.features)}, tile {args.tile}, overlap {args.overlap}, fp32")
    print(f"{'size':>16} {'mode':>7} {'voxels/s':>12} {'seconds':>9} {'CPU s':>8} {'peak RSS':>10}")
    shapes = [tuple(args.shape)] if args.shape else [(n,) * 3 for n in args.sizes]
    try:
        for shape in shapes:
            label = "x".join(str(n) for n in shape)
            source = root / f"vol{label}.zarr"
            started = time.perf_counter()
            write_volume(source, shape)
            print(f"{label}: volume written in {time.perf_counter() - started:.0f} s", flush=True)
            modes = (["memory"] if shape[0] in args.memory_sizes and not args.shape else []) + ["store"]
            best: dict = {}
            for _ in range(args.repeats):
                for mode in modes:
                    r = run_child(mode, source, root / f"out{label}.zarr", options)
                    print(
                        f"{label:>16} {mode:>7} {r['voxels'] / r['seconds']:>12,.0f} "
                        f"{r['seconds']:>9.1f} {r['cpu_seconds']:>8.1f} {r['peak_bytes'] / 1024**3:>8.2f} GB"
                        f"  {r['runtime']}  {'; '.join(r['notes'][:1])}",
                        flush=True,
                    )
                    for key in ("seconds", "cpu_seconds"):
                        if r[key] < best.setdefault((mode, key), r)[key]:
                            best[mode, key] = r
            if len(best) == 4:
                wall = best["store", "seconds"]["seconds"] / best["memory", "seconds"]["seconds"]
                cpu = (
                    best["store", "cpu_seconds"]["cpu_seconds"] / best["memory", "cpu_seconds"]["cpu_seconds"]
                )
                print(
                    f"  best of {args.repeats}: store/memory at {label}: "
                    f"wall time x{wall:.3f}, CPU time x{cpu:.3f}",
                    flush=True,
                )
            shutil.rmtree(source, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_cohort(args) -> None:
    import SimpleITK as sitk

    import napari_attunet as na
    from napari_attunet.cli import main
    from napari_attunet.phantom import make_phantom

    root = Path(tempfile.mkdtemp(prefix="attunet-cohort-", dir=args.workdir))
    print(f"{machine()}; {args.scans} scans of {tuple(args.shape)}")
    try:
        ckpt = na.save_model(
            official_network(FEATURES), root / "net.safetensors", class_names=["background", "organ"]
        )
        scans = []
        for k in range(args.scans):
            image, _ = make_phantom(tuple(args.shape), seed=k)
            img = sitk.GetImageFromArray((image * 300 - 100).astype(np.int16))
            img.SetSpacing((1.0, 1.0, 2.0))
            path = root / f"scan{k:02d}.nii.gz"
            sitk.WriteImage(img, str(path))
            scans.append(str(path))
        common = ["-c", str(ckpt), "-q", "--precision", "fp32", "--device", "cpu"]
        runs = [("sequential", "seq", [])]
        runs += [(f"local:{n}", f"local{n}", ["--scheduler", f"local:{n}"]) for n in args.workers]
        runs += [
            ("rerun (all skipped)", f"local{args.workers[-1]}", ["--scheduler", f"local:{args.workers[-1]}"])
        ]
        base = None
        for name, folder, extra in runs:
            started = time.perf_counter()
            code = main(["predict", *scans, "-o", str(root / folder), *extra, *common])
            seconds = time.perf_counter() - started
            base = base or seconds
            print(
                f"{name:>20}: {seconds:7.1f} s  {args.scans / seconds:6.2f} scans/s  "
                f"x{base / seconds:.2f} vs sequential  (exit {code})",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    rss = sub.add_parser("rss")
    rss.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    rss.add_argument("--memory-sizes", type=int, nargs="*", default=[256])
    rss.add_argument("--shape", type=int, nargs=3, default=None, help="one volume of this shape (store only)")
    rss.add_argument("--repeats", type=int, default=1)
    rss.add_argument("--features", type=int, nargs="+", default=list(FEATURES))
    rss.add_argument("--tile", type=int, default=128)
    rss.add_argument("--overlap", type=float, default=0.5)
    rss.add_argument("--workdir", default=None)
    cohort = sub.add_parser("cohort")
    cohort.add_argument("--scans", type=int, default=20)
    cohort.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    cohort.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    cohort.add_argument("--workdir", default=None)
    args = parser.parse_args()
    (bench_rss if args.what == "rss" else bench_cohort)(args)


if __name__ == "__main__":
    main()
