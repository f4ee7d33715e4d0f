"""Judging a result: agreement with a reference (Dice, HD95, ASSD, volumes, with MONAI's
conventions) and confidence per structure. Imports neither torch nor Qt."""

from __future__ import annotations

from .agreement import evaluate
from .metrics import CSV_COLUMNS, ClassMetrics, Evaluation

__all__ = ["CSV_COLUMNS", "ClassMetrics", "Evaluation", "evaluate"]
