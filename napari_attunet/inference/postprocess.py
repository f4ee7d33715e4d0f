"""What a run returns: probabilities kept compactly, labels from thresholds without re-running
the network, clean-up options, per-class volumes, and the gate maps with their geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError

PROBABILITY_LEVELS = 255  # probabilities are stored as uint8: p = q / 255


@dataclass
class GateMap:
    """One gate's attention coefficients on its own grid.

    ``data`` is (heads, *grid) in [0, 1]. Cell ``i`` is centred on input voxel
    ``offset + stride * i`` per axis (floats when the run resampled to a training spacing).
    """

    data: np.ndarray
    stride: tuple[float, ...]
    offset: tuple[float, ...]
    name: str = ""

    @property
    def heads(self) -> int:
        return int(self.data.shape[0])


def quantize(probabilities: torch.Tensor) -> np.ndarray:
    """Float probabilities in [0, 1] to uint8 levels (max error 1/510)."""
    q = probabilities.mul(PROBABILITY_LEVELS).round_().clamp_(0, PROBABILITY_LEVELS)
    return q.to(torch.uint8).cpu().numpy()


def keep_argmax(quantized: np.ndarray, probabilities: torch.Tensor, slab_voxels: int = 1 << 20) -> None:
    """Make the argmax of the stored levels that of the float probabilities, in place.

    Rounding to 1/255 can put the two most probable classes on one level, and among equal
    levels the argmax is the lower class, not always the more probable one (the labels then
    differ from a float argmax where two classes are within 1/255). There, the more probable
    class goes one level up if it was rounded down, else the lower classes on its level go one
    down (they were rounded up too): every value stays within 1/255 of its float, and labels,
    thresholds and uncertainty keep reading the stored levels only.
    """
    channels = quantized.shape[0]
    if channels < 2 or quantized.size == 0:
        return
    if quantized.ndim == 1:
        quantized, probabilities = quantized[:, None], probabilities[:, None]
    levels = torch.from_numpy(quantized)  # shares memory: edits land in ``quantized``
    index = torch.arange(channels).reshape((channels,) + (1,) * (quantized.ndim - 1))
    plane = max(1, int(np.prod(quantized.shape[2:])))
    step = max(1, slab_voxels // plane)  # in slabs: an int64 argmax of a volume is 8x its size
    for start in range(0, quantized.shape[1], step):
        q = levels[:, start : start + step]
        p = probabilities[:, start : start + step].float().cpu()
        winner = p.argmax(0, keepdim=True)  # ties in float go to the lower class, as np.argmax
        top = q.gather(0, winner)
        tied = (q == top) & (index < winner)  # lower classes on the winner's level
        need = tied.any(0, keepdim=True)
        if not bool(need.any()):
            continue
        rounded_down = p.gather(0, winner) * PROBABILITY_LEVELS >= top.float()
        up = need & rounded_down & (top < PROBABILITY_LEVELS)
        q.scatter_(0, winner, top + up.to(torch.uint8))
        q.sub_((tied & ~up).to(torch.uint8))


@dataclass
class Prediction:
    """The result of :func:`napari_attunet.predict`, on the input grid."""

    quantized: np.ndarray  # (C, *image_shape) uint8, p = q / 255
    output: str  # "softmax" | "sigmoid"
    class_names: tuple[str, ...]
    gates: list[GateMap]
    spacing: tuple[float, ...] | None = None
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0
    tile: tuple[int, ...] = ()
    overlap: float = 0.5
    notes: list[str] = field(default_factory=list)
    disagreement: np.ndarray | None = None  # (*image_shape) uint8 (q / 255): TTA flips' spread
    runtime: str = "torch"  # "torch" | "openvino"
    _uncertainty: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def probabilities(self) -> np.ndarray:
        """(C, *image_shape) float32 in [0, 1]."""
        return self.quantized.astype(np.float32) / PROBABILITY_LEVELS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.quantized.shape[1:])

    @property
    def uncertainty(self) -> np.ndarray:
        """(*image_shape) float32 in [0, 1], computed once: the normalised entropy of the class
        probabilities (see :func:`uncertainty_map`), and with TTA the larger of that and the
        flipped runs' disagreement."""
        if self._uncertainty is None:
            self._uncertainty = uncertainty_map(self.quantized, self.output, self.disagreement)
        return self._uncertainty

    def use_stored_uncertainty(self, values) -> None:
        """Read the uncertainty from ``values`` (e.g. a result store's array, read as it is
        indexed) instead of computing it from the probabilities."""
        self._uncertainty = values

    def uncertain_volumes_ml(
        self, labels: np.ndarray, level: float, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        """Per-class volume (mL) of the voxels whose uncertainty is over ``level``."""
        if spacing is None:
            spacing = self.spacing or (1.0,) * labels.ndim
        masked = np.where(self.uncertainty > level, labels, 0)
        return class_volumes(masked, spacing, self.label_names)

    def labels(
        self,
        thresholds: Sequence[float] | float | None = None,
        *,
        min_size: int = 0,
        fill_holes: bool = False,
    ) -> np.ndarray:
        """Integer labels from the stored probabilities; the network does not run again.

        softmax: with no thresholds, the argmax; with thresholds (one per class, the
        background's ignored), the most probable class among those over their threshold, else
        background (0). sigmoid: channel k is label k+1 where it passes its threshold (default
        0.5); overlaps go to the most probable channel.
        """
        labels = threshold_labels(self.quantized, self.output, thresholds)
        if min_size > 0 or fill_holes:
            labels = clean_labels(labels, min_size=min_size, fill_holes=fill_holes)
        return labels

    def volumes_ml(
        self, labels: np.ndarray | None = None, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        """Per-class volume (mL, or mm^2/100... for 2D: area in cm^2) from the spacing in mm."""
        labels = self.labels() if labels is None else labels
        spacing = spacing or self.spacing or (1.0,) * labels.ndim
        names = self.label_names
        return class_volumes(labels, spacing, names)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Name of label value k (0 is background)."""
        if self.output == "sigmoid":
            return ("background",) + tuple(self.class_names)
        return tuple(self.class_names)


def check_thresholds(thresholds: Sequence[float] | float | None, option: str = "thresholds") -> None:
    """Refuse thresholds that are no probability (outside [0, 1], or NaN), naming ``option``:
    stored as uint8 levels, 1.5 would wrap around and NaN cannot be stored at all."""
    if thresholds is None:
        return
    values = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
    try:
        bad = [v for v in values if not 0.0 <= float(v) <= 1.0]  # NaN compares False
    except (TypeError, ValueError):
        bad = values
    if bad:
        given = " ".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in values)
        raise InputError(
            f"{option} {given}: a threshold is a probability; give values from 0 to 1 "
            f"({', '.join(f'{v:g}' if isinstance(v, (int, float)) else repr(v) for v in bad)} "
            f"{'is' if len(bad) == 1 else 'are'} not)."
        )


def threshold_labels(
    quantized: np.ndarray, output: str, thresholds: Sequence[float] | float | None
) -> np.ndarray:
    """Labels from uint8 probabilities, one class at a time with in-place uint8 tensor ops
    (torch uses every core; a (C, ...) argmax is many times slower). Any leading axes of
    ``quantized`` after the class axis are kept, so one slice can be labelled on its own."""
    check_thresholds(thresholds)
    channels = quantized.shape[0]
    if thresholds is None and output == "sigmoid":
        thresholds = [0.5] * channels
    if isinstance(thresholds, (int, float)):
        thresholds = [float(thresholds)] * channels
    if thresholds is not None and len(thresholds) != channels:
        raise InputError(f"thresholds: {len(thresholds)} values for {channels} classes; give one per class.")
    q = torch.from_numpy(np.ascontiguousarray(quantized))
    labels = torch.zeros(q.shape[1:], dtype=torch.uint8 if channels < 255 else torch.int16)
    if thresholds is None:  # softmax argmax; ties go to the lower class, as np.argmax does
        best, first = q[0].clone(), 1
    else:  # a class competes only over its threshold (and with a probability above 0)
        best, first = torch.zeros(q.shape[1:], dtype=torch.uint8), 1 if output == "softmax" else 0
    for c in range(first, channels):
        score = q[c]
        if thresholds is not None:
            level = round(float(thresholds[c]) * PROBABILITY_LEVELS)
            if level > 0:
                score = score * (score >= level)
        better = score > best
        labels.masked_fill_(better, c if output == "softmax" else c + 1)
        torch.maximum(best, score, out=best)
    return labels.numpy()


def _entropy_table(levels: int = PROBABILITY_LEVELS) -> np.ndarray:
    """-p ln p for every stored level q (p = q / levels); 0 ln 0 = 0."""
    p = np.arange(levels + 1, dtype=np.float64) / levels
    with np.errstate(divide="ignore", invalid="ignore"):
        table = np.where(p > 0, -p * np.log(p), 0.0)
    return table.astype(np.float32)


def uncertainty_map(quantized: np.ndarray, output: str, disagreement: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel uncertainty in [0, 1] from uint8 probabilities (C, *shape).

    softmax: the entropy of the C class probabilities over ln C (0: one class is certain; 1: all
    equally likely). sigmoid: each channel's binary entropy over ln 2, combined by the maximum
    (a voxel is as uncertain as its least certain channel decision). ``disagreement`` (uint8,
    from TTA: how far the flipped runs spread) is combined by the maximum too.
    """
    table = _entropy_table()
    channels = quantized.shape[0]
    out = np.zeros(quantized.shape[1:], dtype=np.float32)
    if output == "softmax":
        for c in range(channels):
            out += table[quantized[c]]
        out /= np.float32(np.log(max(channels, 2)))
    else:
        binary = table + table[::-1]  # -p ln p - (1 - p) ln (1 - p)
        binary /= np.float32(np.log(2.0))
        for c in range(channels):
            np.maximum(out, binary[quantized[c]], out=out)
    if disagreement is not None:
        np.maximum(out, disagreement.astype(np.float32) / PROBABILITY_LEVELS, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def clean_labels(labels: np.ndarray, min_size: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Drop connected components under ``min_size`` voxels and fill holes, per class."""
    from scipy import ndimage
    from skimage import morphology

    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        if min_size > 0:
            cleaned = morphology.remove_small_objects(mask, max_size=min_size - 1)
            out[mask & ~cleaned] = 0
            mask = cleaned
        if fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            out[filled & (out == 0)] = value
    return out


def class_volumes(labels: np.ndarray, spacing: Sequence[float], names: Sequence[str]) -> dict[str, float]:
    """Volume of each named label value in mL (mm^3 / 1000); 2D images give cm^2 likewise."""
    voxel = float(np.prod([float(s) for s in spacing][-labels.ndim :])) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=len(names))
    return {name: float(counts[k]) * voxel for k, name in enumerate(names) if k > 0}


def gate_on_image_grid(gate: GateMap, shape: Sequence[int], head: int = 0) -> np.ndarray:
    """One head of a gate map resampled (linearly) onto the image grid, for writing to disk."""
    from scipy import ndimage

    stride = np.asarray(gate.stride, dtype=float)
    offset = np.asarray(gate.offset, dtype=float)
    # image voxel u samples gate cell (u - offset) / stride
    return ndimage.affine_transform(
        gate.data[head].astype(np.float32),
        1.0 / stride,
        offset=-offset / stride,
        output_shape=tuple(shape),
        order=1,
        mode="nearest",
    )
