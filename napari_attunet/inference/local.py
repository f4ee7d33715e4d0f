"""One run in this process, on arrays in memory: plan, run, finish (see ``engine``).

Blocks on Dask (``blockwise``) call ``iter_local`` on their crops, with the whole volume's
intensity statistics and their place on the whole run's grids."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence

from ..models import AttentionUNetBase
from .autochoice import settle
from .devices import resolve_device, resolve_precision
from .finish import finish
from .options import RunOptions
from .plan import Target, make_plan
from .postprocess import Prediction
from .progress import Progress
from .run import run_tiles
from .runtime import resolve_runtime, runtime_device


def iter_local(
    image,
    model: AttentionUNetBase,
    options: RunOptions,
    *,
    cancel=None,
    intensity: list | None = None,
    grid: Sequence | None = None,
) -> Generator[Progress, None, Prediction]:
    """Run ``model`` over an in-memory ``image`` tile by tile, yielding a Progress after each
    batch, and return a Prediction on the input grid (the region's with ``options.region``).

    ``intensity`` (one fitted IntensityMap per channel) skips the fit; ``grid`` (a
    ``preprocess.GridWindow`` per network axis) places the image on a larger run's grids."""
    started = time.perf_counter()
    image, options, _ = options.with_volume(image)
    options = options.checked(model.spec)
    dev = resolve_device(runtime_device(options.runtime, options.device, options.precision))
    prec = resolve_precision(options.precision, dev)
    engine = resolve_runtime(options.runtime, dev, prec)
    # OpenVINO picks its own layouts; it takes plain arrays
    target = Target(dev, prec, engine, options.channels_last and engine != "openvino")
    plan = yield from make_plan(image, model, target, options, intensity=intensity, grid=grid)
    int8_net = net = None
    if prec == "int8":  # after the plan, like OpenVINO's conversion
        int8_net = yield from _prepare_int8(model, plan, target, options)
    else:  # after the plan: a bad input fails before measuring or a long conversion
        prec, engine, net, notes = yield from settle(model, plan, options, dev, prec, engine)
        plan.notes += notes
        target = Target(dev, prec, engine, options.channels_last and engine != "openvino")
    blended, gate_sums = yield from run_tiles(
        plan, model, target, options, cancel=cancel, net=int8_net if int8_net is not None else net
    )
    if int8_net is not None:
        from .quantize import guard

        plan.notes.append(guard(int8_net, model, plan, blended, options.tta))
    quantized, gate_maps = finish(plan, blended, gate_sums, model.spec, options)
    del blended, gate_sums
    spread = quantized.shape[0] > model.spec.out_channels
    spacing = options.spacing
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
        overlap=options.overlap,
        notes=plan.notes,
        runtime=engine,
    )


def _prepare_int8(model, plan, target, options: RunOptions):
    """The int8 network: stored beside the checkpoint (``convert --int8``), or calibrated on
    this scan or on the scans of ``options.calibration``, each planned as this one."""
    from .quantize import normalization_of, prepare_int8

    def plan_for(volume):
        image, scan_options, _ = options.for_another_scan(volume.name, plan.tile).with_volume(volume)
        return make_plan(image, model, target, scan_options.checked(model.spec))

    norm = normalization_of(model, options.normalization)
    return (yield from prepare_int8(model, plan, options.calibration, plan_for, normalization=norm))


def drive(steps: Generator[Progress, None, Prediction], progress=None) -> Prediction:
    """Run a prediction generator to its end, calling ``progress(done, total)`` per batch."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None and step.stage == "predicting":
            progress(step.done, step.total)
