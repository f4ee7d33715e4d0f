"""A table of bad inputs through the API: checkpoints (``load_model``), scans (``io.read``),
``predict``'s arguments and arrays, and ``io.write``.

Every case asserts: the error's type (CheckpointError / InputError / OutputError), that the
message names the file, layer or option, that no traceback, ``[Errno N]`` or object address is
shown, and that no file was created or changed (byte for byte). The files are
``helpers.bad_files``; the same table runs through the command line in test_cli_bad_inputs.py
and through napari in test_reader.py and test_widget.py.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
from helpers import CKPT_KEYS, SCAN_KEYS, X, _check_message, _with, snapshot

import napari_attunet as na
from napari_attunet.scans.outputs import OutputError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@dataclass
class ApiCase:
    id: str
    call: Callable[[dict], object]
    error: type
    names: Callable[[dict], str]


def _model(f):
    return na.load_model(f["good"])


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
