"""The prediction engine: a generator that yields progress and returns a Prediction.

``iter_predict`` is the whole computation and knows nothing of any GUI; ``predict`` drives it
with a plain callback. The napari widget runs ``iter_predict`` in a worker thread. A run has three
stages around a ``plan.Plan``: ``plan`` (shapes, tiles, memory), ``run`` (batches, TTA, runtime)
and ``finish`` (crop, resample back, quantize).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator, Sequence

from ..errors import InputError
from ..models import AttentionUNetBase
from .devices import resolve_device, resolve_precision
from .finish import finish
from .memory import estimate_memory
from .plan import Target, make_plan
from .postprocess import Prediction
from .preprocess import check_spacing, check_tile
from .progress import Progress
from .progress import cancelled as _cancelled  # noqa: F401  (the name blockwise used)
from .run import run_tiles
from .runtime import prepare_openvino, resolve_runtime, runtime_device
from .tta import unflip_gate

__all__ = ["Progress", "estimate_memory", "iter_predict", "predict", "unflip_gate"]


def iter_predict(
    image,
    model: AttentionUNetBase,
    *,
    spacing: Sequence[float] | None = None,
    channel_axis: int | None = None,
    normalization=None,
    tile: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    cancel=None,
    batch_size: int | None = None,
    attention: bool = True,
    name: str = "the image",
    fold_batchnorm: bool = True,
    channels_last: bool = True,
    affine=None,
    file_orientation: str | None = None,
    orientation: str | None = None,
    region: Sequence[slice] | None = None,
    runtime: str = "auto",
    calibration=None,
    intensity=None,
    out=None,
    scheduler=None,
    grid=None,
    **blockwise,
) -> Generator[Progress, None, Prediction]:
    """Run ``model`` over ``image`` tile by tile, yielding a Progress after each batch.

    ``image`` is an array (napari axis order) or a scan from ``napari_attunet.io.read``, whose
    spacing, affine and file orientation are then used. ``affine`` places the array in world
    (see ``napari_attunet.geometry``), so that the network sees the scan laid out as its
    checkpoint was trained (``ModelSpec.network_orientation``; ``orientation`` overrides it);
    without one, the array is taken as this tool's reader lays scans out, (z, y, x) toward
    Superior, Posterior, Left. ``region`` (slices) predicts only that part of the image, with
    the whole image's intensity statistics and the full run's windows around it, as a full run
    would see it. ``runtime``: 'auto' (OpenVINO on the CPU when installed, else PyTorch),
    'torch' or 'openvino'. Returns (as the generator's value) a :class:`Prediction` on the
    input grid (the region's grid with ``region``). Raises InputError for images the model
    cannot take and Cancelled when ``cancel`` fires.

    A dask or zarr ``image``, or an ``out`` store, runs block by block on Dask (see
    ``blockwise``, whose options ``block``, ``workers``, ``thresholds`` pass through);
    ``intensity`` (one fitted IntensityMap per channel) skips the fit; ``grid`` (a
    ``preprocess.GridWindow`` per network axis) places the image on a larger run's grids.
    """
    from .lazy import is_lazy

    if out is not None or is_lazy(image) or scheduler is not None or blockwise:
        if str(precision).lower() == "int8":
            raise InputError("precision int8 runs on scans held in memory, not block by block; choose fp32.")
        from .blockwise import iter_blockwise

        return (
            yield from iter_blockwise(
                image,
                model,
                spacing=spacing,
                channel_axis=channel_axis,
                normalization=normalization,
                tile=tile,
                overlap=overlap,
                device=device,
                precision=precision,
                tta=tta,
                cancel=cancel,
                batch_size=batch_size,
                attention=attention,
                name=name,
                fold_batchnorm=fold_batchnorm,
                channels_last=channels_last,
                affine=affine,
                file_orientation=file_orientation,
                orientation=orientation,
                out=out,
                scheduler=scheduler,
                region=region,
                runtime=runtime,
                **blockwise,
            )
        )
    started = time.perf_counter()
    if hasattr(image, "array") and hasattr(image, "affine"):  # an io.Volume
        spacing = image.spacing if spacing is None else spacing
        affine = image.affine if affine is None else affine
        file_orientation = file_orientation or image.source.get("orientation")
        image = image.array
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), not {overlap}.")
    spacing = check_spacing(spacing, name)
    tile = check_tile(tile, model.spec.spatial_dims)
    dev = resolve_device(runtime_device(runtime, device, precision))
    prec = resolve_precision(precision, dev)
    engine = resolve_runtime(runtime, dev, prec)
    # OpenVINO picks its own layouts; it takes plain arrays
    target = Target(dev, prec, engine, channels_last and engine != "openvino")
    plan = yield from make_plan(
        image,
        model,
        target,
        spacing=spacing,
        channel_axis=channel_axis,
        normalization=normalization,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        attention=attention,
        name=name,
        affine=affine,
        file_orientation=file_orientation,
        orientation=orientation,
        region=region,
        intensity=intensity,
        grid=grid,
    )
    int8_net = None
    if prec == "int8":  # after the plan, like OpenVINO's conversion
        int8_net = yield from _prepare_int8(model, plan, target, calibration, normalization)
    elif engine == "openvino":  # after the plan: a bad input fails before a long conversion
        fallback = yield from prepare_openvino(model, prec, runtime)
        if fallback is not None:
            engine = "torch"
            target = Target(dev, prec, engine, channels_last)
            plan.notes.append(fallback)
            warnings.warn(fallback, RuntimeWarning, stacklevel=2)
    blended, gate_sums = yield from run_tiles(
        plan,
        model,
        target,
        tta=tta,
        attention=attention,
        cancel=cancel,
        fold_batchnorm=fold_batchnorm,
        name=name,
        net=int8_net,
    )
    if int8_net is not None:
        from .quantize import guard

        plan.notes.append(guard(int8_net, model, plan, blended, tta))
    quantized, gate_maps = finish(
        plan, blended, gate_sums, model.spec, tta=tta, attention=attention, name=name
    )
    del blended, gate_sums
    spread = quantized.shape[0] > model.spec.out_channels
    return Prediction(
        quantized=quantized[: model.spec.out_channels],
        disagreement=quantized[-1] if spread else None,
        output=model.spec.output,
        class_names=model.spec.class_labels,
        gates=gate_maps,
        spacing=(tuple(float(s) for s in spacing)[-len(plan.scan_shape) :] if spacing is not None else None),
        device=str(dev),
        precision=prec,
        seconds=time.perf_counter() - started,
        tile=plan.tile,
        overlap=overlap,
        notes=plan.notes,
        runtime=engine,
    )


def _prepare_int8(model, plan, target, calibration, normalization):
    """The int8 network, calibrated on this scan or on the scans of ``calibration``, each
    planned as this one (normalization, tile)."""
    from .quantize import prepare_int8

    def plan_for(volume):
        return make_plan(
            volume.array, model, target, spacing=volume.spacing, channel_axis=None,
            normalization=normalization, tile=plan.tile, overlap=0.0, batch_size=None,
            attention=True, name=volume.name, affine=volume.affine,
            file_orientation=volume.source.get("orientation"), orientation=None, region=None,
            intensity=None, grid=None,
        )  # fmt: skip

    return (yield from prepare_int8(model, plan, calibration, plan_for))


def predict(
    image,
    model: AttentionUNetBase,
    spacing: Sequence[float] | None = None,
    channel_axis: int | None = None,
    normalization=None,
    tile: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    runtime: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
    **options,
) -> Prediction:
    """Segment ``image`` with ``model``; see DESIGN.md for every argument.

    ``progress(done, total)`` is called after each batch; ``cancel`` (a threading.Event or a
    callable) stops the run within one batch and raises Cancelled.
    """
    steps = iter_predict(
        image,
        model,
        spacing=spacing,
        channel_axis=channel_axis,
        normalization=normalization,
        tile=tile,
        overlap=overlap,
        device=device,
        precision=precision,
        tta=tta,
        runtime=runtime,
        cancel=cancel,
        **options,
    )
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None and step.stage == "predicting":
            progress(step.done, step.total)
