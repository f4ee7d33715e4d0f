"""Checkpoints: reading them safely, telling the family from the state dict, saving natively.

Nothing executable is ever unpickled: ``.pt``/``.pth``/``.ckpt`` go through
``torch.load(weights_only=True)`` and ``.safetensors`` holds tensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..hints import FAMILY, NO_FAMILY, OVERRIDES_OR_FAMILY
from ..limits import fits, free_text, gib
from . import REGISTRY, AttentionUNetBase, ModelSpec, build
from .suffixes import CHECKPOINT_SUFFIXES as SUFFIXES
from .suffixes import TORCH_SUFFIXES

METADATA_KEY = "napari_attunet"
FORMAT_VERSION = 1
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_FIX = (
    "save the weights with torch.save(model.state_dict(), path), or convert them with "
    "'napari-attunet convert'"
)


@dataclass
class RawCheckpoint:
    """What a file holds, before any network is built."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict | None


# ---- reading ----------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file. Check the path and the file name.")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file. Pick the .safetensors, "
            ".pt, .pth or .ckpt file inside it."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the download or copy did not finish. Copy the checkpoint again."
        )


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch', from the suffix, or from the first bytes when it is unusual."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(f"{path}: not a checkpoint this tool reads (expected {', '.join(SUFFIXES)}).")


_SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "C64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def _safetensors_declared_bytes(path: Path) -> int | None:
    """The bytes the header says the tensors take, read without loading any of them."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        size = int.from_bytes(head, "little")
        if size > min(path.stat().st_size, 100 << 20):
            return None  # safetensors itself refuses such a header, with its own sentence
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    total = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        count = 1
        for n in entry.get("shape") or []:
            count *= int(n)
        total += count * _SAFETENSORS_BYTES.get(str(entry.get("dtype")), 8)
    return total


class _Stub:
    """Stands in for every class a checkpoint's pickle names: nothing is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageLister(pickle.Unpickler):
    """Reads a torch pickle for the storages it declares, (key, storage type, count); every
    global it names becomes a :class:`_Stub` subclass of that name, so no code runs."""

    def __init__(self, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> type:
        return type(str(name)[:64], (_Stub,), {})

    def persistent_load(self, pid: Any) -> _Stub:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            kind = getattr(pid[1], "__name__", str(pid[1]))
            self.storages[str(pid[2])] = (kind, int(pid[4]))
        return _Stub()


def _element_bytes(storage_type: str) -> int:
    """Bytes per element of a pickled storage type ('FloatStorage': 4; 'UntypedStorage': 1)."""
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        if name == storage_type:
            return int(dtype.itemsize)
    return 1


def _torch_records(path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, int]] | None:
    """Each storage record's (bytes it really holds, bytes the zip directory says it inflates
    to), and the bytes the pickle declares for each storage, by key: read without loading a
    tensor. None when the file is no torch zip (the reader then says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("data.pkl") and i.file_size < 64 << 20]
            if len(pickles) != 1:
                return None
            lister = _StorageLister(archive.read(pickles[0]))
            lister.load()
    except Exception:  # noqa: BLE001 - a malformed zip or pickle fails in many ways; torch's reader names it
        return None
    size = path.stat().st_size
    records = {}
    for info in infos:
        folder, _, key = info.filename.rpartition("/")
        if folder == "data" or folder.endswith("/data"):
            stored = info.compress_type == zipfile.ZIP_STORED
            # a stored record's bytes are those in the file, whatever the directory claims
            held = min(info.compress_size, max(size - info.header_offset, 0)) if stored else info.file_size
            records[key] = (held, info.file_size)
    declared = {key: count * _element_bytes(kind) for key, (kind, count) in lister.storages.items()}
    return records, declared


def _check_torch_records(path: Path) -> int | None:
    """Refuse a torch zip whose storage records hold other than the bytes the zip directory
    claims, or fewer than the tensors they back declare (torch would allocate the declared
    size first); returns the bytes its tensors take."""
    found = _torch_records(path)
    if found is None:
        return None
    records, declared = found
    for key, (held, claimed) in records.items():
        if held != claimed:
            raise CheckpointError(
                f"{path}: its zip directory says tensor storage data/{key} holds {claimed:,} bytes, "
                f"but the file holds {held:,}; the file is corrupt. Copy or save it again."
            )
    for key, needed in declared.items():
        held = records.get(key, (0, 0))[0]
        if held < needed:
            raise CheckpointError(
                f"{path}: tensor storage data/{key} declares {needed:,} bytes, but the file holds "
                f"{held:,} for it; the file is truncated or corrupt. Copy or save it again."
            )
    return max(sum(held for held, _ in records.values()), sum(declared.values()))


def _check_declared_size(path: Path, declared: int | None) -> None:
    if declared is None:
        return
    ok, free = fits(declared)
    if not ok:
        raise CheckpointError(
            f"{path} declares {gib(declared)} of tensors, more than the "
            f"{free_text(free)}; it was not loaded. Check that this is "
            "the right file, or load it on a machine with more memory."
        )


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import safe_open

    _check_declared_size(path, _safetensors_declared_bytes(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file ({exc}). Copy or export it again."
        ) from exc
    metadata = None
    if METADATA_KEY in header:
        try:
            metadata = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(
                f"{path}: its napari-attunet metadata is not valid JSON "
                f"({exc}). Re-save it with napari_attunet.save_model."
            ) from exc
    return RawCheckpoint(path, state, metadata)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torch(path: Path) -> RawCheckpoint:
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive, which carries code and is not loaded. Instead, {_FIX}."
        )
    _check_declared_size(path, _check_torch_records(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("\n")
        culprit = next((line.strip() for line in detail if "GLOBAL" in line), None)
        if culprit is None:  # not a foreign object: bytes that are no pickle at all
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint, or it is corrupt: its "
                "bytes are not a pickle of tensors. Copy or save it again."
            ) from exc
        raise CheckpointError(
            f"{path} holds Python objects besides tensors ({culprit}); they are "
            f"never unpickled, because that could run code. Instead, {_FIX}."
        ) from exc
    except Exception as exc:  # torch's reader fails on broken bytes in many different ways
        raise CheckpointError(
            f"{path}: truncated or corrupt file ({_first_line(exc)}). Copy or save it again."
        ) from exc
    return RawCheckpoint(path, _unwrap(obj, path), None)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:200] if lines else "") or type(exc).__name__


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict, or one under 'state_dict'/'model_state_dict'/..., tensors only."""
    for _ in range(3):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} holds no state dict of tensors (found {keys}). Instead, {_FIX}.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: dict) -> bool:
    tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
    return len(tensors) > 0 and len(tensors) >= 0.5 * len(obj)


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read a checkpoint file's tensors and metadata, never running code from it."""
    path = Path(path).expanduser()
    _check_file(path)
    raw = _read_safetensors(path) if _sniff(path) == "safetensors" else _read_torch(path)
    if not raw.state_dict:
        raise CheckpointError(f"{path} holds no tensors. Pick the file the training run saved.")
    _check_tensors(raw.state_dict, path)
    return raw


def _check_tensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Weights that would load and silently predict garbage: sparse, meta (no data), complex,
    or with NaN/inf values."""
    for key, value in sd.items():
        if value.layout != torch.strided:
            raise CheckpointError(
                f"{path}: tensor {key!r} is sparse ({value.layout}); save dense "
                "weights (tensor.to_dense()) from the trained network."
            )
        if value.is_meta:
            raise CheckpointError(
                f"{path}: tensor {key!r} has no data (a meta tensor); save the "
                "trained weights, not a model built on the meta device."
            )
        if value.is_complex():
            raise CheckpointError(
                f"{path}: tensor {key!r} is complex ({value.dtype}); an "
                "Attention U-Net has real weights. Check that this is the right "
                "file."
            )
    bad = {
        key: int(value.numel() - torch.isfinite(value).sum())
        for key, value in sd.items()
        if value.is_floating_point()
    }
    bad = {key: n for key, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise CheckpointError(
            f"{path}: {sum(bad.values())} weights are NaN or infinite (in "
            f"{len(bad)} tensors, such as {first!r}); the training probably "
            "diverged. Use an earlier checkpoint."
        )


# ---- family detection ---------------------------------------------------------------------


def _strip(sd: dict[str, torch.Tensor], prefixes=("module.", "_orig_mod.")) -> dict:
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        out[key] = value
    return out


def _common_prefix(sd: dict) -> str | None:
    """'model.' or 'net.' when every key starts with it, as in Lightning checkpoints."""
    heads = {key.split(".", 1)[0] for key in sd}
    return f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in sd) else None


def _score(sd: dict, family: str) -> float:
    signature = REGISTRY[family].signature
    return sum(key in sd for key in signature) / len(signature)


def _candidates(sd: dict) -> list[dict]:
    """The state dict as it is, then without a prefix shared by every key (repeatedly)."""
    out = [sd]
    while (prefix := _common_prefix(out[-1])) is not None and len(out) < 4:
        out.append({k[len(prefix) :]: v for k, v in out[-1].items()})
    return out


def detect(
    sd: dict[str, torch.Tensor], family: str | None = None, source: str = "checkpoint"
) -> tuple[ModelSpec, dict]:
    """The family and hyper-parameters, read from tensor names and shapes.

    Returns the spec and the state dict with wrapper prefixes removed.
    """
    sd = _strip(sd)
    families = [family] if family else list(REGISTRY)
    for name in families:
        if name not in REGISTRY:
            raise CheckpointError(
                f"{source}: unknown family {name!r}; use one of {', '.join(REGISTRY)} or leave family unset."
            )
    best = (0.0, families[0], sd)
    for candidate in _candidates(sd):
        for name in families:
            score = _score(candidate, name)
            if score == 1.0:
                try:
                    return REGISTRY[name].infer_spec(candidate), candidate
                except (KeyError, IndexError, ValueError) as exc:
                    raise CheckpointError(
                        f"{source}: looks like a {name} checkpoint, but {exc}. "
                        "Check that it is an Attention U-Net."
                    ) from exc
            if score > best[0]:
                best = (score, name, candidate)
    score, name, candidate = best
    missing = [k for k in REGISTRY[name].signature if k not in candidate]
    sample = ", ".join(list(candidate)[:4])
    hint = ""
    if any(word in k.lower() for k in candidate for word in ("excit", "squeeze", "fc1", "se.")):
        hint = (
            " Its names suggest squeeze-and-excitation blocks, which weight channels and have "
            "no spatial attention map, so they are not attention gates."
        )
    raise CheckpointError(
        f"{source} matches no Attention U-Net family. Closest: {name} "
        f"({score:.0%} of its key names), missing {', '.join(missing[:5])}; the file has "
        f"{len(candidate)} tensors such as {sample}.{hint} Supported: "
        f"{', '.join(row.title for row in REGISTRY.values())}, and native "
        f".safetensors; {FAMILY} if the names were changed."
    )


def _check_shapes(model: AttentionUNetBase, sd: dict, source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({', '.join(missing[:4])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:4])})")
    if wrong:
        parts.append(f"{len(wrong)} shapes differ ({'; '.join(wrong[:3])})")
    raise CheckpointError(
        f"{source}: looks like a {model.spec.family} {model.spec.variant} "
        f"checkpoint, but {', '.join(parts)}. It may come from a modified "
        f"network; {OVERRIDES_OR_FAMILY} to describe it."
    )


# ---- public entry points -------------------------------------------------------------------


def load_model(
    path: str | os.PathLike, family: str | None = None, *, overrides: dict | None = None
) -> AttentionUNetBase:
    """Load any supported checkpoint as an eval-mode network with ``.spec``.

    ``family`` forces one family when names are ambiguous; ``overrides`` sets spec fields that
    leave no trace in the weights (``strides`` of MONAI nets, ``gate_mode`` and
    ``align_corners`` of official nets, ``class_names``, ``normalization``, ``spacing``...).
    """
    raw = read_checkpoint(path)
    source = str(raw.path)
    if raw.metadata is not None and "spec" in raw.metadata:
        try:
            spec = ModelSpec.from_dict(raw.metadata["spec"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: its napari-attunet metadata is invalid ({exc}). "
                "Re-save it with napari_attunet.save_model."
            ) from exc
        sd = raw.state_dict
        if family and family != spec.family:
            raise CheckpointError(f"{source} records family {spec.family!r}, not {family!r}: {NO_FAMILY}.")
    else:
        spec, sd = detect(raw.state_dict, family, source)
    if overrides:
        try:
            spec = spec.replace(**_normalise_overrides(overrides, spec))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: invalid overrides ({exc}).") from exc
    model = _build_checked(spec, sd, source)
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.source = raw.path
    model.metadata = raw.metadata or {}
    return model


def _build_checked(spec: ModelSpec, sd: dict, source: str) -> AttentionUNetBase:
    """The network, built for real only once its size fits in memory and its shapes match the
    file's tensors: both are checked on a network with no data (the meta device)."""
    try:
        with torch.device("meta"):
            skeleton = build(spec)
    except (ValueError, TypeError, IndexError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{source}: its spec does not describe a network that can be "
            f"built ({_first_line(exc)}). Re-save it with "
            "napari_attunet.save_model."
        ) from None
    size = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    ok, free = fits(size)
    if not ok:
        raise CheckpointError(
            f"{source}: its spec (features {list(spec.features)}) makes a "
            f"network of {gib(size)}, more than the {free_text(free)}; "
            "it was not built. Check the spec in the file."
        )
    _check_shapes(skeleton, sd, source)
    return build(spec)


def _normalise_overrides(overrides: dict, spec: ModelSpec) -> dict:
    out = dict(overrides)
    if "strides" in out:
        out["strides"] = tuple(
            tuple(s) if isinstance(s, (list, tuple)) else (int(s),) * spec.spatial_dims
            for s in out["strides"]
        )
    for name in ("class_names", "kernel_size", "up_kernel_size", "attention_dsample", "spacing", "tile"):
        if out.get(name) is not None:
            out[name] = tuple(out[name])
    return out


def save_model(
    model: AttentionUNetBase,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    normalization: dict | str | None = None,
    spacing: tuple[float, ...] | None = None,
    provenance: dict | None = None,
    class_codes: dict | None = None,
    **spec_changes: Any,
) -> Path:
    """Write a native ``.safetensors`` checkpoint: the weights plus spec and metadata as JSON.

    The file is written to a temporary name first and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: native checkpoints end in .safetensors.")
    spec = model.spec
    changes = dict(spec_changes)
    if class_names is not None:
        if len(class_names) != spec.out_channels:
            raise CheckpointError(
                f"{path}: {len(class_names)} class names for a model with "
                f"{spec.out_channels} output channels."
            )
        changes["class_names"] = tuple(class_names)
    if normalization is not None:
        changes["normalization"] = (
            {"mode": normalization} if isinstance(normalization, str) else dict(normalization)
        )
    if spacing is not None:
        changes["spacing"] = tuple(float(s) for s in spacing)
    spec = spec.replace(**changes)
    history = dict(getattr(model, "metadata", {}) or {}).get("provenance", {})
    metadata = {
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "provenance": {**history, **(provenance or {})},
    }
    codes = class_codes or dict(getattr(model, "metadata", {}) or {}).get("class_codes")
    if codes:  # per class, DICOM SEG category and type codes (see dicom_seg)
        metadata["class_codes"] = codes
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
