"""Small networks and geometry helpers shared by the tests: the one spec factory, the one
batch-norm randomiser, seeded models, images, scans and DICOM series."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_attunet.models import ModelSpec, build, family

TOL_Q = 1.0 / 255 + 1e-6  # probabilities are stored as uint8 levels


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
