"""``evaluate``: a label map scored against a reference (see ``review``)."""

from __future__ import annotations

import argparse
import sys


def evaluate(args: argparse.Namespace) -> int:
    """A prediction against a reference: a table per foreground class, and the CSV."""
    from ..review import evaluate
    from ..review.table import check_csv, text, write_csv

    if args.csv:
        check_csv(args.csv, args.overwrite)
    names = None
    if args.checkpoint:
        from ..models.checkpoint import load_model

        spec = load_model(args.checkpoint).spec
        names = (("background",) if spec.output == "sigmoid" else ()) + spec.class_labels
    rows = evaluate(args.prediction, args.reference, class_names=names)
    for note in rows.notes + [r.note for r in rows if r.note]:
        print(note, file=sys.stderr)
    print(text(rows))
    if args.csv:
        print(f"-> {write_csv(args.csv, rows, args.overwrite)}")
    return 0
