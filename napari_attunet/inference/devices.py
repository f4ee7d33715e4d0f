"""Device and precision choice, and how much memory there is to spend."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import InputError
from ..limits import free_memory as host_free_memory

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def available_devices() -> list[str]:
    """The devices this machine has, for pickers: always 'cpu', plus 'cuda:N' and 'mps'."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; a device that is not there is an InputError."""
    name = str(device).lower()
    if name == "auto":
        devices = available_devices()
        name = next((d for d in devices if d.startswith("cuda")), None) or (
            "mps" if "mps" in devices else "cpu"
        )
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps.") from exc
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda or mps.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} is not available: this machine has no CUDA GPU "
                "(or PyTorch was installed without CUDA); choose 'cpu' or 'auto'."
            )
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r} is not available: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); choose 'auto'."
            )
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(f"device {device!r} is not available on this machine; choose 'cpu' or 'auto'.")
    return resolved


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16, as oneDNN sees it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': fp16 on CUDA (bf16 where the GPU supports it), fp16 on MPS, fp32 on the CPU;
    never int8, which runs only when asked for (OpenVINO on the CPU, with NNCF). On the CPU,
    fp32 is only where ``auto`` starts: bf16 runs where ``autochoice`` measured it faster at
    fp32's labels (fast bf16 in hardware is not enough: it can change labels)."""
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise InputError("fp16 is not supported on the CPU; use bf16 or fp32.")
        if precision == "int8":
            if device.type != "cpu":
                raise InputError(f"int8 runs on the CPU (OpenVINO), not on {device}; choose device cpu.")
            # NNCF only calibrates: a model stored by convert --int8 runs without it.
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def free_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated now, or None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_free_memory()


def system_memory() -> int | None:
    """Free host memory, for buffers that live on the CPU."""
    return free_memory(torch.device("cpu"))
