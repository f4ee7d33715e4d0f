"""``napari-attunet predict`` in process: real scans (NIfTI and a DICOM series), a native
checkpoint, bad files among good ones, and every output file read back with SimpleITK.
"""

from __future__ import annotations

import csv
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import RAS, make_model, official_spec, sitk_image, write_dicom_series

import napari_attunet as na
from napari_attunet import io
from napari_attunet.cli import main
from napari_attunet.inference.postprocess import gate_on_image_grid
from napari_attunet.phantom import make_phantom

CLASSES = ["background", "liver", "liver tumour"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = make_model(official_spec(3, out_ch=3), seed=31)
    ckpt = na.save_model(model, root / "tiny.safetensors", class_names=CLASSES)

    image, _ = make_phantom((16, 24, 20), seed=4)
    nifti = root / "patient1.nii.gz"
    sitk.WriteImage(
        sitk_image((image * 300 - 100).astype(np.int16), (0.8, 0.8, 2.5), (12.5, -30.0, 47.0), RAS),
        str(nifti),
    )
    image, _ = make_phantom((8, 20, 18), seed=5)
    dicom = root / "ct_series"
    write_dicom_series(
        dicom, (image * 300 - 100).astype(np.int16), spacing=(0.7, 0.7, 3.0), origin=(-50.0, 20.0, 100.0)
    )
    corrupt = root / "broken.nii.gz"
    corrupt.write_bytes(np.random.default_rng(6).bytes(2048))
    missing = root / "absent.nii.gz"
    return dict(root=root, ckpt=ckpt, nifti=nifti, dicom=dicom, corrupt=corrupt, missing=missing)


def _sitk_read(path: pathlib.Path):
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _same_grid(image, reference, tol=1e-4) -> None:
    assert image.GetSize() == reference.GetSize()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=tol)
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=tol)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=tol)


def test_predict_good_and_bad_scans(workspace, capsys):
    w = workspace
    out = w["root"] / "out"
    scans = [w["nifti"], w["dicom"], w["corrupt"], w["missing"]]
    code = main(
        [
            "predict",
            *map(str, scans),
            "-c",
            str(w["ckpt"]),
            "-o",
            str(out),
            "--attention",
            "--probabilities",
            "--uncertainty",
            "-q",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert code == 1, "some scans failed"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert sum("broken.nii.gz" in line for line in lines) == 1
    assert sum("absent.nii.gz" in line for line in lines) == 1
    assert stdout == ""

    model = na.load_model(w["ckpt"])
    rows = list(csv.reader(open(out / "volumes.csv", newline="")))
    assert rows[0] == ["scan", "class", "volume_ml", "path"]
    body = rows[1:]
    assert {(r[0], r[1]) for r in body} == {
        (n, c) for n in ("patient1", "ct_series") for c in ("liver", "liver tumour")
    }
    assert len(body) == 4

    for scan, name in ((w["nifti"], "patient1"), (w["dicom"], "ct_series")):
        source = _sitk_read(scan)
        expected = [
            f"{name}_labels.nii.gz",
            f"{name}_gate1.nii.gz",
            f"{name}_gate2.nii.gz",
            f"{name}_gate3.nii.gz",
            f"{name}_prob_background.nii.gz",
            f"{name}_prob_liver.nii.gz",
            f"{name}_prob_liver_tumour.nii.gz",
        ]
        for filename in expected:
            assert (out / filename).is_file(), filename
            _same_grid(sitk.ReadImage(str(out / filename)), source)
        assert not (out / f"{name}_gate4.nii.gz").exists()

        # the files hold what the same run in process gives, in the scan's orientation
        volume = io.read(scan)
        pred = na.predict(volume.array, model, spacing=volume.spacing, name=str(scan))
        labels = pred.labels()
        written = io.read(out / f"{name}_labels.nii.gz")
        assert np.array_equal(written.array, labels)
        assert set(np.unique(written.array)) <= {0, 1, 2}
        gate = io.read(out / f"{name}_gate1.nii.gz").array
        assert gate.shape == volume.array.shape
        assert np.allclose(gate, gate_on_image_grid(pred.gates[0], labels.shape), atol=1e-6)
        assert gate.min() >= 0 and gate.max() <= 1
        probs = np.stack(
            [io.read(out / f"{name}_prob_{c}.nii.gz").array for c in ("background", "liver", "liver_tumour")]
        )
        assert np.allclose(probs, pred.probabilities, atol=1e-6)
        assert np.abs(probs.sum(0) - 1).max() <= 3 / 255
        uncertainty = io.read(out / f"{name}_uncertainty.nii.gz").array
        assert np.allclose(uncertainty, pred.uncertainty, atol=1e-6)
        assert uncertainty.min() >= 0 and uncertainty.max() <= 1
        volumes = pred.volumes_ml(labels, volume.spacing)
        for r in body:
            if r[0] == name:
                assert float(r[2]) == pytest.approx(volumes[r[1]], abs=1e-3)
        # labels in the file's own orientation: sitk sees the same voxels as the scan grid
        direct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_labels.nii.gz")))
        assert direct.shape == sitk.GetArrayFromImage(source).shape

    assert not (out / "broken_labels.nii.gz").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_predict_only_good_scans_exits_zero(workspace, capsys):
    w = workspace
    out = w["root"] / "out-good"
    code = main(["predict", str(w["nifti"]), str(w["dicom"]), "-c", str(w["ckpt"]), "-o", str(out), "-q"])
    _, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert stderr.strip() == ""
    assert (out / "patient1_labels.nii.gz").is_file()
    assert (out / "ct_series_labels.nii.gz").is_file()
    assert not list(out.glob("*_gate*")) and not list(out.glob("*_prob_*"))
    rows = list(csv.reader(open(out / "volumes.csv", newline="")))
    assert rows[0] == ["scan", "class", "volume_ml", "path"] and len(rows) == 5


def test_predict_with_only_bad_scans_writes_no_table(workspace, capsys):
    w = workspace
    out = w["root"] / "out-bad"
    code = main(["predict", str(w["corrupt"]), str(w["missing"]), "-c", str(w["ckpt"]), "-o", str(out), "-q"])
    _, stderr = capsys.readouterr()
    assert code == 1
    assert len([line for line in stderr.splitlines() if line.strip()]) == 2
    assert not (out / "volumes.csv").exists()


def test_predict_with_a_missing_checkpoint_is_one_line(workspace, capsys):
    w = workspace
    code = main(
        [
            "predict",
            str(w["nifti"]),
            "-c",
            str(w["root"] / "none.safetensors"),
            "-o",
            str(w["root"] / "out-none"),
            "-q",
        ]
    )
    _, stderr = capsys.readouterr()
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "none.safetensors" in lines[0]
