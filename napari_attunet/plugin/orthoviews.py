"""Linked orthogonal views: axial, coronal and sagittal at once, with a shared crosshair.

napari draws one canvas per viewer (napari issue #662). As napari's example
``multiple_viewer_widget.py`` shows, more canvases come from extra ``QtViewer``\\ s on their own
``ViewerModel``\\ s, docked in the main window, holding copies of the main viewer's layers that
share its data arrays. Here the main canvas shows the axial plane and a dock below it the
coronal and sagittal planes, each upright (``orientation``), with its orientation letters.

The crosshair is the shared world point (``dims.point``): a click (a press and release without a
drag, so that panning still works) in any of the three sets it in all three, which moves the
other two planes to it; the slider moves it too. A move re-slices each layer once in each view
whose plane moves, and not at all in the others (``bench/bench_orthoviews.py``). Layers added,
removed, moved, edited or restyled in the main viewer follow in the other two.
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import ExitStack

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container

from .orientation import camera_of, install
from .windows import CT_WINDOWS, WINDOW_KEY, apply_window

# dims.order of the three scan axes (S, P, L) for each plane.
PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
CROSSHAIR_COLOUR = (1.0, 1.0, 0.0, 0.7)  # yellow, as in 3D Slicer: not the gates' green lines; translucent
DOCK_NAME = "orthogonal views"
DOCK_SHARE = 0.45  # of the window's height, for the coronal and sagittal canvases
# Layer events that are not a style to copy (or are copied by other means).
_NOT_SYNCED = {"thumbnail", "name", "data", "mode", "set_data", "extent", "loaded", "status"}


def plane_order(plane: str, ndim: int) -> tuple[int, ...]:
    """dims.order showing ``plane`` of the last three axes (earlier axes stay in front)."""
    first = ndim - 3
    return tuple(range(first)) + tuple(first + a for a in PLANES[plane])


def _copy(layer):
    """A layer of the same class (a gate map's own Image subclass included), state and data
    (the same array object, not a copy)."""
    data, state, _ = layer.as_layer_data_tuple()
    state = {k: v for k, v in state.items() if k != "name"}
    copy = type(layer)(data, name=layer.name, **state)
    # napari redraws a layer's thumbnail on every slice (12-15% of a layer's slicing time,
    # bench --profile); a copy's is never shown: its viewer has no layer list on screen
    copy._update_thumbnail = _no_thumbnail
    return copy


def _no_thumbnail(*_args, **_kwargs) -> None:
    """A copy's thumbnail: not drawn."""


def _style_names(layer) -> list[str]:
    """The settable properties of ``layer`` that have an event (opacity, colormap, contour...)."""
    from napari.utils.events.event import WarningEmitter

    cls = type(layer)
    out = []
    for name, emitter in layer.events.emitters.items():
        prop = getattr(cls, name, None)
        if (
            name not in _NOT_SYNCED
            and not isinstance(emitter, WarningEmitter)
            and isinstance(prop, property)
            and prop.fset is not None
        ):
            out.append(name)
    return out


def snap_to_grid(dims, point) -> tuple[float, ...]:
    """``point`` within ``dims``' range, on its steps (the voxel centres of the scan): napari's
    slider would otherwise snap it in a second point event, and every layer be sliced twice."""
    if len(point) != dims.ndim:
        return tuple(float(v) for v in point)
    out = []
    for value, rng in zip(point, dims.range, strict=True):
        step = rng.step or 1
        value = min(max(float(value), rng.start), rng.stop)
        out.append(rng.start + round((value - rng.start) / step) * step)
    return tuple(out)


def _move_point(model, point: tuple[float, ...]) -> None:
    """Set ``model``'s point, slicing its layers once if its plane moves, not at all if not.

    napari slices every layer on any change of the point, the displayed axes' included (where
    the slice is the same), and again on the current_step event that comes with it."""
    dims = model.dims
    old = tuple(dims.point)
    if len(old) != len(point) or old == point:
        return
    plane_moves = any(old[axis] != point[axis] for axis in dims.not_displayed)
    with ExitStack() as stack:
        stack.enter_context(dims.events.current_step.blocker(model._update_layers))
        if not plane_moves:
            stack.enter_context(dims.events.point.blocker(model._update_layers))
        dims.point = point


class Crosshair:
    """Two lines through the world point on one canvas (vispy visuals, not a layer)."""

    def __init__(self, vispy_canvas):
        from vispy.scene.visuals import InfiniteLine

        self.canvas = vispy_canvas
        scene = vispy_canvas.view.scene
        self.lines = [
            InfiniteLine(pos=0.0, color=CROSSHAIR_COLOUR, vertical=vertical, parent=scene)
            for vertical in (True, False)
        ]
        for line in self.lines:
            line.order = 1_000_000  # over every layer
            line.set_gl_state("translucent", depth_test=False)

    def update(self, point, displayed: tuple[int, ...], visible: bool) -> None:
        # The scene's x is the plane's second displayed world axis, y its first.
        if len(displayed) != 2:
            visible = False
        for line in self.lines:
            line.visible = visible
        if visible:
            self.lines[0].set_data(pos=float(point[displayed[1]]))
            self.lines[1].set_data(pos=float(point[displayed[0]]))

    def remove(self) -> None:
        for line in self.lines:
            line.parent = None


def _click_sets_point(views: OrthoViews):
    ref = weakref.ref(views)

    def on_drag(model, event):
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        target = ref()
        if not dragged and target is not None and event.type == "mouse_release":
            target.set_point(event.position)

    return on_drag


class OrthoViews:
    """The coronal and sagittal canvases docked under the main (axial) canvas, linked to it."""

    def __init__(self, viewer):
        from napari.components.viewer_model import ViewerModel
        from napari.qt import QtViewer
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSplitter

        self.viewer = viewer
        self._block = False
        self.models = {plane: ViewerModel(title=plane) for plane in ("coronal", "sagittal")}
        self.qt_viewers = {plane: QtViewer(model) for plane, model in self.models.items()}
        self.widget = QSplitter(Qt.Orientation.Horizontal)
        for qt_viewer in self.qt_viewers.values():
            self.widget.addWidget(qt_viewer)
        self._connections: list[tuple] = []
        self._layer_links: list[tuple] = []
        self._click = _click_sets_point(self)
        for model in self.all_models:
            model.mouse_drag_callbacks.append(self._click)
        for layer in viewer.layers:
            self._add_copies(layer, viewer.layers.index(layer))
        for plane, model in self.models.items():
            install(model)
            model.dims.ndisplay = 2
            if model.dims.ndim >= 3:
                model.dims.order = plane_order(plane, model.dims.ndim)
            camera_of(model).events.orientation.connect(lambda e=None: self._draw_crosshairs())
        self._hook_main_viewer()
        with warnings.catch_warnings():  # napari has no public handle on its main canvas
            warnings.simplefilter("ignore", FutureWarning)
            main_canvas = viewer.window._qt_viewer.canvas
        self.crosshairs = {"axial": Crosshair(main_canvas)} | {
            plane: Crosshair(qt.canvas) for plane, qt in self.qt_viewers.items()
        }
        self.dock = self._dock_below_canvas()
        self.show_axial()
        self.set_point(self._centre())
        self.reset_views()

    def _hook_main_viewer(self) -> None:
        layers = self.viewer.layers.events
        self._connect(layers.inserted, self._on_inserted)
        self._connect(layers.removed, self._on_removed)
        self._connect(layers.moved, self._on_moved)
        self._connect(self.viewer.dims.events.ndisplay, self._draw_crosshairs)
        self._connect(self.viewer.dims.events.order, self._draw_crosshairs)
        for model in self.all_models:
            self._connect(model.dims.events.point, self._on_point)

    def _dock_below_canvas(self):
        """Dock the two canvases under the main canvas only: the side docks (the layer list,
        this plugin's widget, whose height would leave a bottom dock a strip) keep the window's
        full height; the corners are given back on close."""
        from qtpy.QtCore import Qt

        dock = self.viewer.window.add_dock_widget(
            self.widget, name=DOCK_NAME, area="bottom", add_vertical_stretch=False
        )
        window = dock.window()
        corners = (Qt.Corner.BottomLeftCorner, Qt.Corner.BottomRightCorner)
        self._corners = {corner: window.corner(corner) for corner in corners}
        window.setCorner(corners[0], Qt.DockWidgetArea.LeftDockWidgetArea)
        window.setCorner(corners[1], Qt.DockWidgetArea.RightDockWidgetArea)
        window.resizeDocks([dock], [int(window.height() * DOCK_SHARE)], Qt.Orientation.Vertical)
        return dock

    # ---- models ------------------------------------------------------------------------------
    @property
    def all_models(self) -> list:
        return [self.viewer, *self.models.values()]

    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def show_axial(self) -> None:
        """The main canvas shows the axial plane, in 2D."""
        dims = self.viewer.dims
        dims.ndisplay = 2
        if dims.ndim >= 3:
            dims.order = plane_order("axial", dims.ndim)

    def reset_views(self) -> None:
        for model in self.all_models:
            model.reset_view()
        self._draw_crosshairs()

    def _centre(self) -> tuple[float, ...]:
        extent = self.viewer.layers.extent.world
        if not len(self.viewer.layers):
            return tuple(self.viewer.dims.point)
        return tuple(float(v) for v in np.mean(extent, axis=0))

    # ---- the shared point --------------------------------------------------------------------
    def set_point(self, point) -> None:
        """Move the crosshair (and the planes through it) to ``point`` (world coordinates), on
        the scan's voxel grid.

        Each view re-slices its layers once, and only if its plane moves: a click in the axial
        view moves the coronal and sagittal planes; the axial plane (its point changes only
        within the plane) keeps its slices, and only its crosshair moves."""
        point = snap_to_grid(self.viewer.dims, point)
        self._block = True
        try:
            for model in self.all_models:
                _move_point(model, point)
        finally:
            self._block = False
        self._draw_crosshairs()

    def _on_point(self, event) -> None:
        if not self._block:
            self.set_point(event.value)

    @property
    def point(self) -> tuple[float, ...]:
        return tuple(self.viewer.dims.point)

    def _draw_crosshairs(self, event=None) -> None:
        point = self.point
        for plane, model in zip(("axial", *self.models), self.all_models, strict=True):
            dims = model.dims
            shown = tuple(dims.order[-dims.ndisplay :])
            self.crosshairs[plane].update(point, shown, dims.ndisplay == 2 and len(point) == dims.ndim)

    # ---- layers ------------------------------------------------------------------------------
    def _add_copies(self, layer, index: int) -> None:
        copies = []
        for model in self.models.values():
            copy = _copy(layer)
            model.layers.insert(index, copy)
            copies.append(copy)
        stated = layer.as_layer_data_tuple()[1]
        for name in _style_names(layer):
            if name not in stated:  # what the layer's state leaves out (a Labels' contour)
                for copy in copies:
                    setattr(copy, name, getattr(layer, name))
            self._link(getattr(layer.events, name), self._style_sync(layer, name))
        self._link(layer.events.data, self._data_sync(layer))
        self._link(layer.events.name, self._name_sync(layer))
        for source in (layer, *copies):
            for event in ("paint", "labels_update"):
                emitter = getattr(source.events, event, None)
                if emitter is not None:
                    self._link(emitter, self._refresh_others(layer.name, source))

    def _link(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._layer_links.append((emitter, callback))

    def _copies(self, name: str) -> list:
        return [model.layers[name] for model in self.models.values() if name in model.layers]

    def _style_sync(self, layer, name: str):
        def sync(event=None):
            if self._block:
                return
            value = getattr(layer, name)
            for copy in self._copies(layer.name):
                try:
                    setattr(copy, name, value)
                except (ValueError, TypeError, AttributeError):
                    pass  # a property the copy cannot take in its state (e.g. while it loads)

        return sync

    def _data_sync(self, layer):
        def sync(event=None):
            for copy in self._copies(layer.name):
                if copy.data is not layer.data:
                    copy.data = layer.data

        return sync

    def _name_sync(self, layer):
        def sync(event=None):
            index = self.viewer.layers.index(layer)
            for model in self.models.values():
                model.layers[index].name = layer.name

        return sync

    def _refresh_others(self, name: str, source):
        def refresh(event=None):
            if self._block:
                return
            self._block = True
            try:
                for model in self.all_models:
                    if name in model.layers and model.layers[name] is not source:
                        model.layers[name].refresh()
            finally:
                self._block = False

        return refresh

    def _on_inserted(self, event) -> None:
        self._add_copies(event.value, event.index)
        first = len(self.viewer.layers) == 1
        for plane, model in self.models.items():
            if model.dims.ndim >= 3:
                model.dims.order = plane_order(plane, model.dims.ndim)
        if first:
            self.show_axial()
            self.set_point(self._centre())
            self.reset_views()
        else:
            self.set_point(self.point)

    def _on_removed(self, event) -> None:
        for model in self.models.values():
            if event.value.name in model.layers:
                model.layers.remove(event.value.name)

    def _on_moved(self, event) -> None:
        target = event.new_index if event.new_index < event.index else event.new_index + 1
        for model in self.models.values():
            model.layers.move(event.index, target)

    # ---- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Undock the two canvases and unhook everything from the main viewer."""
        for emitter, callback in self._connections + self._layer_links:
            emitter.disconnect(callback)
        self._connections.clear()
        self._layer_links.clear()
        for crosshair in self.crosshairs.values():
            crosshair.remove()
        if self._click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._click)
        window = self.dock.window()
        self.viewer.window.remove_dock_widget(self.dock)
        for corner, area in self._corners.items():
            window.setCorner(corner, area)
        for qt_viewer in self.qt_viewers.values():
            qt_viewer.close()
        for model in self.models.values():
            model.layers.clear()


_open: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def show(viewer, on: bool = True) -> OrthoViews | None:
    """Show (or close) the linked orthogonal views of ``viewer``; the open views, or None."""
    from qtpy.QtCore import QTimer

    # A dock widget gets napari's PublicOnlyProxy of the viewer; Qt's calls (resizeDocks)
    # need the objects themselves.
    viewer = getattr(viewer, "__wrapped__", viewer)
    views = _open.get(viewer)
    if on and views is None:
        views = _open[viewer] = OrthoViews(viewer)
        QTimer.singleShot(0, views.reset_views)  # once the dock has taken its room
    elif not on and views is not None:
        views.close()
        del _open[viewer]
        views = None
    return views


class ViewControls(Container):
    """A row of the dock widget: the three-plane toggle and the CT window presets.

    The window applies to the image layer ``image()`` (the one the widget segments): a CT
    preset (soft tissue W400 L40, lung W1500 L-600, bone W1500 L300, brain W80 L40), or the
    0.5-99.5 percentile window that MR and other scans open with.
    """

    def __init__(self, viewer, image):
        self.viewer = viewer
        self._image = image
        self.three_planes = CheckBox(
            name="three_planes",
            text="three planes",
            value=False,
            tooltip="Three linked planes with a shared crosshair: a click in one sets it in all three.",
        )
        self.window = ComboBox(
            name="window",
            label="window",
            choices=[("window", ""), *((name, name) for name in CT_WINDOWS), ("percentile", "percentile")],
            tooltip="CT windows (HU): soft tissue W400 L40, lung W1500 L-600, bone W1500 L300, "
            "brain W80 L40; percentile: 0.5-99.5 %, as MR opens",
        )
        super().__init__(
            name="view_controls",
            label="view",
            layout="horizontal",
            labels=False,
            widgets=[self.three_planes, self.window],
        )
        self.three_planes.changed.connect(self._on_three_planes)
        self.window.changed.connect(self._on_window)

    def _on_three_planes(self, value: bool) -> None:
        show(self.viewer, bool(value))

    def _on_window(self, value: str) -> None:
        layer = self._image()
        if value and layer is not None:
            apply_window(layer, value)

    def show_window_of(self, layer) -> None:
        """Show ``layer``'s current window in the combo (no change to the layer)."""
        name = ((getattr(layer, "metadata", None) or {}).get(WINDOW_KEY) or {}).get("window", "")
        with self.window.changed.blocked():
            self.window.value = name if name in CT_WINDOWS else ("percentile" if name else "")
