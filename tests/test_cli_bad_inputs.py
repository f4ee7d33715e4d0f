"""Bad input on the command line (``napari-attunet predict``): one line on stderr, a non-zero
exit code, and no file created or changed, byte for byte. The files are ``helpers.bad_files``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest
from helpers import CKPT_KEYS, SCAN_KEYS, _check_message, snapshot

from napari_attunet.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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
