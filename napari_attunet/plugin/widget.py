"""The dock widget: pick an image and a checkpoint, run in a worker thread, show the result.

The computation is ``napari_attunet.inference.iter_predict``, a generator that yields progress;
this module only wires it to napari. torch is imported lazily so that napari starts fast.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSlider,
                              FloatSpinBox, Label, ProgressBar, PushButton, Select, SpinBox,
                              Table, create_widget)

from .edits import EditWatch
from .layers import (LABEL_COLOURS, SourceGeometry, gate_layers, labels_layer,
                     uncertainty_layer)
from .readout import has_readout, readout, with_readout
from .recent import recent_checkpoints, remember_checkpoint

CHECKPOINT_FILTER = "*.safetensors *.pt *.pth *.ckpt"
NORMALIZATIONS = ("checkpoint default", "none", "zscore", "zscore_nonzero", "zscore_foreground", "ct",
                  "percentile")
ORIENTATIONS = ("checkpoint default", "RAS", "LPS", "LAS", "native", "display")
PREVIEW_DEPTH = 32     # slices around the current one
PREVIEW_PLANE = 192    # voxels across, around the view centre
VOLUME_COLUMNS = ("colour", "class", "mL", "uncertain mL")


def _notify(kind: str, message: str) -> None:
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)


def _warm_imports() -> None:
    """Modules napari loads when the first Labels layer with features appears (about 1 s).
    Imported when the widget opens, they freeze neither a run nor the landing of its result
    (imported in the worker instead, they hold the GIL and stall the window during the run)."""
    import pandas  # noqa: F401
    import skimage.color  # noqa: F401
    import skimage.exposure  # noqa: F401


def _scan_geometry(layer) -> dict:
    """Where the layer's voxels are (its world transform) and how its file stored them."""
    from .transforms import GEOMETRY_KEY, data_to_world, layer_state

    n = layer.ndim  # napari counts no RGB axis
    kept = layer.metadata.get(GEOMETRY_KEY) or {}
    orientation = (kept.get("source") or {}).get("orientation")
    return {"affine": data_to_world(layer_state(layer), n) if n in (2, 3) else None,
            "file_orientation": orientation}


class RunState:
    """The latest finished run: its prediction, and the Labels layer showing it.

    The layer is found again by a tag in its metadata: napari hands plugins proxies of its
    layers, so identity comparisons do not hold.
    """

    def __init__(self, prediction, source: SourceGeometry, labels_layer, offset=None):
        self.prediction = prediction
        self.source = source
        self.tag = labels_layer.metadata["attunet"]["run"]
        self.offset = offset
        self.watch = EditWatch(labels_layer)

    @property
    def edited(self) -> bool:
        """Painted, filled, or changed in any other way (``layer.data = ...``, in place)."""
        return self.watch.edited

    def layer(self, viewer):
        """The Labels layer of this run, or None when the user removed it."""
        for layer in viewer.layers:
            if (layer.metadata.get("attunet") or {}).get("run") == self.tag:
                return layer
        return None


class AttUNetWidget(Container):
    """Attention U-Net: segmentation and attention-gate overlays for the chosen image."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model = None
        self.state: RunState | None = None
        self.worker = None
        self._cancel = threading.Event()
        self._activity = None
        self._pending: list = []
        self._pending_names: list[str] = []
        self._closed = False
        from qtpy.QtCore import QTimer

        self._relabel_timer = QTimer()  # the whole volume, once a threshold slider rests
        self._relabel_timer.setSingleShot(True)
        self._relabel_timer.setInterval(150)
        self._relabel_timer.timeout.connect(self._relabel_all)
        _warm_imports()

        import napari

        self.image = create_widget(annotation=napari.layers.Image, name="image", label="image")
        self.channels = Select(name="channels", label="more channels",
                               choices=self._image_layers, visible=False)
        self.checkpoint = FileEdit(name="checkpoint", label="checkpoint", mode="r",
                                   filter=CHECKPOINT_FILTER)
        self.recent = ComboBox(name="recent", label="checkpoints", choices=self._recent_choices())
        self.model_info = Label(name="model_info", value="no checkpoint loaded")
        self.device = ComboBox(name="device", label="device", choices=self._devices())
        self.precision = ComboBox(name="precision", label="precision",
                                  choices=["auto", "fp32", "bf16", "fp16"])
        self.runtime = ComboBox(name="runtime", label="runtime",
                                choices=["auto", "torch", "openvino"],
                                tooltip="auto: OpenVINO on the CPU when it is installed, "
                                        "else PyTorch")
        self.normalization = ComboBox(name="normalization", label="normalization",
                                      choices=list(NORMALIZATIONS))
        self.scan_layout = ComboBox(name="scan_layout", label="network sees scans",
                                    choices=list(ORIENTATIONS))
        self.argmax = CheckBox(name="argmax", text="argmax: most probable class", value=True,
                               visible=False,
                               tooltip="The default rule; moving a threshold switches to "
                                       "thresholds.")
        self.thresholds = Container(name="thresholds", label="thresholds", labels=True)
        self.show_attention = CheckBox(name="show_attention", text="show attention", value=True)
        self.show_uncertainty = CheckBox(name="show_uncertainty", text="show uncertainty",
                                         value=False)
        self.uncertainty_level = FloatSlider(name="uncertainty_level", label="uncertain over",
                                             min=0.0, max=1.0, step=0.01, value=0.5)
        self.tta = CheckBox(name="tta", text="test-time flips (slower)", value=False)
        self.tile = SpinBox(name="tile", label="tile (0 = auto)", min=0, max=1024, step=16, value=0)
        self.overlap = FloatSpinBox(name="overlap", label="overlap", min=0.0, max=0.9, step=0.05,
                                    value=0.5)
        self.preview = PushButton(name="preview", text="Preview (around this slice)")
        self.run = PushButton(name="run", text="Run")
        self.cancel = PushButton(name="cancel", text="Cancel", enabled=False)
        self.progress = ProgressBar(name="progress", label="progress", min=0, max=1, value=0)
        self.status = Label(name="status", value="")
        self.volumes = Table(name="volumes", value={column: [] for column in VOLUME_COLUMNS})
        self.extend([self.image, self.channels, self.checkpoint, self.recent, self.model_info, self.device,
                     self.precision, self.runtime, self.normalization, self.scan_layout,
                     self.argmax, self.thresholds, self.show_attention, self.show_uncertainty,
                     self.uncertainty_level,
                     self.tta, self.tile, self.overlap, self.preview, self.run, self.cancel,
                     self.progress, self.status, self.volumes])

        self.checkpoint.changed.connect(self._on_checkpoint)
        self.recent.changed.connect(self._on_recent)
        self.run.changed.connect(lambda: self.start(preview=False))
        self.preview.changed.connect(lambda: self.start(preview=True))
        self.cancel.changed.connect(self.request_cancel)
        self.show_attention.changed.connect(self._toggle_gates)
        self.show_uncertainty.changed.connect(self._toggle_uncertainty)
        self.uncertainty_level.changed.connect(self._on_uncertainty_level)
        self.argmax.changed.connect(self._on_threshold)
        self.viewer.events.status.connect(self._on_status)
        self.native.destroyed.connect(lambda *_: self._on_closed())
        from .orientation import install

        install(self.viewer)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.image.reset_choices)
            event.connect(self.channels.reset_choices)
        self.image.reset_choices()

    def _image_layers(self, widget=None) -> list:
        import napari

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image)]

    def _channel_data(self, layer):
        """The arrays a multi-channel model takes: the chosen layer, then "more channels"."""
        spec = self.model.spec
        if getattr(layer, "rgb", False) and spec.in_channels not in (3, 4):
            raise ValueError(f"layer {layer.name!r} is RGB ({layer.data.shape[-1]} channels), but "
                             f"the model takes {spec.in_channels}; convert it to greyscale first "
                             "(or pick a scan layer).")
        if spec.in_channels == 1 or getattr(layer, "rgb", False):
            return layer.data, (-1 if getattr(layer, "rgb", False) else None)
        extra = [other for other in self.channels.value if other is not layer]
        layers = [layer] + extra
        if len(layers) != spec.in_channels:
            raise ValueError(f"the model takes {spec.in_channels} channels: choose "
                             f"{spec.in_channels - 1} more image layer(s) under 'more channels' "
                             f"(chosen: {', '.join(lay.name for lay in layers)}).")
        return [lay.data for lay in layers], None  # read in the worker, not here

    # ---- checkpoints ---------------------------------------------------------------------
    @staticmethod
    def _devices() -> list[str]:
        from ..inference.devices import available_devices

        return ["auto"] + available_devices()

    @staticmethod
    def _recent_choices() -> list:
        """(label, path) pairs: the bundled demo checkpoint, then recently used files."""
        from ..demo_data import DEMO_CHECKPOINT, DEMO_NAME

        choices = [("", "")]
        if DEMO_CHECKPOINT.is_file():
            choices.append((DEMO_NAME, str(DEMO_CHECKPOINT)))
        demo = str(DEMO_CHECKPOINT.resolve())
        return choices + [(Path(p).name + "  " + str(Path(p).parent), p)
                          for p in recent_checkpoints() if p != demo]

    def _on_recent(self, value: str) -> None:
        if value:
            self.checkpoint.value = value

    def _on_checkpoint(self, value) -> None:
        path = str(value)
        if path and Path(path).is_file():
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> bool:
        """Load and describe a checkpoint; a bad file is a notification, never an exception."""
        from ..checkpoint import load_model, parameter_count

        try:
            model = load_model(path)
        except Exception as exc:  # noqa: BLE001 - CheckpointError, or anything torch raised
            message = str(exc) if isinstance(exc, ValueError) else (
                f"{path}: could not be loaded ({type(exc).__name__}: {exc}).")
            _notify("error", message)
            self.model_info.value = "checkpoint not loaded (see the message)"
            return False
        self.model = model
        spec = model.spec
        self.model_info.value = (f"{spec.family}, {spec.spatial_dims}D, {spec.out_channels} classes, "
                                 f"{parameter_count(model) / 1e6:.2f} M params, "
                                 f"{len(spec.gates)} gates; sees scans "
                                 f"{spec.orientation_label}")
        self._build_thresholds()
        self.channels.visible = spec.in_channels > 1
        norm = (spec.normalization or {}).get("mode")
        self.normalization.value = "checkpoint default" if norm is None else norm
        remember_checkpoint(path)
        if str(self.checkpoint.value) != str(path):
            with self.checkpoint.changed.blocked():
                self.checkpoint.value = str(path)
        with self.recent.changed.blocked():
            self.recent.choices = self._recent_choices()
            self.recent.value = self._recent_value(path)
        return True

    def _recent_value(self, path) -> str:
        """The dropdown entry of ``path`` (the demo checkpoint under its name)."""
        target = Path(path).resolve()
        for _, value in self._recent_choices():
            if value and Path(value).resolve() == target:
                return value
        return ""

    def _build_thresholds(self) -> None:
        self.thresholds.clear()
        spec = self.model.spec
        names = spec.class_labels
        first = 1 if spec.output == "softmax" else 0
        self.argmax.visible = spec.output == "softmax"
        with self.argmax.changed.blocked():
            self.argmax.value = True
        for k in range(first, spec.out_channels):
            slider = FloatSlider(name=f"t{k}", label=names[k], min=0.0, max=1.0, step=0.01,
                                 value=0.5)
            slider.changed.connect(self._on_threshold)
            self.thresholds.append(slider)

    def threshold_values(self) -> list[float] | None:
        """The thresholds labels follow; None is the default rule (Prediction.labels): argmax
        for softmax models, 0.5 per channel for sigmoid ones (where the sliders start)."""
        if self.model is None:
            return None
        spec = self.model.spec
        if spec.output == "softmax" and self.argmax.value:
            return None
        values = [s.value for s in self.thresholds]
        return ([0.0] + values) if spec.output == "softmax" else values

    # ---- running ---------------------------------------------------------------------------
    def _options(self) -> dict:
        norm = self.normalization.value
        return {
            "device": self.device.value, "precision": self.precision.value,
            "runtime": self.runtime.value,
            "normalization": None if norm == "checkpoint default" else norm,
            "tile": self.tile.value or None, "overlap": float(self.overlap.value),
            "tta": bool(self.tta.value), "attention": True,
            "orientation": None if self.scan_layout.value == "checkpoint default"
            else self.scan_layout.value,
        }

    def start(self, preview: bool = False):
        """Start a run on the chosen image layer; returns the worker (or None on bad input)."""
        layer = self.image.value
        if layer is None:
            _notify("warning", "Open a scan first: there is no image layer to segment.")
            return None
        if self.model is None:
            _notify("warning", "Choose a checkpoint first (a .safetensors, .pt, .pth or .ckpt file).")
            return None
        if self.worker is not None:
            return None
        try:
            return self._launch(layer, preview)
        except ValueError as exc:
            _notify("warning", str(exc))
        except Exception as exc:  # noqa: BLE001 - the Run button must stay usable
            _notify("error", f"layer {layer.name!r}: the run could not start "
                    f"({type(exc).__name__}: {exc}).")
        self.worker = None
        self._idle_buttons()
        return None

    def _idle_buttons(self) -> None:
        self.run.enabled = True
        self.preview.enabled = True
        self.cancel.enabled = False

    def _estimate(self, data, channel_axis, name: str) -> None:
        """Refuse a layer too large for memory from its shape alone: a lazy (dask, zarr) layer
        is never read in the GUI thread; the worker reads it."""
        from ..errors import InputError
        from ..inference.lazy import is_lazy
        from ..limits import refuse_over

        spec = self.model.spec
        first = data[0] if isinstance(data, list) else data
        shape = list(np.shape(first))
        if channel_axis is not None:
            del shape[channel_axis]
        voxels = float(np.prod([float(n) for n in shape]))
        needed = voxels * 4 * (3 * spec.in_channels + 2 * spec.out_channels + 1)
        if is_lazy(first):  # read and predicted block by block; the result is held here
            needed = voxels * (spec.out_channels + 5)  # uint8 probabilities, uncertainty, labels
        refuse_over(needed, f"layer {name!r} ({' x '.join(map(str, shape))} voxels)",
                    "crop it (or open a region of it) first.", InputError)

    def _launch(self, layer, preview: bool):
        data, channel_axis = self._channel_data(layer)
        if not isinstance(data, list):
            data = _full_resolution(data)
        self._estimate(data, channel_axis, layer.name)
        source = SourceGeometry.from_layer(layer, layer.ndim)
        offset = None
        options = self._options()
        if channel_axis is None:
            options.update(_scan_geometry(layer))
        if preview:
            shape = (data[0] if isinstance(data, list) else _full_resolution(data)).shape
            region = self._preview_region(layer, shape)
            if region is not None:
                options["region"] = region
                offset = tuple(r.start for r in region)
        spacing = source.scale
        self._cancel = threading.Event()
        self.run.enabled = False
        self.preview.enabled = False
        self.cancel.enabled = True
        self.progress.value = 0
        self.status.value = "starting"
        worker = self._make_worker(data, spacing, channel_axis, options, layer.name)
        from napari.utils import progress as napari_progress

        self._activity = napari_progress(total=0, desc=f"Attention U-Net on {layer.name}")
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda pred: self._on_result(pred, source, offset, preview))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def _make_worker(self, data, spacing, channel_axis, options, name):
        from napari.qt.threading import thread_worker

        from ..inference import iter_predict

        model, cancel = self.model, self._cancel

        @thread_worker(ignore_errors=True)  # errors are shown by _on_error
        def work():
            pred = yield from iter_predict(data, model, spacing=spacing,
                                           channel_axis=channel_axis, cancel=cancel,
                                           name=f"layer {name!r}", **options)
            pred.uncertainty  # noqa: B018 computed here, off the event loop (cached on the prediction)
            return pred

        return work()

    def _preview_region(self, layer, shape) -> tuple[slice, ...] | None:
        """A region around the current slice and the view centre, for a run of seconds.

        The engine predicts it with the whole scan's intensity statistics and context around
        it, so that inside the region Preview agrees with Run.
        """
        if len(shape) < 3 or getattr(layer, "rgb", False):
            return None
        point = np.array(self.viewer.dims.point[-layer.ndim:], dtype=float)
        lead = self.viewer.dims.ndim - layer.ndim
        from .orientation import camera_of

        for axis, c in zip(list(self.viewer.dims.displayed)[-2:], camera_of(self.viewer).center[-2:]):
            if axis >= lead:
                point[axis - lead] = c
        centre = np.round(layer.world_to_data(point)).astype(int)
        sizes = (PREVIEW_DEPTH,) + (PREVIEW_PLANE,) * (len(shape) - 1)
        starts, stops = [], []
        for c, size, n in zip(centre, sizes, shape):
            start = int(np.clip(c - size // 2, 0, max(n - size, 0)))
            starts.append(start)
            stops.append(min(start + size, n))
        return tuple(slice(a, b) for a, b in zip(starts, stops))

    def _on_closed(self) -> None:
        """The viewer (or this dock) was closed: stop the run; its result goes nowhere."""
        self._closed = True
        self._pending.clear()
        self._cancel.set()

    def request_cancel(self) -> None:
        self._cancel.set()
        self.status.value = "cancelling"

    def _on_progress(self, step) -> None:
        if self._closed:
            return
        self.progress.max = max(step.total, 1)
        self.progress.value = min(step.done, step.total)
        self.status.value = f"{step.stage} {step.done}/{step.total}" + (
            f": {step.message}" if step.message else "")
        activity = self._activity
        if activity is not None:
            activity.total = step.total
            activity.n = step.done
            activity.set_description(f"Attention U-Net: {step.stage}")

    def _on_error(self, exc) -> None:
        from ..errors import Cancelled

        if self._closed:
            return
        if isinstance(exc, Cancelled):
            _notify("info", str(exc))
            self.status.value = "cancelled"
        elif isinstance(exc, ValueError):
            _notify("error", str(exc))
            self.status.value = "failed"
        else:
            _notify("error", f"The run failed: {type(exc).__name__}: {exc}")
            self.status.value = "failed"

    def _on_finished(self) -> None:
        self.worker = None
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if self._closed:
            return
        self._idle_buttons()

    def _on_result(self, pred, source: SourceGeometry, offset, preview: bool) -> None:
        """Show a finished run. Layer changes are spread over event-loop turns (one layer each),
        and layers from an earlier run are updated in place, so napari never freezes long."""
        if self._closed:
            return
        if offset is not None:
            shift = np.asarray(source.scale) * np.asarray(offset)
            source = SourceGeometry(source.name, source.scale,
                                    tuple(np.asarray(source.translate) + shift), source.units,
                                    source.axis_labels, source.affine, source.metadata)
        labels = pred.labels(self.threshold_values())
        name = f"{source.name} attunet" + (" preview" if preview else "")
        existing = self.state.layer(self.viewer) if self.state is not None else None
        reuse = (existing is not None and existing.name == name and not self.state.edited
                 and existing.data.shape == labels.shape)
        data, kwargs, _ = labels_layer(pred, source, labels, name)
        if reuse:
            kwargs["metadata"]["attunet"]["run"] = existing.metadata["attunet"]["run"]
            existing.metadata = kwargs["metadata"]
            existing.scale, existing.translate = kwargs["scale"], kwargs["translate"]
            existing.features = kwargs["features"]
            existing.data = data
            layer = existing
        else:
            if name in self.viewer.layers:
                kwargs["name"] = name + " (new)"
            layer = self.viewer.add_labels(data, **kwargs)
        self.state = RunState(pred, source, layer, offset)
        self._show_volumes(kwargs["features"], labels)
        gates = gate_layers(pred, source)
        self._pending_names = [k["name"] for _, k, _ in gates]
        self._pending = [lambda d=d, k=k: self._put_gate(d, k) for d, k, _ in gates]
        self._pending.append(lambda: self._drop_stale_gates(source.name))
        if self.show_uncertainty.value or f"{source.name} uncertainty" in self.viewer.layers:
            self._pending.append(self._put_uncertainty)
        self._pending.append(self._select_labels)
        notes = "; ".join(pred.notes)
        self.status.value = (f"done in {pred.seconds:.1f} s on {pred.device} ({pred.precision}, "
                             f"{pred.runtime})"
                             + (f"; {notes}" if notes else ""))
        self._drain()

    def _drain(self) -> None:
        """Apply one pending layer change, then yield to the event loop."""
        from qtpy.QtCore import QTimer

        if self._pending and not self._closed:
            self._pending.pop(0)()
            QTimer.singleShot(0, self._drain)

    def _put_gate(self, data, kwargs) -> None:
        kwargs["visible"] = kwargs["visible"] and bool(self.show_attention.value)
        name = kwargs["name"]
        if name in self.viewer.layers and self.viewer.layers[name].data.ndim == data.ndim:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.contrast_limits = kwargs["contrast_limits"]
            layer.iso_threshold = kwargs["iso_threshold"]
            layer.metadata = kwargs["metadata"]
        else:
            self.viewer.add_image(data, **kwargs)

    def _put_uncertainty(self) -> None:
        """The ``<image> uncertainty`` layer of the latest run (shown when the toggle is on)."""
        if self.state is None:
            return
        data, kwargs, _ = uncertainty_layer(self.state.prediction, self.state.source,
                                            float(self.uncertainty_level.value))
        kwargs["visible"] = bool(self.show_uncertainty.value)
        name = kwargs["name"]
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == data.shape:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.metadata = kwargs["metadata"]
            layer.visible = kwargs["visible"]
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(data, **kwargs)

    def _select_labels(self) -> None:
        layer = self.state.layer(self.viewer) if self.state is not None else None
        if layer is None:
            return
        if self.viewer.dims.ndisplay == 3 and self.viewer.cursor._view_direction is None:
            # napari 0.9 fails to compute a 3D Labels status before the cursor has moved
            return
        self.viewer.layers.selection.active = layer

    def _toggle_uncertainty(self, show: bool) -> None:
        if self.state is None:
            return
        name = f"{self.state.source.name} uncertainty"
        if name in self.viewer.layers:
            self.viewer.layers[name].visible = bool(show)
        elif show:
            self._put_uncertainty()
            self._select_labels()

    def _on_uncertainty_level(self, value=None) -> None:
        if self.state is not None and f"{self.state.source.name} uncertainty" in self.viewer.layers:
            self.viewer.layers[f"{self.state.source.name} uncertainty"].iso_threshold = float(
                self.uncertainty_level.value)
        layer = self.state.layer(self.viewer) if self.state is not None else None
        if layer is not None:
            self._show_volumes(layer.features.to_dict("list"), np.asarray(layer.data))

    def _on_status(self, event=None) -> None:
        """Append the readout under the cursor to napari's status bar text."""
        status = self.viewer.status
        state = self.state
        if state is None or has_readout(status) or not self.viewer.mouse_over_canvas:
            return
        try:
            line = readout(self.viewer, state.prediction, state.layer(self.viewer),
                           state.source.name)
        except (ValueError, IndexError):  # a layer changed shape under the cursor
            return
        if line:
            self.viewer.status = with_readout(status, line)

    def _drop_stale_gates(self, source_name: str) -> None:
        """Gates of an earlier run with more gates than this one."""
        for layer in list(self.viewer.layers):
            meta = layer.metadata.get("attunet_gate") if hasattr(layer, "metadata") else None
            if meta and meta.get("source") == source_name and layer.name not in self._pending_names:
                self.viewer.layers.remove(layer)

    @property
    def busy(self) -> bool:
        """A run, or its layers, still on the way."""
        return self.worker is not None or bool(self._pending)

    def _toggle_gates(self, show: bool) -> None:
        for layer in self.viewer.layers:
            meta = layer.metadata.get("attunet_gate")
            if meta and meta.get("index") == 1:
                layer.visible = bool(show)

    # ---- thresholds ------------------------------------------------------------------------
    def _on_threshold(self, value=None) -> None:
        if self.argmax.value and value is not None and not isinstance(value, bool):
            with self.argmax.changed.blocked():  # a slider moved: thresholds take over
                self.argmax.value = False
        self._apply_thresholds()

    def _apply_thresholds(self) -> None:
        """Re-label from the cached probabilities: the network does not run again.

        The slice on screen is re-labelled at once (a few ms); the whole volume, its features
        and the volume table follow once the slider rests (about 0.1 s for 256^3).
        """
        state = self.state
        layer = state.layer(self.viewer) if state is not None else None
        if layer is None:
            return
        if not state.edited and self._relabel_visible_slice(state, layer):
            self._relabel_timer.start()
        else:
            self._relabel_all()

    def _relabel_visible_slice(self, state, layer) -> bool:
        hidden = [a - (self.viewer.dims.ndim - layer.ndim) for a in self.viewer.dims.not_displayed]
        hidden = [a for a in hidden if a >= 0]
        if layer.ndim != 3 or len(hidden) != 1:
            return False
        axis = hidden[0]
        index = int(round(layer.world_to_data(self.viewer.dims.point[-layer.ndim:])[axis]))
        if not 0 <= index < layer.data.shape[axis]:
            return False
        from ..inference.postprocess import threshold_labels

        pred = state.prediction
        plane = np.take(pred.quantized, index, axis=axis + 1)
        region = [slice(None)] * 3
        region[axis] = index
        region = tuple(region)
        if not state.watch.matches(region):
            return False  # changed meanwhile: _relabel_all puts the thresholds on a new layer
        values = threshold_labels(plane, pred.output, self.threshold_values())
        layer.data[region] = values
        state.watch.record(values, region)
        layer.refresh()
        return True

    def _relabel_all(self) -> None:
        state = self.state
        layer = state.layer(self.viewer) if state is not None else None
        if layer is None:
            return
        labels = state.prediction.labels(self.threshold_values())
        data, kwargs, _ = labels_layer(state.prediction, state.source, labels,
                                       f"{layer.name} (thresholds)")
        if state.edited:
            _notify("info", f"{layer.name} was edited by hand; the new thresholds go to a new "
                    "layer.")
            self.state = RunState(state.prediction, state.source,
                                  self.viewer.add_labels(data, **kwargs), state.offset)
        else:
            layer.features = kwargs["features"]
            layer.data = labels
            state.watch.record(labels)
        self._show_volumes(kwargs["features"], labels)

    def _show_volumes(self, features: dict, labels: np.ndarray) -> None:
        """The per-class table and colour legend, from a Labels layer's features (row 0 is the
        background), with the volume of each class's voxels over the uncertainty level."""
        state = self.state
        uncertain = [0.0] * (len(features["class"]) - 1)
        if state is not None and labels.shape == state.prediction.shape:
            level = float(self.uncertainty_level.value)
            mls = state.prediction.uncertain_volumes_ml(labels, level, state.source.scale)
            uncertain = [mls.get(name, 0.0) for name in features["class"][1:]]
        rows = len(features["class"]) - 1
        self.volumes.value = {"colour": [""] * rows, "class": list(features["class"][1:]),
                              "mL": [round(v, 3) for v in features["volume_ml"][1:]],
                              "uncertain mL": [round(v, 3) for v in uncertain]}
        self._paint_swatches(rows)

    def _paint_swatches(self, rows: int) -> None:
        from qtpy.QtGui import QColor

        table = self.volumes.native
        for r in range(rows):
            item = table.item(r, 0)
            if item is not None:
                rgba = LABEL_COLOURS[(r + 1) % len(LABEL_COLOURS)]
                item.setBackground(QColor.fromRgbF(*rgba[:3], 1.0))


def _full_resolution(data):
    """The first level of a multiscale layer's data (dask and zarr arrays stay lazy: the engine
    reads them window by window, in the worker)."""
    if type(data).__name__ == "MultiScaleData":
        return data[0]
    return data
