"""The checkpoint files the tool reads, by suffix.

Apart from ``checkpoint`` (which imports torch) because napari's reader asks on every file
dropped into the viewer; scans' suffixes are ``io.SCAN_SUFFIXES``.
"""

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
