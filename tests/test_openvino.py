"""The OpenVINO runtime: the same numbers as PyTorch for every family, a conversion cache that is
used when sound and rebuilt when not, and a plain PyTorch fallback where OpenVINO is absent."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import (
    TOL_Q,
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
from napari_attunet.inference.runtime_openvino import (
    CACHE_ENV,
    COMPILING,
    LIMIT_ENV,
    known_failure,
    network,
)
from napari_attunet.models.leejunhyun import LeeAttUNet

pytest.importorskip("openvino")

SPECS = {
    "official-3d": official_spec(3),
    "official-2d": official_spec(2),
    "official-multi-3d": official_spec(3, variant="multi_att_dsv"),
    "official-grid-2d": official_spec(2, variant="grid_attention", out_ch=3),
    "monai-3d": monai_spec(3),
    "monai-2d": monai_spec(2, out_ch=3),
    "leejunhyun-3d": lee_spec(3),
    "leejunhyun-2d": lee_spec(2, out_ch=1),
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.mark.parametrize("name", list(SPECS))
def test_outputs_equal_pytorch(name, cache):
    spec = SPECS[name]
    model = sharpen_gates(make_model(spec, seed=3))
    # Not the size the network was traced at: the converted spatial shape is dynamic.
    shape = tuple(3 * s for s in spec.total_stride)
    x = torch.from_numpy(random_image((2, spec.in_channels) + shape, seed=1))
    with torch.no_grad():
        logits, gates = model.forward_with_attention(x)
    ov_logits, ov_gates = network(model, "fp32").forward_with_attention(x)
    assert ov_logits.shape == logits.shape
    assert float((ov_logits - logits).abs().max()) < 2e-3
    assert len(ov_gates) == len(gates) == len(spec.gates)
    for ov_gate, gate in zip(ov_gates, gates, strict=True):
        assert ov_gate.shape == gate.shape
        assert float(gate.std()) > 1e-3  # maps that vary, not a constant
        assert float((ov_gate - gate).abs().max()) < 1e-4


def _predict(model, image, **options):
    return na.predict(image, model, normalization="none", precision="fp32", **options)


def test_predict_tta_uncertainty_and_preview_match_pytorch(cache):
    model = sharpen_gates(make_model(official_spec(3, out_ch=3), seed=5))
    image = random_image((20, 40, 36), seed=2)
    options = dict(tile=(16, 32, 32), overlap=0.5, tta=True)
    ours = _predict(model, image, runtime="openvino", **options)
    ref = _predict(model, image, runtime="torch", **options)
    assert (ours.runtime, ref.runtime) == ("openvino", "torch")
    assert np.abs(ours.probabilities - ref.probabilities).max() <= TOL_Q
    assert np.abs(ours.uncertainty - ref.uncertainty).max() <= 2 * TOL_Q
    for a, b in zip(ours.gates, ref.gates, strict=True):
        assert (a.stride, a.offset) == (b.stride, b.offset)
        assert np.abs(a.data - b.data).max() < 1e-4
    region = (slice(6, 14), slice(0, 40), slice(0, 36))
    preview = _predict(model, image, runtime="openvino", region=region, tile=(16, 32, 32))
    preview_ref = _predict(model, image, runtime="torch", region=region, tile=(16, 32, 32))
    assert np.array_equal(preview.labels(), preview_ref.labels())


def test_2d_model_on_a_volume_in_batches(cache):
    model = sharpen_gates(make_model(monai_spec(2, out_ch=3), seed=6))
    image = random_image((11, 24, 40), seed=3)  # 11 slices: batches of 8, the last one short
    ours = _predict(model, image, runtime="openvino", tile=16, overlap=0.25)
    ref = _predict(model, image, runtime="torch", tile=16, overlap=0.25)
    assert np.abs(ours.probabilities - ref.probabilities).max() <= TOL_Q
    for a, b in zip(ours.gates, ref.gates, strict=True):
        assert np.abs(a.data - b.data).max() < 1e-4


def _messages(model, image) -> list[str]:
    steps = iter_predict(image, model, normalization="none", precision="fp32", runtime="openvino", tile=16)
    messages = []
    while True:
        try:
            messages.append(next(steps).message)
        except StopIteration as stop:
            return messages, stop.value


def _entry(cache: pathlib.Path) -> pathlib.Path:
    (entry,) = [p for p in (cache / "openvino").iterdir()]
    return entry


def _stamps(entry: pathlib.Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}


def test_cache_second_run_does_not_convert_and_corrupt_entry_is_rebuilt(cache, tmp_path):
    path = na.save_model(make_model(monai_spec(3), seed=8), tmp_path / "m.safetensors")
    image = random_image((16, 24, 16), seed=4)
    messages, first = _messages(na.load_model(path), image)
    assert COMPILING in messages
    entry = _entry(cache)
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no partial left
    stamps = _stamps(entry)

    # A new model object from the same file, as a new session would load it: no conversion.
    messages, second = _messages(na.load_model(path), image)
    assert COMPILING not in messages
    assert _stamps(entry) == stamps
    assert np.array_equal(first.quantized, second.quantized)

    # A corrupt weights file: detected, converted again, the same result.
    weights = entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    weights.write_bytes(bytes(data))
    messages, third = _messages(na.load_model(path), image)
    assert COMPILING in messages
    assert np.array_equal(first.quantized, third.quantized)
    assert _entry(cache) == entry and weights.read_bytes() != bytes(data)

    # A stale entry (made by another OpenVINO) and an unreadable manifest: rebuilt too.
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["fields"]["openvino"] = "2020.1"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert COMPILING in _messages(na.load_model(path), image)[0]
    (entry / "manifest.json").write_text("{not json")
    assert COMPILING in _messages(na.load_model(path), image)[0]
    assert COMPILING not in _messages(na.load_model(path), image)[0]


def test_changed_weights_are_a_new_entry(cache):
    model = make_model(lee_spec(2), seed=9)
    image = random_image((24, 24), seed=5)
    first = _predict(model, image, runtime="openvino", tile=16)
    with torch.no_grad():
        model.Conv_1x1.bias[1] += 1.0  # softmax: a shift of one class only
    second = _predict(model, image, runtime="openvino", tile=16)
    ref = _predict(model, image, runtime="torch", tile=16)
    assert len(list((cache / "openvino").iterdir())) == 2
    assert not np.array_equal(first.quantized, second.quantized)
    assert np.abs(second.probabilities - ref.probabilities).max() <= TOL_Q


def test_auto_on_a_tiny_input_is_pytorch_and_an_unknown_runtime_is_named(cache):
    # OpenVINO only where it was measured faster (test_autochoice); a tiny run is not measured
    model = make_model(lee_spec(2), seed=10)
    pred = _predict(model, random_image((24, 24)), tile=16)
    assert pred.runtime == "torch" and any("without measuring" in n for n in pred.notes)
    with pytest.raises(na.InputError) as err:
        _predict(model, random_image((24, 24)), runtime="tensorrt")
    assert one_sentence(str(err.value)) and "openvino" in str(err.value)


WITHOUT_OPENVINO = """
import sys
sys.modules["openvino"] = None  # what Python does when the package is not installed
sys.path.insert(0, {tests!r})
import numpy as np
import napari_attunet as na
from helpers import lee_spec, make_model
model = make_model(lee_spec(2), seed=11)
image = np.random.default_rng(0).normal(size=(24, 24)).astype(np.float32)
print("auto:", na.predict(image, model, normalization="none", tile=16).runtime)
try:
    na.predict(image, model, runtime="openvino")
except na.InputError as exc:
    print("openvino:", exc)
"""


def test_without_openvino_auto_is_torch_and_openvino_is_a_clear_error(tmp_path):
    script = WITHOUT_OPENVINO.format(tests=str(pathlib.Path(__file__).parent))
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert lines["auto"] == "torch"
    assert 'pip install "napari-attunet[openvino]"' in lines["openvino"]
    assert one_sentence(lines["openvino"])
    assert not (tmp_path / "cache").exists()


def test_widget_runtime_choice_says_it_compiles(make_napari_viewer, qtbot, cache, tmp_path):
    path = na.save_model(make_model(official_spec(3, out_ch=3), seed=12), tmp_path / "w.safetensors")
    viewer = make_napari_viewer()
    viewer.add_image(random_image((16, 32, 32), seed=6), name="scan")
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    assert widget.load_checkpoint(path)
    assert list(widget.runtime.choices) == ["auto", "torch", "openvino"]
    widget.runtime.value = "openvino"
    widget.precision.value = "fp32"
    seen = []
    worker = widget.start()
    worker.yielded.connect(lambda step: seen.append(widget.status.value))
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    assert any(COMPILING in status for status in seen), seen
    assert widget.status.value.startswith("done") and "openvino" in widget.status.value
    assert widget.state.prediction.runtime == "openvino"
    assert "scan attunet" in [layer.name for layer in viewer.layers]


def test_cli_runtime(cache, tmp_path, capsys):
    import SimpleITK as sitk
    from helpers import RAS, sitk_image

    from napari_attunet.cli import main

    ckpt = na.save_model(make_model(official_spec(3, out_ch=3), seed=13), tmp_path / "c.safetensors")
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(
        sitk_image(
            (random_image((16, 24, 20), seed=7) * 100).astype(np.int16), (0.8, 0.8, 2.5), (1.0, 2.0, 3.0), RAS
        ),
        str(scan),
    )
    labels = {}
    for runtime in ("torch", "openvino"):
        out = tmp_path / runtime
        assert (
            main(
                [
                    "predict",
                    str(scan),
                    "-c",
                    str(ckpt),
                    "-o",
                    str(out),
                    "--runtime",
                    runtime,
                    "--precision",
                    "fp32",
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        assert f"(fp32, {runtime})" in captured.out
        assert (COMPILING in captured.err) == (runtime == "openvino")  # converted once, said once
        labels[runtime] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan_labels.nii.gz")))
    assert (labels["torch"] == labels["openvino"]).mean() > 0.999  # ties may fall either way


class _WithBessel(LeeAttUNet):
    """A network with an operation OpenVINO has no conversion rule for (a Bessel function);
    it adds nothing to the logits, so PyTorch's answer is the plain network's."""

    def forward_with_attention(self, x):
        logits, gates = super().forward_with_attention(x)
        return logits + 0.0 * torch.special.i0(logits), gates


def test_a_network_openvino_cannot_convert_runs_on_torch_under_auto(cache):
    plain = make_model(lee_spec(2, out_ch=3), seed=14)
    model = _WithBessel(plain.spec)
    model.load_state_dict(plain.state_dict())
    model.eval()
    image = random_image((32, 1448), seed=8)  # 540 tiles: enough for auto to measure OpenVINO
    with pytest.warns(RuntimeWarning, match="PyTorch ran it"):
        pred = _predict(model, image, tile=16)
    assert pred.runtime == "torch"
    (note,) = [n for n in pred.notes if "OpenVINO cannot" in n]
    assert one_sentence(note) and "aten::i0" in note
    ref = _predict(plain, image, tile=16, runtime="torch")
    assert np.array_equal(pred.quantized, ref.quantized)
    assert known_failure(model, "fp32") is not None
    # The failure is remembered: the next run neither converts again nor says it compiles.
    steps = iter_predict(image, model, normalization="none", precision="fp32", tile=16)
    with pytest.warns(RuntimeWarning):
        messages = [step.message for step in steps]
    assert COMPILING not in messages
    with pytest.raises(na.CheckpointError) as err:
        _predict(model, image, tile=16, runtime="openvino")
    assert one_sentence(str(err.value)) and "runtime torch" in str(err.value)
    assert not list(cache.rglob("*.bin"))  # no model stored; auto's choice (PyTorch) is


def _entries(cache: pathlib.Path) -> set[str]:
    return {p.name for p in (cache / "openvino").iterdir() if not p.name.startswith(".")}


def test_cache_keeps_under_its_limit_by_evicting_the_least_recently_used(cache, monkeypatch):
    models = [make_model(lee_spec(2), seed=20 + k) for k in range(3)]
    network(models[0], "fp32")
    (first,) = _entries(cache)
    size = sum(p.stat().st_size for p in (cache / "openvino" / first).iterdir())
    monkeypatch.setenv(LIMIT_ENV, str(2.5 * size / 2**20))  # room for two entries, not three
    stale = cache / "openvino" / ".partial-died"
    stale.mkdir()
    os.utime(stale, (0, 0))  # left by a process that died long ago
    network(models[1], "fp32")
    (second,) = _entries(cache) - {first}
    assert not stale.exists()
    # The first model is used again (read from the cache by a new process): the second is
    # now the least recently used, and goes when a third entry comes.
    os.utime(cache / "openvino" / first, (1, 1))
    os.utime(cache / "openvino" / second, (2, 2))
    fresh = na.load_model(na.save_model(models[0], cache.parent / "again.safetensors"))
    assert not _messages_compile(fresh)
    network(models[2], "fp32")
    entries = _entries(cache)
    assert first in entries and second not in entries and len(entries) == 2
    total = sum(p.stat().st_size for p in (cache / "openvino").rglob("*") if p.is_file())
    assert total <= 2.5 * size
    # A limit smaller than one entry keeps the one in use, and only it.
    monkeypatch.setenv(LIMIT_ENV, "0")
    network(make_model(lee_spec(2), seed=30), "fp32")
    assert len(_entries(cache)) == 1


def _messages_compile(model) -> bool:
    messages, _ = _messages(model, random_image((24, 24), seed=9))
    return COMPILING in messages


def test_blocks_on_two_threads_share_one_compiled_network(cache):
    """Dask threads run blocks at once on one compiled network: each thread has its own infer
    requests (one request runs one inference at a time: 'Infer Request is busy')."""
    da = pytest.importorskip("dask.array")
    model = sharpen_gates(make_model(official_spec(3), seed=4))
    image = random_image((24, 48, 40), seed=6)
    options = dict(tile=16, block=16, runtime="openvino")
    one = _predict(model, da.from_array(image, chunks=16), workers=1, **options)
    two = _predict(model, da.from_array(image, chunks=16), workers=2, **options)
    assert two.runtime == "openvino"
    assert np.array_equal(two.quantized, one.quantized)
    for a, b in zip(two.gates, one.gates, strict=True):
        assert np.array_equal(a.data, b.data)
