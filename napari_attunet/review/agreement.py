"""``na.evaluate``: a prediction against a reference, one row per foreground class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from . import labelmaps, metrics


def evaluate(
    prediction: Any,
    reference: Any,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> metrics.Evaluation:
    """Dice, HD95 (mm), ASSD (mm) and volumes (mL) per foreground class, as MONAI computes them.

    ``prediction`` and ``reference``: label arrays, ``io.Volume`` objects, a ``Prediction``
    (its default labels), or paths of scan files or result stores. Label maps on different
    grids are compared on the prediction's, the reference resampled by nearest neighbour in
    world coordinates (a note says so). ``spacing`` (mm per axis) overrides what the inputs
    say; without either, voxels are taken as 1 mm. ``class_names[k]`` names label value k (0 is
    the background); by default the prediction's own names, else the label values.

    Rows: one per class of the prediction (or, without class names, per value found in either),
    background left out. Dice is 1 where a class is absent from both; HD95 and ASSD are NaN
    where it is absent from either, and the row's ``note`` says why. Raises ``InputError`` with
    one sentence naming the input for what cannot be compared.
    """
    pred = labelmaps.label_map(prediction, "the prediction")
    ref = labelmaps.label_map(reference, "the reference")
    if pred.array.ndim != ref.array.ndim:
        raise InputError(
            f"{pred.name} is {pred.array.ndim}D and {ref.name} is {ref.array.ndim}D; compare a "
            f"prediction with a reference of the same dimensions."
        )
    if pred.array.ndim not in (2, 3):
        raise InputError(f"{pred.name} has {pred.array.ndim} dimensions; give 2D or 3D label maps.")
    pred = labelmaps.integer_labels(pred)
    ref = labelmaps.integer_labels(ref)
    names = tuple(class_names) if class_names is not None else pred.names
    array, notes = labelmaps.onto(ref, pred)
    if names:
        labelmaps.check_classes(pred, names, "its class list")
        labelmaps.check_classes(labelmaps.LabelMap(array, ref.name), names, "the prediction")
    voxel = _spacing(spacing, pred, ref, notes)
    values = list(range(1, len(names))) if names else None
    rows = metrics.compare(pred.array, array, voxel, values, dict(enumerate(names or ())))
    return metrics.Evaluation(rows, pred.notes + ref.notes + notes)


def _spacing(
    given: Sequence[float] | None, pred: labelmaps.LabelMap, ref: labelmaps.LabelMap, notes: list[str]
) -> tuple[float, ...]:
    ndim = pred.array.ndim
    if given is not None:
        voxel = tuple(float(s) for s in given)
        if len(voxel) == 1:
            voxel = voxel * ndim
    elif pred.spacing is not None:
        voxel = pred.spacing
    elif ref.spacing is not None and ref.array.shape == pred.array.shape:
        voxel = ref.spacing
    else:
        notes.append("no voxel size given: voxels are taken as 1 mm (pass spacing=...).")
        voxel = (1.0,) * ndim
    if len(voxel) != ndim or min(voxel) <= 0 or not all(v < float("inf") for v in voxel):
        raise InputError(
            f"spacing {voxel}: give {ndim} positive voxel sizes in mm, one per axis of the label maps."
        )
    return voxel
