"""Inference-only rewrites of a loaded network: BatchNorm folded into the convolutions before
it, channels-last memory layout, and the move to the target device. The user's model is
never modified: the rewritten copy is cached on it.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

if TYPE_CHECKING:
    from ..models import AttentionUNetBase

_CONV = (nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def _fusable(module: nn.Module):
    """The bare convolution a following BatchNorm can fold into, with its owner and attribute."""
    if isinstance(module, _CONV + _TRANSPOSED):
        return module
    conv = getattr(module, "conv", None)
    if isinstance(conv, _CONV + _TRANSPOSED) and getattr(module, "adn", "x") is None:
        return conv
    return None


def _replace_conv(holder: nn.Module, conv: nn.Module, fused: nn.Module) -> nn.Module:
    if holder is conv:
        return fused
    holder.conv = fused
    return holder


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution. Returns the count."""
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):  # each module with the next
                first, second = module._modules[a], module._modules[b]
                conv = _fusable(first)
                if conv is not None and isinstance(second, _BatchNorm) and second.track_running_stats:
                    fused = fuse_conv_bn_eval(conv, second, transpose=isinstance(conv, _TRANSPOSED))
                    module._modules[a] = _replace_conv(first, conv, fused)
                    module._modules[b] = nn.Identity()
                    folded += 1
        adn = getattr(module, "adn", None)
        conv = getattr(module, "conv", None)
        norm = getattr(adn, "N", None)
        if (
            isinstance(adn, nn.Sequential)
            and isinstance(norm, _BatchNorm)
            and isinstance(conv, _CONV + _TRANSPOSED)
        ):
            module.conv = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, _TRANSPOSED))
            adn.N = nn.Identity()
            folded += 1
    return folded


def channels_last(model: nn.Module, spatial_dims: int) -> nn.Module:
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    return model.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack it


class StateStamp:
    """Which tensors a network's state was made of, and their in-place versions: a weight or a
    buffer (BatchNorm's running statistics) changed in place, or replaced by another tensor,
    no longer matches. Weak references, so that a replaced tensor is not kept alive (and its
    id cannot be taken by a new one unnoticed)."""

    def __init__(self, model: nn.Module) -> None:
        tensors = _state_tensors(model)
        self.refs = [weakref.ref(t) for t in tensors]
        self.versions = [t._version for t in tensors]

    def matches(self, model: nn.Module) -> bool:
        tensors = _state_tensors(model)
        return len(tensors) == len(self.refs) and all(
            ref() is t and t._version == v
            for ref, t, v in zip(self.refs, tensors, self.versions, strict=True)
        )


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def prepared(
    model: AttentionUNetBase, device: torch.device, fold: bool = True, layout: bool = True
) -> nn.Module:
    """An eval-mode copy for inference on ``device``, cached on ``model`` until a weight or a
    buffer of ``model`` changes."""
    key = (str(device), fold, layout)
    cache = model.__dict__.setdefault("_attunet_prepared", {})
    entry = cache.get(key)
    if entry is None or not entry[0].matches(model):
        cache.clear()  # one prepared copy at a time: they can be large on a GPU
        copy_: nn.Module = copy.deepcopy(model).eval()
        copy_.__dict__.pop("_attunet_prepared", None)
        if fold:
            fold_batchnorm(copy_)
        copy_ = copy_.to(device)
        if layout and device.type != "mps":
            copy_ = channels_last(copy_, model.spec.spatial_dims)
        for p in copy_.parameters():
            p.requires_grad_(False)
        cache[key] = (StateStamp(model), copy_)
    return cache[key][1]
