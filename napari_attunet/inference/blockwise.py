"""Block by block on Dask: volumes larger than memory, read window by window, results written
(to memory or to an OME-Zarr store) as blocks finish.

Each block is a Dask task that reads its region plus every window of the whole run that touches
it (see ``windows``: with resampling, on the whole run's resampled grid), runs the in-memory
engine on that crop with the intensity statistics of the whole volume, and keeps its region.
The crop's windows are the whole run's windows and the gate grids line up: the blocks agree
with one in-memory run, with no seams.

Blocks are whole chunks of the OME-Zarr store: along an axis they cut, their length is a
multiple of a grain that is a multiple of a store chunk in [16, 128] and, where possible, of the
window step and the stride (``store.block_grain``; the store module's docstring has the layout)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..models import AttentionUNetBase
from .lazy import LazySource, as_dask, as_seen, fit_lazy, open_level, stack_channels, store_name
from .options import RunOptions
from .postprocess import GateMap, Prediction
from .preprocess import resolve_normalization
from .progress import Progress, cancelled
from .sinks import BlockResult, GateGrid, MemorySink
from .store import block_grain, split_chunk
from .tiling import round_up
from .windows import AxisWindows, Part, axis_context, part, run_windows, windows_in

BLOCK_BUDGET = 36 * 1024**2  # context voxels of one block: ~60 B each at its peak, ~2.6 GB in all


@dataclass
class Plan:
    spatial: tuple[int, ...]
    tile: tuple[int, ...]
    block: tuple[int, ...]
    blocks: list[Part]
    gates: list[GateGrid]
    stack: bool = False
    axes: list = field(default_factory=list)  # AxisWindows per scan axis
    perm: tuple[int, ...] = ()  # network axis i is scan axis perm[i]


def plan(
    spatial: Sequence[int],
    model: AttentionUNetBase,
    *,
    tile=None,
    block=None,
    overlap: float = 0.5,
    spacing=None,
    layout=None,
    attention: bool = True,
    store: bool = False,
) -> Plan:
    """Cut ``spatial`` into blocks, each with the context its windows need. Blocks are whole
    chunks of an OME-Zarr store (``store.py``'s docstring); ``store``: a ``block`` given by hand
    is rounded up to whole chunks too (in memory it is taken as given, rounded to the unit)."""
    spec = model.spec
    run = run_windows(spatial, spec, tile=tile, overlap=overlap, spacing=spacing, layout=layout)
    spatial = run.spatial
    sizes = _block_sizes(spatial, list(run.axes), block, store)
    ranges = [range(0, n, b) for n, b in zip(spatial, sizes, strict=True)]
    blocks = [
        part(run, tuple(slice(s, min(s + b, n)) for s, b, n in zip(origin, sizes, spatial, strict=True)))
        for origin in itertools.product(*ranges)
    ]
    perm, factors = run.perm, run.factors
    gates = _gate_grids(spec, spatial, run.plane, perm, layout, factors, run.stack) if attention else []
    return Plan(spatial, run.tile, sizes, blocks, gates, run.stack, list(run.axes), run.perm)


def _block_sizes(spatial, axes: list[AxisWindows], block, store: bool = False) -> tuple[int, ...]:
    """Block sizes per axis. On plane axes a multiple of the window step and stride, chosen so
    that the blocks together run the fewest windows (each block also runs the windows of its
    halo) while the largest block's context stays within ``BLOCK_BUDGET``; the whole volume when
    it fits. Slice axes (a 2D network on a stack) fill up what is left of the budget. Every
    size is a multiple of its axis' grain (``store.block_grain``): blocks are whole store chunks."""
    units = [math.lcm(ax.step, ax.stride) if ax.tile else 1 for ax in axes]
    grains = [block_grain(ax.step, ax.stride) if ax.tile else block_grain(1, 1) for ax in axes]
    if block is not None:
        block = (block,) * len(spatial) if isinstance(block, int) else tuple(block)
        block = block[-len(spatial) :]
        sizes = [round_up(max(int(b), u), u) for b, u in zip(block, units, strict=True)]
        if store:  # whole chunks of at least 16: a length without a divisor in range is rounded up
            sizes = [
                b if b >= n or split_chunk(b) is not None else round_up(b, g)
                for b, n, g in zip(sizes, spatial, grains, strict=True)
            ]
        return tuple(sizes)
    if int(np.prod(spatial)) <= BLOCK_BUDGET:
        return tuple(spatial)
    plane = [a for a, ax in enumerate(axes) if ax.tile]
    options = [_axis_options(spatial[a], axes[a], grains[a]) for a in plane]
    # a block holds at least a grain of slices (whole store chunks of at least 16)
    depth = math.prod(min(n, g) for n, g, ax in zip(spatial, grains, axes, strict=True) if not ax.tile)
    best: tuple | None = None
    for combo in itertools.product(*options):
        windows = math.prod(w for _, w, _ in combo)
        context = math.prod(c for _, _, c in combo) * depth
        if context > BLOCK_BUDGET and best is not None and best[2] <= BLOCK_BUDGET:
            continue
        blocks = math.prod(-(-spatial[a] // b) for a, (b, _, _) in zip(plane, combo, strict=True))
        # Within the budget: the fewest windows; of equals, the smallest block whose context is at
        # least an eighth of the budget (per-block costs stay small, memory low, and progress
        # and a viewer filling in come block by block). Over the budget: the smallest context.
        small = context < BLOCK_BUDGET // 8
        if context <= BLOCK_BUDGET:
            key: tuple = (0, windows, small, -context if small else context, blocks)
        else:
            key = (1, context, windows, blocks)
        if best is None or key < best[0]:
            best = (key, combo, context)
    assert best is not None
    sizes = list(spatial)
    for a, (b, _, _) in zip(plane, best[1], strict=True):
        sizes[a] = b
    per_slice = max(1, best[2] // depth)
    for a, ax in enumerate(axes):
        if not ax.tile:  # slices: as many as fit, whole store chunks (a multiple of the grain)
            count = min(spatial[a], max(grains[a], BLOCK_BUDGET // per_slice))
            sizes[a] = count if count >= spatial[a] else count // grains[a] * grains[a]
    return tuple(sizes)


def _axis_options(n: int, ax: AxisWindows, unit: int) -> list[tuple[int, int, int]]:
    """(block size, windows its blocks run along the axis, largest context along the axis) for
    each block size worth trying on one plane axis (multiples of ``unit``, the axis' grain, up
    to the axis)."""
    assert ax.tile is not None
    best: dict[int, tuple[int, int, int]] = {}
    for b in range(unit, round_up(n, unit) + 1, unit):
        windows = context = 0
        for lo in range(0, n, b):
            outer, grid = axis_context(slice(lo, min(n, lo + b)), n, ax)
            windows += windows_in(grid, ax)
            context = max(context, outer.stop - outer.start)
        blocks = -(-n // b)
        if blocks not in best or (windows, context) < best[blocks][1:]:
            best[blocks] = (b, windows, context)  # per block count, at most 2 sqrt(n / unit) kept
        if b >= n:
            break
    return list(best.values())


def window_count(work: Plan) -> tuple[int, int]:
    """(windows the blocks run, windows one in-memory run has), per image of the plane axes."""
    runs, once = 1, 1
    for n, b, ax in zip(work.spatial, work.block, work.axes, strict=True):
        if ax.tile is None:
            continue
        once *= len(ax.starts)
        runs *= sum(
            windows_in(axis_context(slice(lo, min(n, lo + b)), n, ax)[1], ax) for lo in range(0, n, b)
        )
    return runs, once


def _gate_grids(spec, spatial, plane, perm, layout, factors, stack) -> list[GateGrid]:
    """Each gate's grid over the whole scan, as the in-memory engine reports it."""
    grids = []
    lead = 1 if stack else 0
    for k, g in enumerate(spec.gates, start=1):
        cells = (spatial[perm[0]],) * lead + tuple(
            math.ceil(n / s) for n, s in zip(plane, g.stride, strict=True)
        )
        stride = [1.0] * lead + [float(s) for s in g.stride]
        offset = [0.0] * lead + [float(o) for o in g.offset]
        if factors is not None:
            stride = [s / f for s, f in zip(stride, factors, strict=True)]
            offset = [o / f for o, f in zip(offset, factors, strict=True)]
        if layout is not None and not layout.identity:
            net_shape = tuple(spatial[p] for p in perm)
            for a in layout.flipped:
                offset[a] = net_shape[a] - 1 - offset[a] - stride[a] * (cells[a] - 1)
            inv = layout.inverse
            stride = [stride[p] for p in inv]
            offset = [offset[p] for p in inv]
            cells = tuple(cells[p] for p in inv)
        grids.append(GateGrid(g.heads, tuple(stride), tuple(offset), tuple(cells), f"gate {k}"))
    return grids


# ---- the model on workers ----------------------------------------------------------------------

_MODELS: dict[str, AttentionUNetBase] = {}
_MODELS_LOCK = threading.Lock()


class ModelRef:
    """A model for Dask tasks: the object itself on threads; on other processes its weights and
    spec travel as safetensors bytes (nothing executable) and each process loads it once."""

    def __init__(self, model: AttentionUNetBase):
        self.model = model

    def get(self) -> AttentionUNetBase:
        return self.model

    def __reduce__(self):
        import hashlib

        payload = _payload(self.model)
        return (_model_from_payload, (hashlib.sha256(payload).hexdigest(), payload))


def _payload(model: AttentionUNetBase) -> bytes:
    import json

    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(tensors, metadata={"spec": json.dumps(model.spec.to_dict())})


def _model_from_payload(key: str, payload: bytes) -> ModelRef:
    """On a worker: the model these bytes describe, built once per process (by content)."""
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            if len(_MODELS) >= 2:  # a long-lived worker keeps the last models only
                _MODELS.pop(next(iter(_MODELS)))
            model = load_payload(payload)
            _MODELS[key] = model
    return ModelRef(model)


def load_payload(payload: bytes) -> AttentionUNetBase:
    """Build a model from ``_payload`` bytes (weights and spec JSON, no pickle)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load

    from ..models import ModelSpec, build

    state = load(payload)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as fh:  # metadata needs a file
        fh.write(payload)
        fh.flush()
        with safe_open(fh.name, "pt") as f:
            spec = ModelSpec.from_dict(json.loads(f.metadata()["spec"]))
    model = build(spec)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- one block ---------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything a block task needs besides its pixels."""

    model: ModelRef
    intensity: list | None  # None: the block is the whole volume and fits its own
    options: RunOptions  # what each block runs with (``RunOptions.for_blocks``)
    sink: Any
    cancel: Any = None
    shape: tuple[int, ...] = ()  # the whole volume's spatial shape


def run_block(crop: np.ndarray, block: Part, job: Job) -> BlockResult:
    """Predict one block (its context read into ``crop``) and hand its interior to the sink."""
    from .local import drive, iter_local

    if cancelled(job.cancel):
        raise Cancelled("cancelled")
    # The crop runs whole (its windows are the whole run's) and its interior is kept.
    steps = iter_local(
        np.asarray(crop),
        job.model.get(),
        job.options,
        cancel=job.cancel,
        intensity=job.intensity,
        grid=block.grid,
    )
    pred = drive(steps)
    quantized = np.ascontiguousarray(pred.quantized[(slice(None),) + tuple(block.inner)])
    disagreement = None
    if pred.disagreement is not None:
        disagreement = np.ascontiguousarray(pred.disagreement[tuple(block.inner)])
    gates = [_crop_gate(g, block, job.shape) for g in pred.gates]
    result = BlockResult(
        block.region,
        quantized,
        disagreement,
        gates,
        device=pred.device,
        precision=pred.precision,
        runtime=pred.runtime,
    )
    if job.sink is not None and job.sink.on_worker:
        return job.sink.write(result)
    return result


def _crop_gate(gate: GateMap, block: Part, shape) -> GateMap:
    """The cells of a crop's gate map centred in the block's region, and on the volume's edges
    also those centred beyond it (the whole run keeps them); offsets relative to the region."""
    keep, offset = [], []
    for sl, inner, n, s, o, cells in zip(
        block.region, block.inner, shape, gate.stride, gate.offset, gate.data.shape[1:], strict=True
    ):
        lo = inner.start if sl.start > 0 else -math.inf
        hi = inner.stop if sl.stop < n else math.inf
        first = 0 if lo == -math.inf else max(0, math.ceil((lo - o) / s - 1e-9))
        last = cells if hi == math.inf else min(cells, math.ceil((hi - o) / s - 1e-9))
        keep.append(slice(first, max(first, last)))
        offset.append(o + s * first - inner.start)
    data = np.ascontiguousarray(gate.data[(slice(None),) + tuple(keep)])
    return GateMap(data, gate.stride, tuple(offset), gate.name)


# ---- the run -----------------------------------------------------------------------------------


def iter_blockwise(
    image, model: AttentionUNetBase, options: RunOptions, *, cancel=None
) -> Generator[Any, None, Prediction]:
    """``iter_predict`` for lazy images and stores: yields Progress, returns a Prediction."""
    from .orientation import network_layout

    started = time.perf_counter()
    spec = model.spec
    image, options, origin = options.with_volume(image)
    name = options.name
    if isinstance(image, (list, tuple)):  # one image per channel, as in memory
        image = stack_channels(image, spec, name)
        options = options.replace(channel_axis=0)
    image, spacing, channel_axis = open_level(image, options.spacing, options.channel_axis, name)
    options = options.replace(spacing=spacing, channel_axis=channel_axis).checked(spec)
    spacing, out, overlap, region = options.spacing, options.out, options.overlap, options.region
    if out is not None:
        from .store import check_free

        check_free(out, options.overwrite)
    source = LazySource(image, spec, options.channel_axis, name)
    spatial = source.spatial
    affine = options.affine
    if affine is not None and np.shape(affine) != (len(spatial) + 1,) * 2:
        raise InputError(
            f"{name}: affine must be {len(spatial) + 1}x{len(spatial) + 1} for an "
            f"image with {len(spatial)} spatial axes, not {np.shape(affine)}."
        )
    layout = network_layout(spec, len(spatial), affine, options.file_orientation, options.orientation)
    norm = resolve_normalization(options.normalization, spec)
    layout_arg = None if layout.identity else layout
    work = plan(
        spatial,
        model,
        tile=options.tile,
        block=options.block,
        overlap=overlap,
        spacing=spacing,
        layout=layout_arg,
        attention=options.attention,
        store=out is not None,
    )
    if out is None and region is None:
        _check_result_memory(work, spec, options.tta, store_name(source.image, name))
    block_options = options.for_blocks(work.tile, source.channel_axis)
    if region is not None:  # one block: the region and its context, read alone
        if out is not None:
            raise InputError("a region is predicted in memory; leave out= unset for it.")
        yield Progress("preparing", 0, 1, "intensity statistics, chunk by chunk")
        intensity: list | None = fit_lazy(as_seen(source, work.axes, work.perm), norm)
        run = run_windows(spatial, spec, tile=work.tile, overlap=overlap, spacing=spacing, layout=layout_arg)
        crop = part(run, region)
        yield Progress(
            "predicting", 0, 1, f"the region and its context, {tuple(o.stop - o.start for o in crop.outer)}"
        )
        job = Job(ModelRef(model), intensity, block_options, None, cancel, tuple(spatial))
        result = run_block(source.read(crop.outer), crop, job)
        yield Progress("predicting", 1, 1)
        assert result.quantized is not None
        note = f"a region of {name}, with the whole run's windows around it"
        return _prediction(
            spec,
            work,
            spacing,
            overlap,
            started,
            result,
            result.quantized,
            result.disagreement,
            result.gates,
            [note],
        )
    client, owned = _client(options.scheduler)
    try:
        # One block on this machine's threads is the whole volume, read once: the engine takes
        # its statistics from it as an in-memory run does. Otherwise a pass over the chunks first.
        intensity = None
        if client is not None or len(work.blocks) > 1:
            yield Progress("preparing", 0, 1, "intensity statistics, chunk by chunk")
            intensity = fit_lazy(as_seen(source, work.axes, work.perm), norm)
        return (
            yield from _run(
                source, model, work, options, block_options, intensity, client, origin, cancel, started
            )
        )
    finally:
        if owned:
            from .cluster import close

            close(client)


def _run(
    source,
    model,
    work,
    options: RunOptions,
    block_options: RunOptions,
    intensity,
    client,
    origin,
    cancel,
    started,
) -> Generator[Any, None, Prediction]:
    out, spacing, name, tta, overlap = (
        options.out,
        options.spacing,
        options.name,
        options.tta,
        options.overlap,
    )
    spec = model.spec
    sink: Any
    if out is not None:
        from .store import ZarrSink

        sink = ZarrSink.create(options, spec, work, origin)
    else:
        sink = MemorySink(spec.out_channels, work.spatial, work.gates, tta)
        sink.on_worker = client is None
    first: BlockResult | None = None
    finished: Any = iter(())
    try:
        stop = _stop_event(client)
        job = Job(
            ModelRef(model),
            intensity,
            block_options,
            sink if sink.on_worker else None,
            Stop(cancel if client is None else None, stop),
            tuple(work.spatial),
        )
        total = len(work.blocks)
        if client is None and total == 1 and out is None:  # nothing to schedule, nothing to remove
            finished = _direct(source, work.blocks[0], job)
        elif client is None:  # a store is written from threads: Ctrl-C reaches this one at once
            calls = [functools.partial(_read_and_run, source, b, job) for b in work.blocks]
            finished = _threads(calls, options.workers or 1, stop)
        else:
            job_arg = client.scatter(job, broadcast=True, hash=False)
            data = as_dask(source.image, name)
            finished = _execute([_task(data, source, b, job_arg) for b in work.blocks], client, cancel, stop)
        yield Progress(
            "predicting", 0, total, f"{total} blocks of {work.block} voxels (tiles of {work.tile})"
        )
        for done, result in enumerate(finished, start=1):
            sink.aggregate(result, result.region)
            first = first or result  # device, precision and runtime as the first block reports them
            yield Progress("predicting", done, total)
    except Cancelled:
        finished.close()  # no block runs any more: nothing writes into the store removed here
        if out is not None:
            sink.discard()
        raise Cancelled(f"prediction on {name} was cancelled; no result was kept.") from None
    except BaseException as exc:
        finished.close()
        if out is not None:
            from .store import _write_error, is_write_error

            sink.discard()
            if isinstance(exc, OSError) and is_write_error(exc, sink):
                raise _write_error(Path(sink.path), exc) from None
        raise
    runs, once = window_count(work)
    where = "on Dask" if client is not None or total > 1 else "in this process"
    notes = [
        f"predicted in {total} block(s) of {work.block} {where} ({runs} windows; one in-memory run: {once})"
    ]
    if out is not None:
        yield Progress("stitching", total, total, "finishing the store")
    quantized, disagreement, gate_data = sink.finalize()
    if out is not None:
        notes += [f"written to {sink.path}", *sink.notes]
    gates = [GateMap(d, g.stride, g.offset, g.name) for d, g in zip(gate_data, work.gates, strict=True)]
    return _prediction(
        spec, work, spacing, overlap, started, first or BlockResult(()), quantized, disagreement, gates, notes
    )


def _check_result_memory(work: Plan, spec, tta: bool, name: str) -> None:
    """Before anything is read: a result held in memory (probabilities, labels, gate maps) that
    would not fit is refused, with the store that would hold it instead."""
    from ..limits import refuse_over

    voxels = math.prod(work.spatial)
    needed = voxels * (spec.out_channels + 1 + int(tta))
    needed += sum(4 * g.heads * math.prod(g.cells) for g in work.gates)
    refuse_over(
        needed,
        f"{name}: the result of {'x'.join(map(str, work.spatial))} voxels held in memory",
        "pass out='result.zarr' (or -o result.zarr) to write it block by block to an OME-Zarr store.",
        InputError,
    )


def _prediction(
    spec,
    work: Plan,
    spacing,
    overlap: float,
    started: float,
    first: BlockResult,
    quantized,
    disagreement,
    gates,
    notes,
) -> Prediction:
    """The run's Prediction (device, precision and runtime as the first block reports them)."""
    return Prediction(
        quantized=quantized,
        disagreement=disagreement,
        output=spec.output,
        class_names=spec.class_labels,
        gates=gates,
        spacing=(tuple(float(s) for s in spacing)[-len(work.spatial) :] if spacing is not None else None),
        device=first.device,
        precision=first.precision,
        runtime=first.runtime,
        seconds=time.perf_counter() - started,
        tile=work.tile,
        overlap=overlap,
        notes=notes,
    )


def _direct(source: LazySource, block: Part, job: Job):
    """The one block of a run, in this thread, without Dask (there is nothing to schedule)."""
    yield _read_and_run(source, block, job)


def _task(data, source: LazySource, block: Part, job: Job):
    """One block as a Dask task. On threads it reads its own crop (so no chunk shared with a
    neighbour waits in memory for it); on a cluster its crop comes from the chunks of ``data``
    (a dask array over the image: only the chunks it needs travel)."""
    import dask

    if data is None:
        return dask.delayed(_read_and_run, pure=False)(source, block, job)
    crop = data[source.index(block.outer)]
    return dask.delayed(run_block, pure=False)(crop, block, job)


def _read_and_run(source: LazySource, block: Part, job: Job) -> BlockResult:
    return run_block(source.read(block.outer), block, job)


def _client(scheduler):
    """(None, False) for the local threaded scheduler, else (a distributed Client, whether this
    run started it and must close it)."""
    if scheduler is None or scheduler in ("threads", "sync", "synchronous"):
        return None, False
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    from .cluster import connect

    return connect(scheduler), True


class Stop:
    """What a block checks between batches: the user's cancel, or this run's own stop (set when
    the run ends early: an error, an interrupt, a cancel seen by the caller). Picklable when its
    parts are (on a cluster: a ``distributed.Event``)."""

    def __init__(self, cancel, own):
        self.cancel, self.own = cancel, own

    def is_set(self) -> bool:
        return bool(self.own.is_set()) or cancelled(self.cancel)


def _stop_event(client):
    """This run's stop: a threading.Event, or on a cluster an Event its workers can see."""
    if client is None:
        return threading.Event()
    import uuid

    from distributed import Event

    return Event(f"attunet-stop-{uuid.uuid4().hex}", client=client)


STOP_WAIT = 120.0  # seconds a cluster's running blocks get to see the stop and end


def _execute(tasks, client, cancel, stop):
    """Yield each task's result as it finishes on the cluster. Leaving early sets ``stop`` and
    waits until no block runs any more (they end at their next batch): none may write into a
    store that is being removed."""
    from distributed import as_completed, wait

    futures = client.compute(tasks)
    try:
        done = as_completed(futures)
        while not done.is_empty():
            if cancelled(cancel):
                raise Cancelled("cancelled")
            if not done.has_ready():
                time.sleep(0.05)
                continue
            for future in done.next_batch(block=False):
                yield future.result()
                future.release()
    finally:
        with contextlib.suppress(Exception):  # a scheduler that is gone has nothing to stop
            if any(f.status == "pending" for f in futures):
                stop.set()
                wait(futures, timeout=STOP_WAIT)
        with contextlib.suppress(Exception):
            client.cancel(futures)


def _threads(calls, workers: int, stop: threading.Event):
    """Each block on a pool of ``workers`` threads, results yielded as blocks end. Leaving early
    (an error, Ctrl-C, a cancel, the consumer closing this) sets ``stop``: blocks not started
    never start, running ones end at their next batch, and this returns once none runs."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attunet-blocks")
    pending: set = set()
    try:
        pending = {pool.submit(call) for call in calls}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        stop.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
