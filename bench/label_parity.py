"""Why na.predict's labels differ from MONAI fp32's, configuration by configuration.

    python bench/label_parity.py [--weights bench/.cache/monai_phantom.pth]

Runs MONAI's sliding_window_inference (fp32) and na.predict (PyTorch and OpenVINO, fp32 and
bf16) on bench_predict's phantom with bench_predict's weights, and prints per configuration:
per-class Dice of the labels against MONAI fp32's, both as na.predict returns them (argmax of
the uint8-stored probabilities) and as the argmax of its float probabilities before storage,
the number of voxels that differ and MONAI's margin between its top two classes there. Then
what storing MONAI's own probabilities as uint8 would cost, and how confident the model is
(the share of voxels whose top two classes are close). Instrumentation, not a test: the float
probabilities are caught on their way into ``quantize``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_predict import dice, monai_net  # noqa: E402

import napari_attunet as na  # noqa: E402
from napari_attunet.inference import finish as finish_module  # noqa: E402
from napari_attunet.inference.postprocess import quantize, threshold_labels  # noqa: E402
from napari_attunet.phantom import make_phantom  # noqa: E402

CAUGHT: list[torch.Tensor] = []


def _catching_quantize(probabilities: torch.Tensor) -> np.ndarray:
    CAUGHT.append(probabilities.detach().float().cpu().clone())
    return quantize(probabilities)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top class probability minus the second's, per voxel."""
    top2 = np.sort(probs, axis=0)[-2:]
    return top2[1] - top2[0]


def scores(labels: np.ndarray, reference: np.ndarray) -> str:
    return ", ".join(f"{dice(labels, reference, c):.5f}" for c in (0, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=HERE / ".cache" / "monai_phantom.pth")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 160, 192))
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    from monai.inferers import sliding_window_inference

    net = monai_net()
    net.load_state_dict(torch.load(args.weights, weights_only=True))
    net.eval()
    model = na.load_model(args.weights)
    image, truth = make_phantom(tuple(args.shape), seed=7)
    roi = (args.tile,) * 3
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0)))[None, None]
    with torch.inference_mode():
        out = sliding_window_inference(
            x, roi, 1, net, overlap=args.overlap, mode="gaussian", sigma_scale=0.125
        )
    monai = torch.softmax(out.float(), 1)[0].numpy().transpose(0, 3, 2, 1)
    reference = monai.argmax(0)
    margin = margins(monai)
    print(
        f"weights {args.weights}; MONAI fp32 labels vs truth (organ, lesion): "
        f"{dice(reference, truth, 1):.4f}, {dice(reference, truth, 2):.4f}"
    )
    n = margin.size
    print("MONAI fp32 confidence: share of voxels whose top-two margin is below")
    for level in (1 / 255, 0.01, 0.05, 0.2, 0.5):
        print(
            f"  {level:7.4f}: {100 * (margin < level).sum() / n:8.4f}% ({int((margin < level).sum())} voxels)"
        )
    top = monai.max(0)
    hist, edges = np.histogram(top, bins=[0.33, 0.5, 0.6, 0.8, 0.9, 0.99, 0.999, 1.0001])
    print(
        "  max probability histogram: "
        + ", ".join(
            f"[{a:.3g},{b:.4g}): {100 * h / n:.3f}%"
            for a, b, h in zip(edges[:-1], edges[1:], hist, strict=True)
        )
    )
    q_monai = threshold_labels(quantize(torch.from_numpy(monai)), "softmax", None)
    print(
        f"MONAI's own probabilities stored as uint8, argmax: Dice vs MONAI float "
        f"{scores(q_monai, reference)}, {int((q_monai != reference).sum())} voxels differ"
    )

    finish_module.quantize = _catching_quantize
    print(
        f"\n{'configuration':28s} {'labels from':10s} Dice vs MONAI fp32 (bg, organ, lesion)   "
        "differ   MONAI margin there (median, max)"
    )
    for runtime, precision in (
        ("torch", "fp32"),
        ("openvino", "fp32"),
        ("torch", "bf16"),
        ("openvino", "bf16"),
    ):
        CAUGHT.clear()
        pred = na.predict(
            image,
            model,
            normalization="none",
            tile=roi,
            overlap=args.overlap,
            device="cpu",
            orientation="native",
            runtime=runtime,
            precision=precision,
        )
        floats = CAUGHT[-1].numpy()
        for source, labels in (("uint8", pred.labels()), ("float", floats.argmax(0))):
            differ = labels != reference
            there = margin[differ]
            detail = f"{np.median(there):.4f}, {there.max():.4f}" if there.size else "-"
            print(
                f"{runtime + ' ' + precision:28s} {source:10s} {scores(labels, reference)}   "
                f"{int(differ.sum()):6d}   {detail}"
            )
        print(f"{'':28s} max |p - p_MONAI| = {np.abs(floats - monai).max():.4f}")


if __name__ == "__main__":
    main()
