"""The dock widget: pick an image and a checkpoint, run in a worker thread, show the result.

The computation is ``napari_attunet.inference.iter_predict``, a generator that yields progress;
this module only wires it to napari. torch is imported lazily so that napari starts fast.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
    Table,
    create_widget,
)

from .jobs import JobControls, Jobs
from .layers import SourceGeometry
from .legend import Legend
from .notify import notify
from .orthoviews import ViewControls
from .recent import recent_checkpoints, remember_checkpoint
from .reference import ReferenceComparison
from .results import LABEL_STYLES, VOLUME_COLUMNS, ResultLayers, RunState, ViewSettings
from .run_inputs import (
    channel_data,
    full_resolution,
    preview_region,
    refuse_store_too_large,
    refuse_too_large,
    run_options,
    scan_geometry,
    store_run_wanted,
    threshold_values,
)
from .store_location import default_folder, unique_store

CHECKPOINT_FILTER = "*.safetensors *.pt *.pth *.ckpt"
NORMALIZATIONS = (
    "checkpoint default",
    "none",
    "zscore",
    "zscore_nonzero",
    "zscore_foreground",
    "ct",
    "percentile",
)
ORIENTATIONS = ("checkpoint default", "RAS", "LPS", "LAS", "native", "display")
FAMILY_AUTO = "auto (from the weights)"
VOLUMES_HEIGHT = 100  # px: a few rows; the dock's other rows keep their heights at 1000 px
LABEL_LINES = 9  # a status of up to this many lines shows whole (the window never grows for it)
DOCK_WIDTH = 420  # px: at 1600 px the canvas keeps over half the window beside napari's docks


class WrappedLabel(Label):
    """A label whose text wraps and which is as tall as its text at its width (the widget's
    nested layouts never ask a label for its height at a width): a whole sentence shows."""

    def set_value(self, value) -> None:
        super().set_value(value)
        from qtpy.QtCore import QTimer

        self._fit()
        QTimer.singleShot(0, self._fit)  # again once the layout has settled its width

    def _fit(self) -> None:
        native = self.native
        try:
            width = native.width() if native.width() > 50 else 250
        except RuntimeError:  # the dock was closed before the deferred call
            return
        lines = native.fontMetrics().height() * LABEL_LINES
        native.setMinimumHeight(min(native.heightForWidth(width), lines) if self.value else 0)
        native.setToolTip(str(self.value))  # the whole text, were it ever over LABEL_LINES


class AttUNetWidget(Container):
    """Attention U-Net: segmentation and attention-gate overlays for the chosen image."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = napari_viewer
        self.model = None

        self._make_fields()
        self._make_reference_fields()
        self.extend(
            [
                self.image,
                self.channels,
                self.checkpoint,
                self.recent,
                self.family,
                self.model_info,
                self.device,
                self.precision,
                self.runtime,
                self.normalization,
                self.scan_layout,
                self.argmax,
                self.thresholds,
                self.show_attention,
                self.gate,
                self.show_uncertainty,
                self.label_style,
                self.uncertainty_level,
                self.legend,
                self.view_controls,
                self.tta,
                self.tile,
                self.overlap,
                self.preview,
                self.run,
                self.cancel,
                self.progress,
                self.status,
                self.store_info,
                self.region_info,
                self.reference,
                self.reference_info,
                self.volumes,
            ]
        )
        self.comparison.place(self.volumes)
        self._bound_width()
        self.results = ResultLayers(
            self.viewer, self.volumes, self._view_settings, self.region_info, self._on_gates
        )
        self.jobs = Jobs(
            JobControls(self.run, self.preview, self.cancel, self.progress, self.status),
            on_failure=lambda exc: self.results.clear_volumes(),
        )

        self._connect()

    def _make_fields(self) -> None:
        """Every control of the form, by the name its tests and users know it by."""
        import napari

        self.image = create_widget(annotation=napari.layers.Image, name="image", label="image")
        self.channels = Select(
            name="channels", label="more channels", choices=self._image_layers, visible=False
        )
        self.checkpoint = FileEdit(name="checkpoint", label="checkpoint", mode="r", filter=CHECKPOINT_FILTER)
        self.recent = ComboBox(name="recent", label="checkpoints", choices=self._recent_choices())
        self.family = ComboBox(
            name="family",
            label="family",
            choices=self._families(),
            tooltip="Which network the weights are for: found from their names, or chosen "
            "here when they were renamed.",
        )
        self.model_info = WrappedLabel(name="model_info", value="no checkpoint loaded")
        self.device = ComboBox(name="device", label="device", choices=self._devices())
        self.precision = ComboBox(
            name="precision", label="precision", choices=["auto", "fp32", "bf16", "fp16", "int8"]
        )
        self.runtime = ComboBox(
            name="runtime",
            label="runtime",
            choices=["auto", "torch", "openvino"],
            tooltip="auto: OpenVINO on the CPU when it is installed, else PyTorch",
        )
        self.normalization = ComboBox(
            name="normalization", label="normalization", choices=list(NORMALIZATIONS)
        )
        self.scan_layout = ComboBox(
            name="scan_layout", label="network sees scans", choices=list(ORIENTATIONS)
        )
        self.argmax = CheckBox(
            name="argmax",
            text="argmax: most probable class",
            value=True,
            visible=False,
            tooltip="The default rule; moving a threshold switches to thresholds.",
        )
        self.thresholds = Container(name="thresholds", label="thresholds", labels=True)
        self.show_attention = CheckBox(name="show_attention", text="show attention", value=True)
        self.gate = ComboBox(
            name="gate",
            label="gate shown",
            choices=self._gate_choices,
            tooltip="One attention gate at a time, as green iso-lines (gate 1 is the finest).",
        )
        self.label_style = ComboBox(
            name="label_style",
            label="labels drawn as",
            choices=list(LABEL_STYLES),
            tooltip="auto: outlines while a gate or the uncertainty is shown, filled otherwise. "
            "Outlines leave the anatomy under the labels visible.",
        )
        self.show_uncertainty = CheckBox(name="show_uncertainty", text="show uncertainty", value=False)
        self.uncertainty_level = FloatSlider(
            name="uncertainty_level", label="uncertain over", min=0.0, max=1.0, step=0.01, value=0.5
        )
        self.legend = Legend(self.viewer)  # what each colour on the canvas means
        self.view_controls = ViewControls(self.viewer, lambda: self.image.value)
        self.tta = CheckBox(name="tta", text="test-time flips (slower)", value=False)
        self.tile = SpinBox(name="tile", label="tile (0 = auto)", min=0, max=1024, step=16, value=0)
        self.overlap = FloatSpinBox(name="overlap", label="overlap", min=0.0, max=0.9, step=0.05, value=0.5)
        self.preview = PushButton(name="preview", text="Preview (around this slice)")
        self.run = PushButton(name="run", text="Run")
        self.cancel = PushButton(name="cancel", text="Cancel", enabled=False)
        self.progress = ProgressBar(name="progress", label="progress", min=0, max=1, value=0)
        self.status = WrappedLabel(name="status", value="")
        self.store_info = WrappedLabel(name="store_info", label="result store", value="", visible=False)
        self.region_info = WrappedLabel(name="region_info", label="", value="", visible=False)
        self.volumes = Table(name="volumes", value={column: [] for column in VOLUME_COLUMNS})

    def _make_reference_fields(self) -> None:
        """The reference picker and its line (``reference.py``): Dice and HD95 in the table."""
        self.reference_info = WrappedLabel(name="reference_info", label="", value="", visible=False)
        self.comparison = ReferenceComparison(
            self.viewer, self.reference_info, lambda: getattr(self, "results", None)
        )
        self.reference = self.comparison.picker

    def _connect(self) -> None:
        """What each control does, and the viewer events the form follows."""
        self.checkpoint.changed.connect(self._on_checkpoint)
        self.checkpoint.line_edit.native.editingFinished.connect(self._on_checkpoint_typed)
        self.recent.changed.connect(self._on_recent)
        self.family.changed.connect(self._on_family)
        self.run.changed.connect(lambda: self.start(preview=False))
        self.preview.changed.connect(lambda: self.start(preview=True))
        self.cancel.changed.connect(self.jobs.request_cancel)
        self.show_attention.changed.connect(self.results.toggle_gates)
        self.gate.changed.connect(self.results.toggle_gates)
        self.label_style.changed.connect(self.results.apply_label_style)
        self.show_uncertainty.changed.connect(self.results.toggle_uncertainty)
        self.uncertainty_level.changed.connect(self.results.on_uncertainty_level)
        self.argmax.changed.connect(self._on_threshold)
        self.viewer.events.status.connect(self.results.on_status)
        self.native.destroyed.connect(lambda *_: self._on_closed())
        from .orientation import install

        install(self.viewer)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.image.reset_choices)
            event.connect(self.channels.reset_choices)
        self.image.changed.connect(self._show_store_target)
        self.image.changed.connect(self.view_controls.show_window_of)
        self.image.reset_choices()
        self._show_store_target()
        self.view_controls.show_window_of(self.image.value)

    @property
    def native(self):
        """The scroll area around the form (napari docks ``native``; magicgui's is the form
        inside it): a dock taller than the window scrolls instead of growing the window."""
        return self.root_native_widget

    def insert(self, key: int, widget) -> None:
        """A control added later (after ``__init__``) keeps the dock's bounded width."""
        super().insert(key, widget)
        if hasattr(self, "results"):
            self._bound_width()

    def _bound_width(self) -> None:
        """Long texts wrap and long choices elide inside a dock of bounded width: a status
        line or a checkpoint's path never widens the dock over the canvas."""
        from qtpy.QtWidgets import QComboBox, QSizePolicy

        for label in (self.model_info, self.status, self.store_info, self.region_info):
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.native.setMinimumWidth(0)
        for combo in self.native.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        # the view row holds a check box beside its combo: a shorter combo keeps the row in the dock
        self.view_controls.window.native.setMinimumContentsLength(6)
        # magicgui sized the scroll area to the form's widest row (a long layer name) as it was
        # filled, before the choices above could elide
        self.native.setMinimumWidth(0)
        self.native.setMaximumWidth(DOCK_WIDTH)
        self.volumes.native.setMaximumHeight(VOLUMES_HEIGHT)

    def _show_store_target(self, value=None) -> None:
        """For a dask/zarr layer, where Run will write its result store (shown before the run)."""
        layer = self.image.value
        data = full_resolution(layer.data) if layer is not None else None
        lazy = data is not None and not isinstance(data, list) and store_run_wanted(data)
        self.store_info.visible = lazy
        if lazy:
            folder = default_folder(layer, data)
            self.store_info.value = f"Run writes {unique_store(folder, layer.name)}"
            self.store_info.tooltip = (
                "A dask/zarr layer's result goes to an OME-Zarr store (beside the scan's store when "
                "that folder is writable, else the user cache folder); its layers read the store "
                "and fill in as blocks finish. Labels are editable once the run is done."
            )

    def _image_layers(self, widget=None) -> list:
        import napari

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

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
        return choices + [
            (Path(p).name + "  " + str(Path(p).parent), p) for p in recent_checkpoints() if p != demo
        ]

    def _on_recent(self, value: str) -> None:
        if value:
            self.checkpoint.value = value

    @staticmethod
    def _families() -> list[str]:
        from ..models.registry import FAMILIES

        return [FAMILY_AUTO, *FAMILIES]

    def _on_checkpoint(self, value) -> None:
        path = str(value)
        if path and Path(path).is_file():
            self.load_checkpoint(path)

    def _on_checkpoint_typed(self) -> None:
        """Return pressed (or focus left) in the checkpoint field: a path that names no file
        gets a notification (while typing, each keystroke names none yet)."""
        path = str(self.checkpoint.line_edit.value).strip()
        if path and path != "." and not Path(path).is_file():
            notify("warning", checkpoint_typo(path))
            self.model_info.value = "checkpoint not loaded (see the message)"

    def _on_family(self, value=None) -> None:
        path = str(self.checkpoint.value)
        if path and Path(path).is_file():
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> bool:
        """Load and describe a checkpoint; a bad file is a notification, never an exception."""
        from ..hints import for_interface
        from ..models.checkpoint import load_model, parameter_count

        family = None if self.family.value == FAMILY_AUTO else self.family.value
        try:
            model = load_model(path, family=family)
        except Exception as exc:  # noqa: BLE001 - CheckpointError, or anything torch raised
            message = (
                for_interface(str(exc), "widget")
                if isinstance(exc, ValueError)
                else (f"{path}: could not be loaded ({type(exc).__name__}: {exc}).")
            )
            notify("error", message)
            self.model_info.value = "checkpoint not loaded (see the message)"
            return False
        self.model = model
        spec = model.spec
        self.model_info.value = (
            f"{spec.family}, {spec.spatial_dims}D, {spec.out_channels} classes, "
            f"{parameter_count(model) / 1e6:.2f} M params, "
            f"{len(spec.gates)} gates; sees scans "
            f"{spec.orientation_label}"
        )
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
            slider = FloatSlider(name=f"t{k}", label=names[k], min=0.0, max=1.0, step=0.01, value=0.5)
            slider.changed.connect(self._on_threshold)
            self.thresholds.append(slider)
        self._fit_slider_labels()

    def _fit_slider_labels(self) -> None:
        """Each threshold's class name whole ("white matter", not "white matte"): magicgui
        sizes the labels before napari's style sets their font; again once it has."""
        from qtpy.QtCore import QTimer

        def fit() -> None:
            try:
                wrapped = [w._labeled_widget() for w in self.thresholds]
                labels = [w._label_widget.native for w in wrapped if w is not None]
                width = max((w.fontMetrics().horizontalAdvance(w.text()) + 4 for w in labels), default=0)
                for label in labels:
                    label.setMinimumWidth(max(width, label.minimumWidth()))
            except RuntimeError:  # the dock was closed
                return

        fit()
        QTimer.singleShot(0, fit)

    def threshold_values(self) -> list[float] | None:
        """The thresholds labels follow (see ``run_inputs.threshold_values``)."""
        if self.model is None:
            return None
        return threshold_values(
            self.model.spec.output, bool(self.argmax.value), [s.value for s in self.thresholds]
        )

    # ---- running ---------------------------------------------------------------------------
    def start(self, preview: bool = False):
        """Start a run on the chosen image layer; returns the worker (or None on bad input)."""
        layer = self.image.value
        if layer is None:
            notify("warning", "Open a scan first: there is no image layer to segment.")
            return None
        if self.model is None:
            notify("warning", "Choose a checkpoint first (a .safetensors, .pt, .pth or .ckpt file).")
            return None
        if self.jobs.running:
            return None
        try:
            return self._launch(layer, preview)
        except ValueError as exc:
            self._refused("warning", str(exc))
        except Exception as exc:  # noqa: BLE001 - the Run button must stay usable
            self._refused(
                "error", f"layer {layer.name!r}: the run could not start ({type(exc).__name__}: {exc})."
            )
        self.jobs.abandon()
        return None

    def _refused(self, kind: str, message: str) -> None:
        """A run that could not start: the sentence in a notification and, whole, in the
        status; the table describes no result."""
        notify(kind, message)
        self.status.value = f"Failed: {message}"
        self.results.clear_volumes()

    def _launch(self, layer, preview: bool):
        spec = self.model.spec
        data, channel_axis = channel_data(layer, list(self.channels.value), spec.in_channels)
        if not isinstance(data, list):
            data = full_resolution(data)
        first = data[0] if isinstance(data, list) else data
        to_store = not preview and not isinstance(data, list) and store_run_wanted(first, channel_axis, spec)
        if not to_store:
            refuse_too_large(data, channel_axis, spec, layer.name)
        source = SourceGeometry.from_layer(layer, layer.ndim)
        offset = None
        scan_shape: tuple = ()
        options = run_options(self)
        if channel_axis is None:
            options = options.replace(**scan_geometry(layer))
        if preview:
            shape = (data[0] if isinstance(data, list) else full_resolution(data)).shape
            region = preview_region(self.viewer, layer, shape)
            scan_shape = tuple(shape)
            if region is not None:
                options = options.replace(region=region)
                offset = tuple(r.start for r in region)
        launch = dict(spacing=source.scale, channel_axis=channel_axis, name=layer.name)
        if to_store:
            return self._launch_store(layer, first, data, source, options, launch)
        return self.jobs.launch(
            self.model,
            data,
            options=options,
            on_result=lambda pred, model=self.model: self._show(
                pred, source, offset, preview, scan_shape, model
            ),
            **launch,
        )

    def _show(self, pred, source, offset, preview: bool, scan_shape, model) -> None:
        from .writer import tag_run

        self.results.show(pred, source, offset, preview, scan_shape)
        tag_run(self.results.labels_layer(), model)  # a DICOM SEG of it names the checkpoint

    def _launch_store(self, layer, first, data, source, options, launch: dict):
        """Run into a new OME-Zarr store whose layers fill in as blocks finish."""
        folder = default_folder(layer, first)
        refuse_store_too_large(
            first, launch["channel_axis"], self.model.spec, layer.name, folder, options.tta
        )
        out = unique_store(folder, layer.name)
        options = options.replace(out=str(out), thresholds=self.threshold_values())
        run = self.results.begin_store(source, out)
        self.store_info.visible = True
        self.store_info.value = f"writing {out}; labels are editable once it is done"
        return self.jobs.launch(
            self.model,
            data,
            options=options,
            on_result=lambda result: self._store_done(result, run),
            on_step=self.results.on_store_step,
            on_failed=lambda exc: self._store_failed(exc, run),
            **launch,
        )

    def _store_done(self, result, run) -> None:
        self.results.show_store(result, run)
        self.store_info.value = f"saved in {result.path}; painting the labels writes there"

    def _store_failed(self, exc: BaseException, run) -> str:
        self.store_info.value = f"nothing kept ({run.out.name} removed)"
        return self.results.discard_store(run, exc)

    def _on_closed(self) -> None:
        """The viewer (or this dock) was closed: stop the run; its result goes nowhere."""
        self.jobs.close()
        self.results.close()
        self.comparison.close()

    def request_cancel(self) -> None:
        self.jobs.request_cancel()

    @property
    def worker(self):
        """The running job's thread worker, or None."""
        return self.jobs.worker

    @property
    def state(self) -> RunState | None:
        """The latest finished run (its prediction and Labels layer), or None."""
        return self.results.state

    @property
    def busy(self) -> bool:
        """A run, or its layers, still on the way."""
        return self.jobs.running or self.results.pending

    def _view_settings(self) -> ViewSettings:
        return ViewSettings(
            self.threshold_values(),
            bool(self.show_attention.value),
            bool(self.show_uncertainty.value),
            float(self.uncertainty_level.value),
            self.gate.value,
            self.label_style.value,
        )

    def _on_gates(self, names: list[str]) -> None:
        """A run's gates: the selector offers them, keeping the choice when it still exists."""
        if not names:
            return
        chosen = self.gate.value
        self._gates = list(names)
        with self.gate.changed.blocked():
            self.gate.reset_choices()
            self.gate.value = chosen if chosen in names else names[0]

    def _gate_choices(self, widget=None) -> list[str]:
        return list(getattr(self, "_gates", None) or ["gate 1"])

    # ---- thresholds ------------------------------------------------------------------------
    def _on_threshold(self, value=None) -> None:
        if self.argmax.value and value is not None and not isinstance(value, bool):
            with self.argmax.changed.blocked():  # a slider moved: thresholds take over
                self.argmax.value = False
        self.results.apply_thresholds()


def checkpoint_typo(path: str) -> str:
    """The sentence for a checkpoint field naming no file (a typo, or a file moved away)."""
    folder = Path(path).expanduser().parent
    where = "" if folder.is_dir() else f" (nor is there a folder {folder})"
    return (
        f"{path}: no such checkpoint file{where}. Check the name, or pick the file with "
        "the 'Select file' button or from the 'checkpoints' list."
    )
