"""What a run reports as it goes, and how it is asked to stop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``done`` of ``total`` batches in ``stage``."""

    stage: str
    done: int
    total: int
    message: str = ""


def cancelled(cancel) -> bool:
    """True when ``cancel`` (a threading.Event, a callable or None) asks the run to stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())
