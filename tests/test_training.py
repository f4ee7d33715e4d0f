"""Training end to end on tiny data, resume, two-process DDP on gloo, and the shipped demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.phantom import make_phantom

SCRIPTS = Path(sys.executable).parent


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three 24x32x32 phantoms with labels, as NIfTI pairs matched by name."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(3):
        image, truth = make_phantom((24, 32, 32), seed=k)
        for array, folder in ((image, images), (truth, labels)):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(itk, str(folder / f"case{k}.nii.gz"))
    return images, labels


def _train_args(images, labels, out, epochs, extra=()):
    return [
        "train",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "-o",
        str(out),
        "--features",
        "4",
        "8",
        "16",
        "32",
        "64",
        "--patch",
        "16",
        "32",
        "32",
        "--epochs",
        str(epochs),
        "--steps",
        "2",
        "--precision",
        "fp32",
        "-q",
        "--class-names",
        "background",
        "organ",
        "lesion",
        *extra,
    ]


def test_training_runs_saves_metadata_and_resumes(tiny_dataset, tmp_path):
    images, labels = tiny_dataset
    out = tmp_path / "model.safetensors"
    assert main(_train_args(images, labels, out, 1)) == 0
    model = na.load_model(out)
    assert model.spec.class_names == ("background", "organ", "lesion")
    assert model.spec.normalization == {"mode": "zscore"}
    assert model.spec.spacing == (2.0, 1.0, 1.0)
    training = model.metadata["provenance"]["training"]
    assert set(training["val_dice"]) == {"organ", "lesion"}
    assert training["data"]["validation"] == ["case2"]

    import torch

    state = torch.load(out.with_suffix(".state.pt"), weights_only=True)
    assert int(state["epoch"]) == 0
    assert main(_train_args(images, labels, out, 3, ["--resume"])) == 0
    state = torch.load(out.with_suffix(".state.pt"), weights_only=True)
    assert int(state["epoch"]) == 2
    history = json.loads(state["history"])
    assert [h["epoch"] for h in history] == [0, 1, 2]  # resumed, not restarted


def test_deep_supervision_heads_reach_the_loss():
    import torch

    from napari_attunet.models import build
    from napari_attunet.training import default_spec

    model = build(default_spec(3, 1, 3, (4, 8, 16, 32, 64))).eval()
    logits, heads = model(torch.randn(1, 1, 32, 32, 32), deep_supervision=True)
    assert len(heads) == 4 and all(h.shape == logits.shape for h in heads)


def test_two_process_ddp_ends_with_identical_weights(tiny_dataset, tmp_path):
    images, labels = tiny_dataset
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "napari_attunet.cli",
        *_train_args(images, labels, out, 1, ["--device", "cpu"]),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    digests = json.loads(out.with_suffix(".ranks.json").read_text())
    assert len(digests) == 2 and digests[0] == digests[1]


def test_shipped_demo_reproduces_its_reported_dice():
    from napari_attunet import io
    from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_LABELS, DEMO_SCAN
    from napari_attunet.training.trainer import dice_per_class

    assert DEMO_CHECKPOINT.stat().st_size < 10 * 2**20
    model = na.load_model(DEMO_CHECKPOINT)
    reported = model.metadata["provenance"]["training"]["val_dice"]
    scan, truth = io.read(DEMO_SCAN), io.read(DEMO_LABELS).array
    pred = na.predict(scan.array, model, spacing=scan.spacing, precision="fp32", attention=False)
    measured = dice_per_class(pred.labels(), truth, 3)
    print(f"\ndemo Dice reported {reported}, measured {measured}")
    for name, value in zip(("grey matter", "white matter"), measured, strict=True):
        assert abs(value - reported[name]) <= 0.01


@pytest.mark.gui  # napari in a subprocess: needs a display
def test_demo_screenshot(tmp_path):
    shot = tmp_path / "demo.png"
    result = subprocess.run(
        [str(SCRIPTS / "napari-attunet"), "demo", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from skimage.io import imread

    pixels = imread(shot)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert pixels[..., :3].std() > 20  # not a blank window


@pytest.mark.parametrize("family", ["monai", "leejunhyun"])
def test_other_families_train(tiny_dataset, tmp_path, family):
    images, labels = tiny_dataset
    out = tmp_path / f"{family}.safetensors"
    args = _train_args(images, labels, out, 1)
    args[args.index("--features") + 1 : args.index("--features") + 6] = ["4", "8", "16"]
    assert main(args + ["--family", family]) == 0
    assert na.load_model(out).spec.family == family
