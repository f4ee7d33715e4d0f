"""``demo``: napari with the bundled sample and checkpoint."""

from __future__ import annotations

import argparse


def demo(args: argparse.Namespace) -> int:
    from ..plugin.demo import run_demo

    return run_demo(args.screenshot, args.checkpoint)
