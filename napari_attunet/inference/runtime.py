"""Which runtime executes the network: PyTorch, or OpenVINO on the CPU when it is installed.

On the CPU, ``auto`` is decided by measuring (``autochoice``); here it is PyTorch until then,
and everywhere else."""

from __future__ import annotations

from collections.abc import Generator

import torch

from ..errors import CheckpointError, InputError
from ..models import AttentionUNetBase
from .progress import Progress

RUNTIMES = ("auto", "torch", "openvino")
OPENVINO_EXTRA = 'pip install "napari-attunet[openvino]"'


def openvino_available() -> bool:
    """Whether ``import openvino`` works (a missing or broken install counts as absent)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: torch.device, precision: str = "fp32") -> str:
    """'torch' or 'openvino' for a run on ``device``.

    'auto' is PyTorch: on the CPU, ``autochoice.choose`` then measures whether OpenVINO (or
    bf16) is faster there, at the same labels. Asking for OpenVINO where it cannot run is an
    InputError naming what to do instead.
    """
    name = str(runtime).lower()
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}.")
    if precision == "int8" and name == "torch":
        raise InputError("precision int8 runs on OpenVINO, not PyTorch; choose runtime auto or openvino.")
    if name == "torch":
        return "torch"
    if name == "auto" and precision != "int8":
        return "torch"
    if device.type != "cpu":
        raise InputError(
            f"the OpenVINO runtime runs on the CPU, not on {device}; choose device cpu or runtime torch."
        )
    if not openvino_available():
        raise InputError(
            "the OpenVINO runtime is not installed; install it with "
            f"{OPENVINO_EXTRA}, or choose runtime torch."
        )
    return "openvino"


def runtime_device(runtime: str, device: str | torch.device, precision: str = "auto") -> str | torch.device:
    """The device to resolve: an explicit OpenVINO or int8 run with device 'auto' means the CPU."""
    explicit = str(runtime).lower() == "openvino" or str(precision).lower() == "int8"
    if explicit and str(device).lower() == "auto":
        return "cpu"
    return device


def prepare_openvino(
    model: AttentionUNetBase, precision: str, requested: str
) -> Generator[Progress, None, str | None]:
    """Convert (once, then from the cache) and compile the network for OpenVINO, saying so
    while it converts. Returns None when OpenVINO is ready, or, when ``requested`` is 'auto'
    and it cannot run this network, the note that PyTorch runs it instead; an explicit
    'openvino' that cannot is a CheckpointError."""
    from . import runtime_openvino

    runtime_openvino.cache_limit()  # a bad $NAPARI_ATTUNET_CACHE_MB names the setting
    if runtime_openvino.known_failure(model, precision) is None and not runtime_openvino.is_ready(model):
        yield Progress("preparing", 0, 1, runtime_openvino.COMPILING)
    try:
        runtime_openvino.network(model, precision)
    except runtime_openvino.NotConvertible as exc:
        if str(requested).lower() == "openvino":
            raise CheckpointError(
                f"OpenVINO cannot run this network ({exc}); choose runtime torch or auto."
            ) from None
        return f"OpenVINO cannot run this network ({exc}), so PyTorch ran it."
    return None
