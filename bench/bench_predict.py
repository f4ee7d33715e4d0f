"""na.predict against MONAI's sliding_window_inference, in one process, same weights and tiles.

    python bench/bench_predict.py [--shape 96 160 160] [--tile 96] [--device cpu]

A MONAI AttentionUnet is first trained for a few minutes on synthetic phantoms (cached in
bench/.cache), so that the labels compared are not coin-flips. Prints throughput ratios, the
peak memory of each run, per-class Dice of the labels against MONAI fp32, and the cost of the
attention maps. Figures, not pass/fail: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import napari_attunet as na  # noqa: E402
from napari_attunet.phantom import make_phantom  # noqa: E402

CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)


def monai_net():
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(3, 1, 3, CHANNELS, STRIDES)


def train(path: Path, seconds: float, patch: int = 48) -> None:
    """A few minutes of Dice + CE on random phantom patches."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = monai_net().train()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        images, labels = [], []
        for b in range(2):
            img, lab = make_phantom((patch,) * 3, seed=1000 + step * 2 + b)
            images.append(img[None])
            labels.append(lab[None])
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(labels)).long()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"  train step {step}: loss {loss.item():.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        return (self.peak - self.base) / 2 ** 20


def timed(fn, repeats: int):
    """Best of ``repeats`` after one warm-up (the memory column is only indicative: the
    allocator keeps what earlier runs took; the fresh-process figures below are the real ones)."""
    fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
    return best, out, mem.mib


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 160, 160))
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved runs with/without maps")
    parser.add_argument("--train-seconds", type=float, default=420)
    parser.add_argument("--weights", type=Path, default=HERE / ".cache" / "monai_phantom.pth")
    parser.add_argument("--memory-of", choices=("monai", "fp32", "auto"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        memory_of(args.memory_of, args)
        return

    from monai.inferers import sliding_window_inference

    if not args.weights.exists():
        print(f"training the benchmark model for {args.train_seconds:.0f} s ...", flush=True)
        train(args.weights, args.train_seconds)
    net = monai_net()
    net.load_state_dict(torch.load(args.weights, weights_only=True))
    net = net.eval().to(args.device)
    model = na.load_model(args.weights)

    image, truth = make_phantom(tuple(args.shape), seed=7)
    roi = (args.tile,) * 3
    # A MONAI user holds the volume as nibabel/ITK give it, (x, y, z); napari holds (z, y, x)
    # and na.predict reorders it for the network (MONAI checkpoints default to axes "xyz").
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))[None, None].to(args.device)
    print(f"volume {tuple(args.shape)}, tile {roi}, overlap {args.overlap}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, model "
          f"{model.spec.summary()}")

    def run_monai():
        with torch.inference_mode():
            out = sliding_window_inference(x, roi, 1, net, overlap=args.overlap, mode="gaussian",
                                           sigma_scale=0.125)
        return torch.softmax(out, 1)[0].cpu().numpy().transpose(0, 3, 2, 1)

    t_monai, monai_probs, mem_monai = timed(run_monai, args.repeats)
    monai_labels = monai_probs.argmax(0)
    vox = float(np.prod(args.shape))
    print(f"\nMONAI sliding_window_inference fp32: {t_monai:.2f} s "
          f"({vox / t_monai / 1e6:.2f} Mvox/s), peak +{mem_monai:.0f} MiB; Dice vs truth "
          + ", ".join(f"{dice(monai_labels, truth, c):.3f}" for c in (1, 2)))

    configs = [
        ("fp32, plain", dict(precision="fp32", fold_batchnorm=False, channels_last=False)),
        ("fp32, BN folded", dict(precision="fp32", fold_batchnorm=True, channels_last=False)),
        ("fp32, channels-last", dict(precision="fp32", fold_batchnorm=False, channels_last=True)),
        ("fp32, folded + channels-last", dict(precision="fp32")),
        ("auto (default)", dict(precision="auto")),
        ("auto, no attention maps", dict(precision="auto", attention=False)),
    ]
    print(f"\n{'na.predict':34s} {'time s':>7s} {'x MONAI':>8s} {'peak MiB':>9s} {'max|dp|':>8s}"
          "  Dice vs MONAI fp32 (classes 0, 1, 2)")
    timings = {}
    for label, options in configs:
        t, pred, mem = timed(lambda: na.predict(image, model, normalization="none", tile=roi,
                                                overlap=args.overlap, device=args.device,
                                                **options), args.repeats)
        labels = pred.labels()
        scores = [dice(labels, monai_labels, c) for c in (0, 1, 2)]
        timings[label] = t
        diff = float(np.abs(pred.probabilities - monai_probs).max())
        print(f"{label + ' [' + pred.precision + ']':34s} {t:7.2f} {t_monai / t:7.2f}x "
              f"{mem:9.0f} {diff:8.4f}  " + ", ".join(f"{s:.5f}" for s in scores))
    ratios = []
    for _ in range(args.pairs):  # interleaved, so that drifts in machine load cancel out
        pair = []
        for attention in (True, False):
            t = time.perf_counter()
            na.predict(image, model, normalization="none", tile=roi, overlap=args.overlap,
                       device=args.device, attention=attention)
            pair.append(time.perf_counter() - t)
        ratios.append(pair[0] / pair[1])
    print(f"\nattention maps add {(np.median(ratios) - 1) * 100:+.1f}% to the run time "
          f"(median of {args.pairs} interleaved pairs; best-of-{args.repeats} above: "
          f"{(timings['auto (default)'] / timings['auto, no attention maps'] - 1) * 100:+.1f}%)")
    print("\npeak memory of one run in a fresh process (RSS above the level after loading):")
    for which in ("monai", "fp32", "auto"):
        import subprocess

        out = subprocess.run([sys.executable, __file__, "--memory-of", which, "--shape",
                              *map(str, args.shape), "--tile", str(args.tile), "--device",
                              args.device, "--weights", str(args.weights)],
                             capture_output=True, text=True, check=True).stdout.strip()
        print(f"  {which:6s} {out.splitlines()[-1]}")


def memory_of(which: str, args) -> None:
    """One run in this fresh process; prints the peak RSS above the level before it."""
    from monai.inferers import sliding_window_inference

    net = monai_net()
    net.load_state_dict(torch.load(args.weights, weights_only=True))
    net.eval()
    model = na.load_model(args.weights)
    image, _ = make_phantom(tuple(args.shape), seed=7)
    roi = (args.tile,) * 3
    with PeakRSS() as mem:
        if which == "monai":
            with torch.inference_mode():
                xyz = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))
                out = sliding_window_inference(xyz[None, None], roi, 1, net,
                                               overlap=args.overlap, mode="gaussian",
                                               sigma_scale=0.125)
                out.argmax(1)
        else:
            na.predict(image, model, normalization="none", tile=roi, overlap=args.overlap,
                       device=args.device, precision=which).labels()
    print(f"{mem.mib:.0f} MiB")


if __name__ == "__main__":
    main()
