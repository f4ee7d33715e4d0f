"""Checkpoints see scans as their training pipeline showed them.

MONAI is the oracle for MONAI checkpoints: its standard inference pipeline (LoadImaged,
EnsureChannelFirstd, Orientationd RAS, Spacingd, NormalizeIntensityd or ScaleIntensityRanged,
sliding_window_inference, Invertd) and ``napari-attunet`` on the same file must give the same
class probabilities in the file's own voxel space, whatever orientation the file is stored in.
For official checkpoints the oracle is the official loading: the network applied to
``nib.load(f).get_fdata()`` as stored, z-scored as the official NormalizeMedic does.

The scan is a crop of the bundled MNI152 T1 (nilearn's template), stored by nibabel in several
orientations; the networks have random BatchNorm statistics so a wrong layout cannot hide.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import randomise_bn

import napari_attunet as na
from napari_attunet import io

MNI = Path(na.__file__).parent / "data" / "mni152_t1_2mm.nii.gz"
ORIENTATIONS = ["RAS", "LPS", "LAS", "PIR"]
RAS_CROP = (slice(29, 69), slice(34, 82), slice(27, 67))  # (40, 48, 40) voxels around the brain
MEAN_TOL = 0.005


@pytest.fixture(scope="module")
def ras_scan() -> nib.Nifti1Image:
    image = nib.load(MNI)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    data = np.asarray(image.dataobj, dtype=np.float32)[RAS_CROP]
    start = np.array([s.start for s in RAS_CROP] + [1.0])
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ start
    return nib.Nifti1Image(data, affine)


def stored_as(scan: nib.Nifti1Image, code: str, folder: Path) -> Path:
    ornt = nib.orientations.ornt_transform(
        nib.io_orientation(scan.affine), nib.orientations.axcodes2ornt(tuple(code))
    )
    path = folder / f"mni_{code}.nii.gz"
    nib.save(scan.as_reoriented(ornt), path)
    assert "".join(nib.aff2axcodes(nib.load(path).affine)) == code
    return path


@pytest.fixture(scope="module")
def monai_checkpoint(tmp_path_factory):
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    net = randomise_bn(
        AttentionUnet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)),
        seed=1,
    ).eval()
    path = tmp_path_factory.mktemp("monai") / "attention_unet.pt"
    torch.save(net.state_dict(), path)
    return net, path


def monai_probabilities(net, path: Path, intensity, pixdim=None) -> np.ndarray:
    """MONAI's own pipeline, probabilities inverted back onto the file's voxels: (C, i, j, k)."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, Spacingd

    steps = [LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")]
    if pixdim is not None:
        steps.append(Spacingd("image", pixdim=pixdim, mode="bilinear"))
    pre = Compose(steps + [intensity])
    data = pre({"image": str(path)})
    image = data["image"]
    with torch.no_grad():
        logits = sliding_window_inference(
            image[None], roi_size=tuple(image.shape[1:]), sw_batch_size=1, predictor=net
        )
    data["pred"] = torch.softmax(logits[0], 0)
    data["pred"].applied_operations = image.applied_operations
    data["pred"].meta = image.meta
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
    return np.asarray(inverted["pred"])


def our_probabilities(path: Path, model, folder: Path, **options) -> np.ndarray:
    """napari-attunet on the file, probabilities written with its writer and read by nibabel."""
    volume = io.read(path)
    pred = na.predict(volume, model, precision="fp32", **options)
    out = []
    for c in range(pred.probabilities.shape[0]):
        written = io.write(folder / f"p{c}.nii.gz", pred.probabilities[c], volume, overwrite=True)
        out.append(nib.load(written).get_fdata())
    return np.stack(out)


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = np.abs(ours - theirs)
    return float(diff.mean()), float(diff.max())


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_monai_pipeline_parity_in_every_file_orientation(code, ras_scan, monai_checkpoint, tmp_path):
    from monai.transforms import NormalizeIntensityd

    net, checkpoint = monai_checkpoint
    path = stored_as(ras_scan, code, tmp_path)
    theirs = monai_probabilities(net, path, NormalizeIntensityd("image"))
    model = na.load_model(checkpoint)
    assert model.spec.network_orientation == "RAS"
    mean, worst = compare(our_probabilities(path, model, tmp_path, normalization="zscore"), theirs)
    print(f"\nMONAI {code}: mean {mean:.5f}, max {worst:.4f}")
    assert mean <= MEAN_TOL and worst <= 0.02

    # Fed the way the engine fed MONAI networks before (LPS order), the difference is large:
    # the check above would catch a wrong layout.
    lps = na.load_model(checkpoint, overrides={"orientation": "LPS"})
    mean_lps, _ = compare(our_probabilities(path, lps, tmp_path, normalization="zscore"), theirs)
    assert mean_lps > 10 * MEAN_TOL


@pytest.mark.parametrize("code", ["LAS", "PIR"])
def test_monai_spacing_and_scale_range_parity(code, ras_scan, monai_checkpoint, tmp_path):
    from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

    net, checkpoint = monai_checkpoint
    path = stored_as(ras_scan, code, tmp_path)
    pixdim = (2.5, 3.0, 2.0)  # (R, A, S) in MONAI; napari order (S, P, L) reverses it
    model = na.load_model(checkpoint, overrides={"spacing": tuple(reversed(pixdim))})
    cases = [
        (
            ScaleIntensityRanged("image", a_min=20.0, a_max=90.0, b_min=0.0, b_max=1.0, clip=True),
            {"mode": "range", "window": [20.0, 90.0], "target": [0.0, 1.0], "clip": True},
        ),
        (
            ScaleIntensityRanged("image", a_min=0.0, a_max=100.0, b_min=-1.0, b_max=1.0, clip=False),
            {"mode": "range", "window": [0.0, 100.0], "target": [-1.0, 1.0], "clip": False},
        ),
        (NormalizeIntensityd("image", nonzero=True), "zscore_nonzero"),
    ]
    for transform, ours in cases:
        theirs = monai_probabilities(net, path, transform, pixdim=pixdim)
        mine = our_probabilities(path, model, tmp_path, normalization=ours)
        mean, worst = compare(mine, theirs)
        # MONAI's resampler leaves a dozen background voxels at 1e-14 instead of 0, which
        # nonzero=True then normalizes; they and their neighbourhood are the top 0.1 %.
        tail = float(np.quantile(np.abs(mine - theirs), 0.99))
        print(f"\nMONAI {code} Spacingd {pixdim} {ours}: mean {mean:.5f}, 99% {tail:.4f}, max {worst:.4f}")
        assert mean <= MEAN_TOL and tail <= 0.01


def official_zscore(x: np.ndarray) -> np.ndarray:
    """The official NormalizeMedic: subtract the mean, divide by the (population) std."""
    x = x - np.mean(x)
    return x / np.std(x)


@pytest.mark.parametrize("code", ["LAS", "PIR"])
def test_official_convention_is_the_array_as_stored(code, ras_scan, tmp_path):
    from helpers import make_model, official_spec

    spec = official_spec(3, out_ch=3, axes="").replace(orientation="")
    model = make_model(spec, seed=7)
    randomise_bn(model, seed=3)
    path = stored_as(ras_scan, code, tmp_path)
    stored = nib.load(path).get_fdata().astype(np.float32)
    x = torch.from_numpy(official_zscore(stored).astype(np.float32))[None, None]
    with torch.no_grad():
        theirs = torch.softmax(model(x), 1)[0].numpy()
    checkpoint = na.save_model(model, tmp_path / "official.safetensors")
    loaded = na.load_model(checkpoint)
    assert loaded.spec.network_orientation == "native"
    mean, worst = compare(our_probabilities(path, loaded, tmp_path, normalization="zscore"), theirs)
    print(f"\nofficial {code}: mean {mean:.5f}, max {worst:.4f}")
    assert mean <= MEAN_TOL and worst <= 0.02
