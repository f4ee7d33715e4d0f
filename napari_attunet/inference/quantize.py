"""int8 on the CPU: the OpenVINO model quantized by NNCF post-training quantization, and a guard
that measures, on every run, how far int8 is from fp32.

Calibration takes up to 16 windows of the scan at hand (or of a folder of scans), drawn across
the volume from its most structured half so that they are not only background. The quantized
model is stored in the OpenVINO cache beside the fp32 conversions, keyed by the weights'
sha256, the calibration windows' sha256, the scope and the NNCF, OpenVINO and PyTorch versions;
it is checked before use and rebuilt when corrupt (``runtime_openvino``'s entries). NNCF runs
only while calibrating; inference needs only OpenVINO. ``convert --int8 --calibrate DIR``
stores a calibrated model beside the checkpoint (``store_beside``, ``calibrated``); a run uses
it when it passes its checks, else says why it is ignored and calibrates as without it.

The guard runs one window, the one with the most uncertain voxels in the int8 result, through
PyTorch in fp32 as well and compares labels (Dice per class) and every gate (mean absolute
difference) there. The figures go into the run's notes; below Dice 0.995 or above 0.02 the
note warns and says to use fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..models import AttentionUNetBase
from .progress import Progress

INT8_EXTRA = 'pip install "napari-attunet[int8]"'
CALIBRATING = "calibrating for this CPU (once)"
WINDOWS = 16
DICE_MIN = 0.995
GATE_MAX = 0.02
UNCERTAIN = 0.9  # a voxel whose top probability is below this (sigmoid: inside 1 - this) is uncertain
GUARD_SIDE = {2: 256, 3: 48}  # the guard window's largest side, in voxels: a fixed cost per run
SCOPES = ("all", "keep-attention")
SCOPE_ENV = "NAPARI_ATTUNET_INT8_SCOPE"  # 'all' or 'keep-attention' overrides the family's choice
# OpenVINO node names of the attention blocks, as tracing names them from the module paths:
# MONAI ``...attention.psi``, Lee ``Att3.psi``, Oktay ``attentionblock2.gate_block_1.psi``.
ATTENTION_NODES = r".*__module\.net\.(.*\.)?(attention\w*|Att\d+)\..*"
# Measured on the bench networks (docs/int8.md): which scope each family gets.
FAMILY_SCOPE = {"monai": "all", "leejunhyun": "all", "official": "all"}
# OpenVINO's hint for int8: LATENCY runs one tile on every core. THROUGHPUT (tiles side by side)
# was 1.8x faster per 96^3 tile once under load 8-10 (docs/performance.md, "Tile size") but runs a
# single tile on one core; bench/bench_tiles.py --precisions int8 int8-throughput compares them.
INT8_HINT = "LATENCY"

_INT8: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: OpenVINONet}
_LOCK = threading.Lock()


def nncf_available() -> bool:
    """Whether ``import nncf`` works (a missing or broken install counts as absent)."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def require_nncf() -> None:
    """An InputError naming the extra to install when NNCF is absent."""
    if not nncf_available():
        raise InputError(
            f"precision int8 needs NNCF to calibrate, which is not installed; install it with "
            f"{INT8_EXTRA}, bring a <checkpoint>.int8 folder made by convert --int8, or choose "
            "precision fp32."
        )


def scope_for(model: AttentionUNetBase, scope: str | None = None) -> str:
    """'all' (every layer in int8) or 'keep-attention' (attention blocks stay fp32): ``scope``,
    else ``$NAPARI_ATTUNET_INT8_SCOPE``, else the family's (``FAMILY_SCOPE``)."""
    scope = scope or os.environ.get(SCOPE_ENV, "").strip().lower() or None
    if scope is None or scope == "auto":
        return FAMILY_SCOPE.get(model.spec.family, "keep-attention")
    if scope not in SCOPES:
        raise InputError(f"unknown int8 scope {scope!r} (${SCOPE_ENV}); use auto, {', '.join(SCOPES)}.")
    return scope


# ---- calibration windows -------------------------------------------------------------------


def _crop(x: torch.Tensor, job, tile) -> np.ndarray:
    z, start = job
    region = tuple(slice(s, s + t) for s, t in zip(start, tile, strict=True))
    return np.ascontiguousarray(x[(slice(None), z) + region].numpy(), dtype=np.float32)[None]


def draw_windows(x: torch.Tensor, jobs: Sequence, tile, count: int = WINDOWS) -> list[np.ndarray]:
    """Up to ``count`` tiles of ``x`` ((C, stack, *padded)), spread evenly over the volume among
    its more varied half, so that calibration sees tissue and edges, not only background."""
    if not jobs:
        return []
    spread = [float(np.std(_crop(x, job, tile))) for job in jobs]
    keep = sorted(range(len(jobs)), key=lambda i: -spread[i])[: max(count, (len(jobs) + 1) // 2)]
    keep.sort()  # back in the volume's order: even picks cover it from end to end
    picks = np.unique(np.linspace(0, len(keep) - 1, min(count, len(keep))).round().astype(int))
    return [_crop(x, jobs[keep[i]], tile) for i in picks]


def windows_digest(windows: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for w in windows:
        digest.update(f"{w.dtype}:{w.shape}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


def scan_files(folder: str | os.PathLike) -> list[Path]:
    """The scans in a calibration folder (an InputError when there are none)."""
    from ..scans.io import SCAN_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise InputError(
            f"calibration folder {root} does not exist or is not a folder; give a folder of scans."
        )
    found = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES))
    if not found:
        raise InputError(
            f"calibration folder {root} holds no scans (.nii, .nii.gz, .nrrd, .mha, ...); add some."
        )
    return found[:WINDOWS]


def folder_windows(
    folder: str | os.PathLike, plan_for: Callable, count: int = WINDOWS
) -> Generator[Progress, None, list[np.ndarray]]:
    """Calibration windows from a folder of scans, each planned as the run plans its own
    (``plan_for(volume)`` yields from ``make_plan``)."""
    from ..scans.io import read

    files = scan_files(folder)
    per_scan = max(1, -(-count // len(files)))
    windows: list[np.ndarray] = []
    for path in files:
        plan = yield from plan_for(read(path))
        windows += draw_windows(plan.x, plan.jobs, plan.tile, per_scan)
    return windows[:count]


# ---- the quantized model, cached -----------------------------------------------------------


def _nncf_version() -> str:
    import nncf

    return str(nncf.__version__)


def int8_key(model: AttentionUNetBase, digest: str, scope: str) -> tuple[str, dict]:
    from . import runtime_openvino as ro

    fields = {
        "weights": ro.weights_digest(model),
        **ro.versions(),
        "int8": {
            "nncf": _nncf_version(),
            "calibration": digest,
            "scope": scope,
            "preset": "mixed, no bias correction",
        },
    }
    name = "int8-" + hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:32]
    return name, fields


def quantize_model(ov_model, windows: Sequence[np.ndarray], scope: str):
    """NNCF post-training quantization (MIXED preset, no bias correction) of ``ov_model``."""
    import nncf

    keep = scope == "keep-attention"
    ignored = nncf.IgnoredScope(patterns=[ATTENTION_NODES], validate=False) if keep else None
    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars on stdout, which would break a CLI's bar and a pipe's output
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return nncf.quantize(
            ov_model,
            nncf.Dataset(list(windows)),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(windows),
            ignored_scope=ignored,
            # Measured on the MNI152 demo (docs/int8.md): without bias correction, labels Dice
            # 0.997 against 0.990 with NNCF's fast bias correction, and calibration 5x faster.
            advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
        )


def int8_entry(model: AttentionUNetBase, digest: str, scope: str) -> Path:
    from . import runtime_openvino as ro

    return ro.cache_root() / "openvino" / int8_key(model, digest, scope)[0]


def cached_int8(model: AttentionUNetBase, digest: str, scope: str):
    """The stored quantized ov.Model, or None when missing, corrupt or stale."""
    from . import runtime_openvino as ro

    name, fields = int8_key(model, digest, scope)
    return ro.load_entry(ro.cache_root() / "openvino" / name, fields, 1 + len(model.spec.gates))


def quantized(model: AttentionUNetBase, windows: Sequence[np.ndarray], digest: str, scope: str):
    """The stored int8 model for these windows, quantizing and storing it if needed."""
    from . import runtime_openvino as ro

    name, fields = int8_key(model, digest, scope)
    folder = ro.cache_root() / "openvino" / name
    ov_model = ro.load_entry(folder, fields, 1 + len(model.spec.gates))
    if ov_model is None:
        ov_model = quantize_model(ro.converted(model), windows, scope)
        try:
            ro.store_entry(ov_model, folder, fields)
        except OSError as exc:
            warnings.warn(
                f"the OpenVINO cache {folder.parent} cannot be written ({exc.strerror or exc}); "
                "the next int8 run calibrates again.",
                RuntimeWarning,
                stacklevel=2,
            )
    return ov_model


def _memo_network(model: AttentionUNetBase, key: tuple, ov_model: Callable):
    """The compiled network for ``key``, compiling ``ov_model()`` once (one per model)."""
    from . import runtime_openvino as ro

    with _LOCK:
        memo = _INT8.setdefault(model, {})
        if key in memo:
            return memo[key]
    net = ro.compile_network(ov_model(), len(model.spec.gates), "fp32", INT8_HINT)
    with _LOCK:
        memo.clear()  # one int8 network per model at a time
        memo[key] = net
    return net


def int8_network(model: AttentionUNetBase, windows: Sequence[np.ndarray], scope: str | None = None):
    """The compiled int8 network for these calibration windows (kept for the next run)."""
    from . import runtime_openvino as ro

    scope = scope_for(model, scope)
    digest = windows_digest(windows)
    key = (ro.weights_digest(model), digest, scope)
    return _memo_network(model, key, lambda: quantized(model, windows, digest, scope))


def is_ready(model: AttentionUNetBase, windows: Sequence[np.ndarray], scope: str | None = None) -> bool:
    """Whether :func:`int8_network` will not have to calibrate."""
    from . import runtime_openvino as ro

    scope = scope_for(model, scope)
    digest = windows_digest(windows)
    if (ro.weights_digest(model), digest, scope) in _INT8.get(model, {}):
        return True
    return cached_int8(model, digest, scope) is not None


def normalization_of(model: AttentionUNetBase, normalization=None) -> dict:
    """The normalization a run uses (``normalization``, else the checkpoint's), as stored."""
    from .preprocess import resolve_normalization

    return resolve_normalization(normalization, model.spec).to_dict()


def stored_int8(
    model: AttentionUNetBase, scope: str, normalization: dict, calibration: str | os.PathLike | None = None
):
    """The int8 model stored beside the model's checkpoint (``calibrated.Stored``), one sentence
    saying why it is ignored, or None when there is none."""
    from . import calibrated

    scans = None if calibration is None else scan_files(calibration)
    return calibrated.read(getattr(model, "source", None), model, scope, normalization, scans)


def prepare_int8(
    model: AttentionUNetBase,
    plan,
    calibration: str | os.PathLike | None = None,
    plan_for: Callable | None = None,
    scope: str | None = None,
    normalization: dict | None = None,
) -> Generator[Progress, None, object]:
    """The int8 network: the one stored beside the checkpoint (``convert --int8``) when it
    passes its checks, else calibrated (once per calibration set, then from the cache), saying
    so while it calibrates. A network OpenVINO cannot convert is a CheckpointError."""
    from . import calibrated
    from . import runtime_openvino as ro

    scope = scope_for(model, scope)
    stored = stored_int8(model, scope, normalization or normalization_of(model), calibration)
    if isinstance(stored, calibrated.Stored):
        key = (ro.weights_digest(model), "stored:" + stored.key, scope)
        try:
            net = _memo_network(model, key, lambda: stored.ov_model)
        except Exception as exc:  # noqa: BLE001 - compilation
            raise CheckpointError(
                f"int8 cannot run {stored.folder} ({ro.failure_reason(exc)}); choose precision fp32."
            ) from None
        plan.notes.append(f"int8 from {stored.describe()}")
        return net
    if stored is not None:  # a sentence: why the stored model is ignored
        plan.notes.append(stored)
        warnings.warn(stored, RuntimeWarning, stacklevel=3)
    require_nncf()  # calibrating needs NNCF; a stored model (above) does not
    if calibration is None:
        windows = draw_windows(plan.x, plan.jobs, plan.tile)
    else:
        assert plan_for is not None
        windows = yield from folder_windows(calibration, plan_for)
    if not is_ready(model, windows, scope):
        yield Progress("preparing", 0, 1, CALIBRATING)
    try:
        net = int8_network(model, windows, scope)
    except Exception as exc:  # noqa: BLE001 - conversion, calibration or compilation
        raise CheckpointError(
            f"int8 cannot run this network ({ro.failure_reason(exc)}); choose precision fp32."
        ) from None
    plan.notes.append(
        f"int8 calibrated on {len(windows)} window{'s' * (len(windows) != 1)} of "
        + ("this scan" if calibration is None else str(calibration))
        + (", attention blocks in fp32" if scope == "keep-attention" else "")
    )
    return net


# ---- stored beside the checkpoint (convert --int8) -----------------------------------------


def store_beside(
    model: AttentionUNetBase,
    calibration: str | os.PathLike,
    folder: Path,
    plan_for: Callable,
    *,
    scope: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Calibrate on the scans in ``calibration``, each planned by ``plan_for(volume)`` as a run
    plans it (``plan_for.tile``: the tile it chose), and store the int8 model in ``folder``
    (``calibrated``). Returns (the folder, its manifest)."""
    import time

    from . import calibrated
    from . import runtime_openvino as ro

    require_nncf()
    calibrated.refuse_existing(folder, overwrite)
    scope = scope_for(model, scope)
    files = scan_files(calibration)
    windows = _finish(folder_windows(calibration, plan_for))
    started = time.perf_counter()
    try:
        ov_model = quantize_model(ro.converted(model), windows, scope)
    except Exception as exc:  # noqa: BLE001 - conversion or calibration
        raise CheckpointError(
            f"int8 cannot run this network ({ro.failure_reason(exc)}); keep precision fp32."
        ) from None
    manifest = calibrated.manifest_for(
        model,
        scope,
        normalization_of(model),
        plan_for.tile,  # type: ignore[attr-defined]
        {
            "folder": str(Path(calibration).resolve()),
            "files": calibrated.calibration_files(files),
            "windows": len(windows),
            "windows_sha256": windows_digest(windows),
            "nncf": _nncf_version(),
            "preset": "mixed, no bias correction",
            "seconds": round(time.perf_counter() - started, 1),
        },
        {},
    )
    return calibrated.write(folder, ov_model, manifest, overwrite), manifest


def _finish(steps: Generator[Progress, None, Any]) -> Any:
    """Run a generator of Progress to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


# ---- the guard -----------------------------------------------------------------------------


def _uncertain(probs: torch.Tensor, output: str) -> torch.Tensor:
    if output == "softmax":
        return probs.amax(0) < UNCERTAIN
    return ((probs > 1 - UNCERTAIN) & (probs < UNCERTAIN)).any(0)


def guard_window(tile: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """The guard's window: the tile, at most ``GUARD_SIDE`` voxels a side (a multiple of the
    stride), so that a run in one whole-volume tile does not run twice in fp32."""
    side = GUARD_SIDE[len(tile)]
    return tuple(min(t, max(s, side // s * s)) for t, s in zip(tile, stride, strict=True))


def most_uncertain_window(plan, blended: torch.Tensor, spec, tta: bool):
    """(slice, start, size) of the guard window holding the most uncertain voxels of the
    blended result, among windows on a grid over the whole padded plane."""
    from .tiling import window_grid
    from .tta import activation

    size = guard_window(plan.tile, spec.total_stride)
    values = blended[: spec.out_channels].float()
    probs = values if tta else activation(values, spec.output, 0)
    uncertain = _uncertain(probs, spec.output)  # (stack, *padded)
    best, best_count = (0, (0,) * len(size)), -1
    for z in range(uncertain.shape[0]):
        for start in window_grid(plan.padded, size, spec.total_stride, 0.0):
            region = tuple(slice(s, s + t) for s, t in zip(start, size, strict=True))
            count = int(uncertain[(z,) + region].sum())
            if count > best_count:
                best, best_count = (z, start), count
    return best[0], best[1], size


def labels_of(logits: torch.Tensor, output: str) -> torch.Tensor:
    """(B, C, *s) logits to per-class masks (C, B, *s)."""
    if output == "softmax":
        top = logits.argmax(1)
        return torch.stack([top == c for c in range(logits.shape[1])])
    return (logits > 0).transpose(0, 1)


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def compare(int8_net, model: AttentionUNetBase, window: np.ndarray) -> tuple[list[float], list[float]]:
    """(Dice per class, each gate's mean |d|) of int8 against fp32 (OpenVINO's, the model int8
    was quantized from, equal to PyTorch's within 1e-4) on one window."""
    from . import runtime_openvino

    x = torch.from_numpy(window)
    reference: Any = runtime_openvino.network(model, "fp32")
    with torch.inference_mode():
        ref_logits, ref_gates = reference.forward_with_attention(x)
        logits, gates = int8_net.forward_with_attention(x)
    output = model.spec.output
    ref_labels, labels = labels_of(ref_logits.float(), output), labels_of(logits.float(), output)
    dices = [dice(a, b) for a, b in zip(labels, ref_labels, strict=True)]
    diffs = [float((g.float() - r.float()).abs().mean()) for g, r in zip(gates, ref_gates, strict=True)]
    return dices, diffs


def guard_note(dices: Sequence[float], diffs: Sequence[float], class_names: Sequence[str]) -> str:
    """The run's note on int8's agreement with fp32; a warning below the limits."""
    per_class = ", ".join(f"{n} {d:.4f}" for n, d in zip(class_names, dices, strict=True))
    gates = ", ".join(f"{d:.4f}" for d in diffs) or "none"
    figures = f"Dice per class {per_class}; each gate's mean |d| {gates}"
    if min(dices, default=1.0) < DICE_MIN or max(diffs, default=0.0) > GATE_MAX:
        return (
            f"WARNING: int8 differs from fp32 on the most uncertain window ({figures}; limits: "
            f"Dice {DICE_MIN}, mean |d| {GATE_MAX}), so use precision fp32 for this scan"
        )
    return f"int8 agrees with fp32 on the most uncertain window ({figures})"


def guard(int8_net, model: AttentionUNetBase, plan, blended: torch.Tensor, tta: bool) -> str:
    """Run the most uncertain window in fp32 too, and say how well int8 agrees there."""
    z, start, size = most_uncertain_window(plan, blended, model.spec, tta)
    dices, diffs = compare(int8_net, model, _crop(plan.x, (z, start), size))
    note = guard_note(dices, diffs, model.spec.class_labels)
    if note.startswith("WARNING"):
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    return note
