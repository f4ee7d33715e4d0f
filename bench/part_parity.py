"""Parts of a run against the whole run: blocks (a dask input, several blocks) and a Preview
region, on scans at the network's spacing and at others, seen straight and flipped.

    python bench/part_parity.py [--shape 60 80 96] [--block 32]

Prints, per case, how far the parts' uint8 probabilities are from one in-memory run (in levels
of 1/255), how many labels differ and the largest gate-map difference. A random official 3D
network (features 4..64, trained at 2 x 1 x 1 mm, gates sharpened so they vary) and a smooth
random int16 volume; zscore normalization, tile 32, PyTorch fp32. Figures, not pass/fail
(tests/test_blockwise.py and tests/test_preview_parity.py hold the pass/fail checks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers import make_model, official_spec, sharpen_gates  # noqa: E402

import napari_attunet as na  # noqa: E402

CASES = {
    "network spacing, straight": dict(spacing=(2.0, 1.0, 1.0)),
    "resampled 1.3 x 0.7 x 1.1 mm": dict(spacing=(1.3, 0.7, 1.1)),
    "resampled x2 (4 x 2 x 2 mm)": dict(spacing=(4.0, 2.0, 2.0)),
    "resampled and flipped (RAS)": dict(
        spacing=(1.3, 0.7, 1.1), affine=np.diag([-1.3, 0.7, -1.1, 1.0]), orientation="RAS"
    ),
}


def compare(part, whole, index=None) -> str:
    index = (slice(None),) + (index or ())
    mine, theirs = np.asarray(part.quantized).astype(int), whole.quantized[index].astype(int)
    labels = int((part.labels() != whole.labels()[index[1:]]).sum())
    gates = []
    for a, b in zip(part.gates, whole.gates, strict=True):
        if a.data.size == 0:
            continue
        start = np.array([s.start or 0 for s in index[1:]] or [0] * (a.data.ndim - 1), dtype=float)
        first = np.round((start + np.asarray(a.offset) - np.asarray(b.offset)) / np.asarray(b.stride)).astype(
            int
        )
        cells = tuple(slice(f, f + n) for f, n in zip(first, a.data.shape[1:], strict=True))
        gates.append(float(np.abs(a.data - b.data[(slice(None),) + cells]).max()))
    return f"{np.abs(mine - theirs).max():4d} levels, {labels:6d} labels, gates {max(gates):.1e}"


def main() -> None:
    import dask.array as da
    from scipy import ndimage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(60, 80, 96))
    parser.add_argument("--block", type=int, default=32)
    args = parser.parse_args()
    spec = official_spec(3, features=(4, 8, 16, 32, 64), spacing=(2.0, 1.0, 1.0))
    model = sharpen_gates(make_model(spec, seed=3))
    rng = np.random.default_rng(7)
    image = (ndimage.gaussian_filter(rng.normal(size=tuple(args.shape)), 2.0) * 4000 + 300).astype(np.int16)
    z = args.shape[0] // 3
    region = (slice(z, z + 8), slice(5, args.shape[1] - 7), slice(3, args.shape[2] - 9))
    print(f"{'case':<30} {'blocks vs whole run':<42} preview vs whole run in its region")
    for name, case in CASES.items():
        options = dict(tile=32, normalization="zscore", runtime="torch", precision="fp32", **case)
        whole = na.predict(image, model, **options)
        blocks = na.predict(da.from_array(image, chunks=32), model, block=args.block, **options)
        preview = na.predict(image, model, region=region, **options)
        print(f"{name:<30} {compare(blocks, whole):<42} {compare(preview, whole, region)}", flush=True)


if __name__ == "__main__":
    main()
