"""A calibrated int8 model stored beside its checkpoint: ``<stem>.int8/`` holds the OpenVINO IR
(``model.xml``, ``model.bin``) and ``manifest.json``, which says what it was made from.

``napari-attunet convert CKPT --int8 --calibrate DIR`` writes one (``write``). An int8 run with
that checkpoint uses it (``read``) when its manifest names these weights (spec and tensors), this
OpenVINO, PyTorch and cache format, the run's scope and normalization (and, when the run names a
calibration folder, that folder's scans), and the files have the sha256 sums the manifest lists.
Otherwise ``read`` says in one sentence why it is ignored, and the run calibrates as without it.
The files are read as the conversion cache reads its entries: regular files of fixed names in
a real folder, each read once, the model built from the bytes that were checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import runtime_openvino as ro

SUFFIX = ".int8"
KIND = "napari-attunet int8 model"
IR_FILES = ("model.xml", "model.bin")
MANIFEST = ro.MANIFEST


@dataclass(frozen=True)
class Stored:
    """A stored int8 model that passed every check."""

    folder: Path
    ov_model: object
    manifest: dict

    @property
    def key(self) -> str:
        """What tells this model apart in a process: the sha256 of its weights file."""
        return str(self.manifest["sha256"]["model.bin"])

    def describe(self) -> str:
        return f"{self.folder.name} beside the checkpoint, {describe(self.manifest)}"


def describe(manifest: dict) -> str:
    """What a manifest says about its calibration, in a few words."""
    calibration = manifest.get("calibration")
    calibration = calibration if isinstance(calibration, dict) else {}
    files = calibration.get("files")
    count = len(files) if isinstance(files, list) else 0
    return (
        f"calibrated on {calibration.get('windows', '?')} windows of {count} "
        f"scan{'s' * (count != 1)} in {calibration.get('folder', '?')} "
        f"(scope {manifest.get('scope')}, tile {'x'.join(map(str, manifest.get('tile') or []))}, "
        f"created {manifest.get('created', '?')})"
    )


def folder_for(checkpoint: str | os.PathLike) -> Path:
    """``<stem>.int8`` beside the checkpoint."""
    path = Path(checkpoint)
    return path.with_name(path.stem + SUFFIX)


def file_sha256(path: Path) -> str:
    from ..models.checkpoint import sha256

    return sha256(path)


def calibration_files(files: list[Path]) -> list[dict]:
    """Each calibration scan by name, size and sha256."""
    return [{"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files]


def checked_versions() -> dict:
    """The versions a stored model must have been made with: OpenVINO, PyTorch, the format."""
    return ro.versions()


def manifest_for(model, scope: str, normalization: dict, tile, calibration: dict, ir_sums: dict) -> dict:
    """What ``<stem>.int8/manifest.json`` holds."""
    source = getattr(model, "source", None)
    return {
        "kind": KIND,
        "checkpoint": {
            "name": Path(source).name if source else None,
            "sha256": file_sha256(Path(source)) if source else None,
        },
        "weights": ro.weights_digest(model),
        "versions": checked_versions(),
        "scope": scope,
        "normalization": normalization,
        "tile": list(tile),
        "calibration": calibration,
        "sha256": ir_sums,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def refuse_existing(folder: Path, overwrite: bool) -> None:
    """An InputError when ``folder`` exists and ``overwrite`` is not given."""
    if (folder.exists() or folder.is_symlink()) and not overwrite:
        raise InputError(f"{folder} already exists; add --overwrite to replace it, or remove it.")


def write(folder: Path, ov_model, manifest: dict, overwrite: bool = False) -> Path:
    """Write the IR and the manifest (with the IR's sha256 sums) into a staging folder beside
    ``folder``, then rename it into place: the old folder is replaced only with ``overwrite``,
    and only once the new one is whole."""
    import openvino

    refuse_existing(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        openvino.save_model(ov_model, staging / "model.xml", compress_to_fp16=False)
        sums = {name: file_sha256(staging / name) for name in IR_FILES}
        (staging / MANIFEST).write_text(json.dumps({**manifest, "sha256": sums}, indent=2) + "\n")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; this one is for sharing
        refuse_existing(folder, overwrite)  # again: another process may have written it meanwhile
        moved = folder.exists() or folder.is_symlink()
        if moved:
            os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except OSError:
            if moved:
                os.replace(old, folder)  # nothing that was there is lost
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old.is_symlink() or old.is_file():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a stored int8 model, or None when there is none that can be read."""
    try:
        manifest = json.loads(ro.entry_files(folder)[MANIFEST])
    except (OSError, ValueError, KeyError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == KIND else None


def read(
    checkpoint, model, scope: str, normalization: dict, calibration_scans: list[Path] | None = None
) -> Stored | str | None:
    """The stored int8 model beside ``checkpoint`` when every check passes, else one sentence
    saying why it is ignored, or None when there is none."""
    if checkpoint is None:
        return None
    folder = folder_for(checkpoint)
    if not (folder.exists() or folder.is_symlink()):
        return None
    why = _why_not(folder, model, scope, normalization, calibration_scans)
    if isinstance(why, str):
        return f"the int8 model {folder} is ignored because {why}, so int8 calibrates as without it"
    return why


def _why_not(folder: Path, model, scope, normalization, scans) -> Stored | str:
    import openvino

    try:
        files = ro.entry_files(folder)
        manifest = json.loads(files[MANIFEST])
    except (OSError, ValueError) as exc:
        return f"it cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        return "its manifest.json is not a napari-attunet int8 manifest"
    if manifest.get("weights") != ro.weights_digest(model):
        return "it was made from other weights (or another spec) than this checkpoint's"
    if manifest.get("versions") != checked_versions():
        made, now = manifest.get("versions") or {}, checked_versions()
        return (
            f"it was made with OpenVINO {made.get('openvino')} and PyTorch {made.get('torch')}, "
            f"not {now['openvino']} and {now['torch']}"
        )
    if manifest.get("scope") != scope:
        return f"its scope is {manifest.get('scope')!r} and this run asks for {scope!r}"
    if manifest.get("normalization") != normalization:
        made = manifest.get("normalization")
        return f"it was calibrated with normalization {made} and this run uses {normalization}"
    sums = manifest.get("sha256")
    if not isinstance(sums, dict) or set(sums) != set(IR_FILES):
        return "its manifest does not list the sha256 of model.xml and model.bin"
    for name in IR_FILES:
        if hashlib.sha256(files[name]).hexdigest() != sums[name]:
            return f"its {name} does not have the sha256 its manifest lists (changed or damaged)"
    if scans is not None and not _same_scans(manifest, scans):
        return "it was calibrated on other scans than the calibration folder of this run"
    try:
        weights = openvino.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8))
        ov_model = openvino.Core().read_model(files["model.xml"], weights)
    except RuntimeError as exc:
        return f"OpenVINO cannot read it ({ro.failure_reason(exc)})"
    if len(ov_model.outputs) != 1 + len(model.spec.gates):
        return "its outputs are not this network's logits and gates"
    return Stored(folder, ov_model, manifest)


def _same_scans(manifest: dict, scans: list[Path]) -> bool:
    stored = (manifest.get("calibration") or {}).get("files") or []
    mine = [{"name": p.name, "sha256": file_sha256(p)} for p in scans]
    return [{"name": f.get("name"), "sha256": f.get("sha256")} for f in stored] == mine
