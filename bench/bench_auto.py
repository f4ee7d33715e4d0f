"""``auto`` against PyTorch fp32 and OpenVINO fp32, quiet and with one busy-loop process beside
the run, interleaved, as ratios to PyTorch fp32 in the same condition.

    python bench/bench_auto.py [--tile 32] [--overlap 0.5] [--repeats 3]

The network is the bundled demo checkpoint (trained on MNI152 GM/WM, so labels are not
coin-flips) on the bundled 2 mm MNI152 scan. That scan is one 96x128x112 tile: too small for
``auto`` to measure (a run cheaper than measuring is not measured), so the bench runs it on
smaller tiles (``--tile``) to make a run ``auto`` measures; ``--tile 0`` runs the scan as it is.
First, in a fresh cache folder, one ``auto`` run that measures (its time against the second
``auto`` run, from the stored choice, is the probe's cost); then every configuration once to
warm up, then ``--repeats`` rounds, each quiet and then beside ``python -c "while True: pass"``
started by the bench, every configuration in turn. Prints the CPU, the load (``uptime``) before
and after, medians, ratios and per-class Dice against PyTorch fp32. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import napari_attunet as na  # noqa: E402
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_SCAN  # noqa: E402
from napari_attunet.inference import autochoice  # noqa: E402
from napari_attunet.scans import io  # noqa: E402


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_line() -> str:
    ident = autochoice.cpu_identity()
    try:
        import openvino

        ov = openvino.__version__.split("-")[0]
    except ImportError:
        ov = "not installed"
    return (
        f"CPU: {ident['cpu']}, {ident['cores']} cores, flags {' '.join(ident['flags'])}; torch "
        f"capability {ident['capability']}, fast bf16 {ident['fast_bf16']}, {ident['threads']} "
        f"threads; OpenVINO {ov}"
    )


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


class Busy:
    """``python -c "while True: pass"`` beside the runs in the block."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=32, help="0: the scan's own single tile")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    os.environ["NAPARI_ATTUNET_CACHE"] = tmp.name  # a first run as a new user's
    volume = io.read(DEMO_SCAN)
    tile = (args.tile,) * 3 if args.tile else None
    print(cpu_line())
    print(f"load average before: {load()}")
    print(f"scan {volume.array.shape} ({DEMO_SCAN.name}), tile {tile or 'the scan'}, overlap {args.overlap}")

    def run_with(**options):
        model = na.load_model(DEMO_CHECKPOINT)  # one each: each keeps its own compiled network

        def run():
            return na.predict(volume, model, tile=tile, overlap=args.overlap, **options)

        return run

    configs = {
        "PyTorch fp32": run_with(runtime="torch", precision="fp32"),
        "OpenVINO fp32 (LATENCY)": run_with(runtime="openvino", precision="fp32"),
        "auto": run_with(),
    }
    start = time.perf_counter()
    first = configs["auto"]()
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = configs["auto"]()
    second_s = time.perf_counter() - start
    print(f"\nauto, first run (converting, measuring): {first_s:.1f} s; second (stored): {second_s:.1f} s")
    for note in first.notes:
        print(f"  {note}")
    stored = [n for n in second.notes if n.startswith("auto chose")]
    print(f"  second run: {stored[0] if stored else 'no note'}")
    print_figures(Path(tmp.name) / "openvino")
    for fn in configs.values():  # warm-up
        fn()
    times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in configs for k in ("quiet", "busy")}
    outputs = {}
    for _ in range(args.repeats):
        for condition in ("quiet", "busy"):
            with Busy() if condition == "busy" else _Quiet():
                for name, fn in configs.items():
                    t = time.perf_counter()
                    outputs[name] = fn()
                    times[name, condition].append(time.perf_counter() - t)
    ref = outputs["PyTorch fp32"].labels()
    print(
        f"\n{'run':28s} {'quiet s':>8s} {'x torch':>8s} {'busy s':>8s} {'x torch':>8s}  runtime, precision; "
        "Dice vs PyTorch fp32 per class"
    )
    for name in configs:
        quiet = float(np.median(times[name, "quiet"]))
        busy = float(np.median(times[name, "busy"]))
        tq = float(np.median(times["PyTorch fp32", "quiet"]))
        tb = float(np.median(times["PyTorch fp32", "busy"]))
        out = outputs[name]
        labels = out.labels()
        scores = ", ".join(f"{dice(labels, ref, c):.5f}" for c in range(len(out.class_names)))
        print(
            f"{name:28s} {quiet:8.2f} {tq / quiet:7.2f}x {busy:8.2f} {tb / busy:7.2f}x  "
            f"{out.runtime}, {out.precision}; {scores}"
        )
    print(f"(median of {args.repeats} interleaved rounds; load average after: {load()})")
    tmp.cleanup()


def print_figures(folder: Path) -> None:
    """The probe's figures per candidate, from the stored choice (seconds per tile)."""
    import json

    for entry in sorted(folder.glob("auto-*/choice.json"))[:1]:
        for f in json.loads(entry.read_text())["figures"]:
            c = autochoice.Candidate(**f["candidate"])
            print(
                f"    {c.label:28s} quiet {f['quiet']:.3f} s/tile, busy {f['busy']:.3f}; labels "
                f"{f['agreement']:.5f} of the tile's voxels as PyTorch fp32's, gates {f['gate_diff']:.4f}"
            )


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    main()
