"""``napari-attunet predict --scheduler local:2``: a cohort over two worker processes gives the
sequential command's files; a rerun skips finished scans; a bad scan gets its line. And
``-o result.zarr``: one OME-Zarr store, its volumes the in-memory run's.
"""

from __future__ import annotations

import csv
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import RAS, make_model, official_spec, sitk_image

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.phantom import make_phantom

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    model = make_model(official_spec(3, out_ch=3), seed=8)
    ckpt = na.save_model(model, root / "tiny.safetensors", class_names=["background", "organ", "lesion"])
    scans = []
    for k in range(4):
        image, _ = make_phantom((16, 20 + 4 * k, 24), seed=k)
        path = root / f"case{k}.nii.gz"
        sitk.WriteImage(
            sitk_image((image * 300 - 100).astype(np.int16), (0.9, 0.9, 2.0), (1.0 * k, -3.0, 5.0), RAS),
            str(path),
        )
        scans.append(path)
    bad = root / "broken.nii.gz"
    bad.write_bytes(np.random.default_rng(3).bytes(1024))
    return dict(root=root, ckpt=ckpt, scans=scans, bad=bad)


def _arrays(folder: pathlib.Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def _rows(folder: pathlib.Path) -> list[list[str]]:
    """The table's header, then its rows in input-path order (workers finish in any order)."""
    table = list(csv.reader(open(folder / "volumes.csv", newline="")))
    return table[:1] + sorted(table[1:], key=lambda r: (r[-1], r[1]))


def test_cohort_on_two_workers_equals_the_sequential_command(cohort, capsys):
    c = cohort
    scans = [str(s) for s in c["scans"][:2]] + [str(c["bad"])] + [str(s) for s in c["scans"][2:]]
    common = ["-c", str(c["ckpt"]), "--attention", "--uncertainty", "-q"]
    seq, par = c["root"] / "sequential", c["root"] / "cohort"
    assert main(["predict", *scans, "-o", str(seq), *common]) == 1
    seq_err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert main(["predict", *scans, "-o", str(par), "--scheduler", "local:2", *common]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "broken.nii.gz" in err[0] and err == seq_err

    expected, got = _arrays(seq), _arrays(par)
    assert len(expected) == 4 * (1 + 3 + 1)  # labels, 3 gates, uncertainty per good scan
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert np.array_equal(got[name], array), name
    assert _rows(par) == _rows(seq) and len(_rows(seq)) == 1 + 4 * 2
    assert sorted(p.name for p in par.iterdir()) == sorted(p.name for p in seq.iterdir())

    # a rerun skips what finished: nothing is rewritten, the table keeps its rows
    stamps = {p.name: p.stat().st_mtime_ns for p in par.glob("*.nii.gz")}
    assert main(["predict", *scans, "-o", str(par), "--scheduler", "local:2", *common]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "broken.nii.gz" in err[0]
    assert {p.name: p.stat().st_mtime_ns for p in par.glob("*.nii.gz")} == stamps
    assert _rows(par) == _rows(seq)
    good = [s for s in scans if "broken" not in s]
    assert main(["predict", *good, "-o", str(par), "--scheduler", "local:2", *common]) == 0
    assert capsys.readouterr().err.strip() == ""  # every scan done: no cluster started
    assert _rows(par) == _rows(seq)


def test_cohort_scheduler_that_makes_no_sense_is_one_line(cohort, capsys):
    c = cohort
    code = main(
        [
            "predict",
            str(c["scans"][0]),
            "-c",
            str(c["ckpt"]),
            "-o",
            str(c["root"] / "x"),
            "--scheduler",
            "local:0",
            "-q",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "local:N" in err[0]


def test_predict_into_one_store(cohort, capsys):
    c = cohort
    out = c["root"] / "stores" / "case1.zarr"
    assert (
        main(["predict", str(c["scans"][1]), "-c", str(c["ckpt"]), "-o", str(out), "--attention", "-q"]) == 0
    )
    volume = na.io.read(c["scans"][1])
    pred = na.predict(volume, na.load_model(c["ckpt"]))
    root = zarr.open_group(out, mode="r")
    assert np.array_equal(root["labels/attunet/0"][:], pred.labels())
    scale = root.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == pytest.approx(list(volume.spacing))
    # a folder of stores: the finished store (a store appears whole) is skipped
    folder = c["root"] / "stores"
    assert (
        main(
            [
                "predict",
                str(c["scans"][0]),
                str(c["scans"][1]),
                "-c",
                str(c["ckpt"]),
                "-o",
                str(folder),
                "--format",
                "zarr",
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert "case1" in stdout and "skipped" in stdout and (folder / "case0.zarr").exists()
    rows = _rows(folder)
    assert rows[0] == ["scan", "class", "volume_ml", "path"] and len(rows) == 1 + 2 * 2
    counts = pred.volumes_ml(pred.labels(), volume.spacing)
    for name in pred.label_names[1:]:
        mine = next(float(r[2]) for r in rows if r[0] == "case1" and r[1] == name)
        assert mine == pytest.approx(counts[name], abs=1e-3)


@pytest.mark.parametrize(
    "options", [["--min-size", "5"], ["--fill-holes"], ["--min-size", "5", "--fill-holes"]]
)
def test_cleaning_options_with_a_store_are_one_sentence(cohort, capsys, options):
    c = cohort
    out = c["root"] / "refused" / "case0.zarr"
    code = main(["predict", str(c["scans"][0]), "-c", str(c["ckpt"]), "-o", str(out), "-q", *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    for option in options:
        if option.startswith("--"):
            assert option in err[0]
    assert "--format .nii.gz" in err[0] and "zarr output" in err[0]
    assert not out.exists() and not list(out.parent.glob(".*partial*"))
