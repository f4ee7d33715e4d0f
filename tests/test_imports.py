"""Dropping a scan into napari imports the plugin's reader; that must not pull torch or Qt in.

Each import runs in a fresh interpreter, where nothing was imported before.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LIGHT = (
    "napari_attunet",
    "napari_attunet.scans.io",
    "napari_attunet.plugin.reader",
    "napari_attunet.plugin.writer",
    "napari_attunet.plugin.samples",
    "napari_attunet.models",
    "napari_attunet.cli",
)
HEAVY = ("torch", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari")


def _imported_after(statement: str) -> list[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_neither_torch_nor_qt(module):
    assert _imported_after(f"import {module}") == []


def test_reader_hook_and_cli_parser_stay_light():
    statement = (
        "from napari_attunet.plugin.reader import get_reader\n"
        "assert get_reader('scan.nii.gz') is not None\n"
        "assert get_reader('model.safetensors') is not None\n"
        "from napari_attunet.cli import build_parser\n"
        "build_parser()"
    )
    assert _imported_after(statement) == []


def test_public_names_load_on_first_use():
    statement = (
        "import napari_attunet as na\n"
        "assert callable(na.load_model) and callable(na.predict)\n"
        "assert na.ModelSpec.__name__ == 'ModelSpec'\n"
        "from napari_attunet import Prediction, save_model\n"
        "assert set(na.__all__) <= set(dir(na))"
    )
    assert "torch" in _imported_after(statement)


def test_unknown_attribute_is_an_attribute_error():
    import napari_attunet as na

    with pytest.raises(AttributeError, match="no_such_name"):
        na.no_such_name  # noqa: B018


def test_one_version_source():
    from importlib.metadata import version

    import napari_attunet as na

    assert version("napari-attunet") == na.__version__
