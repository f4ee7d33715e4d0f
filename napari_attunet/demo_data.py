"""The bundled demo: a 2 mm MNI152 T1 scan, its GM/WM labels and a checkpoint trained on them."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).with_name("data")
DEMO_SCAN = DATA / "mni152_t1_2mm.nii.gz"
DEMO_LABELS = DATA / "mni152_gmwm_labels_2mm.nii.gz"
DEMO_CHECKPOINT = DATA / "demo_mni152_gmwm.safetensors"
DEMO_NAME = "demo (MNI152 GM/WM)"
