"""What every command shares: one-sentence errors and the parsing of option values."""

from __future__ import annotations

import argparse


def sentence(exc: BaseException) -> str:
    """An exception as one line, whole (its remedy is at its end), without ``[Errno N]``
    prefixes, naming the command line's options where the core names the API's."""
    from ..hints import for_interface

    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror.lower()}."
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return for_interface(" ".join(lines), "cli") if lines else type(exc).__name__


def orientation_arg(text: str) -> str:
    from ..models.spec import valid_orientation

    value = text if text in ("native", "display") else text.upper()
    if not valid_orientation(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an axis code such as RAS or LPS, nor 'native' or 'display'"
        )
    return value


def check_orientation(orientation: str | None, spec) -> None:
    """Refuse ``--orientation`` for a 2D model (``predict`` and ``convert`` alike): such a
    network sees each plane as napari displays it, so an axis code would be ignored."""
    from ..errors import InputError

    if orientation not in (None, "display") and spec.spatial_dims == 2:
        raise InputError(
            f"--orientation {orientation}: a 2D model sees each plane as napari displays it "
            f"(axes {spec.axes or 'yx'!r}), so no orientation applies; leave --orientation out."
        )


def parse_normalization(text: str | None) -> dict | None:
    """'zscore', 'none', 'percentile:0.5,99.5' or 'ct:-160,240' (a window in HU)."""
    if text is None:
        return None
    mode, _, values = text.partition(":")
    out: dict = {"mode": mode}
    if mode == "range":
        # range:a_min,a_max[,b_min,b_max[,noclip]], as MONAI's ScaleIntensityRanged
        parts = values.split(",")
        clip = parts[-1].strip().lower() != "noclip"
        numbers = [float(v) for v in (parts if clip else parts[:-1])]
        if len(numbers) not in (2, 4):
            raise ValueError(f"--normalization {text!r}: give a_min,a_max[,b_min,b_max[,noclip]]")
        out.update(window=numbers[:2], target=numbers[2:] or [0.0, 1.0], clip=clip)
        return out
    if values:
        numbers = [float(v) for v in values.split(",")]
        if len(numbers) != 2:
            raise ValueError(f"--normalization {text!r}: give two numbers after the colon")
        out["window" if mode == "ct" else "percentiles"] = numbers
    return out


def safe(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)
