"""Linked orthogonal views: how long moving the crosshair takes to redraw the three planes.

    PYTHONPATH=. xvfb-run -a -s "-screen 0 1600x1000x24" python bench/bench_orthoviews.py \
        [--size 256] [--moves 21] [--rounds 2] [--profile FILE]

One viewer at 1600x1000; a size^3 int16 scan opened through the plugin's reader (a NIfTI on
disk, 1 mm) and the four layers a run adds, styled as the widget styles them: labels (uint8,
3 classes, outlined), two gate maps on their coarser grids (strides 4 and 8, both visible here,
where the widget shows one) and the uncertainty (float32, scan grid): five layers, all visible.

The moves are clicks: in the axial, coronal and sagittal view in turn, at a random spot (not a
voxel centre), so each moves the two other planes. A move is timed until the three canvases have
drawn once each and the GL has finished, in parts:

- slicing: setting the point (napari slices the layers, its events, ours);
- draw prep: napari's per-draw layer updates (``VispyCanvas.on_draw``, Python);
- Python CPU: the main thread's CPU time in those two (what a quiet machine would see: other
  engineers share the two cores, and wall time stretches with the load);
- vispy+GL: vispy drawing each scene (``SceneCanvas._draw_scene``: visuals, texture uploads, GL
  calls) and a ``glFinish``, so that the software rasteriser's deferred work is counted;
- Qt, other: the rest of Qt's event loop, mostly composing the window (OpenGL widgets are
  composed through the same software GL).

Interleaved in one process (one canvas, old, new, statics; then again): "one canvas" (views
off, the viewer's point set), "three planes, old" (the point set in each viewer as before the
change that this bench measured: every view re-sliced every layer, the unchanged plane's too,
and again when napari's slider snapped the point to the voxel grid; copies' thumbnails redrawn)
and "three planes" (``OrthoViews.set_point``). Then the three canvases redrawn with nothing
changed ("static redraw": drawing alone), and the same with every layer hidden (the floor:
Qt and vispy's fixed cost). Figures, not pass/fail: the machine is shared and noisy, and Xvfb
renders with software OpenGL (Mesa llvmpipe).

``--profile FILE`` runs cProfile over the "three planes" moves (after the timed rounds), prints
the 25 costliest functions by cumulative time, and with pyinstrument importable writes its call
tree to FILE with the suffix .txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_attunet.plugin.orthoviews import PLANES


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _volume(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head-like scan (a bright ellipsoid shell around a dimmer core), its labels and a
    smooth uncertainty map."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    r = np.sqrt((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2)
    scan = np.where(r < 1.0, 400 + 300 * (r > 0.8), 0).astype(np.int16)
    labels = np.zeros(scan.shape, np.uint8)
    labels[r < 0.8] = 2
    labels[(r >= 0.8) & (r < 1.0)] = 1
    uncertainty = np.exp(-(((r - 0.8) / 0.05) ** 2)).astype(np.float32)
    return scan, labels, uncertainty


class DrawClock:
    """Counts each canvas's draws, and times napari's per-draw layer updates (Python) and
    vispy drawing the scene (its visuals, texture uploads, GL calls and a glFinish)."""

    def __init__(self) -> None:
        self.draws: dict[int, int] = {}
        self.gl = 0.0
        self.prep = 0.0
        self.prep_cpu = 0.0

    def watch(self, canvas) -> None:
        if id(canvas) in self.draws:
            return
        self.draws[id(canvas)] = 0
        scene = canvas._scene_canvas
        draw_scene, on_draw = scene._draw_scene, canvas.on_draw

        def timed_draw_scene(*args, **kwargs):
            start = time.perf_counter()
            draw_scene(*args, **kwargs)
            scene.context.finish()
            self.gl += time.perf_counter() - start
            self.draws[id(canvas)] += 1

        def timed_on_draw(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            on_draw(*args, **kwargs)
            self.prep += time.perf_counter() - start
            self.prep_cpu += time.thread_time() - cpu

        scene._draw_scene = timed_draw_scene
        canvas.on_draw = timed_on_draw  # vispy looks the callback up by name on each draw

    def redraw(self, canvases) -> None:
        """Let Qt paint what the move scheduled, paint any canvas it left (so each draws once),
        and wait for the GL to finish."""
        from qtpy.QtWidgets import QApplication

        before = {id(c): self.draws[id(c)] for c in canvases}
        QApplication.processEvents()
        for canvas in canvases:
            if self.draws[id(canvas)] == before[id(canvas)]:
                canvas._scene_canvas.native.repaint()
            canvas._scene_canvas.context.finish()


def old_set_point(views, point) -> None:
    """``OrthoViews.set_point`` before the change measured here: the point set as given in
    every viewer, so every view re-sliced every layer (the unchanged plane's included), and
    again when napari's sliders snapped the point to the voxel grid."""
    point = tuple(float(v) for v in point)
    views._block = True
    try:
        for model in views.all_models:
            if len(model.dims.point) == len(point) and tuple(model.dims.point) != point:
                with model.dims.events.current_step.blocker(model._update_layers):
                    model.dims.point = point
    finally:
        views._block = False
    views._draw_crosshairs()


def _copy_thumbnails(views, on: bool) -> None:
    """Before the change the copies' thumbnails were redrawn on every slice."""
    from napari_attunet.plugin import orthoviews

    for model in views.models.values():
        for copy in model.layers:
            if on:
                vars(copy).pop("_update_thumbnail", None)
            else:
                copy._update_thumbnail = orthoviews._no_thumbnail


def _add_result_layers(viewer, layer, labels, uncertainty, rng) -> None:
    """The labels, two gates and the uncertainty, with the widget's styles."""
    from napari_attunet.plugin.layers import (
        LABELS_OPACITY,
        SourceGeometry,
        gate_image,
        gate_kwargs,
        label_colormap,
        map_display,
    )

    source = SourceGeometry.from_layer(layer, 3)
    viewer.add_labels(
        labels, name="labels", colormap=label_colormap(3), opacity=LABELS_OPACITY, **source.kwargs()
    ).contour = 1  # outlined while a map is shown
    for k, stride in enumerate((4, 8), start=1):
        coarse = rng.random(tuple(-(-n // stride) for n in labels.shape)).astype(np.float32)
        kwargs = gate_kwargs(source, k, 0, 1, (stride,) * 3, (stride / 2,) * 3, (0.5, 1.0), 2, labels.shape)
        viewer.add_layer(gate_image(coarse, {**kwargs, "visible": True}))
    viewer.add_image(
        uncertainty,
        name="uncertainty",
        contrast_limits=(0.0, 1.0),
        interpolation2d="linear",
        **map_display("uncertainty", 2),
        **source.kwargs(),
    )


def _show_layers(viewer, on: bool) -> None:
    for layer in viewer.layers:  # the copies follow
        layer.visible = on
    _settle(0.2)


def _clicks(rng, size: int, moves: int, scale: np.ndarray) -> list[tuple[float, ...]]:
    """Where the crosshair goes, as clicks would send it: a click in the axial, coronal,
    sagittal view in turn moves the point along that plane's two axes (to a random spot,
    not on the voxel centres: a click lands anywhere), the third stays."""
    point = np.full(3, size / 2.0)
    out = []
    for k in range(moves):
        plane = ("axial", "coronal", "sagittal")[k % 3]
        shown = list(PLANES[plane][1:])
        point[shown] = rng.uniform(0, size - 1, 2)
        out.append(tuple(float(v) for v in point * scale))
    return out


def _settle(seconds: float = 0.4) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


PARTS = ("total", "slicing", "draw prep", "Python CPU", "vispy+GL", "Qt, other")


def _summary(name: str, parts: dict[str, list[float]]) -> str:
    def stats(values: list[float]) -> str:
        ms = sorted(1000 * v for v in values)
        p90 = ms[int(0.9 * (len(ms) - 1))]
        return f"{statistics.median(ms):5.0f} /{p90:4.0f}"

    return f"{name:24s}" + "".join(f" {stats(parts[part]):>13s}" for part in PARTS)


def _gl_renderer(canvas) -> str:
    from vispy.gloo import gl

    canvas._scene_canvas.set_current()
    return f"{gl.glGetParameter(gl.GL_RENDERER)} (OpenGL {gl.glGetParameter(gl.GL_VERSION)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--moves", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()

    import napari
    import SimpleITK as sitk

    from napari_attunet.plugin import orthoviews

    scan, labels, uncertainty = _volume(args.size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-orthoviews-") as tmp:
        path = Path(tmp) / "head.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(scan), str(path))
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1000)
        (layer,) = viewer.open(str(path), plugin="napari-attunet")
    _add_result_layers(viewer, layer, labels, uncertainty, rng)
    assert len(viewer.layers) == 5 and all(lay.visible for lay in viewer.layers)

    clock = DrawClock()
    main_canvas = viewer.window._qt_viewer.canvas
    clock.watch(main_canvas)
    points = _clicks(rng, args.size, args.moves, np.asarray(layer.scale))
    _settle()

    results: dict[str, dict[str, list[float]]] = {}

    def timed(name: str, move, canvases) -> None:
        parts = results.setdefault(name, {part: [] for part in PARTS})
        clock.redraw(canvases)
        for point in points:
            clock.gl = clock.prep = clock.prep_cpu = 0.0
            start, cpu = time.perf_counter(), time.thread_time()
            move(point)
            sliced, cpu = time.perf_counter(), time.thread_time() - cpu
            clock.redraw(canvases)
            end = time.perf_counter()
            parts["total"].append(end - start)
            parts["slicing"].append(sliced - start)
            parts["draw prep"].append(clock.prep)
            parts["Python CPU"].append(cpu + clock.prep_cpu)
            parts["vispy+GL"].append(clock.gl)
            parts["Qt, other"].append(end - sliced - clock.prep - clock.gl)

    def single(point) -> None:
        viewer.dims.point = point

    views = None
    canvases = [main_canvas]
    for _ in range(args.rounds):  # interleaved
        timed("one canvas (views off)", single, [main_canvas])
        views = orthoviews.show(viewer)
        assert views is not None
        _settle()
        views.reset_views()
        canvases = [main_canvas] + [qt.canvas for qt in views.qt_viewers.values()]
        for canvas in canvases:
            clock.watch(canvas)
        _copy_thumbnails(views, on=True)
        timed("three planes, old", lambda p, v=views: old_set_point(v, p), canvases)
        _copy_thumbnails(views, on=False)
        timed("three planes", views.set_point, canvases)

        def static(point, cs=canvases) -> None:
            for canvas in cs:
                canvas._scene_canvas.update()

        timed("static redraw, 3 planes", static, canvases)
        _show_layers(viewer, False)
        timed("static, layers hidden", static, canvases)
        _show_layers(viewer, True)
        orthoviews.show(viewer, on=False)
        _settle(0.1)

    load = os.getloadavg()
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        f"GL: {_gl_renderer(main_canvas)}\n"
        f"{args.size}^3, 5 layers, {args.moves} moves x {args.rounds} rounds, interleaved; "
        "per move, ms, median / p90"
    )
    print(f"{'':24s}" + "".join(f" {part:>13s}" for part in PARTS))
    for name, parts in results.items():
        print(_summary(name, parts))

    if args.profile is not None:
        _profile(viewer, points, clock, args.profile)
    viewer.close()


def _profile(viewer, points, clock: DrawClock, out: Path) -> None:
    """cProfile (to ``out``) over the "three planes" moves; with pyinstrument importable, its
    call tree too (``out`` with the suffix .txt)."""
    import cProfile
    import pstats

    from napari_attunet.plugin import orthoviews

    views = orthoviews.show(viewer)
    assert views is not None
    _settle()
    canvases = [viewer.window._qt_viewer.canvas] + [qt.canvas for qt in views.qt_viewers.values()]
    for canvas in canvases:
        clock.watch(canvas)
    clock.redraw(canvases)

    def moves() -> None:
        for point in points:
            views.set_point(point)
            clock.redraw(canvases)

    profiler = cProfile.Profile()
    profiler.runcall(moves)
    profiler.dump_stats(out)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        tree = Profiler(interval=0.0005)
        tree.start()
        moves()
        tree.stop()
        out.with_suffix(".txt").write_text(tree.output_text(show_all=True))
    orthoviews.show(viewer, on=False)


if __name__ == "__main__":
    main()
