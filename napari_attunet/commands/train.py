"""``train``: a network from image/label pairs or a recipe."""

from __future__ import annotations

import argparse

from .common import parse_normalization


def train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..inference.preprocess import Normalization
    from ..training import TrainConfig, default_spec, train
    from ..training.data import find_pairs, load_case

    if args.recipe == "mni152":
        from ..training.recipes import MNI_CLASSES, MNI_NORMALIZATION, mni152_cases

        cases, summary = mni152_cases(Path(args.export) if args.export else None)
        val, names, norm = cases, MNI_CLASSES, MNI_NORMALIZATION
    else:
        if not (args.images and args.labels):
            raise ValueError("give --images and --labels folders, or --recipe mni152.")
        norm = parse_normalization(args.normalization) or {"mode": "zscore"}
        cases = [
            load_case(i, lab, Normalization.parse(norm)) for i, lab in find_pairs(args.images, args.labels)
        ]
        n_val = max(1, len(cases) // 5) if len(cases) > 1 else 0
        val = cases[-n_val:] if n_val else cases
        cases = cases[:-n_val] if n_val else cases
        classes = int(max(c.labels.max() for c in cases + val)) + 1
        names = args.class_names or ["background"] + [f"class {k}" for k in range(1, classes)]
        summary = {
            "images": str(args.images),
            "labels": str(args.labels),
            "train": [c.name for c in cases],
            "validation": [c.name for c in val],
        }
    dims = cases[0].labels.ndim
    spec = default_spec(dims, cases[0].image.shape[0], len(names), args.features, args.family, args.variant)
    patch = tuple(args.patch or ((64,) * 3 if dims == 3 else (256,) * 2))
    config = TrainConfig(
        out=Path(args.output),
        spec=spec,
        patch=patch,
        normalization=norm,
        batch=args.batch,
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        resume=args.resume,
    )
    rank = int(__import__("os").environ.get("RANK", "0"))
    bar = tqdm(total=args.epochs * args.steps, disable=args.quiet or rank != 0, unit="step")
    steps = train(config, cases, val, names, summary)
    while True:
        try:
            record = next(steps)
        except StopIteration as stop:
            result = stop.value
            break
        if record["kind"] == "step":
            bar.n = record["epoch"] * args.steps + record["step"] + 1
            bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.3f}", refresh=False)
            bar.refresh()
        elif rank == 0 and not args.quiet:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in record.get("dice", {}).items())
            tqdm.write(
                f"epoch {record['epoch']}: loss {record['loss']:.3f}; validation Dice "
                f"{dice}{' (best, saved)' if record.get('best') else ''}"
            )
    bar.close()
    if rank == 0 and not args.quiet:
        print(f"best mean Dice {result['best_mean_dice']:.3f} -> {args.output}")
    return 0
