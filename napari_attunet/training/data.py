"""Training data: image/label pairs from folders, patches with foreground oversampling, and
augmentation (mirror flips, intensity scale and shift)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..inference.preprocess import Normalization, normalize
from ..scans.io import SCAN_SUFFIXES, Volume, read, stem


@dataclass
class Case:
    """One training volume, normalized, with its integer labels (same grid)."""

    name: str
    image: np.ndarray  # (C, *spatial) float32
    labels: np.ndarray  # (*spatial) int64
    spacing: tuple[float, ...]
    volume: Volume | None = None


def find_pairs(images: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Files in ``images`` and ``labels`` matched by name (without the scan suffix)."""

    def index(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder.")
        return {
            stem(p): p
            for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES)
        }

    imgs, labs = index(Path(images)), index(Path(labels))
    common = sorted(set(imgs) & set(labs))
    if not common:
        raise InputError(f"no image in {images} has a label file of the same name in {labels}.")
    return [(imgs[k], labs[k]) for k in common]


def load_case(image_path: Path, label_path: Path, norm: Normalization) -> Case:
    image, labels = read(image_path), read(label_path)
    if image.array.shape != labels.array.shape:
        raise InputError(
            f"{label_path}: shape {labels.array.shape} differs from its image {image.array.shape}."
        )
    return Case(
        stem(image_path),
        normalize(image.array, norm)[None],
        np.rint(labels.array).astype(np.int64),
        image.spacing,
        image,
    )


class PatchSampler:
    """Random patches; a share of them centred on a random foreground voxel."""

    def __init__(self, cases: list[Case], patch: tuple[int, ...], foreground: float = 0.33, seed: int = 0):
        self.cases, self.patch, self.foreground = cases, tuple(patch), foreground
        self.rng = np.random.default_rng(seed)
        self.fg_index = [np.flatnonzero(c.labels.reshape(-1) > 0) for c in cases]

    def _start(self, shape, centre=None) -> tuple[int, ...]:
        out = []
        for a, (n, p) in enumerate(zip(shape, self.patch, strict=True)):
            hi = max(n - p, 0)
            s = (
                int(self.rng.integers(0, hi + 1))
                if centre is None
                else int(np.clip(centre[a] - p // 2, 0, hi))
            )
            out.append(s)
        return tuple(out)

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for _ in range(batch):
            k = int(self.rng.integers(len(self.cases)))
            case = self.cases[k]
            shape = case.labels.shape
            centre = None
            if self.fg_index[k].size and self.rng.random() < self.foreground:
                flat = self.fg_index[k][self.rng.integers(self.fg_index[k].size)]
                centre = np.unravel_index(flat, shape)
            start = self._start(shape, centre)
            region = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
            img, lab = _pad_to(case.image[(slice(None),) + region], case.labels[region], self.patch)
            img, lab = self.augment(img, lab)
            images.append(img)
            labels.append(lab)
        return np.stack(images), np.stack(labels)

    def augment(self, image: np.ndarray, labels: np.ndarray):
        for axis in range(labels.ndim):
            if self.rng.random() < 0.5:
                image, labels = np.flip(image, axis + 1), np.flip(labels, axis)
        scale = self.rng.uniform(0.9, 1.1)
        shift = self.rng.uniform(-0.1, 0.1)
        return (np.ascontiguousarray(image * scale + shift, dtype=np.float32), np.ascontiguousarray(labels))


def _pad_to(image: np.ndarray, labels: np.ndarray, patch) -> tuple[np.ndarray, np.ndarray]:
    pad = [(0, max(p - n, 0)) for n, p in zip(labels.shape, patch, strict=True)]
    if any(b for _, b in pad):
        image = np.pad(image, [(0, 0)] + pad, mode="constant", constant_values=image.min())
        labels = np.pad(labels, pad)
    return image, labels
