"""int8 through NNCF: labels and gates close to fp32 for every family, a calibration cache that is
reused and rebuilt when corrupt, a clear error without NNCF, and a guard that says how far int8
is from fp32 and warns when it is too far."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    drain,
    lee_spec,
    make_model,
    monai_spec,
    official_spec,
    one_sentence,
    random_image,
    sharpen_gates,
)

import napari_attunet as na
from napari_attunet.inference import iter_predict
from napari_attunet.inference.devices import resolve_precision
from napari_attunet.inference.quantize import CALIBRATING, DICE_MIN, GATE_MAX, guard_note
from napari_attunet.inference.runtime_openvino import CACHE_ENV

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SPECS = {
    "official-3d": official_spec(3),
    "official-2d": official_spec(2),
    "monai-3d": monai_spec(3),
    "monai-2d": monai_spec(2),
    "leejunhyun-3d": lee_spec(3),
    "leejunhyun-2d": lee_spec(2),
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def blobs(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, truth): a few balls, bright on dark, with noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    truth = np.zeros(shape, bool)
    for _ in range(3):
        centre = rng.uniform(0, shape[0], len(shape)).reshape((-1,) + (1,) * len(shape))
        truth |= ((grid - centre) ** 2).sum(0) < rng.uniform(3, 6) ** 2
    image = truth * 2.0 - 1.0 + rng.normal(0, 0.3, shape)
    return image.astype(np.float32), truth.astype(np.int64)


def trained(spec, steps: int = 60, seed: int = 0):
    """A small network trained for a few seconds to find the balls."""
    model = make_model(spec, seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(steps):
        pairs = [blobs((16,) * spec.spatial_dims, seed * 1000 + 4 * step + k) for k in range(4)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        loss = F.cross_entropy(model(x), torch.from_numpy(np.stack([p[1] for p in pairs])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _run(model, image, **options):
    """(Prediction, the progress messages) of one run."""
    return drain(iter_predict(image, model, normalization="none", tile=16, **options))


@pytest.mark.parametrize("name", list(SPECS))
def test_int8_labels_and_gates_close_to_fp32(name, cache, torch_single_thread):
    spec = SPECS[name]
    model = trained(spec, 120 if spec.family == "monai" else 60)  # MONAI's learns slower
    image, _ = blobs((32,) * spec.spatial_dims, 99)
    fp32 = na.predict(image, model, normalization="none", tile=16, precision="fp32", runtime="torch")
    int8, messages = _run(model, image, precision="int8")
    assert (int8.precision, int8.runtime, fp32.precision) == ("int8", "openvino", "fp32")
    assert CALIBRATING in messages
    probs = fp32.probabilities
    sure = probs.max(0) > 0.8  # where fp32 is sure, int8 gives the same label
    assert sure.mean() > 0.25
    assert (fp32.quantized.argmax(0) == int8.quantized.argmax(0))[sure].mean() > 0.99
    assert len(int8.gates) == len(fp32.gates) == len(spec.gates)
    diffs = []
    for g8, g32 in zip(int8.gates, fp32.gates, strict=True):
        assert g8.data.shape == g32.data.shape
        diffs.append(float(np.abs(g8.data.astype(np.float32) - g32.data.astype(np.float32)).mean()))
    assert diffs[0] <= GATE_MAX  # the finest gate, where the detail is
    assert max(diffs) <= 0.25, diffs
    (note,) = [n for n in int8.notes if "Dice per class" in n]
    assert "int8" in note and "mean |d|" in note and one_sentence(note + ".")


def test_cache_is_reused_and_rebuilt_when_corrupt(cache, tmp_path, torch_single_thread):
    path = na.save_model(sharpen_gates(make_model(lee_spec(2), seed=5)), tmp_path / "m.safetensors")
    image = random_image((32, 32), seed=3)
    first, messages = _run(na.load_model(path), image, precision="int8")
    assert CALIBRATING in messages
    (entry,) = [p for p in (cache / "openvino").iterdir() if p.name.startswith("int8-")]
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}

    # A new model object from the same file, as a new session would load it: no calibration.
    second, messages = _run(na.load_model(path), image, precision="int8")
    assert CALIBRATING not in messages
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    assert np.array_equal(first.quantized, second.quantized)

    weights = entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    weights.write_bytes(bytes(data))
    third, messages = _run(na.load_model(path), image, precision="int8")
    assert CALIBRATING in messages  # detected, calibrated again
    assert weights.read_bytes() != bytes(data)
    assert np.array_equal(first.quantized, third.quantized)

    # Another scan is another calibration set: a second entry.
    _, messages = _run(na.load_model(path), random_image((32, 32), seed=4), precision="int8")
    assert CALIBRATING in messages
    assert len([p for p in (cache / "openvino").iterdir() if p.name.startswith("int8-")]) == 2


def test_guard_warns_when_int8_is_far_from_fp32(cache, tmp_path, torch_single_thread):
    # Calibrated on faint scans, run on one a hundred times brighter: int8's ranges clip.
    import SimpleITK as sitk

    folder = tmp_path / "faint"
    folder.mkdir()
    for i in range(2):
        sitk.WriteImage(
            sitk.GetImageFromArray(random_image((16, 32, 32), seed=i) * 0.01), str(folder / f"{i}.nii.gz")
        )
    model = sharpen_gates(make_model(lee_spec(3), seed=11))
    with pytest.warns(RuntimeWarning, match="use precision fp32"):
        pred, _ = _run(model, random_image((16, 32, 32), seed=2), precision="int8", calibration=folder)
    (note,) = [n for n in pred.notes if "Dice per class" in n]
    assert note.startswith("WARNING: int8 differs from fp32") and "use precision fp32" in note
    assert any(str(folder) in n for n in pred.notes)  # which calibration it was


def test_guard_note_limits():
    good = guard_note([1.0, 0.999], [0.001, 0.019], ("background", "organ"))
    assert good.startswith("int8 agrees") and "organ 0.9990" in good and "0.0190" in good
    assert guard_note([1.0, DICE_MIN - 1e-3], [0.0], ("a", "b")).startswith("WARNING")
    assert guard_note([1.0, 1.0], [0.0, GATE_MAX + 1e-3], ("a", "b")).startswith("WARNING")


def test_auto_never_picks_int8_and_int8_needs_the_cpu_and_openvino():
    assert resolve_precision("auto", torch.device("cpu")) != "int8"
    model = make_model(lee_spec(2), seed=1)
    with pytest.raises(na.InputError) as err:
        na.predict(random_image((16, 16)), model, precision="int8", runtime="torch")
    assert one_sentence(str(err.value)) and "OpenVINO" in str(err.value)


WITHOUT_NNCF = """
import sys
sys.modules["nncf"] = None  # what Python does when the package is not installed
sys.path.insert(0, {tests!r})
import numpy as np
import napari_attunet as na
from helpers import lee_spec, make_model
model = make_model(lee_spec(2), seed=11)
image = np.random.default_rng(0).normal(size=(24, 24)).astype(np.float32)
print("fp32:", na.predict(image, model, normalization="none", tile=16, precision="fp32").precision)
try:
    na.predict(image, model, precision="int8")
except na.InputError as exc:
    print("int8:", exc)
"""


def test_without_nncf_int8_is_a_clear_error(tmp_path):
    script = WITHOUT_NNCF.format(tests=str(pathlib.Path(__file__).parent))
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines["fp32"] == "fp32"
    assert 'pip install "napari-attunet[int8]"' in lines["int8"] and one_sentence(lines["int8"])


def test_cli_int8_with_a_calibration_folder(cache, tmp_path, capsys):
    import SimpleITK as sitk
    from helpers import RAS, sitk_image

    from napari_attunet.cli import main

    ckpt = na.save_model(make_model(lee_spec(3), seed=13), tmp_path / "c.safetensors")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, where in enumerate((calibration / "a.nii.gz", calibration / "b.nii.gz", tmp_path / "scan.nii.gz")):
        array = (random_image((16, 24, 20), seed=20 + i) * 100).astype(np.int16)
        sitk.WriteImage(sitk_image(array, (0.8, 0.8, 2.5), (1.0, 2.0, 3.0), RAS), str(where))
    base = ["predict", str(tmp_path / "scan.nii.gz"), "-c", str(ckpt), "--precision"]
    assert main(base + ["fp32", "-o", str(tmp_path / "x"), "--calibrate", str(calibration)]) != 0
    assert "--calibrate is for --precision int8" in capsys.readouterr().err
    assert main(base + ["int8", "-o", str(tmp_path / "y"), "--calibrate", str(tmp_path / "none")]) != 0
    assert "calibration folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

    assert main(base + ["int8", "-o", str(tmp_path / "out"), "--calibrate", str(calibration)]) == 0
    captured = capsys.readouterr()
    assert "(int8, openvino)" in captured.out
    assert CALIBRATING in captured.err and "Dice per class" in captured.err
    assert (tmp_path / "out" / "scan_labels.nii.gz").exists()


def test_widget_int8_says_it_calibrates_and_shows_the_guard(make_napari_viewer, qtbot, cache, tmp_path):
    path = na.save_model(make_model(lee_spec(3), seed=12), tmp_path / "w.safetensors")
    viewer = make_napari_viewer()
    viewer.add_image(random_image((16, 32, 32), seed=6), name="scan")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    assert widget.load_checkpoint(path)
    assert "int8" in list(widget.precision.choices)
    widget.precision.value = "int8"
    seen = []
    worker = widget.start()
    worker.yielded.connect(lambda step: seen.append(widget.status.value))
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    assert any(CALIBRATING in status for status in seen), seen
    status = widget.status.value
    assert status.startswith("done") and "(int8, openvino)" in status and "Dice per class" in status
    assert widget.state.prediction.precision == "int8"

    # With a calibrated model stored beside the checkpoint (convert --int8), no calibration.
    from napari_attunet.commands.info import CalibrationPlanner
    from napari_attunet.inference.calibrated import folder_for
    from napari_attunet.inference.quantize import store_beside

    model = na.load_model(path)
    store_beside(model, _scans(tmp_path)[0], folder_for(path), CalibrationPlanner(model, None))
    seen.clear()
    worker = widget.start()
    worker.yielded.connect(lambda step: seen.append(widget.status.value))
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    assert seen and not any(CALIBRATING in status for status in seen), seen
    assert any("w.int8 beside the checkpoint" in n for n in widget.state.prediction.notes)


# ---- convert --int8: a calibrated model stored beside the weights ----------------------------


@pytest.fixture
def calibrations(monkeypatch) -> list:
    """Every NNCF calibration this test makes (the real one runs; this only counts)."""
    from napari_attunet.inference import quantize

    calls: list = []
    real = quantize.quantize_model

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_model", counted)
    return calls


def _scans(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """(a calibration folder of two small scans, a scan to segment), written as NIfTI."""
    import SimpleITK as sitk
    from helpers import RAS, sitk_image

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, where in enumerate((folder / "a.nii.gz", folder / "b.nii.gz", tmp_path / "scan.nii.gz")):
        array = (random_image((16, 24, 20), seed=30 + i) * 100).astype(np.int16)
        sitk.WriteImage(sitk_image(array, (0.8, 0.8, 2.5), (1.0, 2.0, 3.0), RAS), str(where))
    return folder, tmp_path / "scan.nii.gz"


def test_convert_int8_stores_a_model_that_predict_reuses(cache, tmp_path, calibrations, capsys):
    import json

    from napari_attunet.cli import main
    from napari_attunet.inference.calibrated import file_sha256
    from napari_attunet.inference.runtime_openvino import weights_digest

    ckpt = na.save_model(sharpen_gates(make_model(lee_spec(3), seed=13)), tmp_path / "c.safetensors")
    folder, scan = _scans(tmp_path)
    stored = tmp_path / "c.int8"

    assert main(["convert", str(ckpt), "--int8"]) == 1  # calibrate on what? refused
    err = capsys.readouterr().err
    assert "--calibrate DIR" in err and one_sentence(err.split(": ", 1)[1])
    assert not stored.exists() and not calibrations

    assert main(["convert", str(ckpt), "--int8", "--calibrate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {stored}" in out and "2 scans" in out
    assert len(calibrations) == 1
    assert sorted(p.name for p in stored.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["weights"] == weights_digest(na.load_model(ckpt))
    assert manifest["checkpoint"] == {"name": "c.safetensors", "sha256": file_sha256(ckpt)}
    files = manifest["calibration"]["files"]
    assert [f["name"] for f in files] == ["a.nii.gz", "b.nii.gz"]
    assert files[0]["sha256"] == file_sha256(folder / "a.nii.gz") and files[0]["bytes"] > 0
    assert {"openvino", "torch"} <= set(manifest["versions"]) and manifest["calibration"]["nncf"]
    assert manifest["scope"] == "all" and len(manifest["tile"]) == 3 and manifest["created"].endswith("Z")
    assert manifest["sha256"] == {n: file_sha256(stored / n) for n in ("model.xml", "model.bin")}

    # Not overwritten without --overwrite; nothing is calibrated for the refusal.
    stamps = {p.name: p.stat().st_mtime_ns for p in stored.iterdir()}
    assert main(["convert", str(ckpt), "--int8", "--calibrate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and one_sentence(err.split(": ", 1)[1])
    assert {p.name: p.stat().st_mtime_ns for p in stored.iterdir()} == stamps and len(calibrations) == 1

    # predict, in the API and the CLI, uses it: no calibration, and the note says where it came from.
    pred, messages = _run_stored(na.load_model(ckpt), scan)
    assert CALIBRATING not in messages and len(calibrations) == 1
    assert pred.precision == "int8" and any("c.int8 beside the checkpoint" in n for n in pred.notes)
    assert any("Dice per class" in n for n in pred.notes)  # the guard still runs
    out = str(tmp_path / "out")
    assert main(["predict", str(scan), "-c", str(ckpt), "-o", out, "--precision", "int8"]) == 0
    err = capsys.readouterr().err
    assert "c.int8 beside the checkpoint" in err and CALIBRATING not in err and len(calibrations) == 1
    # ... and with the same calibration folder named again.
    pred, _ = _run_stored(na.load_model(ckpt), scan, calibration=folder)
    assert len(calibrations) == 1 and any("c.int8 beside" in n for n in pred.notes)

    assert main(["info", str(ckpt)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("int8 model"))
    assert str(stored) in row and "2 scans" in row and "used by predict --precision int8" in row

    # --overwrite replaces it once the new one is whole.
    assert main(["convert", str(ckpt), "--int8", "--calibrate", str(folder), "--overwrite"]) == 0
    assert len(calibrations) == 2 and (stored / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _run_stored(model, scan, **options):
    """(Prediction, progress messages) of an int8 run on a scan file, as predict reads it."""
    from napari_attunet.scans import io

    return drain(iter_predict(io.read(scan), model, precision="int8", **options))


STORED_WITHOUT_NNCF = """
import sys
sys.modules["nncf"] = None  # a machine that only runs: NNCF is not installed
from napari_attunet.cli import main
sys.exit(main(["predict", {scan!r}, "-c", {ckpt!r}, "-o", {out!r}, "--precision", "int8"]))
"""


def test_a_stored_int8_model_runs_without_nncf(cache, tmp_path, capsys):
    """NNCF calibrates; running a model stored by convert --int8 needs only OpenVINO. Without
    NNCF and without a stored model, predict is refused before any scan is read."""
    from napari_attunet.cli import main

    ckpt = na.save_model(make_model(lee_spec(3), seed=17), tmp_path / "c.safetensors")
    folder, scan = _scans(tmp_path)
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}

    def predict_without_nncf(out: str) -> subprocess.CompletedProcess:
        script = STORED_WITHOUT_NNCF.format(scan=str(scan), ckpt=str(ckpt), out=str(tmp_path / out))
        command = [sys.executable, "-c", script]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    refused = predict_without_nncf("first")
    assert refused.returncode != 0 and 'pip install "napari-attunet[int8]"' in refused.stderr
    assert "convert --int8" in refused.stderr and not (tmp_path / "first").exists()

    assert main(["convert", str(ckpt), "--int8", "--calibrate", str(folder)]) == 0
    capsys.readouterr()
    ran = predict_without_nncf("second")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "second" / "scan_labels.nii.gz").is_file()


def test_a_tampered_or_stale_int8_model_is_ignored_with_a_sentence(cache, tmp_path, calibrations):
    from napari_attunet.commands.info import CalibrationPlanner
    from napari_attunet.inference.calibrated import folder_for
    from napari_attunet.inference.quantize import store_beside

    ckpt = na.save_model(sharpen_gates(make_model(lee_spec(3), seed=14)), tmp_path / "t.safetensors")
    folder, scan = _scans(tmp_path)
    model = na.load_model(ckpt)
    stored, _ = store_beside(model, folder, folder_for(ckpt), CalibrationPlanner(model, None))
    assert len(calibrations) == 1

    def ignored(model, match: str, **options) -> str:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)  # else the scan's own calibration is cached
        before = len(calibrations)
        with pytest.warns(RuntimeWarning, match="is ignored because"):
            pred, messages = _run_stored(model, scan, **options)
        assert CALIBRATING in messages and len(calibrations) == before + 1  # calibrated as without it
        (note,) = [n for n in pred.notes if "is ignored because" in n]
        assert match in note and str(stored) in note and one_sentence(note + ".")
        assert not any("beside the checkpoint" in n for n in pred.notes)
        return note

    # A byte of the IR changed: its sha256 is no longer the manifest's.
    weights = stored / "model.bin"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    ignored(na.load_model(ckpt), "model.bin does not have the sha256")
    weights.write_bytes(good)

    # Made with another PyTorch (or OpenVINO) than this one.
    import json

    manifest = json.loads((stored / "manifest.json").read_text())
    older = {**manifest, "versions": {**manifest["versions"], "torch": "0.1"}}
    (stored / "manifest.json").write_text(json.dumps(older))
    ignored(na.load_model(ckpt), "PyTorch 0.1")
    (stored / "manifest.json").write_text(json.dumps(manifest))

    # Another normalization, or another calibration folder, than it was made with.
    ignored(na.load_model(ckpt), "normalization", normalization="zscore")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.nii.gz").write_bytes((folder / "b.nii.gz").read_bytes())
    ignored(na.load_model(ckpt), "other scans", calibration=other)

    # The checkpoint's weights changed since (re-trained and saved under the same name).
    na.save_model(sharpen_gates(make_model(lee_spec(3), seed=15)), ckpt)
    ignored(na.load_model(ckpt), "other weights")

    # Saved back as they were, the weights match again: the stored model is used.
    before = len(calibrations)
    na.save_model(sharpen_gates(make_model(lee_spec(3), seed=14)), ckpt)
    pred, messages = _run_stored(na.load_model(ckpt), scan)
    assert CALIBRATING not in messages and len(calibrations) == before
    assert any("t.int8 beside the checkpoint" in n for n in pred.notes)
