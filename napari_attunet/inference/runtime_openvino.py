"""A network converted to OpenVINO and compiled for this CPU, with a conversion cache on disk.

The converted model returns the logits and every gate map, ``(logits, *gates)``, so the engine
stitches, flips and blends them exactly as it does PyTorch's. Its spatial shape is dynamic
(measured: as fast as a static shape), so one conversion serves every tile size.

The network is traced (spatial sizes symbolic) and converted. That takes seconds to tens of
seconds for a 3D network, so the converted model (OpenVINO IR) is stored in the user's cache
folder under a key made of the weights' sha256, the spec and the OpenVINO and PyTorch versions.
Entries are written atomically and checked against the sha256 of their files before use: a
corrupt, stale or foreign entry, or one whose manifest does not list the hash of each file, is
rebuilt, never trusted. An entry is read only from the regular files of fixed names in its own
folder, each read once and the model built from the bytes checked: no path comes from the
manifest, no link is followed, and a FIFO or device is refused without blocking. The folder
is kept under a size limit (``$NAPARI_ATTUNET_CACHE_MB``, 2048 by default; a value that is no
size is an error naming the setting) by removing the least recently used entries. Compiling
the IR for the CPU, with the precision hint, takes a fraction of a second and is done once per
model and settings in a process. A network that cannot be converted or compiled raises
:class:`NotConvertible` with the reason, at once on every later call in the process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..models import AttentionUNetBase
from ..models.checkpoint import sha256
from .optimize import StateStamp, prepared

CACHE_ENV = "NAPARI_ATTUNET_CACHE"
LIMIT_ENV = "NAPARI_ATTUNET_CACHE_MB"
DEFAULT_LIMIT_MB = 2048
COMPILING = "compiling for this CPU (once)"
FORMAT = 1  # bump when what an entry holds changes
MANIFEST = "manifest.json"
_FILES = ("model.xml", "model.bin")  # an entry's files, by these names only
_PARTIAL_AGE_S = 24 * 3600  # a staging folder this old was left by a process that died
_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# Per model, outside its __dict__ so that copy.deepcopy (optimize.prepared) never meets them.
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FAILED: dict[tuple[str, str], str] = {}  # (weights digest, precision) -> why it cannot run


class NotConvertible(RuntimeError):
    """OpenVINO cannot convert or compile this network; the message says why, in one line."""


def cache_root() -> Path:
    """Where converted models live: ``$NAPARI_ATTUNET_CACHE`` or the platform's user cache."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "napari-attunet"
    return Path(user_cache_dir("napari-attunet"))


def cache_limit() -> int:
    """The most bytes the converted models may take: ``$NAPARI_ATTUNET_CACHE_MB`` or 2 GiB.
    A value that is no size (inf, nan, negative, text) is an InputError naming the setting."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_MB * 2**20
    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not math.isfinite(mb) or mb < 0:
        raise InputError(
            f"the setting {LIMIT_ENV}={text!r} is not a size in MB; set it to a number of MB, "
            f"0 or more (such as {DEFAULT_LIMIT_MB}, the default), or unset it."
        )
    return int(mb * 2**20)


class _AllOutputs(nn.Module):
    """The network as one graph with plain outputs: ``(logits, *gates)``."""

    def __init__(self, net: AttentionUNetBase) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        logits, gates = self.net.forward_with_attention(x)
        return (logits, *gates)


def weights_sha256(model: AttentionUNetBase) -> str:
    """sha256 of the spec and every tensor of the state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(model.spec.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def versions() -> dict:
    import openvino

    return {"openvino": openvino.__version__, "torch": torch.__version__, "format": FORMAT}


def entry_key(model: AttentionUNetBase) -> tuple[str, dict]:
    """The cache entry's name and what it was made from."""
    fields = {"weights": weights_digest(model), **versions()}
    name = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return name, fields


def weights_digest(model: AttentionUNetBase) -> str:
    """The weights' sha256, computed again only when a weight or a buffer (BatchNorm's
    running statistics) changed since."""
    memo = _DIGESTS.get(model)
    if memo is None or not memo[0].matches(model):
        memo = (StateStamp(model), weights_sha256(model))
        _DIGESTS[model] = memo
    return memo[1]


def _read_regular(folder_fd: int, name: str) -> bytes:
    """The bytes of the regular file ``name`` directly in the open folder: a link is not
    followed, and a FIFO, device or folder is refused without blocking (OSError)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(name, flags, dir_fd=folder_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def entry_files(folder: Path) -> dict[str, bytes]:
    """manifest.json, model.xml and model.bin of an entry, read once each: only from a real
    folder directly under the cache's own (no link in or out), only regular files."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    folder_fd = os.open(folder, flags)
    try:
        return {name: _read_regular(folder_fd, name) for name in (MANIFEST, *_FILES)}
    finally:
        os.close(folder_fd)


def _trusted(manifest: object, fields: dict, files: dict[str, bytes]) -> bool:
    """Whether the manifest is this model's and names the sha256 of each file, and the files
    have them. A manifest without every hash is not trusted."""
    if not isinstance(manifest, dict) or manifest.get("fields") != fields:
        return False
    sums = manifest.get("sha256")
    if not isinstance(sums, dict) or set(sums) != set(_FILES):
        return False
    return all(hashlib.sha256(files[name]).hexdigest() == sums[name] for name in _FILES)


def load_entry(folder: Path, fields: dict, outputs: int):
    """The stored ov.Model, or None when the entry is missing, corrupt, not this model's or
    not wholly inside the cache. The model is made from the bytes that were checked."""
    import openvino

    try:
        files = entry_files(folder)
        if not _trusted(json.loads(files[MANIFEST]), fields, files):
            return None
        weights = openvino.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8))
        ov_model = openvino.Core().read_model(files["model.xml"], weights)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    if len(ov_model.outputs) != outputs:
        return None
    _touch(folder)
    return ov_model


def _touch(folder: Path) -> None:
    """Mark the entry as used now: eviction removes the least recently used first."""
    try:
        os.utime(folder)
    except OSError:
        pass


def _folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def evict(root: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries under ``root`` until the rest fit in ``limit``
    bytes (``keep``, the entry in use, stays even if it alone does not fit), and staging
    folders left by processes that died. Returns what was removed."""
    removed: list[Path] = []
    entries = []
    now = time.time()
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for folder in folders:
        try:
            used = folder.stat().st_mtime
            if folder.name.startswith("."):
                if now - used > _PARTIAL_AGE_S:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                continue
            entries.append((used, _folder_bytes(folder), folder))
        except OSError:
            continue  # removed meanwhile by another process
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if keep is not None and folder == keep:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        total -= size
    return removed


def store_entry(ov_model, folder: Path, fields: dict) -> None:
    """Write the entry next to its final place, then move it there in one rename."""
    import openvino

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        openvino.save_model(ov_model, staging / "model.xml", compress_to_fp16=False)
        sums = {name: sha256(staging / name) for name in _FILES}
        (staging / MANIFEST).write_text(json.dumps({"fields": fields, "sha256": sums}))
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            folder.unlink()  # no entry of ours: a link (never followed) or a stray file
        elif folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            pass  # another process stored the same entry first; theirs is checked on reading
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    evict(folder.parent, cache_limit(), keep=folder)


def convert(model: AttentionUNetBase):
    """The network (BatchNorm folded) as an OpenVINO model for (B, C, *spatial) inputs whose
    spatial sizes are multiples of the total stride (the engine's tiles always are)."""
    import openvino

    spec = model.spec
    folded = cast(AttentionUNetBase, prepared(model, torch.device("cpu"), fold=True, layout=False))
    net = _AllOutputs(folded).eval()
    # Traced on a small input: the graph keeps its shapes symbolic, so size is no matter.
    # torch.jit.trace is deprecated in torch 2.13, but measured on the bench network (AMD EPYC,
    # 2 busy cores) the torch.export route converts 2.2-3x slower and its OpenVINO model peaks
    # 260 MiB higher in a run (852 against 594 MiB, fp32), so tracing stays until that closes.
    example = torch.zeros((1, spec.in_channels) + tuple(2 * s for s in spec.total_stride))
    shape = openvino.PartialShape([-1, spec.in_channels] + [-1] * spec.spatial_dims)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks, true for tiles
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.trace.*deprecated", category=DeprecationWarning
        )
        return openvino.convert_model(net, example_input=example, input=[shape])


def failure_reason(exc: BaseException) -> str:
    """What went wrong, in a short line: the operations OpenVINO has no rule for, when it says
    so, else the first line of the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line.lstrip("- ").rstrip(".") for line in lines if line.startswith("--")]
    text = "; ".join(named) if named else (lines[0] if lines else type(exc).__name__)
    text = text.rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


# ---- auto's stored choices (inference/autochoice.py): small entries, checked like the models ----

CHOICE = "choice.json"


def load_choice(folder: Path, fields: dict) -> dict | None:
    """The choice stored in ``folder``, or None when it is missing, corrupt or not for these
    ``fields``: its manifest must hold the fields and the sha256 of choice.json, and both are
    read as an entry's files are (regular files of fixed names, no link followed)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        folder_fd = os.open(folder, flags)
        try:
            manifest, choice = (_read_regular(folder_fd, name) for name in (MANIFEST, CHOICE))
        finally:
            os.close(folder_fd)
        meta = json.loads(manifest)
        if not isinstance(meta, dict) or meta.get("fields") != fields:
            return None
        if meta.get("sha256") != {CHOICE: hashlib.sha256(choice).hexdigest()}:
            return None
        data = json.loads(choice)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    _touch(folder)
    return data


def store_choice(folder: Path, fields: dict, choice: dict) -> None:
    """Write a choice as an entry: next to its place, then moved there in one rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        body = json.dumps(choice, sort_keys=True).encode()
        (staging / CHOICE).write_bytes(body)
        manifest = {"fields": fields, "sha256": {CHOICE: hashlib.sha256(body).hexdigest()}}
        (staging / MANIFEST).write_text(json.dumps(manifest))
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            pass  # another process stored it first; theirs is checked on reading
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    evict(folder.parent, cache_limit(), keep=folder)


class OpenVINONet:
    """A compiled network with the calls the engine makes of a PyTorch one.

    ``forward_with_attention(x)`` takes a (B, C, *tile) float32 CPU tensor and returns
    ``(logits, [gate, ...])`` as float32 tensors. With several infer requests (OpenVINO's
    THROUGHPUT hint), the tiles of a batch run concurrently, one per request. Calls from
    several threads at once (blocks on Dask threads share one compiled network) each take a
    set of requests of their own from a pool: a request runs one inference at a time. The pool
    belongs to this object, so no request outlives its compiled network.
    """

    def __init__(self, compiled, gates: int) -> None:
        self.compiled = compiled
        self.gates = gates
        self.count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._free: list[list] = []
        self._lock = threading.Lock()

    @property
    def parallel(self) -> int:
        """How many tiles run at once: the batch size that keeps every request busy."""
        return self.count

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        with self._lock:
            requests = self._free.pop() if self._free else None
        if requests is None:
            requests = [self.compiled.create_infer_request() for _ in range(self.count)]
        try:
            outputs = self._run(requests, array)
        finally:
            with self._lock:
                self._free.append(requests)
        tensors = [torch.from_numpy(o) for o in outputs]
        return tensors[0], tensors[1:]

    def _run(self, requests: list, array: np.ndarray) -> list[np.ndarray]:
        if len(requests) == 1 or len(array) == 1:
            return self._infer(requests[0], array)
        parts = np.array_split(array, min(len(array), len(requests)))
        used = requests[: len(parts)]
        for request, part in zip(used, parts, strict=True):
            request.start_async({0: part})
        results = []
        for request in used:
            request.wait()
            results.append([np.copy(request.get_output_tensor(i).data) for i in range(1 + self.gates)])
        return [np.concatenate(column) for column in zip(*results, strict=True)]

    def _infer(self, request, array: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: array})
        return [np.asarray(result[i]) for i in range(1 + self.gates)]


def cached_model(model: AttentionUNetBase) -> tuple[object | None, Path, dict]:
    """(the stored ov.Model or None, its entry folder, its key fields)."""
    name, fields = entry_key(model)
    folder = cache_root() / "openvino" / name
    return load_entry(folder, fields, 1 + len(model.spec.gates)), folder, fields


def converted(model: AttentionUNetBase):
    """The stored conversion of ``model``, converting and storing it if needed."""
    ov_model, folder, fields = cached_model(model)
    if ov_model is None:
        ov_model = convert(model)
        try:
            store_entry(ov_model, folder, fields)
        except OSError as exc:
            warnings.warn(
                f"the OpenVINO cache {folder.parent} cannot be written ({exc.strerror or exc}); "
                "the next run converts again.",
                RuntimeWarning,
                stacklevel=2,
            )
    return ov_model


def compile_network(
    ov_model, gates: int, precision: str = "fp32", hint: str = "LATENCY", threads: int | None = None
) -> OpenVINONet:
    """Compile for this CPU. ``precision`` 'fp32' or 'bf16' (OpenVINO's inference precision
    hint, honoured where the CPU has bf16); ``hint`` 'LATENCY' or 'THROUGHPUT'."""
    import openvino

    config: dict[str, str | int] = {
        "PERFORMANCE_HINT": hint,
        "INFERENCE_PRECISION_HINT": _PRECISION[precision],
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return OpenVINONet(openvino.Core().compile_model(ov_model, "CPU", config), gates)


def network(model: AttentionUNetBase, precision: str = "fp32", hint: str = "LATENCY") -> OpenVINONet:
    """The compiled network, kept for the next run with the same weights and settings (like
    ``optimize.prepared``). Raises NotConvertible when OpenVINO cannot convert or compile it,
    and then at once for the same weights and precision for the rest of the process."""
    cache_limit()  # a bad setting is the user's to fix, not a network OpenVINO cannot run
    digest = weights_digest(model)
    key = (digest, precision, hint)
    memo = _COMPILED.setdefault(model, {})
    if key in memo:
        return memo[key]
    failed = _FAILED.get((digest, precision))
    if failed is not None:
        raise NotConvertible(failed)
    try:
        net = compile_network(converted(model), len(model.spec.gates), precision, hint)
    except Exception as exc:  # noqa: BLE001 - any failure of export, conversion or compilation
        _FAILED[digest, precision] = failure_reason(exc)
        raise NotConvertible(_FAILED[digest, precision]) from exc
    memo.clear()
    memo[key] = net
    return net


def known_failure(model: AttentionUNetBase, precision: str) -> str | None:
    """Why this network already failed to convert or compile in this process, or None."""
    return _FAILED.get((weights_digest(model), precision))


def is_ready(model: AttentionUNetBase) -> bool:
    """Whether :func:`network` will not have to convert (compiled already, or stored)."""
    digest = weights_digest(model)
    if any(key[0] == digest for key in _COMPILED.get(model, {})):
        return True
    return cached_model(model)[0] is not None
