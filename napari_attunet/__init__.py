"""napari-attunet: what an Attention U-Net sees in a scan.

The public API (see DESIGN.md): ``load_model``, ``save_model``, ``predict`` and what they return,
and the errors.
"""

from . import io
from .checkpoint import load_model, save_model
from .errors import Cancelled, CheckpointError, InputError
from .inference import GateMap, Prediction, Progress, iter_predict, predict
from .models import GateGeometry, ModelSpec

__version__ = "0.1.0"

__all__ = ["io", "Cancelled", "CheckpointError", "GateGeometry", "GateMap", "InputError", "ModelSpec",
           "Prediction", "Progress", "iter_predict", "load_model", "predict", "save_model"]
