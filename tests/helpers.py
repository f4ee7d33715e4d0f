"""Small networks and geometry helpers shared by the tests: the one spec factory, the one
batch-norm randomiser, seeded models, images, scans and DICOM series; the napari widget and
notifications; byte-for-byte snapshots and full disks; the table of bad checkpoints and scans."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import struct
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

import napari_attunet as na
from napari_attunet.models import ModelSpec, build, family

TOL_Q = 1.0 / 255 + 1e-6  # probabilities are stored as uint8 levels
FP32 = dict(precision="fp32", device="cpu")


def make_spec(
    family_name: str = "official",
    dims: int = 3,
    in_ch: int = 1,
    out_ch: int = 2,
    features=(4, 8, 16, 32, 64),
    variant: str | None = None,
    **changes,
) -> ModelSpec:
    """The one spec factory: the family's default network (``models.registry``), small.

    Arrays in scan order unless ``axes`` says otherwise, so that results compare directly with
    the network's own forward pass (test_axes.py covers the family defaults); one output
    channel means sigmoid.
    """
    changes.setdefault("axes", "zyx"[-dims:])
    changes.setdefault("output", "sigmoid" if out_ch == 1 else "softmax")
    return family(family_name).default_spec(dims, in_ch, out_ch, tuple(features), variant, **changes)


def official_spec(
    dims: int = 3,
    in_ch: int = 1,
    out_ch: int = 2,
    features=(4, 8, 16, 32, 64),
    variant: str = "single_att_dsv",
    **changes,
) -> ModelSpec:
    return make_spec("official", dims, in_ch, out_ch, features, variant, **changes)


def monai_spec(dims: int = 2, in_ch: int = 1, out_ch: int = 2, features=(4, 8, 16), **changes) -> ModelSpec:
    return make_spec("monai", dims, in_ch, out_ch, features, **changes)


def lee_spec(dims: int = 2, in_ch: int = 1, out_ch: int = 2, features=(4, 8, 16), **changes) -> ModelSpec:
    changes.setdefault("axes", "")  # the family's own default
    return make_spec("leejunhyun", dims, in_ch, out_ch, features, **changes)


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch-norm layer random running statistics and affine parameters, seeded.

    With the defaults (mean 0, var 1, weight 1, bias 0) an eval-mode BN is almost the identity,
    which would hide a BN that is skipped, misplaced or given the wrong statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                if layer.running_mean is not None:
                    layer.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                    layer.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if layer.weight is not None:
                    layer.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    layer.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return module


def make_model(spec: ModelSpec, seed: int = 0):
    """A freshly built network with seeded weights and random BN statistics, in eval mode.

    The running statistics start from those of a random batch (so that activations neither die
    nor saturate in a deep random network) and are then perturbed at random, as are the BN
    affine parameters: an eval-mode BN is far from the identity.
    """
    torch.manual_seed(seed)
    model = build(spec)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batch
    size = tuple(max(2 * s, 16) for s in spec.total_stride)
    model.train()
    with torch.no_grad():
        model(torch.randn((2, spec.in_channels) + size))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in norms:
            n = bn.num_features
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.randn(n, generator=gen) * 0.2 * std)
            bn.running_var.mul_(torch.rand(n, generator=gen) * 0.6 + 0.7)
            if bn.weight is not None:
                bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            bn.momentum = 0.1
    return model.eval()


def reference(model, image: np.ndarray):
    """(probabilities, gates) from the model itself: one forward pass, no engine.

    ``image`` is (C, *spatial) float32; returns numpy (C, *spatial) and [(heads, *grid)].
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    with torch.no_grad():
        logits, gates = model.forward_with_attention(x)
    if model.spec.output == "softmax":
        probs = torch.softmax(logits, 1)
    else:
        probs = torch.sigmoid(logits)
    return probs[0].numpy(), [g[0].numpy() for g in gates]


def random_image(shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, shape).astype(dtype)


def sharpen_gates(model, factor: float = 20.0):
    """Scale each gate's psi convolution so that random attention maps vary visibly."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.split(".")[-1] == "psi":
                conv = next(m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
                conv.weight.mul_(factor)
                if conv.bias is not None:
                    conv.bias.mul_(factor)
    return model


def one_sentence(message: str) -> bool:
    """A short, single-line, non-empty message that ends like a sentence."""
    text = str(message).strip()
    return bool(text) and "\n" not in text and len(text) < 400 and text[-1] in ".!)"


class address_space_limit:
    """Cap this process's address space to its current size plus ``extra`` bytes (Linux).

    Guards tests that hand the engine a huge (broadcast) array: a run that allocates instead of
    estimating first fails fast with MemoryError rather than exhausting a large machine.
    """

    def __init__(self, extra: int = 4 * 1024**3):
        self.extra = extra
        self.saved = None

    def __enter__(self):
        try:
            import resource

            with open("/proc/self/status") as fh:
                size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
            self.saved = resource.getrlimit(resource.RLIMIT_AS)
            hard = self.saved[1]
            soft = size + self.extra
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        except (ImportError, OSError, StopIteration, ValueError):
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, self.saved)
        return False


# ---- scans on disk ------------------------------------------------------------------------------

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def sitk_image(array: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(12.5, -30.0, 47.0), direction=RAS):
    """A SimpleITK image of ``array`` (z, y, x) with ITK-order (x, y, z) geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    return image


def write_dicom_series(
    folder,
    array: np.ndarray,
    spacing=(0.8, 0.8, 2.5),
    origin=(0.0, 0.0, 0.0),
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1",
    prefix: str = "slice",
):
    """Write ``array`` (z, y, x), int16, as one DICOM file per slice (SimpleITK's
    DicomSeriesFromArray recipe: position, orientation, series UID and pixel spacing tags)."""
    from pathlib import Path

    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(
        str(v) for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    paths = []
    for i in range(image.GetDepth()):
        piece = image[:, :, i]
        position = "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, i)))
        tags = {
            "0008|0060": "CT",
            "0008|0008": "DERIVED\\SECONDARY",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{i + 1}",
            "0010|0010": "Phantom^Test",
            "0020|000d": series_uid.rsplit(".", 1)[0] + ".99",
            "0020|000e": series_uid,
            "0020|0013": str(i + 1),
            "0020|0032": position,
            "0020|0037": orientation,
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]),
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        path = folder / f"{prefix}{i:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(piece)
        paths.append(path)
    return paths


# ---- napari: the widget and notifications --------------------------------------------------


# the geometry of conftest's ``scan`` fixture, ITK order (x, y, z)
SPACING_XYZ = (0.8, 0.8, 2.5)
ORIGIN_XYZ = (-12.0, 30.0, 7.5)


def _widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-attunet", "Attention U-Net")
    return widget


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _run_on_scan(make_napari_viewer, qtbot, scan, checkpoint):
    """A viewer with the scan opened through the plugin, after one finished run."""
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scan), plugin="napari-attunet")
    widget = _widget(viewer)
    widget.load_checkpoint(checkpoint)
    widget.image.value = image
    widget.run.clicked.emit()
    _wait(qtbot, widget)
    return viewer, widget


def _settle(qtbot, ms=150):
    qtbot.wait(ms)


def _errors(seen) -> list[str]:
    return [str(n.message) for n in seen if str(n.severity) in ("error", "warning")]


# ---- nothing lost: snapshots, full disks --------------------------------------------------


BAD_TEXT = re.compile(r"Traceback|\[Errno|0x[0-9a-fA-F]{6,}")


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_message(message: str, names: str) -> None:
    assert names in message, (names, message)
    assert not BAD_TEXT.search(message), message
    assert "\n" not in message.strip(), message


@contextlib.contextmanager
def _tmpfs(where: pathlib.Path, size: str, *options: str):
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}",) + options)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: pathlib.Path, leave: int) -> None:
    """Leave only ``leave`` bytes free on the file system of ``folder``."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "filler.bin").write_bytes(b"\1" * max(free - leave, 0))


def _no_staging(folder: pathlib.Path) -> None:
    assert not [p for p in folder.rglob(".attunet-*")], list(folder.iterdir())


# ---- bad checkpoints and scans -------------------------------------------------------------


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _first_weight(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point() and v.dim() > 1)


def _save_torch(path, sd) -> pathlib.Path:
    torch.save(sd, path)
    return path


def _zip_declaring(path, source: pathlib.Path, size: int = 0xFFFFFFFE) -> pathlib.Path:
    """A torch zip whose central directory says every storage inflates to ``size`` bytes (as a
    deflate bomb's would), written byte by byte: nothing in it is ever inflated."""
    data = bytearray(source.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        name = bytes(data[at + 46 : at + 46 + name_len])
        if b"/data/" in name:
            struct.pack_into("<I", data, at + 24, size)
        at += 46
    path.write_bytes(bytes(data))
    return path


def _safetensors_bomb(path) -> pathlib.Path:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4 * 10**12]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


def _with_spec(path, good: pathlib.Path, **changes) -> pathlib.Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safe_open handle
    data = json.loads(meta["napari_attunet"])
    data["spec"].update(changes)
    save_file(tensors, str(path), metadata={"napari_attunet": json.dumps(data)})
    return path


def _nifti_header_only(path, shape, code=16, bitpix=32) -> pathlib.Path:
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", header, 70, code, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    path.write_bytes(bytes(header) + b"\0" * 4 + b"\0" * 1024)
    return path


def bad_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Bad checkpoints and scans (and one good of each) written into ``root``, by key; the
    ``files`` fixture of conftest.py writes them once per session."""
    import gzip

    model = make_model(official_spec(3, out_ch=2, features=(2, 4, 8, 16, 32)), seed=3)
    good = na.save_model(model, root / "good.safetensors", class_names=["background", "organ"])
    sd = _state(model)
    key = _first_weight(sd)
    f: dict[str, pathlib.Path] = {"root": root, "good": good}

    def changed(name, change):
        d = _state(model)
        change(d)
        return _save_torch(root / name, d)

    f["nan_pt"] = changed("nan_weights.pt", lambda d: d[key].fill_(float("nan")))
    f["inf_pt"] = changed("inf_weights.pt", lambda d: d[key].view(-1)[0].fill_(float("inf")))
    f["complex_pt"] = changed("complex_weights.pt", lambda d: d.__setitem__(key, d[key].to(torch.complex64)))
    f["meta_pt"] = changed(
        "meta_weights.pt", lambda d: d.__setitem__(key, torch.empty(d[key].shape, device="meta"))
    )
    f["sparse_pt"] = changed("sparse_weights.pt", lambda d: d.__setitem__(key, d[key].to_sparse()))
    from safetensors.torch import save_file

    nan_sd = _state(model)
    nan_sd[key].fill_(float("nan"))
    save_file(nan_sd, str(root / "nan_weights.safetensors"))
    f["nan_st"] = root / "nan_weights.safetensors"
    f["zip_bomb"] = _zip_declaring(root / "expands.pt", _save_torch(root / "plain.pt", sd))
    f["st_bomb"] = _safetensors_bomb(root / "header_bomb.safetensors")
    f["spec_strides"] = _with_spec(root / "empty_strides.safetensors", good, strides=[])
    f["spec_features"] = _with_spec(root / "negative_features.safetensors", good, features=[2, -4, 8, 16, 32])
    f["spec_spacing"] = _with_spec(root / "zero_spacing.safetensors", good, spacing=[0, 1, 1])
    f["spec_bomb"] = _with_spec(
        root / "spec_bomb.safetensors", good, features=[4096, 8192, 16384, 32768, 65536]
    )
    f["random_pth"] = root / "random.pth"
    f["random_pth"].write_bytes(np.random.default_rng(1).bytes(4096))
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:2000])
    f["truncated_st"] = truncated
    f["missing_ckpt"] = root / "absent.safetensors"

    image = (np.random.default_rng(2).random((12, 16, 16)) * 100).astype(np.int16)
    scan = root / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(scan))
    f["scan"] = scan
    sitk.WriteImage(
        sitk.GetImageFromArray((np.random.rand(6, 8, 8) + 1j).astype(np.complex64)),
        str(root / "complex.nii.gz"),
    )
    f["complex_nii"] = root / "complex.nii.gz"
    (root / "detached.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\n"
        "encoding: raw\nendian: little\n"
        "data file: detached_voxels.raw\n"
    )
    f["nhdr"] = root / "detached.nhdr"
    (root / "detached.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\n"
        "ElementType = MET_SHORT\n"
        "ElementDataFile = mhd_voxels.raw\n"
    )
    f["mhd"] = root / "detached.mhd"
    (root / "gzip_bomb.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 512 512 512\nencoding: gzip\n"
        b"endian: little\n\n" + gzip.compress(b"\0" * (4 << 20))
    )
    f["gz_bomb"] = root / "gzip_bomb.nrrd"
    (root / "huge.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\n"
        b"sizes: 100000 100000 100000\nencoding: raw\n"
        b"endian: little\n\n" + b"\0" * 64
    )
    f["huge_nrrd"] = root / "huge.nrrd"
    f["huge_nii"] = _nifti_header_only(root / "huge.nii", (30000, 30000, 30000))
    f["complex_hdr_nii"] = _nifti_header_only(root / "complex_header.nii", (4, 4, 4), 32, 64)
    data = scan.read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    f["truncated_nii"] = root / "truncated.nii.gz"
    (root / "noise.nii.gz").write_bytes(np.random.default_rng(3).bytes(2048))
    f["noise_nii"] = root / "noise.nii.gz"
    (root / "empty.nrrd").write_bytes(b"")
    f["empty_nrrd"] = root / "empty.nrrd"
    import nibabel

    nibabel.save(
        nibabel.Nifti1Image(np.zeros((6, 5, 4, 2), np.float32), np.eye(4)), str(root / "series4d.nii.gz")
    )
    f["4d"] = root / "series4d.nii.gz"
    mha = root / "compressed.mha"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(mha), True)
    (root / "truncated.mha").write_bytes(mha.read_bytes()[:-200])
    f["truncated_mha"] = root / "truncated.mha"
    with_nan = image.astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(with_nan), str(root / "with_nan.nii.gz"))
    f["nan_nii"] = root / "with_nan.nii.gz"
    f["missing_scan"] = root / "absent.nii.gz"
    f["folder_as_file"] = root / "a_folder.nii.gz"
    f["folder_as_file"].mkdir()
    return f


X = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)


def _with(value, **index):
    y = X.copy()
    y[index.get("at", (0, 0, 0))] = value
    return y


CKPT_KEYS = [
    "nan_pt",
    "inf_pt",
    "complex_pt",
    "meta_pt",
    "sparse_pt",
    "nan_st",
    "zip_bomb",
    "st_bomb",
    "spec_strides",
    "spec_features",
    "spec_spacing",
    "spec_bomb",
    "random_pth",
    "truncated_st",
    "missing_ckpt",
]


SCAN_KEYS = [
    "complex_nii",
    "complex_hdr_nii",
    "nhdr",
    "mhd",
    "gz_bomb",
    "huge_nrrd",
    "huge_nii",
    "truncated_nii",
    "noise_nii",
    "empty_nrrd",
    "4d",
    "truncated_mha",
    "missing_scan",
    "folder_as_file",
]


def drain(steps):
    """(the value a run's generator returns, the message of every Progress it yielded)."""
    messages = []
    while True:
        try:
            messages.append(next(steps).message)
        except StopIteration as stop:
            return stop.value, messages
