"""The command line, in process (``cli.main``) and through the installed console script."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import napari_attunet as na
from napari_attunet.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_info_on_the_fixture(fixture_pth, capsys):
    assert main(["info", str(fixture_pth)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if line.strip())
    assert rows["family"] == "official"
    assert rows["variant"] == "single_att_dsv"
    assert rows["dimensions"] == "3D"
    assert rows["parameters"] == "1,555,542"
    assert "1,555,542" in out
    assert re.fullmatch(r"[0-9a-f]{64}", rows["sha256"])
    assert rows["sha256"] == _sha256(fixture_pth)
    assert rows["file"] == str(fixture_pth)
    # three gates, finest first, with their strides
    assert rows["gate 1"].startswith("stride 2x2x2")
    assert rows["gate 2"].startswith("stride 4x4x4")
    assert rows["gate 3"].startswith("stride 8x8x8")
    assert "gate 4" not in rows
    assert "8, 16, 32, 64, 128" in rows["features"]


def test_info_json(fixture_pth, capsys):
    assert main(["info", str(fixture_pth), "--json"]) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert data["parameters"] == 1555542
    assert data["sha256"] == _sha256(fixture_pth)
    spec = data["spec"]
    assert spec["family"] == "official" and spec["variant"] == "single_att_dsv"
    assert spec["spatial_dims"] == 3 and spec["out_channels"] == 3
    assert list(spec["features"]) == [8, 16, 32, 64, 128]
    assert [list(g["stride"]) for g in data["gates"]] == [[2, 2, 2], [4, 4, 4], [8, 8, 8]]
    assert all(g["heads"] == 1 for g in data["gates"])
    # the JSON spec is enough to rebuild the spec
    assert na.ModelSpec.from_dict(spec) == na.load_model(fixture_pth).spec


def test_convert_then_info(fixture_pth, tmp_path, capsys):
    out_path = tmp_path / "converted" / "out.safetensors"
    code = main(
        [
            "convert",
            str(fixture_pth),
            str(out_path),
            "--class-names",
            "bg",
            "a",
            "b",
            "--normalization",
            "ct:-160,240",
            "--spacing",
            "1",
            "1",
            "2",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out_path.is_file()
    assert str(out_path) in out

    assert main(["info", str(out_path)]) == 0
    out, _ = capsys.readouterr()
    assert "bg, a, b" in out
    assert "official" in out and "single_att_dsv" in out
    assert "1,555,542" in out
    assert _sha256(out_path) in out
    assert _sha256(fixture_pth) in out  # provenance names the source file's hash

    model = na.load_model(out_path)
    assert model.spec.normalization == {"mode": "ct", "window": [-160.0, 240.0]}
    assert model.spec.class_names == ("bg", "a", "b")
    assert model.spec.spacing == (1.0, 1.0, 2.0)
    assert model.metadata["provenance"]["source_sha256"] == _sha256(fixture_pth)

    # the weights are those of the source
    source = na.load_model(fixture_pth)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_convert_never_replaces_a_file_without_overwrite(fixture_pth, tmp_path, capsys):
    out_path = tmp_path / "out.safetensors"
    out_path.write_bytes(b"someone's file")
    assert main(["convert", str(fixture_pth), str(out_path)]) == 1
    _, err = capsys.readouterr()
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out_path.read_bytes() == b"someone's file"
    assert main(["convert", str(fixture_pth), str(fixture_pth), "--overwrite"]) == 1  # its own source
    _, err = capsys.readouterr()
    assert "is the checkpoint being converted" in err
    assert main(["convert", str(fixture_pth), str(out_path), "--overwrite"]) == 0
    assert na.load_model(out_path).spec.family == na.load_model(fixture_pth).spec.family


def test_missing_file_is_one_line_on_stderr(tmp_path, capsys):
    missing = tmp_path / "no" / "such.pth"
    assert main(["info", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert str(missing) in lines[0]


def test_convert_missing_file_is_one_line_on_stderr(tmp_path, capsys):
    missing = tmp_path / "such.pth"
    assert main(["convert", str(missing), str(tmp_path / "o.safetensors")]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip("\n").split("\n")) == 1 and str(missing) in err
    assert not (tmp_path / "o.safetensors").exists()


def test_corrupt_file_is_one_line_on_stderr(tmp_path, capsys):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    assert main(["info", str(path)]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip("\n").split("\n")) == 1 and str(path) in err


def test_console_script(fixture_pth):
    script = Path(sys.executable).parent / "napari-attunet"
    if not script.exists():
        pytest.fail(f"console script not installed next to {sys.executable}")
    result = subprocess.run(
        [str(script), "info", str(fixture_pth)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "official" in result.stdout
    assert "1,555,542" in result.stdout
    assert _sha256(fixture_pth) in result.stdout

    result = subprocess.run(
        [str(script), "info", str(fixture_pth) + ".missing"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1


def test_orientation_is_stated_converted_and_overridden(fixture_pth, tmp_path, capsys):
    """The official fixture defaults to the file's own layout; convert records another."""
    assert main(["info", str(fixture_pth)]) == 0
    assert re.search(
        r"orientation\s+native: the network sees scans as the file stores them", capsys.readouterr().out
    )
    out = tmp_path / "ras.safetensors"
    assert main(["convert", str(fixture_pth), str(out), "--orientation", "ras"]) == 0
    capsys.readouterr()
    assert na.load_model(out).spec.network_orientation == "RAS"
    assert main(["info", str(out)]) == 0
    assert "reoriented to RAS" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", str(fixture_pth), str(tmp_path / "bad.safetensors"), "--orientation", "RAR"])
    assert "not an axis code" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
