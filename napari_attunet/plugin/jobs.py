"""Job control: one run at a time, in a worker thread over the engine's generator.

``iter_predict`` yields progress steps and returns a Prediction; ``Jobs`` starts it in napari's
thread worker, shows its progress (the progress bar, the status line and napari's activity
dock), cancels it on request or when the viewer closes, and hands the prediction to a callback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..inference.options import RunOptions


@dataclass(frozen=True)
class JobControls:
    """The widget's controls a job drives (magicgui buttons, progress bar and label)."""

    run: Any
    preview: Any
    cancel: Any
    progress: Any
    status: Any


def progress_text(step) -> str:
    """The status line of a progress step."""
    return f"{step.stage} {step.done}/{step.total}" + (f": {step.message}" if step.message else "")


def finished_text(pred) -> str:
    """The status line of a finished run: time, device, precision, runtime, engine notes."""
    notes = "; ".join(pred.notes)
    return f"done in {pred.seconds:.1f} s on {pred.device} ({pred.precision}, {pred.runtime})" + (
        f"; {notes}" if notes else ""
    )


def failure(exc: BaseException) -> tuple[str, str, str]:
    """(notification kind, message, status line) for a run that raised ``exc``."""
    from ..errors import Cancelled

    if isinstance(exc, Cancelled):
        return "info", str(exc), "cancelled"
    if isinstance(exc, ValueError):  # InputError and the like: the message is for the user
        message = str(exc)
    else:
        message = f"The run failed: {type(exc).__name__}: {exc}"
    return "error", message, f"Failed: {message}"


@dataclass(frozen=True)
class StoreResult:
    """A run that wrote a result store: its prediction (reading the store) and the label by
    uncertainty-level voxel counts (``store_views.uncertainty_counts``)."""

    prediction: Any
    counts: Any
    path: Path
    gate_limits: dict = field(default_factory=dict)  # (array key, head) -> contrast limits


def _store_steps(steps, out, cancel: threading.Event):
    """``steps`` with a ``StoreOpened`` after the first step the partial store exists at.

    Once cancelled, the engine is closed here, before the next yield: when the viewer closes,
    the worker's signals go with it, and a worker that cannot emit a step abandons its
    generator at that yield, where nothing would remove the partial store."""
    from ..errors import Cancelled
    from .live_store import StoreOpened
    from .store_location import partial_store

    announced = out is None
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                if stop.value is None and cancel.is_set():  # closed by ``reap``
                    raise Cancelled("the run was cancelled; no result was kept.") from None
                return stop.value
            if out is not None and cancel.is_set():
                steps.close()  # the engine removes what it wrote
                raise Cancelled(f"the run was cancelled; no result was kept ({Path(out).name} removed).")
            yield step
            if not announced and getattr(step, "stage", "") == "predicting":
                partial = partial_store(out)
                if partial is not None:
                    announced = True
                    yield StoreOpened(partial, out)
    finally:
        steps.close()  # a worker quit at a yield (the viewer closed): the engine cleans up now


def _finish_store(pred, path: Path, cancel: threading.Event) -> StoreResult:
    """In the worker: the store's labels counted by uncertainty level, slab by slab, and each
    gate head's contrast limits from a strided sample (reads the GUI thread need not make)."""
    from .live_store import LABELS_KEY, gate_groups, open_store_array, sampled_contrast
    from .store_views import StoreView, uncertainty_counts

    labels, unc = open_store_array(path, LABELS_KEY), open_store_array(path, "uncertainty/0")
    pred.use_stored_uncertainty(StoreView(unc, factor=1.0 / 255))  # the readout reads it voxel by voxel
    counts = uncertainty_counts(labels, unc, len(pred.label_names), labels.chunks, cancel.is_set)
    limits = {}
    for _, key, _ in gate_groups(path):
        array = open_store_array(path, key)
        for h in range(array.shape[0]):
            limits[(key, h)] = sampled_contrast(array, (h,))
    return StoreResult(pred, counts, path, limits)


def predict_worker(
    model, data, cancel: threading.Event, *, spacing, channel_axis, options, name: str, engine=None
):
    """An unstarted napari thread worker running ``iter_predict`` on ``data``; with an ``out``
    store it also yields ``StoreOpened`` and returns a ``StoreResult``. The engine's generator
    is appended to the list ``engine`` (for ``reap``)."""
    from napari.qt.threading import thread_worker

    from ..inference import iter_predict

    @thread_worker(ignore_errors=True)  # errors are shown by Jobs._on_error
    def work():
        run = options.replace(spacing=spacing, channel_axis=channel_axis, name=f"layer {name!r}")
        steps = iter_predict(data, model, run, cancel=cancel)
        if engine is not None:
            engine.append(steps)
        pred = yield from _store_steps(steps, run.out, cancel)
        if run.out is not None:
            return _finish_store(pred, Path(run.out), cancel)
        pred.uncertainty  # noqa: B018 computed here, off the event loop (cached on the prediction)
        return pred

    return work()


def reap(engine: list, idle_s: float = 0.5, limit_s: float = 600.0) -> None:
    """Close the engine's generator once nobody pulls it any more (in a thread of its own).

    A worker whose signals were deleted (the viewer closed) or that was told to quit stops
    pulling its generator and leaves it suspended at a yield, with a partial store on disk.
    Suspended for ``idle_s`` on end, it is abandoned: closing it makes the engine remove what it
    wrote. A generator that finished, or is running a block, is left alone."""
    import time

    deadline = time.monotonic() + limit_s
    idle_since = None
    while engine and time.monotonic() < deadline:
        steps = engine[0]
        if steps.gi_frame is None:  # finished: the engine cleaned up itself
            return
        if steps.gi_running:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_s:
            try:
                steps.close()
                return
            except ValueError:  # resumed meanwhile: not abandoned
                idle_since = None
        time.sleep(0.05)


class Jobs:
    """Starts, follows and cancels the widget's runs, one at a time."""

    def __init__(self, controls: JobControls, on_failure: Callable[[BaseException], None] | None = None):
        self.controls = controls
        self.on_failure = on_failure  # told of every run that raised (not of a cancel)
        self.worker = None
        self.cancel_event = threading.Event()
        self.closed = False
        self._activity = None
        self._on_step: Callable[[Any], None] | None = None
        self._on_failed: Callable[[BaseException], str | None] | None = None
        self._engine: list = []  # the running engine's generator (see ``reap``)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def launch(
        self,
        model,
        data,
        *,
        spacing,
        channel_axis,
        options: RunOptions,
        name: str,
        on_result: Callable[[Any], None],
        on_step: Callable[[Any], None] | None = None,
        on_failed: Callable[[BaseException], str | None] | None = None,
    ):
        """Start a run on ``data`` (the layer ``name``); ``on_result(prediction)`` shows it.
        ``on_step`` sees every yielded step (progress, ``StoreOpened``); ``on_failed(exc)``
        cleans up after a failed or cancelled run and may return the sentence to show.
        Returns the started worker."""
        from napari.utils import progress as napari_progress

        self.cancel_event = threading.Event()
        self._on_step, self._on_failed = on_step, on_failed
        self._set_buttons(running=True)
        self.controls.progress.value = 0
        self.controls.status.value = "starting"
        self._engine = []
        worker = predict_worker(
            model,
            data,
            self.cancel_event,
            spacing=spacing,
            channel_axis=channel_axis,
            options=options,
            name=name,
            engine=self._engine,
        )
        self._activity = napari_progress(total=0, desc=f"Attention U-Net on {name}")
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda pred: self._on_returned(pred, on_result))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def abandon(self) -> None:
        """A run that could not start: the buttons are usable again."""
        self.worker = None
        self._set_buttons(running=False)

    def request_cancel(self) -> None:
        self.cancel_event.set()
        self.controls.status.value = "cancelling"

    def close(self) -> None:
        """The viewer (or the dock) was closed: stop the run; its result goes nowhere, and an
        engine its worker abandons is closed (which removes a partial store)."""
        self.closed = True
        self.cancel_event.set()
        if self.worker is not None and self._engine:
            threading.Thread(target=reap, args=(self._engine,), name="attunet-reap", daemon=True).start()

    def _set_buttons(self, running: bool) -> None:
        self.controls.run.enabled = not running
        self.controls.preview.enabled = not running
        self.controls.cancel.enabled = running

    def _on_progress(self, step) -> None:
        if self.closed:
            return
        if self._on_step is not None:
            self._on_step(step)
        if not hasattr(step, "stage"):
            return
        self.controls.progress.max = max(step.total, 1)
        self.controls.progress.value = min(step.done, step.total)
        self.controls.status.value = progress_text(step)
        activity = self._activity
        if activity is not None:
            activity.total = step.total
            activity.n = step.done
            activity.set_description(f"Attention U-Net: {step.stage}")

    def _on_returned(self, pred, on_result: Callable[[Any], None]) -> None:
        if self.closed:
            return
        on_result(pred)
        self.controls.status.value = finished_text(getattr(pred, "prediction", pred))

    def _on_error(self, exc) -> None:
        from .notify import notify

        if self.closed:
            return
        from ..errors import Cancelled

        kind, message, status = failure(exc)
        if self._on_failed is not None:
            message = self._on_failed(exc) or message
            status = status if isinstance(exc, Cancelled) else f"Failed: {message}"
        if self.on_failure is not None and not isinstance(exc, Cancelled):
            self.on_failure(exc)
        notify(kind, message)
        self.controls.status.value = status

    def _on_finished(self) -> None:
        self.worker = None
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if not self.closed:
            self._set_buttons(running=False)
