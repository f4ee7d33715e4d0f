"""na.predict (PyTorch and OpenVINO runtimes) against MONAI's sliding_window_inference, in one
process, with the same weights, tiles and overlap.

    python bench/bench_predict.py [--shape 96 160 192] [--tile 96] [--overlap 0.25]

A MONAI AttentionUnet (channels 16-128) is first trained (once, cached in bench/.cache) for
a fixed number of seeded steps on 32^3 crops of phantoms at the benchmark's own scale, half of
them centred on the lesion, so that the labels compared are not coin-flips and the weights are
the same on every machine (300 steps: about 35 minutes on 2 busy cores). MONAI gets
the volume as its loaders give it, (x, y, z) = 192x160x96; na.predict gets napari's (z, y, x)
and reorders it for the network (orientation "native": the array as stored, x first, no
flips), so both networks see the same array. Prints the CPU, seconds,
ratios to MONAI's best configuration on this CPU, GFLOP/s and the share of the CPU's fp32 peak,
per-class Dice against MONAI fp32, the cost of the attention maps, OpenVINO's performance hints
per tile, peak memory and the conversion cache, each in fresh processes. Figures, not
pass/fail: these machines are shared and noisy, so every ratio comes from one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import seconds_per_tile  # noqa: E402

import napari_attunet as na  # noqa: E402
from napari_attunet.inference.devices import cpu_has_fast_bf16  # noqa: E402
from napari_attunet.inference.quantize import SCOPES, nncf_available  # noqa: E402
from napari_attunet.inference.tiling import window_grid  # noqa: E402
from napari_attunet.phantom import make_phantom  # noqa: E402

CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)


def monai_net():
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(3, 1, 3, CHANNELS, STRIDES)


def training_patches(shape_zyx, phantoms: int = 6, patch: int = 32, seed: int = 0):
    """An endless, seeded stream of (image, label) patches in MONAI's (x, y, z) order, cropped
    from phantoms at the benchmark's own scale (not the seed it is measured on), half of them
    centred on the lesion so that the rare class is seen as often as the others."""
    rng = np.random.default_rng(seed)
    volumes = [make_phantom(tuple(shape_zyx), seed=100 + k) for k in range(phantoms)]
    volumes = [(img.transpose(2, 1, 0).copy(), lab.transpose(2, 1, 0).copy()) for img, lab in volumes]
    while True:
        img, lab = volumes[rng.integers(len(volumes))]
        if rng.random() < 0.5:
            points = np.argwhere(lab == 2)
            centre = points[rng.integers(len(points))] + rng.integers(-patch // 4, patch // 4 + 1, 3)
        else:
            centre = np.array([rng.integers(n) for n in img.shape])
        start = [int(np.clip(c - patch // 2, 0, n - patch)) for c, n in zip(centre, img.shape, strict=True)]
        region = tuple(slice(s, s + patch) for s in start)
        yield img[region], lab[region]


def train(path: Path, steps: int, shape_zyx, snapshots: tuple[int, ...] = (), batch: int = 4) -> None:
    """Dice + CE on seeded phantom patches for a fixed number of steps (the same weights on
    every machine, however fast), with a step-size decay; ``snapshots``: steps at which the
    weights so far are saved too (as ``NAME.stepN.pth``), to compare an undertrained model."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = monai_net().train()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    patches = training_patches(shape_zyx)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        pairs = [next(patches) for _ in range(batch)]
        x = torch.from_numpy(np.stack([img[None] for img, _ in pairs]))
        y = torch.from_numpy(np.stack([lab[None] for _, lab in pairs])).long()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % 25 == 0:
            print(
                f"  train step {step}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        if step in snapshots:
            torch.save(net.state_dict(), path.with_suffix(f".step{step}.pth"))
    torch.save(net.eval().state_dict(), path)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def cpu_description() -> dict:
    """The CPU's model name, its capability as PyTorch and OpenVINO see it, its clock."""
    info = {"model": "unknown", "cores": os.cpu_count(), "mhz": None, "flags": []}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                info["model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split()
        info["flags"] = sorted(
            f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"}
        )
        info["mhz"] = float(
            next(line for line in cpuinfo.splitlines() if line.startswith("cpu MHz")).split(":")[1]
        )
    except (OSError, StopIteration, ValueError):
        pass
    info["torch"] = torch.backends.cpu.get_cpu_capability()
    info["fast_bf16"] = cpu_has_fast_bf16()
    try:
        import openvino

        info["openvino"] = openvino.__version__.split("-")[0]
        info["openvino_caps"] = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except ImportError:
        info["openvino"] = None
    return info


def tile_flops(tile: tuple[int, ...]) -> float:
    """FLOPs of one forward pass of the network on one tile (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = monai_net().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros((1, 1) + tile))
    return float(counter.get_total_flops())


def monai_windows(shape_xyz, roi, overlap) -> int:
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    interval = _get_scan_interval(tuple(shape_xyz), roi, 3, (overlap,) * 3)
    return len(dense_patch_slices(tuple(shape_xyz), roi, interval))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(96, 160, 192), help="napari (z, y, x); MONAI sees (x, y, z)"
    )
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after a warm-up")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved runs with/without maps")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of 4 patches of 32^3")
    parser.add_argument(
        "--flops-per-cycle",
        type=float,
        default=32,
        help="fp32 FLOP per cycle and core (2 FMA units x 8 lanes x 2)",
    )
    parser.add_argument("--weights", type=Path, default=HERE / ".cache" / "monai_phantom.pth")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    from monai.inferers import sliding_window_inference

    if not args.weights.exists():
        print(f"training the benchmark model for {args.train_steps} steps ...", flush=True)
        train(args.weights, args.train_steps, args.shape)
    net = monai_net()
    net.load_state_dict(torch.load(args.weights, weights_only=True))
    net = net.eval().to(args.device)
    model = na.load_model(args.weights)

    cpu = cpu_description()
    peak = (cpu["cores"] * args.flops_per_cycle * cpu["mhz"] / 1e3) if cpu["mhz"] else None
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores at {cpu['mhz']} MHz; flags "
        f"{' '.join(cpu['flags'])}; torch capability {cpu['torch']}; fast bf16 "
        f"{cpu['fast_bf16']}; OpenVINO {cpu['openvino']} {cpu.get('openvino_caps', '')}"
    )
    if peak:
        print(
            f"fp32 peak assumed: {cpu['cores']} cores x {args.flops_per_cycle:.0f} FLOP/cycle x "
            f"{cpu['mhz']:.0f} MHz = {peak:.0f} GFLOP/s"
        )

    image, truth = make_phantom(tuple(args.shape), seed=7)
    roi = (args.tile,) * 3
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))[None, None].to(args.device)
    windows = monai_windows(x.shape[2:], roi, args.overlap)
    ours = len(window_grid(args.shape, roi, model.spec.total_stride, args.overlap))
    per_tile = tile_flops(roi)
    flops = per_tile * windows  # the network's work; stitching and the rest come on top
    print(
        f"volume (x, y, z) {tuple(x.shape[2:])}, tile {roi}, overlap {args.overlap}, "
        f"{windows} windows (na.predict: {ours}), {per_tile / 1e9:.1f} GFLOP per tile, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )

    def run_monai(bf16: bool):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = sliding_window_inference(
                    x, roi, 1, net, overlap=args.overlap, mode="gaussian", sigma_scale=0.125
                )
            return torch.softmax(out.float(), 1)[0].cpu().numpy().transpose(0, 3, 2, 1)

        return run

    def run_ours(**options):
        def run():
            return na.predict(
                image,
                model,
                normalization="none",
                tile=roi,
                overlap=args.overlap,
                device=args.device,
                orientation="native",
                **options,
            )

        return run

    configs = [("MONAI sliding_window_inference, fp32", run_monai(False), "monai")]
    if cpu["fast_bf16"]:
        configs.append(("MONAI sliding_window_inference, bf16 autocast", run_monai(True), "monai"))
    configs += [
        ("na.predict torch, fp32", run_ours(runtime="torch", precision="fp32"), "ours"),
        ("na.predict torch, auto", run_ours(runtime="torch", precision="auto"), "ours"),
    ]
    if cpu["openvino"]:
        configs += [
            ("na.predict openvino, fp32", run_ours(runtime="openvino", precision="fp32"), "ours"),
            ("na.predict openvino, auto", run_ours(runtime="openvino", precision="auto"), "ours"),
            (
                "na.predict openvino, auto, no maps",
                run_ours(runtime="openvino", precision="auto", attention=False),
                "ours",
            ),
        ]
    int8_rows = int8_configs(args, image, roi) if cpu["openvino"] and nncf_available() else []
    configs += int8_rows
    for _, fn, _ in configs:  # warm-up: one-time costs (OpenVINO conversion, allocator) first
        fn()
    times = {label: [] for label, _, _ in configs}
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so that drifts in machine load are shared
        for label, fn, _ in configs:
            t = time.perf_counter()
            outputs[label] = fn()
            times[label].append(time.perf_counter() - t)
    best = {label: min(ts) for label, ts in times.items()}
    monai_best = min(t for (label, _, kind), t in zip(configs, best.values(), strict=True) if kind == "monai")
    reference = outputs[configs[0][0]].argmax(0)
    print(
        f"{'run':46s} {'s':>6s} {'x MONAI best':>12s} {'GFLOP/s':>8s} {'% peak':>6s}  "
        "Dice vs MONAI fp32 (bg, organ, lesion)"
    )
    for label, _, kind in configs:
        out = outputs[label]
        labels = out.argmax(0) if kind == "monai" else out.labels()
        precision = f" [{out.precision}]" if kind == "ours" else ""
        scores = ", ".join(f"{dice(labels, reference, c):.5f}" for c in (0, 1, 2))
        gflops = flops / best[label] / 1e9
        share = f"{100 * gflops / peak:5.0f}%" if peak else "     -"
        print(
            f"{label + precision:46s} {best[label]:6.2f} {monai_best / best[label]:11.2f}x "
            f"{gflops:8.1f} {share}  {scores}"
        )
    if int8_rows:
        print_int8(outputs, [label for label, _, _ in int8_rows], "na.predict openvino, fp32")
    print(
        f"(best of {args.repeats} interleaved runs; MONAI fp32 labels vs truth: "
        + ", ".join(f"{dice(reference, truth, c):.3f}" for c in (1, 2))
        + ")"
    )

    if cpu["openvino"]:
        ratios = []
        for _ in range(args.pairs):
            pair = []
            for attention in (True, False):
                t = time.perf_counter()
                run_ours(runtime="openvino", attention=attention)()
                pair.append(time.perf_counter() - t)
            ratios.append(pair[0] / pair[1])
        print(
            f"\nattention maps add {(np.median(ratios) - 1) * 100:+.1f}% to an openvino run "
            f"(median of {args.pairs} interleaved pairs)"
        )
        hints(model, roi, args.repeats, per_tile, peak)

    if int8_rows:
        int8_first_and_cached(args, image, roi)
    print("\nin fresh processes (peak RSS above the level after loading):")
    kinds = ["monai", "torch:fp32", "torch:auto"]
    if cpu["openvino"]:
        kinds += ["openvino:fp32", "openvino:auto"]
    for which in kinds:
        print(f"  {which:14s} {_child(which, args)}")
    if cpu["openvino"]:
        with tempfile.TemporaryDirectory() as cache:
            first = _child("convert", args, cache)
            second = _child("convert", args, cache)
        print(f"  OpenVINO network ready, empty cache: {first}; from the cache: {second}")


def int8_configs(args, image, roi) -> list:
    """int8 rows: every layer quantized, and the attention blocks kept in fp32 (one model
    object each, so that each keeps its own compiled network)."""
    from napari_attunet.inference.quantize import SCOPE_ENV

    def run_int8(scope: str):
        model = na.load_model(args.weights)

        def run():
            os.environ[SCOPE_ENV] = scope
            try:
                return na.predict(
                    image, model, normalization="none", tile=roi, overlap=args.overlap,
                    precision="int8", orientation="native",
                )  # fmt: skip
            finally:
                os.environ.pop(SCOPE_ENV, None)

        return run

    return [(f"na.predict openvino, int8 ({scope})", run_int8(scope), "ours") for scope in SCOPES]


def print_int8(outputs: dict, labels: list[str], fp32: str) -> None:
    """Each gate's mean |d| against OpenVINO fp32, and the guard's note, per int8 row."""
    for label in labels:
        diffs = [
            float(np.abs(a.data.astype(np.float32) - b.data.astype(np.float32)).mean())
            for a, b in zip(outputs[label].gates, outputs[fp32].gates, strict=True)
        ]
        guard = next((n for n in outputs[label].notes if "Dice per class" in n), "")
        print(
            f"  {label}: each gate's mean |d| vs fp32 (finest first) " + ", ".join(f"{d:.4f}" for d in diffs)
        )
        print(f"    guard: {guard}")


def int8_first_and_cached(args, image, roi) -> None:
    """First int8 run with an empty cache (calibration included) against one from the cache,
    each on a fresh model object; in this process, with a temporary cache folder."""
    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        seconds = []
        for _ in range(2):
            model = na.load_model(args.weights)
            t = time.perf_counter()
            na.predict(image, model, normalization="none", tile=roi, overlap=args.overlap,
                       precision="int8", orientation="native")  # fmt: skip
            seconds.append(time.perf_counter() - t)
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
    print(
        f"\nint8, empty cache (conversion + calibration + run): {seconds[0]:.1f} s; "
        f"from the cache (read + compile + run): {seconds[1]:.1f} s; calibration and "
        f"conversion about {seconds[0] - seconds[1]:.1f} s"
    )


def hints(model, roi, repeats: int, per_tile: float, peak) -> None:
    """Milliseconds per tile for OpenVINO's LATENCY and THROUGHPUT hints, fp32 and bf16."""
    from napari_attunet.inference import runtime_openvino

    ov_model = runtime_openvino.converted(model)
    nets = {
        (p, h): runtime_openvino.compile_network(ov_model, len(model.spec.gates), p, h)
        for p in ("fp32", "bf16")
        for h in ("LATENCY", "THROUGHPUT")
    }
    best = seconds_per_tile(nets, torch.rand((4, 1) + roi), repeats)
    print("\nOpenVINO per 96^3 tile (4 tiles, batches of the requests the hint asks for):")
    for (precision, hint), seconds in best.items():
        ms = 1000 * seconds
        share = f", {100 * per_tile / ms / 1e6 / peak:.0f}% of fp32 peak" if peak else ""
        print(
            f"  {precision} {hint:10s} {nets[precision, hint].parallel} requests: {ms:6.0f} ms "
            f"({per_tile / ms / 1e6:.0f} GFLOP/s{share})"
        )


def _child(which: str, args, cache: str | None = None) -> str:
    env = dict(os.environ)
    if cache:
        env["NAPARI_ATTUNET_CACHE"] = cache
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            which,
            "--shape",
            *map(str, args.shape),
            "--tile",
            str(args.tile),
            "--overlap",
            str(args.overlap),
            "--device",
            args.device,
            "--weights",
            str(args.weights),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        return "failed: " + out.stderr.strip().splitlines()[-1]
    return out.stdout.strip().splitlines()[-1]


def child(which: str, args) -> None:
    """One measurement in this fresh process: a run's peak RSS, or the conversion's time."""
    from monai.inferers import sliding_window_inference

    model = na.load_model(args.weights)
    roi = (args.tile,) * 3
    if which == "convert":
        from napari_attunet.inference import runtime_openvino

        t = time.perf_counter()
        runtime_openvino.network(model, "fp32")
        print(f"{time.perf_counter() - t:.1f} s")
        return
    image, _ = make_phantom(tuple(args.shape), seed=7)
    if which == "monai":
        net = monai_net()
        net.load_state_dict(torch.load(args.weights, weights_only=True))
        net.eval()
    else:
        runtime, precision = which.split(":")
        if runtime == "openvino":  # conversion and compilation are not the run's memory
            from napari_attunet.inference import runtime_openvino

            runtime_openvino.network(model, "bf16" if precision == "auto" and cpu_has_fast_bf16() else "fp32")
    with PeakRSS() as mem:
        t = time.perf_counter()
        if which == "monai":
            with torch.inference_mode():
                xyz = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))
                out = sliding_window_inference(
                    xyz[None, None], roi, 1, net, overlap=args.overlap, mode="gaussian", sigma_scale=0.125
                )
                out.argmax(1)
        else:
            na.predict(
                image,
                model,
                normalization="none",
                tile=roi,
                overlap=args.overlap,
                device=args.device,
                precision=precision,
                runtime=runtime,
                orientation="native",
            ).labels()
        seconds = time.perf_counter() - t
    print(f"{mem.mib:5.0f} MiB ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
