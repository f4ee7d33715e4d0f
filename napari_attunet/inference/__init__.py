"""Sliding-window inference with stitched attention gates."""

from .engine import Progress, iter_predict, predict
from .postprocess import GateMap, Prediction
from .preprocess import Normalization

__all__ = ["GateMap", "Normalization", "Prediction", "Progress", "iter_predict", "predict"]
