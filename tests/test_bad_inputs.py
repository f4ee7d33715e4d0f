"""A table of bad inputs, through the API, the command line and a real napari viewer.

Every case asserts: the error's type (CheckpointError / InputError, or a notification in
napari), that the message names the file, layer or option, that no traceback, ``[Errno N]`` or
object address is shown, and that no file was created or changed (byte for byte).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import make_model, official_spec

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.outputs import OutputError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BAD_TEXT = re.compile(r"Traceback|\[Errno|0x[0-9a-fA-F]{6,}")


# ---- the files -------------------------------------------------------------------------------


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _first_weight(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point() and v.dim() > 1)


def _save_torch(path, sd) -> pathlib.Path:
    torch.save(sd, path)
    return path


def _zip_declaring(path, source: pathlib.Path, size: int = 0xFFFFFFFE) -> pathlib.Path:
    """A torch zip whose central directory says every storage inflates to ``size`` bytes (as a
    deflate bomb's would), written byte by byte: nothing in it is ever inflated."""
    data = bytearray(source.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        name = bytes(data[at + 46 : at + 46 + name_len])
        if b"/data/" in name:
            struct.pack_into("<I", data, at + 24, size)
        at += 46
    path.write_bytes(bytes(data))
    return path


def _safetensors_bomb(path) -> pathlib.Path:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4 * 10**12]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


def _with_spec(path, good: pathlib.Path, **changes) -> pathlib.Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safe_open handle
    data = json.loads(meta["napari_attunet"])
    data["spec"].update(changes)
    save_file(tensors, str(path), metadata={"napari_attunet": json.dumps(data)})
    return path


def _nifti_header_only(path, shape, code=16, bitpix=32) -> pathlib.Path:
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", header, 70, code, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    path.write_bytes(bytes(header) + b"\0" * 4 + b"\0" * 1024)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import gzip

    root = tmp_path_factory.mktemp("bad")
    model = make_model(official_spec(3, out_ch=2, features=(2, 4, 8, 16, 32)), seed=3)
    good = na.save_model(model, root / "good.safetensors", class_names=["background", "organ"])
    sd = _state(model)
    key = _first_weight(sd)
    f: dict[str, pathlib.Path] = {"root": root, "good": good}

    def changed(name, change):
        d = _state(model)
        change(d)
        return _save_torch(root / name, d)

    f["nan_pt"] = changed("nan_weights.pt", lambda d: d[key].fill_(float("nan")))
    f["inf_pt"] = changed("inf_weights.pt", lambda d: d[key].view(-1)[0].fill_(float("inf")))
    f["complex_pt"] = changed("complex_weights.pt", lambda d: d.__setitem__(key, d[key].to(torch.complex64)))
    f["meta_pt"] = changed(
        "meta_weights.pt", lambda d: d.__setitem__(key, torch.empty(d[key].shape, device="meta"))
    )
    f["sparse_pt"] = changed("sparse_weights.pt", lambda d: d.__setitem__(key, d[key].to_sparse()))
    from safetensors.torch import save_file

    nan_sd = _state(model)
    nan_sd[key].fill_(float("nan"))
    save_file(nan_sd, str(root / "nan_weights.safetensors"))
    f["nan_st"] = root / "nan_weights.safetensors"
    f["zip_bomb"] = _zip_declaring(root / "expands.pt", _save_torch(root / "plain.pt", sd))
    f["st_bomb"] = _safetensors_bomb(root / "header_bomb.safetensors")
    f["spec_strides"] = _with_spec(root / "empty_strides.safetensors", good, strides=[])
    f["spec_features"] = _with_spec(root / "negative_features.safetensors", good, features=[2, -4, 8, 16, 32])
    f["spec_spacing"] = _with_spec(root / "zero_spacing.safetensors", good, spacing=[0, 1, 1])
    f["spec_bomb"] = _with_spec(
        root / "spec_bomb.safetensors", good, features=[4096, 8192, 16384, 32768, 65536]
    )
    f["random_pth"] = root / "random.pth"
    f["random_pth"].write_bytes(np.random.default_rng(1).bytes(4096))
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:2000])
    f["truncated_st"] = truncated
    f["missing_ckpt"] = root / "absent.safetensors"

    image = (np.random.default_rng(2).random((12, 16, 16)) * 100).astype(np.int16)
    scan = root / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(scan))
    f["scan"] = scan
    sitk.WriteImage(
        sitk.GetImageFromArray((np.random.rand(6, 8, 8) + 1j).astype(np.complex64)),
        str(root / "complex.nii.gz"),
    )
    f["complex_nii"] = root / "complex.nii.gz"
    (root / "detached.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\n"
        "encoding: raw\nendian: little\n"
        "data file: detached_voxels.raw\n"
    )
    f["nhdr"] = root / "detached.nhdr"
    (root / "detached.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\n"
        "ElementType = MET_SHORT\n"
        "ElementDataFile = mhd_voxels.raw\n"
    )
    f["mhd"] = root / "detached.mhd"
    (root / "gzip_bomb.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 512 512 512\nencoding: gzip\n"
        b"endian: little\n\n" + gzip.compress(b"\0" * (4 << 20))
    )
    f["gz_bomb"] = root / "gzip_bomb.nrrd"
    (root / "huge.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\n"
        b"sizes: 100000 100000 100000\nencoding: raw\n"
        b"endian: little\n\n" + b"\0" * 64
    )
    f["huge_nrrd"] = root / "huge.nrrd"
    f["huge_nii"] = _nifti_header_only(root / "huge.nii", (30000, 30000, 30000))
    f["complex_hdr_nii"] = _nifti_header_only(root / "complex_header.nii", (4, 4, 4), 32, 64)
    data = scan.read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    f["truncated_nii"] = root / "truncated.nii.gz"
    (root / "noise.nii.gz").write_bytes(np.random.default_rng(3).bytes(2048))
    f["noise_nii"] = root / "noise.nii.gz"
    (root / "empty.nrrd").write_bytes(b"")
    f["empty_nrrd"] = root / "empty.nrrd"
    import nibabel

    nibabel.save(
        nibabel.Nifti1Image(np.zeros((6, 5, 4, 2), np.float32), np.eye(4)), str(root / "series4d.nii.gz")
    )
    f["4d"] = root / "series4d.nii.gz"
    mha = root / "compressed.mha"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(mha), True)
    (root / "truncated.mha").write_bytes(mha.read_bytes()[:-200])
    f["truncated_mha"] = root / "truncated.mha"
    with_nan = image.astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(with_nan), str(root / "with_nan.nii.gz"))
    f["nan_nii"] = root / "with_nan.nii.gz"
    f["missing_scan"] = root / "absent.nii.gz"
    f["folder_as_file"] = root / "a_folder.nii.gz"
    f["folder_as_file"].mkdir()
    return f


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_message(message: str, names: str) -> None:
    assert names in message, (names, message)
    assert not BAD_TEXT.search(message), message
    assert "\n" not in message.strip(), message


# ---- API ---------------------------------------------------------------------------------------


@dataclass
class ApiCase:
    id: str
    call: Callable[[dict], object]
    error: type
    names: Callable[[dict], str]


def _model(f):
    return na.load_model(f["good"])


X = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)


def _with(value, **index):
    y = X.copy()
    y[index.get("at", (0, 0, 0))] = value
    return y


CKPT_KEYS = [
    "nan_pt",
    "inf_pt",
    "complex_pt",
    "meta_pt",
    "sparse_pt",
    "nan_st",
    "zip_bomb",
    "st_bomb",
    "spec_strides",
    "spec_features",
    "spec_spacing",
    "spec_bomb",
    "random_pth",
    "truncated_st",
    "missing_ckpt",
]
SCAN_KEYS = [
    "complex_nii",
    "complex_hdr_nii",
    "nhdr",
    "mhd",
    "gz_bomb",
    "huge_nrrd",
    "huge_nii",
    "truncated_nii",
    "noise_nii",
    "empty_nrrd",
    "4d",
    "truncated_mha",
    "missing_scan",
    "folder_as_file",
]

API_CASES = (
    [
        ApiCase(
            f"checkpoint-{k}",
            lambda f, k=k: na.load_model(f[k]),
            na.CheckpointError,
            lambda f, k=k: str(f[k]),
        )
        for k in CKPT_KEYS
    ]
    + [
        ApiCase(f"scan-{k}", lambda f, k=k: na.io.read(f[k]), na.InputError, lambda f, k=k: str(f[k]))
        for k in SCAN_KEYS
    ]
    + [
        ApiCase(
            "spacing-zero",
            lambda f: na.predict(X, _model(f), spacing=(0, 1, 1), name="layer 'ct'"),
            na.InputError,
            lambda f: "spacing",
        ),
        ApiCase(
            "spacing-negative",
            lambda f: na.predict(X, _model(f), spacing=(1, -1, 1)),
            na.InputError,
            lambda f: "spacing",
        ),
        ApiCase(
            "spacing-nan",
            lambda f: na.predict(X, _model(f), spacing=(1, float("nan"), 1)),
            na.InputError,
            lambda f: "spacing",
        ),
        ApiCase(
            "tile-negative", lambda f: na.predict(X, _model(f), tile=-16), na.InputError, lambda f: "tile"
        ),
        ApiCase("tile-zero", lambda f: na.predict(X, _model(f), tile=0), na.InputError, lambda f: "tile"),
        ApiCase(
            "tile-length", lambda f: na.predict(X, _model(f), tile=(16, 16)), na.InputError, lambda f: "tile"
        ),
        ApiCase(
            "device-xpu", lambda f: na.predict(X, _model(f), device="xpu"), na.InputError, lambda f: "xpu"
        ),
        ApiCase(
            "device-meta", lambda f: na.predict(X, _model(f), device="meta"), na.InputError, lambda f: "meta"
        ),
        ApiCase(
            "device-cuda",
            lambda f: na.predict(X, _model(f), device="cuda:7"),
            na.InputError,
            lambda f: "cuda:7",
        ),
        ApiCase(
            "device-garbage",
            lambda f: na.predict(X, _model(f), device="gpu!"),
            na.InputError,
            lambda f: "gpu!",
        ),
        ApiCase(
            "precision", lambda f: na.predict(X, _model(f), precision="fp8"), na.InputError, lambda f: "fp8"
        ),
        ApiCase(
            "overlap", lambda f: na.predict(X, _model(f), overlap=1.5), na.InputError, lambda f: "overlap"
        ),
        ApiCase(
            "nan-voxels",
            lambda f: na.predict(_with(np.nan), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "inf-voxels",
            lambda f: na.predict(_with(np.inf), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "complex-array",
            lambda f: na.predict(X.astype(np.complex64), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "bool-array",
            lambda f: na.predict(X > 0.5, _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "empty-array",
            lambda f: na.predict(np.zeros((0, 4, 4), np.float32), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "one-voxel",
            lambda f: na.predict(np.zeros((1, 1, 1), np.float32), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "5d-array",
            lambda f: na.predict(np.zeros((2, 2, 4, 4, 4), np.float32), _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "2d-on-3d-model",
            lambda f: na.predict(X[0], _model(f), name="layer 'ct'"),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "normalization-garbage",
            lambda f: na.predict(X, _model(f), normalization="median"),
            na.InputError,
            lambda f: "normalization",
        ),
        ApiCase(
            "normalization-window",
            lambda f: na.predict(X, _model(f), normalization={"mode": "ct", "window": [5, 1]}),
            na.InputError,
            lambda f: "normalization",
        ),
        ApiCase(
            "resampling-bomb",
            lambda f: na.predict(
                X,
                na.load_model(f["good"], overrides={"spacing": (0.01, 0.01, 0.01)}),
                spacing=(40.0, 40.0, 40.0),
                name="layer 'ct'",
            ),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "overflowing-values",
            lambda f: na.predict(
                np.full_like(X, 3.3e38), _model(f), normalization="none", precision="fp32", name="layer 'ct'"
            ),
            na.InputError,
            lambda f: "layer 'ct'",
        ),
        ApiCase(
            "thresholds-count",
            lambda f: na.predict(X, _model(f)).labels([0.1, 0.2, 0.3]),
            na.InputError,
            lambda f: "thresholds",
        ),
        ApiCase(
            "write-existing", lambda f: na.io.write(f["scan"], X, None), OutputError, lambda f: str(f["scan"])
        ),
        ApiCase(
            "write-into-folder",
            lambda f: na.io.write(f["folder_as_file"], X, None),
            OutputError,
            lambda f: str(f["folder_as_file"]),
        ),
        ApiCase(
            "write-under-a-file",
            lambda f: na.io.write(f["scan"] / "labels.nii.gz", X, None),
            OutputError,
            lambda f: str(f["scan"]),
        ),
        ApiCase(
            "write-suffix",
            lambda f: na.io.write(f["root"] / "labels.png", X, None),
            na.InputError,
            lambda f: "labels.png",
        ),
    ]
)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input(case, files, capfd):
    before = snapshot(files["root"])
    with pytest.raises(case.error) as info:
        case.call(files)
    assert isinstance(info.value, ValueError)
    _check_message(str(info.value), case.names(files))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert snapshot(files["root"]) == before


# ---- command line ------------------------------------------------------------------------------


@dataclass
class CliCase:
    id: str
    argv: Callable[[dict, pathlib.Path], list[str]]
    names: Callable[[dict], str]


def _predict_argv(scan_key="scan", ckpt_key="good", *extra):
    return lambda f, out: ["predict", str(f[scan_key]), "-c", str(f[ckpt_key]), "-o", str(out), "-q", *extra]


CLI_CASES = (
    [CliCase(f"checkpoint-{k}", _predict_argv("scan", k), lambda f, k=k: str(f[k])) for k in CKPT_KEYS]
    + [CliCase(f"scan-{k}", _predict_argv(k), lambda f, k=k: str(f[k])) for k in [*SCAN_KEYS, "nan_nii"]]
    + [
        CliCase(
            "thresholds-count",
            _predict_argv("scan", "good", "--thresholds", "0.1", "0.2", "0.3"),
            lambda f: "--thresholds",
        ),
        CliCase(
            "normalization-garbage",
            _predict_argv("scan", "good", "--normalization", "median"),
            lambda f: "--normalization",
        ),
        CliCase(
            "normalization-numbers",
            _predict_argv("scan", "good", "--normalization", "ct:low,high"),
            lambda f: "--normalization",
        ),
        CliCase("tile-negative", _predict_argv("scan", "good", "--tile", "-16"), lambda f: "--tile"),
        CliCase("tile-length", _predict_argv("scan", "good", "--tile", "16", "16"), lambda f: "--tile"),
        CliCase("device-xpu", _predict_argv("scan", "good", "--device", "xpu"), lambda f: "--device"),
        CliCase("device-meta", _predict_argv("scan", "good", "--device", "meta"), lambda f: "--device"),
        CliCase("overlap", _predict_argv("scan", "good", "--overlap", "1.5"), lambda f: "--overlap"),
        CliCase("min-size", _predict_argv("scan", "good", "--min-size", "-1"), lambda f: "--min-size"),
        CliCase(
            "output-is-a-file",
            lambda f, out: ["predict", str(f["scan"]), "-c", str(f["good"]), "-o", str(f["scan"]), "-q"],
            lambda f: str(f["scan"]),
        ),
        CliCase(
            "output-exists",
            lambda f, out: ["predict", str(f["scan"]), "-c", str(f["good"]), "-o", str(out), "-q"],
            lambda f: "--overwrite",
        ),
    ]
)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan_labels.nii.gz").write_bytes(b"the user's own labels")  # must survive
    before, inputs = snapshot(out), snapshot(files["root"])
    code = main(case.argv(files, out))
    stdout, stderr = capsys.readouterr()
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("napari-attunet predict: ")
    _check_message(lines[0], case.names(files))
    assert "Traceback" not in stdout
    assert snapshot(out) == before
    assert snapshot(files["root"]) == inputs


def test_cli_prints_one_line_in_a_real_process(files, tmp_path):
    """The console script itself, as a user runs it: one line, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_attunet.cli",
            "predict",
            str(files["scan"]),
            "-c",
            str(files["meta_pt"]),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(files["meta_pt"]) in lines[0], lines


# ---- napari ------------------------------------------------------------------------------------


@pytest.fixture
def notes():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _errors(seen) -> list[str]:
    return [str(n.message) for n in seen if str(n.severity) in ("error", "warning")]


def _widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    return widget


NAPARI_SCANS = [
    "complex_nii",
    "complex_hdr_nii",
    "nhdr",
    "mhd",
    "gz_bomb",
    "huge_nrrd",
    "huge_nii",
    "truncated_nii",
    "noise_nii",
    "4d",
    "truncated_mha",
]


@pytest.mark.parametrize("key", NAPARI_SCANS)
def test_napari_open_bad_scan(key, files, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    before = snapshot(files["root"])
    viewer.open(str(files[key]), plugin="napari-attunet")
    assert len(viewer.layers) == 0
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], str(files[key]))
    assert snapshot(files["root"]) == before


NAPARI_CKPTS = [
    "nan_pt",
    "complex_pt",
    "meta_pt",
    "sparse_pt",
    "zip_bomb",
    "st_bomb",
    "spec_strides",
    "spec_bomb",
]


@pytest.mark.parametrize("key", NAPARI_CKPTS)
def test_napari_bad_checkpoint(key, files, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    before = snapshot(files["root"])
    viewer.open(str(files[key]), plugin="napari-attunet")  # docks the widget, loads the file
    widget = _widget(viewer)
    assert widget.model is None
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], str(files[key]))
    assert snapshot(files["root"]) == before


def _bad_layers():
    import dask.array as da

    return {
        "nan-voxels": lambda v: v.add_image(_with(np.nan), name="ct"),
        "rgb-for-one-channel": lambda v: v.add_image(np.zeros((32, 32, 3), np.uint8), name="ct", rgb=True),
        "2d-on-3d-model": lambda v: v.add_image(X[0], name="ct"),
        "lazy-4e12-voxels": lambda v: v.add_image(  # its result store fits on no disk (~22 TB)
            da.zeros((1_000_000, 2000, 2000), np.float32, chunks=(64, 512, 512)), name="ct"
        ),
    }


@pytest.mark.parametrize("kind", ["nan-voxels", "rgb-for-one-channel", "2d-on-3d-model", "lazy-4e12-voxels"])
def test_napari_bad_layer_leaves_run_usable(kind, files, make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    layer = _bad_layers()[kind](viewer)
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    before = snapshot(files["root"])
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    messages = _errors(notes)
    assert len(messages) == 1, messages
    _check_message(messages[0], "'ct'")
    assert widget.run.enabled and widget.preview.enabled and not widget.cancel.enabled
    assert [lay.name for lay in viewer.layers] == ["ct"]
    assert snapshot(files["root"]) == before


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_napari_nan_scan_opens_with_a_note(suffix, tmp_path, make_napari_viewer, notes):
    image = np.ones((6, 8, 8), np.float32)
    image[2, 3, 4] = np.nan
    image[4, 1, 1] = -np.inf
    path = tmp_path / f"with_nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-attunet")
    assert [lay.name for lay in viewer.layers] == ["with_nan"]
    layer = viewer.layers["with_nan"]
    assert np.isfinite(layer.contrast_limits).all()
    # ITK reads a NIfTI's NaN/inf as 0; the reader keeps them, as in every other format
    assert np.isnan(layer.data).sum() == 1 and np.isneginf(layer.data).sum() == 1
    assert any("2 NaN or infinite" in str(n.message) for n in notes)


def test_napari_lazy_layer_is_never_read_in_the_gui_thread(files, make_napari_viewer, qtbot):
    import threading

    import dask.array as da

    readers = []

    def block(chunk):
        readers.append(threading.current_thread() is threading.main_thread())
        return chunk

    lazy = da.from_array(X, chunks=(4, 16, 16)).map_blocks(block, dtype=X.dtype)
    viewer = make_napari_viewer()
    layer = viewer.add_image(lazy, name="ct", contrast_limits=(0, 1))
    readers.clear()  # napari may draw a slice; from here on, only the run reads
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    assert widget.start() is not None
    assert readers == []  # start() returned without reading a voxel
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "ct attunet" in viewer.layers
    assert readers and not any(readers), "blocks were read in the GUI thread"


def test_napari_closing_the_viewer_mid_run_cancels_cleanly(files, make_napari_viewer, qtbot, monkeypatch):
    raised = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: raised.append(info))
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((48, 96, 96)).astype(np.float32), name="ct")
    widget = _widget(viewer)
    assert widget.load_checkpoint(files["good"])
    widget.image.value = layer
    worker = widget.start()
    cancel = widget.jobs.cancel_event
    viewer.close()
    assert cancel.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(200)
    assert raised == []
    assert widget.state is None  # no result was put anywhere
