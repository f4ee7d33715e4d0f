"""napari's notifications by kind, imported when the first one is shown."""

from __future__ import annotations


def notify(kind: str, message: str) -> None:
    """Show ``message`` as an ``"error"``, ``"warning"`` or ``"info"`` notification."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)
