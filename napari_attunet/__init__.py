"""napari-attunet: what an Attention U-Net sees in a scan.

The public API (see docs/architecture.md): ``load_model``, ``save_model``, ``predict`` and what
they return, and the errors. Names that need torch load on first use, so that importing the
package (as napari does to read a scan) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import Cancelled, CheckpointError, InputError
from .scans import io

if TYPE_CHECKING:
    from .inference import GateMap, Prediction, Progress, iter_predict, predict
    from .models import GateGeometry, ModelSpec
    from .models.checkpoint import load_model, save_model
    from .review import evaluate

__version__ = "0.1.0"

_LAZY = {
    "load_model": ".models.checkpoint",
    "save_model": ".models.checkpoint",
    "GateMap": ".inference",
    "Prediction": ".inference",
    "Progress": ".inference",
    "iter_predict": ".inference",
    "predict": ".inference",
    "GateGeometry": ".models",
    "ModelSpec": ".models",
    "evaluate": ".review",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "io",
    "Cancelled",
    "CheckpointError",
    "GateGeometry",
    "GateMap",
    "InputError",
    "ModelSpec",
    "Prediction",
    "Progress",
    "evaluate",
    "iter_predict",
    "load_model",
    "predict",
    "save_model",
]
