"""Every voxel where the file says: world positions against nibabel, on real and odd NIfTI files.

Positions are compared, not arrays: each scan gets unique voxel values, so a voxel of a napari
layer is found in nibabel's array by its value, and both worlds are compared for it. The
geometries are nibabel's own test files (an oblique Philips-style scan, LAS, RAS, sform-only,
NIfTI-2), and rotations built with nibabel.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_attunet import io
from napari_attunet.plugin.reader import read_scan

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
TOL_MM = 0.01


def unique_volume(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(np.int32)


def rotation(angle_deg: float, axis) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def oblique_affine(
    angle_deg, axis=(1.0, 0.3, 0.2), spacing=(0.9, 1.1, 2.5), origin=(-60.0, 40.0, -20.0)
) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation(angle_deg, axis) @ np.diag(spacing)
    out[:3, 3] = origin
    return out


def napari_to_ras(world) -> np.ndarray:
    """napari world (S, P, L), this tool's convention, to nibabel's RAS (x, y, z)."""
    w = np.asarray(world, dtype=float)
    return np.array([-w[2], -w[1], w[0]])


def sample_indices(shape, n=40, seed=0):
    rng = np.random.default_rng(seed)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(len(shape), -1).T
    return [tuple(int(v) for v in c) for c in corners] + [
        tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)
    ]


def world_error(layer, reference: nib.spatialimages.SpatialImage, values=None) -> float:
    """Worst distance (mm) between napari's and nibabel's world for the same voxel."""
    ref = np.asarray(reference.dataobj) if values is None else values
    flat = ref.reshape(-1)
    order = np.argsort(flat)
    data = np.asarray(layer.data)
    worst = 0.0
    for p in sample_indices(data.shape):
        value = data[p]
        k = order[np.searchsorted(flat[order], value)]
        assert flat[k] == value
        ijk = np.unravel_index(k, ref.shape)
        ras_nib = reference.affine @ np.array([*ijk, 1.0])
        ras_layer = napari_to_ras(layer.data_to_world(p))
        worst = max(worst, float(np.abs(ras_nib[:3] - ras_layer).max()))
    return worst


def open_layer(path):
    from napari.layers import Image

    [(data, kwargs, kind)] = read_scan(str(path))
    assert kind == "image"
    return Image(data, **kwargs)


def with_unique_values(image: nib.Nifti1Image, path: Path, cls=nib.Nifti1Image) -> Path:
    """A copy of a real file's header (qform, sform, codes) over unique voxel values."""
    shape = image.shape[:3]
    out = cls(unique_volume(shape), None, header=image.header.copy())
    out.set_qform(image.get_qform(), code=int(image.header["qform_code"]))
    out.set_sform(image.get_sform(), code=int(image.header["sform_code"]))
    out.header.set_data_dtype(np.int32)
    nib.save(out, path)
    return path


# ---- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["example4d.nii.gz", "anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"]
)
def test_real_nibabel_files_land_where_nibabel_puts_them(name, tmp_path):
    real = nib.load(NIB_DATA / name)
    path = with_unique_values(real, tmp_path / name)
    assert world_error(open_layer(path), nib.load(path)) < TOL_MM


@pytest.mark.parametrize("angle", [0.9, 9.0, 35.0, 89.0])
def test_oblique_scans_are_drawn_rotated(angle, tmp_path):
    path = tmp_path / f"oblique{angle}.nii.gz"
    nib.save(nib.Nifti1Image(unique_volume((20, 16, 12)), oblique_affine(angle)), path)
    layer = open_layer(path)
    assert world_error(layer, nib.load(path)) < TOL_MM
    assert any("oblique" in note for note in io.read(path).notes) == (angle % 90 != 0)


def test_sform_wins_over_qform_as_in_nibabel(tmp_path):
    real = nib.load(NIB_DATA / "anatomical.nii")
    image = nib.Nifti1Image(unique_volume(real.shape), real.affine)
    qform = real.affine.copy()
    qform[:3, 3] += [13.5, 0.0, 0.0]
    image.set_qform(qform, code=1)
    image.set_sform(oblique_affine(7.0, spacing=(2, 2, 2)), code=2)
    path = tmp_path / "sq.nii.gz"
    nib.save(image, path)
    assert world_error(open_layer(path), nib.load(path)) < TOL_MM
    notes = io.read(path).notes
    assert any("sform" in n and "qform differs" in n for n in notes), notes


def test_qform_only_file(tmp_path):
    image = nib.Nifti1Image(unique_volume((10, 12, 8)), oblique_affine(20.0))
    image.set_sform(None, code=0)
    image.set_qform(oblique_affine(20.0), code=1)
    path = tmp_path / "q.nii"
    nib.save(image, path)
    assert world_error(open_layer(path), nib.load(path)) < TOL_MM


def test_nifti2_reads_and_writes(tmp_path):
    real = nib.load(NIB_DATA / "example_nifti2.nii.gz")
    assert isinstance(real, nib.Nifti2Image)
    path = with_unique_values(real, tmp_path / "n2.nii.gz", cls=nib.Nifti2Image)
    assert isinstance(nib.load(path), nib.Nifti2Image)
    layer = open_layer(path)
    assert world_error(layer, nib.load(path)) < TOL_MM
    volume = io.read(path)
    out = io.write(tmp_path / "mask.nii.gz", (volume.array % 3).astype(np.uint8), volume)
    written, scan = nib.load(out), nib.load(path)
    assert isinstance(written, nib.Nifti2Image)
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(scan.dataobj) % 3)


# ---- writing -----------------------------------------------------------------------------


def test_mask_of_a_sform_scan_keeps_both_transforms(tmp_path):
    real = nib.load(NIB_DATA / "anatomical.nii")
    image = nib.Nifti1Image(unique_volume(real.shape), None)
    image.set_qform(real.affine, code=1)
    image.set_sform(oblique_affine(5.0, spacing=(2, 2, 2)), code=2)
    path = tmp_path / "scan.nii.gz"
    nib.save(image, path)
    volume = io.read(path)
    out = io.write(tmp_path / "labels.nii.gz", (volume.array % 2).astype(np.uint8), volume)
    written, scan = nib.load(out), nib.load(path)
    for getter in ("get_qform", "get_sform"):
        np.testing.assert_allclose(getattr(written, getter)(), getattr(scan, getter)(), atol=1e-4)
    assert int(written.header["sform_code"]) == 2 and int(written.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(scan.dataobj) % 2)


def test_a_crop_is_written_where_it_lies(tmp_path):
    """A Preview-style crop of an oblique scan: its own grid, the scan's rotation."""
    from napari.layers import Labels

    from napari_attunet.plugin.layers import SourceGeometry
    from napari_attunet.plugin.writer import write_layer

    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(unique_volume((24, 20, 16)), oblique_affine(25.0)), path)
    scan = open_layer(path)
    start = (3, 5, 7)
    source = SourceGeometry.from_layer(scan)
    crop = np.asarray(scan.data)[3:13, 5:15, 7:15]
    kwargs = source.kwargs()
    kwargs["translate"] = tuple(np.asarray(source.translate) + np.asarray(source.scale) * start)
    layer = Labels((crop % 7).astype(np.uint8), **kwargs)
    out = tmp_path / "crop.nii.gz"
    write_layer(str(out), layer.data, layer.as_layer_data_tuple()[1])
    written = nib.load(out)
    # every written voxel sits where the scan voxel it came from sits
    reference = nib.load(path)
    values = np.asarray(reference.dataobj)
    flat, order = values.reshape(-1), np.argsort(values.reshape(-1))
    for p in sample_indices(crop.shape, n=20):
        k = order[np.searchsorted(flat[order], crop[p])]
        ijk = np.unravel_index(k, values.shape)
        world_scan = reference.affine @ np.array([*ijk, 1.0])
        mask_index = np.linalg.solve(written.affine, world_scan)[:3]
        np.testing.assert_allclose(mask_index, np.round(mask_index), atol=1e-3)
        assert np.asarray(written.dataobj)[tuple(np.round(mask_index).astype(int))] == crop[p] % 7


def test_painted_new_labels_layer_saves_on_its_scan(make_napari_viewer, tmp_path):
    """napari's own "New labels layer" on an oblique scan, painted, saved, read by nibabel."""
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(unique_volume((24, 20, 16)), oblique_affine(30.0)), path)
    viewer = make_napari_viewer()
    [scan] = viewer.open(str(path), plugin="napari-attunet")
    viewer.layers.selection.active = scan
    viewer._new_labels()  # what the "New labels layer" button does
    labels = viewer.layers[-1]
    assert labels.data.shape == scan.data.shape
    painted = [(2, 3, 4), (10, 11, 12), (14, 9, 1)]
    labels.brush_size = 1
    for k, p in enumerate(painted, start=1):
        labels.paint(p, k, refresh=False)
    out = tmp_path / "painted.nii.gz"
    labels.save(str(out), plugin="napari-attunet")
    written, reference = nib.load(out), nib.load(path)
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
    assert written.shape == reference.shape
    mask, values = np.asarray(written.dataobj), np.asarray(reference.dataobj)
    for k, p in enumerate(painted, start=1):
        under = scan.data[p]  # the scan voxel the user painted over
        assert values[mask == k].tolist() == [under]


# ---- derived layers and the CLI -----------------------------------------------------------


@pytest.fixture
def tiny_official(tmp_path):
    from helpers import make_model, official_spec

    model = make_model(official_spec(3, out_ch=3, axes="").replace(orientation=""), seed=2)
    import napari_attunet as na

    return na.save_model(model, tmp_path / "tiny.safetensors")


def test_labels_and_gate_layers_sit_on_the_oblique_scan(tmp_path, tiny_official):
    from napari.layers import Image, Labels

    import napari_attunet as na
    from napari_attunet.plugin.layers import SourceGeometry, gate_layers, labels_layer

    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(unique_volume((24, 20, 16)).astype(np.float32), oblique_affine(33.0)), path)
    scan = open_layer(path)
    source = SourceGeometry.from_layer(scan)
    pred = na.predict(io.read(path), na.load_model(tiny_official), precision="fp32")
    data, kwargs, _ = labels_layer(pred, source, pred.labels())
    labels = Labels(data, **kwargs)
    for p in sample_indices(data.shape, n=10):
        np.testing.assert_allclose(labels.data_to_world(p), scan.data_to_world(p), atol=TOL_MM)
    for (gate_data, gate_kwargs, _), gate in zip(gate_layers(pred, source), pred.gates, strict=True):
        layer = Image(gate_data, **gate_kwargs)
        for c in sample_indices(gate_data.shape, n=10):
            centre = np.asarray(gate.offset) + np.asarray(gate.stride) * np.asarray(c)
            np.testing.assert_allclose(layer.data_to_world(c), scan.data_to_world(centre), atol=TOL_MM)


def test_cli_outputs_carry_the_oblique_scans_exact_affine(tmp_path, tiny_official):
    from napari_attunet.cli import main

    real = nib.load(NIB_DATA / "example4d.nii.gz")  # a real oblique acquisition's header
    path = with_unique_values(real, tmp_path / "oblique.nii.gz")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(path),
                "-c",
                str(tiny_official),
                "-o",
                str(out),
                "--attention",
                "--probabilities",
                "-q",
            ]
        )
        == 0
    )
    scan = nib.load(path)
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) >= 3
    for f in written:
        image = nib.load(f)
        assert image.shape == scan.shape, f.name
        np.testing.assert_allclose(image.get_sform(), scan.get_sform(), atol=1e-4)
        np.testing.assert_allclose(image.get_qform(), scan.get_qform(), atol=1e-4)
