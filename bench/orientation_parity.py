"""Probability differences against each family's own pipeline, per file orientation.

"before" feeds the network the way the engine did before checkpoints stated their orientation
(the reader's LPS array, transposed to (x, y, z)); "after" uses the checkpoint's convention.
MONAI: its LoadImaged/Orientationd(RAS)/NormalizeIntensityd/sliding_window_inference/Invertd
pipeline. Official: the network on nib.load(f).get_fdata() as stored, z-scored.

    python bench/orientation_parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_pipeline_parity as T  # noqa: E402
from helpers import make_model, official_spec, randomise_bn  # noqa: E402

import napari_attunet as na  # noqa: E402


def main() -> None:
    from monai.networks.nets import AttentionUnet
    from monai.transforms import NormalizeIntensityd

    folder = Path(tempfile.mkdtemp())
    image = nib.load(T.MNI)
    data = np.asarray(image.dataobj, dtype=np.float32)[T.RAS_CROP]
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ np.array([s.start for s in T.RAS_CROP] + [1.0])
    scan = nib.Nifti1Image(data, affine)
    torch.manual_seed(0)
    net = randomise_bn(
        AttentionUnet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)),
        seed=1,
    ).eval()
    torch.save(net.state_dict(), folder / "monai.pt")
    official = randomise_bn(
        make_model(official_spec(3, out_ch=3, axes="").replace(orientation=""), seed=7), seed=3
    )
    na.save_model(official, folder / "official.safetensors")
    print("family    file  before mean/max     after mean/max")
    for code in T.ORIENTATIONS:
        path = T.stored_as(scan, code, folder)
        theirs = T.monai_probabilities(net, path, NormalizeIntensityd("image"))
        row = []
        for orientation in ("LPS", None):
            model = na.load_model(
                folder / "monai.pt", overrides={"orientation": orientation} if orientation else None
            )
            row.append(T.compare(T.our_probabilities(path, model, folder, normalization="zscore"), theirs))
        print(f"MONAI     {code}   {row[0][0]:.4f}/{row[0][1]:.3f}      {row[1][0]:.4f}/{row[1][1]:.3f}")
        stored = nib.load(path).get_fdata().astype(np.float32)
        x = torch.from_numpy(T.official_zscore(stored).astype(np.float32))[None, None]
        with torch.no_grad():
            theirs = torch.softmax(official(x), 1)[0].numpy()
        row = []
        for orientation in ("LPS", None):
            model = na.load_model(
                folder / "official.safetensors",
                overrides={"orientation": orientation} if orientation else None,
            )
            row.append(T.compare(T.our_probabilities(path, model, folder, normalization="zscore"), theirs))
        print(f"official  {code}   {row[0][0]:.4f}/{row[0][1]:.3f}      {row[1][0]:.4f}/{row[1][1]:.3f}")


if __name__ == "__main__":
    main()
