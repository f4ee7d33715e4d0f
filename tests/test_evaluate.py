"""``na.evaluate`` and ``napari-attunet evaluate`` against MONAI's metrics.

The real pair: the bundled MNI152 grey/white-matter labels against the demo checkpoint's
prediction of the bundled scan, also with the reference stored in another orientation and
through a result store. Random label maps (anisotropic voxels, classes touching the border,
far outliers) check the distances against MONAI's ``compute_hausdorff_distance`` and
``compute_average_surface_distance``; bad inputs get one sentence naming the file, and no CSV.
"""

from __future__ import annotations

import csv
import math
import pathlib
import subprocess
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import _check_message, snapshot

import napari_attunet as na
from napari_attunet.cli import main
from napari_attunet.demo_data import DEMO_CHECKPOINT, DEMO_LABELS, DEMO_SCAN
from napari_attunet.review import CSV_COLUMNS

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def monai_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing, values
) -> dict[int, tuple[float, float, float]]:
    """(Dice, HD95, ASSD) per value, from MONAI's functions on one-hot masks."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    p = torch.stack([torch.from_numpy(pred == v) for v in values])[None].float()
    r = torch.stack([torch.from_numpy(ref == v) for v in values])[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p, r, include_background=True)[0]
        hd = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, directed=False, spacing=list(spacing)
        )[0]
        asd = compute_average_surface_distance(
            p, r, include_background=True, symmetric=True, spacing=list(spacing)
        )[0]
    return {v: (float(dice[i]), float(hd[i]), float(asd[i])) for i, v in enumerate(values)}


def assert_matches_monai(rows, pred, ref, spacing, dice_tol=1e-4, hd_tol=1e-3):
    expected = monai_metrics(pred, ref, spacing, [r.label for r in rows])
    for row in rows:
        dice, hd, asd = expected[row.label]
        assert abs(row.dice - dice) <= dice_tol, (row, dice)
        assert abs(row.hd95_mm - hd) <= hd_tol, (row, hd)
        assert abs(row.assd_mm - asd) <= 1e-3 * max(1.0, asd), (row, asd)


# ---- the bundled pair ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo prediction of the bundled scan: in memory, as a NIfTI file written by the
    predict command's writer, and as a result store."""
    folder = tmp_path_factory.mktemp("demo")
    model = na.load_model(DEMO_CHECKPOINT)
    scan = na.io.read(DEMO_SCAN)
    pred = na.predict(scan, model, device="cpu", precision="fp32")
    labels = pred.labels()
    na.io.write(folder / "mni_labels.nii.gz", labels, scan)
    store = folder / "mni.zarr"
    na.predict(scan, model, device="cpu", precision="fp32", out=store)
    return {
        "pred": pred,
        "scan": scan,
        "labels": labels,
        "nifti": folder / "mni_labels.nii.gz",
        "store": store,
    }


def test_demo_pair_matches_monai(demo):
    reference = na.io.read(DEMO_LABELS)
    rows = na.evaluate(demo["pred"], reference)
    assert [r.name for r in rows] == ["grey matter", "white matter"]
    assert_matches_monai(rows, demo["labels"], reference.array, reference.spacing)
    for row in rows:
        assert 0.5 < row.dice < 1.0 and row.hd95_mm > 0
        voxel_ml = float(np.prod(reference.spacing)) / 1000
        assert row.volume_pred_ml == pytest.approx(np.count_nonzero(demo["labels"] == row.label) * voxel_ml)
        assert row.volume_ref_ml == pytest.approx(np.count_nonzero(reference.array == row.label) * voxel_ml)
        diff = 100 * (row.volume_pred_ml - row.volume_ref_ml) / row.volume_ref_ml
        assert row.volume_diff_pct == pytest.approx(diff)
    assert rows.notes == []


def _reoriented(src: pathlib.Path, dst: pathlib.Path, codes: tuple[str, str, str]) -> pathlib.Path:
    import nibabel as nib

    img = nib.load(str(src))
    now = nib.orientations.io_orientation(img.affine)
    turned = img.as_reoriented(nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(codes)))
    assert nib.aff2axcodes(turned.affine) == codes
    nib.save(turned, str(dst))
    return dst


def _read_csv(path: pathlib.Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_cli_on_files_in_another_orientation(demo, tmp_path, capsys):
    turned = _reoriented(DEMO_LABELS, tmp_path / "ref_psl.nii.gz", ("P", "S", "L"))
    out = {}
    for name, ref in (("same", DEMO_LABELS), ("turned", turned)):
        assert main(["evaluate", str(demo["nifti"]), str(ref), "--csv", str(tmp_path / f"{name}.csv")]) == 0
        printed = capsys.readouterr()
        assert "resampled" not in printed.err
        out[name] = _read_csv(tmp_path / f"{name}.csv")
    assert out["same"] == out["turned"]
    table = out["turned"]
    assert tuple(table[0]) == CSV_COLUMNS
    assert [r[0] for r in table[1:]] == ["1", "2"]  # io.write keeps no class names
    reference = na.io.read(DEMO_LABELS)
    expected = monai_metrics(demo["labels"], reference.array, reference.spacing, [1, 2])
    for line in table[1:]:
        dice, hd, asd = expected[int(line[0])]
        assert abs(float(line[1]) - dice) <= 1e-4 and abs(float(line[2]) - hd) <= 0.1
        assert abs(float(line[3]) - asd) <= 1e-3


def test_store_names_its_classes(demo, tmp_path, capsys):
    target = tmp_path / "e.csv"
    assert main(["evaluate", str(demo["store"]), str(DEMO_LABELS), "--csv", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "grey matter" in printed and "white matter" in printed
    store_rows = _read_csv(target)
    assert [r[0] for r in store_rows[1:]] == ["grey matter", "white matter"]
    nifti_rows = na.evaluate(demo["nifti"], DEMO_LABELS)
    for line, row in zip(store_rows[1:], nifti_rows, strict=True):
        assert float(line[1]) == pytest.approx(row.dice, abs=1e-9)
        assert float(line[2]) == pytest.approx(row.hd95_mm, abs=1e-9)


def test_predict_outputs_name_classes_and_checkpoint_does(demo, tmp_path, capsys):
    """A predict folder's volumes.csv names the classes of its label files; --checkpoint too."""
    out = tmp_path / "run"
    run = ["predict", str(DEMO_SCAN), "-c", str(DEMO_CHECKPOINT), "-o", str(out), "-q", "--structures"]
    run += ["--precision", "fp32", "--device", "cpu"]  # as the fixture's run
    assert main(run) == 0
    labels = out / "mni152_t1_2mm_labels.nii.gz"
    assert [r.name for r in na.evaluate(labels, DEMO_LABELS)] == ["grey matter", "white matter"]
    _check_structures_csv(out / "mni152_t1_2mm_structures.csv", demo)
    before = snapshot(out)
    assert main(run) == 1  # the outputs exist: refused, nothing changed
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(out) == before
    capsys.readouterr()
    assert main(["evaluate", str(demo["nifti"]), str(DEMO_LABELS), "--checkpoint", str(DEMO_CHECKPOINT)]) == 0
    assert "white matter" in capsys.readouterr().out


# ---- random label maps against MONAI ---------------------------------------------------------


def random_pair(shape, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random classes (touching the border), the prediction a perturbed copy with a few
    far false-positive voxels and one class partly missing."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    levels = np.quantile(field, np.linspace(0.35, 0.95, classes))
    ref = np.digitize(field, levels).astype(np.uint8)
    noisy = field + ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 0.15 * field.std()
    pred = np.digitize(noisy, levels).astype(np.uint8)
    for _ in range(4):
        where = tuple(int(rng.integers(0, n)) for n in shape)
        pred[where] = rng.integers(1, classes + 1)
    return pred, ref


@pytest.mark.parametrize(
    "shape,spacing,seed",
    [
        ((24, 40, 36), (2.5, 0.7, 0.9), 0),
        ((30, 30, 30), (1.0, 1.0, 1.0), 1),
        ((16, 50, 44), (3.0, 0.8, 0.8), 2),
        ((60, 52), (0.6, 1.4), 3),
    ],
)
def test_random_pairs_match_monai(shape, spacing, seed):
    pred, ref = random_pair(shape, 3, seed)
    rows = na.evaluate(pred, ref, spacing=spacing)
    assert [r.label for r in rows] == [1, 2, 3]
    assert_matches_monai(rows, pred, ref, spacing)


def test_far_outliers_and_tiny_classes_match_monai():
    """Distances beyond the offset ball (a KD-tree finds those) and one-voxel classes."""
    pred = np.zeros((20, 64, 64), np.uint8)
    ref = pred.copy()
    ref[5:15, 10:30, 10:30] = 1
    pred[6:15, 11:30, 10:31] = 1
    pred[18, 60, 62] = 1  # about 45 mm from the reference's edge
    ref[0, 0, 0] = 2
    pred[19, 63, 63] = 2
    spacing = (2.0, 0.5, 0.75)
    rows = na.evaluate(pred, ref, spacing=spacing)
    assert_matches_monai(rows, pred, ref, spacing)
    assert rows.row(2).dice == 0.0 and rows.row(2).hd95_mm > 40


def test_empty_classes():
    pred = np.zeros((8, 8, 8), np.uint8)
    ref = pred.copy()
    pred[2:5, 2:5, 2:5] = 1
    rows = na.evaluate(pred, ref, class_names=["background", "tumour", "oedema"])
    tumour, oedema = rows
    assert tumour.dice == 0.0 and math.isnan(tumour.hd95_mm) and math.isnan(tumour.assd_mm)
    assert "tumour is absent from the reference" in tumour.note
    assert oedema.dice == 1.0 and math.isnan(oedema.hd95_mm)
    assert "absent from both" in oedema.note
    assert math.isnan(tumour.volume_diff_pct)
    assert rows.notes == ["no voxel size given: voxels are taken as 1 mm (pass spacing=...)."]


def test_identical_maps_agree_perfectly():
    pred, _ = random_pair((20, 24, 28), 2, 7)
    for row in na.evaluate(pred, pred.copy(), spacing=(1.5, 1, 1)):
        assert (row.dice, row.hd95_mm, row.assd_mm, row.volume_diff_pct) == (1.0, 0.0, 0.0, 0.0)


# ---- grids -------------------------------------------------------------------------------------


def _write(path: pathlib.Path, array: np.ndarray, spacing_zyx, origin_zyx) -> pathlib.Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    image.SetOrigin(tuple(float(o) for o in reversed(origin_zyx)))
    sitk.WriteImage(image, str(path))
    return path


def test_reference_on_a_finer_grid_is_resampled_in_world_coordinates(tmp_path):
    """A reference at half the voxel size, each prediction voxel split in 2 x 2 x 2, lands back
    on the prediction exactly: Dice 1, HD95 0; a note says it was resampled."""
    pred, _ = random_pair((12, 16, 14), 2, 3)
    spacing, origin = np.array([2.0, 1.5, 1.0]), np.array([10.0, -20.0, 5.0])
    fine = pred.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    p = _write(tmp_path / "pred.nii.gz", pred, spacing, origin)
    r = _write(tmp_path / "ref.nrrd", fine, spacing / 2, origin - spacing / 4)
    rows = na.evaluate(p, r)
    assert [(row.dice, row.hd95_mm) for row in rows] == [(1.0, 0.0), (1.0, 0.0)]
    (note,) = rows.notes
    assert "resampled" in note and "ref.nrrd" in note and "nearest neighbour" in note
    shifted = _write(tmp_path / "shifted.mha", pred, spacing, origin + [0, 0, 50.0])
    rows = na.evaluate(p, shifted)
    assert "counts as background" in rows.notes[0]
    assert rows.row(1).dice < 1.0


# ---- bad input ---------------------------------------------------------------------------------


def _bad_inputs(folder: pathlib.Path, demo) -> dict[str, tuple[pathlib.Path, pathlib.Path, str, str]]:
    """name: (prediction, reference, the file the sentence names, a word it says)."""
    good = pathlib.Path(demo["nifti"])
    flat = sitk.GetImageFromArray(np.zeros((91, 109), np.uint8))
    sitk.WriteImage(flat, str(folder / "slice.nii.gz"))
    labels = sitk.ReadImage(str(DEMO_LABELS))
    probs = sitk.Cast(labels, sitk.sitkFloat32) * 0.4
    sitk.WriteImage(probs, str(folder / "probs.nii.gz"))
    extra = sitk.Cast(labels, sitk.sitkUInt8) + 2 * sitk.Cast(labels == 2, sitk.sitkUInt8)
    sitk.WriteImage(extra, str(folder / "four.nii.gz"))
    huge = sitk.Cast(labels, sitk.sitkInt32) * 100000
    sitk.WriteImage(huge, str(folder / "huge.nii.gz"))
    return {
        "2d-vs-3d": (good, folder / "slice.nii.gz", "slice.nii.gz", "2D"),
        "non-integer": (good, folder / "probs.nii.gz", "probs.nii.gz", "non-integer"),
        "no-class": (demo["store"], folder / "four.nii.gz", "four.nii.gz", "label value 4"),
        "huge": (good, folder / "huge.nii.gz", "huge.nii.gz", "huge"),
        "missing": (good, folder / "absent.nii.gz", "absent.nii.gz", "no such file"),
    }


CASES = ["2d-vs-3d", "non-integer", "no-class", "huge", "missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_and_no_csv(case, demo, tmp_path, capsys):
    pred, ref, names, word = _bad_inputs(tmp_path, demo)[case]
    before = snapshot(tmp_path)
    assert main(["evaluate", str(pred), str(ref), "--csv", str(tmp_path / "out.csv")]) == 1
    err = capsys.readouterr().err.strip()
    _check_message(err, names)
    assert word in err and err.startswith("napari-attunet evaluate: ")
    assert snapshot(tmp_path) == before


def test_bad_arrays_name_the_value_and_the_input():
    pred = np.zeros((6, 6, 6), np.uint8)
    with pytest.raises(na.InputError, match="the reference holds label value 3, for which the prediction"):
        na.evaluate(pred, np.full((6, 6, 6), 3), class_names=["background", "a", "b"])
    with pytest.raises(na.InputError, match="shape .* no geometry|neither carries a geometry"):
        na.evaluate(pred, np.zeros((6, 6, 5), np.uint8))
    with pytest.raises(na.InputError, match="the reference holds negative values"):
        na.evaluate(pred, np.full((6, 6, 6), -1024, np.int16))
    with pytest.raises(na.InputError, match="the reference holds NaN"):
        na.evaluate(pred, np.full((6, 6, 6), np.nan))


def test_existing_csv_is_kept_without_overwrite(demo, tmp_path, capsys):
    target = tmp_path / "e.csv"
    target.write_text("keep me\n")
    args = ["evaluate", str(demo["nifti"]), str(DEMO_LABELS), "--csv", str(target)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(target) in err
    assert target.read_text() == "keep me\n"
    assert main([*args, "--overwrite"]) == 0
    assert tuple(_read_csv(target)[0]) == CSV_COLUMNS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv"]  # no staging folder left


def test_review_imports_neither_torch_nor_qt():
    probe = (
        "import sys, numpy as np\nimport napari_attunet as na\n"
        "na.evaluate(np.ones((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.uint8))\n"
        "print([m for m in ('torch', 'qtpy', 'napari') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# ---- confidence per structure ----------------------------------------------------------------


def _check_structures_csv(path: pathlib.Path, demo) -> None:
    from napari_attunet.review.structures import STRUCTURE_COLUMNS

    table = _read_csv(path)
    assert tuple(table[0]) == STRUCTURE_COLUMNS
    rows = [dict(zip(table[0], line, strict=True)) for line in table[1:]]
    labels, unc = demo["labels"], demo["pred"].uncertainty
    voxel_ml = float(np.prod(demo["scan"].spacing)) / 1000
    for value, name in ((1, "grey matter"), (2, "white matter")):
        (whole,) = [r for r in rows if r["class"] == name and r["component"] == "all"]
        mask = labels == value
        assert float(whole["volume_ml"]) == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
        assert float(whole["mean_uncertainty"]) == pytest.approx(float(unc[mask].mean()), abs=1e-4)
        assert float(whole["uncertain_ml"]) == pytest.approx((mask & (unc > 0.5)).sum() * voxel_ml, abs=1e-3)
        centre = demo["scan"].affine @ np.append(np.argwhere(mask).mean(0), 1.0)
        lps = [float(whole[f"centroid_{a}_mm"]) for a in "xyz"]
        assert lps == pytest.approx(list(centre[2::-1]), abs=0.01)
        parts = [r for r in rows if r["class"] == name and r["component"] != "all"]
        assert parts and float(parts[0]["volume_ml"]) <= float(whole["volume_ml"])
        sizes = [float(r["volume_ml"]) for r in parts]
        assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 0.1


def test_structures_per_class_and_component():
    from napari_attunet.review.structures import structures
    from napari_attunet.scans.geometry import compose

    labels = np.zeros((10, 20, 20), np.uint8)
    labels[1:5, 2:10, 2:10] = 1  # 256 voxels
    labels[7:9, 15:17, 15:17] = 1  # 8 voxels, unsure
    labels[6, 1, 1] = 1  # one voxel: under the minimum size
    labels[2:6, 12:18, 3:7] = 2
    unc = np.full(labels.shape, 0.1, np.float32)
    unc[7:9, 15:17, 15:17] = 0.9
    spacing = (2.0, 1.0, 1.5)
    direction = np.diag([1.0, -1.0, 1.0])
    affine = compose(spacing, (10.0, 20.0, -30.0), direction)
    rows = structures(labels, unc, spacing, ["background", "liver", "lesion"], affine, level=0.5, min_ml=0.01)
    assert [(r.name, r.component, r.voxels) for r in rows] == [
        ("liver", 0, 265),
        ("liver", 1, 256),
        ("liver", 2, 8),
        ("lesion", 0, 96),
        ("lesion", 1, 96),
    ]
    voxel_ml = 3.0 / 1000
    whole, big, small = rows[:3]
    assert whole.volume_ml == pytest.approx(265 * voxel_ml)
    assert whole.mean_uncertainty == pytest.approx((257 * 0.1 + 8 * 0.9) / 265, rel=1e-6)
    assert whole.uncertain_ml == pytest.approx(8 * voxel_ml) and small.uncertain_ml == whole.uncertain_ml
    assert small.flagged and not big.flagged and not whole.flagged
    centre = np.array([7.5, 15.5, 15.5])
    assert small.centroid == pytest.approx(tuple(affine[:3, :3] @ centre + affine[:3, 3]))
    assert small.centroid[1] == pytest.approx(20.0 - 15.5)  # the flipped axis


# ---- a cohort against its references -----------------------------------------------------------


def test_references_are_found_by_stem(tmp_path):
    from napari_attunet.review.references import find

    refs = tmp_path / "refs"
    refs.mkdir()
    for name in (
        "case1_seg.nii.gz",
        "case1.nrrd",
        "case2_gt.nii.gz",
        "case3_seg.nii",
        "case3_mask.mha",
        ".hidden",
    ):
        (refs / name).write_bytes(b"x")
    assert find(refs, "/data/case1.nii.gz", "case1").name == "case1.nrrd"  # the bare stem first
    assert find(refs, "/data/case2.mha", "case2").name == "case2_gt.nii.gz"
    assert find(refs, "/data/case3.nii.gz", "case3").name == "case3_seg.nii"
    assert find(refs, "/data/case4.nii.gz", "case4") is None
    (refs / "case2_gt.nrrd").write_bytes(b"x")
    with pytest.raises(na.InputError, match="2 references for /data/case2.mha"):
        find(refs, "/data/case2.mha", "case2")


def test_predict_with_references_adds_metric_columns(demo, tmp_path, capsys):
    import shutil

    scans, refs, out = tmp_path / "scans", tmp_path / "refs", tmp_path / "out"
    scans.mkdir()
    refs.mkdir()
    shutil.copy(DEMO_SCAN, scans / "brain.nii.gz")
    _reoriented(DEMO_LABELS, refs / "brain_seg.nii.gz", ("R", "A", "S"))
    run = [
        "predict",
        str(scans / "brain.nii.gz"),
        "-c",
        str(DEMO_CHECKPOINT),
        "-o",
        str(out),
        "--reference",
        str(refs),
    ]
    assert main([*run, "--precision", "fp32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "against the references (1 scans)" in printed and "grey matter" in printed
    table = _read_csv(out / "volumes.csv")
    assert table[0] == ["scan", "class", "volume_ml", "path", "dice", "hd95_mm", "assd_mm", "volume_ref_ml"]
    expected = na.evaluate(out / "brain_labels.nii.gz", DEMO_LABELS)
    for line, row in zip(table[1:], expected, strict=True):
        assert line[1] == row.name
        assert float(line[4]) == pytest.approx(row.dice, abs=1e-6)
        assert float(line[5]) == pytest.approx(row.hd95_mm, abs=1e-4)
        assert float(line[7]) == pytest.approx(row.volume_ref_ml, abs=1e-3)
    with pytest.raises(na.InputError, match="--reference .*no such folder"):
        from napari_attunet.cli import _predict, build_parser

        _predict(build_parser().parse_args([*run[:-1], str(tmp_path / "nowhere")]))


# ---- in napari --------------------------------------------------------------------------------


def _table(widget) -> dict[str, list[str]]:
    value = widget.agreement.value
    return {h: [row[i] for row in value["data"]] for i, h in enumerate(value["columns"])}


def test_compare_widget_follows_edits_to_either_layer(make_napari_viewer, qtbot):
    from napari_attunet.plugin.compare import FALSE_NEGATIVE, FALSE_POSITIVE

    viewer = make_napari_viewer()
    pred, ref = random_pair((20, 32, 28), 2, 5)
    spacing = (2.0, 1.0, 1.0)
    names = ["background", "liver", "lesion"]
    result = viewer.add_labels(
        pred, name="ct attunet", scale=spacing, metadata={"attunet": {"class_names": names}}
    )
    truth = viewer.add_labels(ref.copy(), name="painted truth", scale=spacing, translate=(0, 0, 0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Compare with a reference")
    assert {c for c in widget.reference.choices if c is not None} == {result, truth}
    widget.result.value = result
    widget.reference.value = truth

    def shown(dice: list[float]) -> bool:
        return not widget.busy and "ct disagreement" in viewer.layers and _table(widget)["Dice"] == dice

    expected = na.evaluate(pred, ref, spacing=spacing, class_names=names)
    qtbot.waitUntil(lambda: shown([round(r.dice, 4) for r in expected]), timeout=30_000)
    table = _table(widget)
    assert table["class"] == ["liver", "lesion"]
    assert table["HD95 mm"] == [round(r.hd95_mm, 4) for r in expected]
    layer = viewer.layers["ct disagreement"]
    assert np.count_nonzero(layer.data == FALSE_POSITIVE) == np.count_nonzero((pred != ref) & (pred != 0))
    assert np.count_nonzero(layer.data == FALSE_NEGATIVE) == np.count_nonzero((pred != ref) & (pred == 0))
    assert tuple(layer.scale) == spacing and layer not in widget.reference.choices

    truth.data = pred.copy()  # the reference replaced: the two agree
    qtbot.waitUntil(lambda: shown([1.0, 1.0]), timeout=30_000)
    assert not viewer.layers["ct disagreement"].data.any()

    result.paint((10, 16, 14), 2, refresh=True)  # a brush stroke on the result
    qtbot.waitUntil(lambda: not widget.busy and viewer.layers["ct disagreement"].data.any(), timeout=30_000)
    assert _table(widget)["Dice"] != [1.0, 1.0]
    assert viewer.layers["ct disagreement"].data[10, 16, 14] in (FALSE_POSITIVE, FALSE_NEGATIVE)


def test_structures_widget_flags_and_jumps(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    labels = np.zeros((16, 40, 40), np.uint8)
    labels[2:8, 5:20, 5:20] = 1
    labels[10:14, 30:36, 30:36] = 1  # an unsure island
    unc = np.full(labels.shape, 0.05, np.float32)
    unc[10:14, 30:36, 30:36] = 0.8
    kw = {"scale": (2.0, 1.0, 1.0), "translate": (-20.0, 5.0, 0.0)}
    names = {"attunet": {"class_names": ["background", "liver"]}}
    viewer.add_labels(labels, name="ct attunet", metadata=names, **kw)
    viewer.add_image(unc, name="ct uncertainty", **kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Structures to double-check")
    widget.segmentation.value = viewer.layers["ct attunet"]
    assert widget.uncertainty.value is viewer.layers["ct uncertainty"]  # found by name
    qtbot.waitUntil(lambda: not widget.busy and len(widget.rows) == 3, timeout=30_000)
    table = _table_of(widget.table)
    assert table["class"] == ["liver"] * 3 and table["component"] == ["all", "1", "2"]
    assert table["check"] == ["no", "no", "yes"]
    island = widget.rows[2]
    assert island.centroid == pytest.approx((-20 + 2 * 11.5, 5 + 32.5, 32.5))
    widget.table.native.cellClicked.emit(2, 0)
    assert viewer.dims.point[0] == pytest.approx(island.centroid[0], abs=1.0)
    from napari_attunet.plugin.orientation import camera_of

    assert tuple(camera_of(viewer).center[-2:]) == pytest.approx(island.centroid[1:])
    widget.level.value = 0.9  # nothing is that unsure
    qtbot.waitUntil(
        lambda: not widget.busy and _table_of(widget.table)["check"] == ["no", "no", "no"], timeout=30_000
    )


def _table_of(table) -> dict[str, list]:
    value = table.value
    return {h: [row[i] for row in value["data"]] for i, h in enumerate(value["columns"])}
