"""napari-attunet: what an Attention U-Net sees in a scan.

The public API (see DESIGN.md): ``load_model``, ``save_model``, ``ModelSpec`` and the errors.
"""

from .checkpoint import load_model, save_model
from .errors import Cancelled, CheckpointError, InputError
from .models import GateGeometry, ModelSpec

__version__ = "0.1.0"

__all__ = ["Cancelled", "CheckpointError", "GateGeometry", "InputError", "ModelSpec",
           "load_model", "save_model"]
