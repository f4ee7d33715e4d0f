"""OME-Zarr stores at shapes that are not round (prime axis lengths): time against the in-memory
run, file count, size and chunks.

    python bench/bench_store_shapes.py api [--shapes 61x131x97 189x233x197] [--blocks auto 64]
    python bench/bench_store_shapes.py mni [--scan PATH] [--checkpoint PATH] [--repeats 3]

``api``: a float32 volume of smooth noise per shape in a zarr store on disk; in one process,
alternating, the in-memory ``predict`` (the store read into numpy first, as part of its time) and
the same call with ``out=`` a store (read lazily, written block by block), each ``--repeats``
times after one untimed warm-up; the best of each is kept. ``--blocks``: ``auto`` (the plan's) or
a block length forced with ``block=``. Random official 3D network (features 4..64 unless
``--features``), tile 32, overlap 0.25, fp32, the default runtime.

``mni``: the command line on the MNI152 1 mm template (nilearn's copy, 197 x 233 x 189, unless
``--scan``) with the bundled demo checkpoint: ``predict SCAN -c CKPT -o DIR`` (NIfTI labels)
against ``-o out.zarr`` (the store: probabilities, labels, uncertainty), alternating, each a fresh
process, wall time of the whole command. Printed: time, ratio, file count and size.

Figures, not pass/fail: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, interleaved, machine, official_network  # noqa: E402 - puts the checkout first


def files_and_bytes(path: Path) -> tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    count = size = 0
    for folder, _, files in os.walk(path):
        count += len(files)
        size += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return count, size


def chunks_of(path: Path) -> list[str]:
    import zarr

    lines = []

    def walk(group, prefix: str) -> None:
        for key, member in sorted(group.members(), key=lambda m: m[0]):
            if isinstance(member, zarr.Array):
                lines.append(f"    {prefix + key:<22} shape {member.shape}  chunks {member.chunks}")
            else:
                walk(member, prefix + key + "/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return lines


def write_volume(path: Path, shape) -> None:
    import zarr
    from scipy import ndimage

    rng = np.random.default_rng(sum(shape))
    image = ndimage.gaussian_filter(rng.standard_normal(size=shape, dtype=np.float32), 2.0) * 4000
    array = zarr.create_array(str(path), shape=shape, chunks=(64, 64, 64), dtype="float32")
    array[:] = image.astype(np.float32)


def bench_api(args) -> None:
    import zarr

    import napari_attunet as na
    from napari_attunet.inference.blockwise import plan

    model = official_network(args.features)
    options = dict(tile=args.tile, overlap=args.overlap, normalization="zscore", precision="fp32")
    root = Path(tempfile.mkdtemp(prefix="bench-store-shapes-", dir=args.workdir))
    print(machine())
    print(f"network features {tuple(args.features)}, tile {args.tile}, overlap {args.overlap}, fp32")
    try:
        for text in args.shapes:
            shape = tuple(int(n) for n in text.split("x"))
            source = root / "scan.zarr"
            write_volume(source, shape)
            array = zarr.open_array(str(source), mode="r")
            for block_arg in args.blocks:
                block = None if block_arg == "auto" else int(block_arg)
                work = plan(shape, model, tile=args.tile, overlap=args.overlap, block=block, store=True)
                out = root / "out.zarr"

                def memory():
                    return na.predict(array[:], model, **options).labels()

                def stored():
                    shutil.rmtree(out, ignore_errors=True)
                    na.predict(array, model, out=out, block=block, **options)

                memory()  # warm-up: compiled networks, caches
                stored()
                times, results = interleaved({"memory": memory, "store": stored}, args.repeats)
                best = {name: min(seconds) for name, seconds in times.items()}
                reference = results["memory"]
                same = np.array_equal(zarr.open_array(str(out / "labels" / "attunet" / "0"))[:], reference)
                count, size = files_and_bytes(out)
                print(
                    f"{text} block {block_arg} ({len(work.blocks)} blocks of {work.block}): "
                    f"memory {best['memory']:.2f} s, store {best['store']:.2f} s, "
                    f"store/memory x{best['store'] / best['memory']:.2f} (best of {args.repeats}); "
                    f"{count} files, {size / 1e6:.2f} MB; labels equal: {same}",
                    flush=True,
                )
                print("\n".join(chunks_of(out)), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mni_scan() -> Path:
    import nilearn

    return (
        Path(nilearn.__file__).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )


def bench_mni(args) -> None:
    scan = Path(args.scan) if args.scan else mni_scan()
    checkpoint = Path(args.checkpoint)
    root = Path(tempfile.mkdtemp(prefix="bench-store-mni-", dir=args.workdir))
    import nibabel

    print(machine())
    print(f"scan {scan.name} {nibabel.load(str(scan)).shape}, checkpoint {checkpoint.name}")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outputs = {"nifti": root / "nifti", "zarr": root / "out.zarr"}
    times: dict[str, list[float]] = {k: [] for k in outputs}
    try:
        for _ in range(args.repeats):
            for kind, out in outputs.items():
                shutil.rmtree(out, ignore_errors=True)
                command = [sys.executable, "-m", "napari_attunet.cli", "predict", str(scan)]
                command += ["-c", str(checkpoint), "-o", str(out), "-q"]
                started = time.perf_counter()
                subprocess.run(command, check=True, env=env)
                times[kind].append(time.perf_counter() - started)
                print(f"  {kind}: {times[kind][-1]:.1f} s", flush=True)
        for kind, out in outputs.items():
            count, size = files_and_bytes(out)
            print(
                f"{kind:>6}: best {min(times[kind]):.1f} s, median {np.median(times[kind]):.1f} s; "
                f"{count} files, {size / 1e6:.2f} MB",
                flush=True,
            )
        ratio = min(times["zarr"]) / min(times["nifti"])
        print(f"store/NIfTI: x{ratio:.2f} (best of {args.repeats})")
        print("\n".join(chunks_of(outputs["zarr"])))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api")
    api.add_argument("--shapes", nargs="+", default=["61x131x97", "189x233x197"])
    api.add_argument("--blocks", nargs="+", default=["auto", "64"])
    api.add_argument("--features", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    api.add_argument("--tile", type=int, default=32)
    api.add_argument("--overlap", type=float, default=0.25)
    api.add_argument("--repeats", type=int, default=3)
    api.add_argument("--workdir", default=None)
    mni = sub.add_parser("mni")
    mni.add_argument("--scan", default=None, help="default: nilearn's MNI152 1 mm T1 template")
    mni.add_argument(
        "--checkpoint", default=str(ROOT / "napari_attunet" / "data" / "demo_mni152_gmwm.safetensors")
    )
    mni.add_argument("--repeats", type=int, default=3)
    mni.add_argument("--workdir", default=None)
    args = parser.parse_args()
    (bench_api if args.command == "api" else bench_mni)(args)


if __name__ == "__main__":
    main()
