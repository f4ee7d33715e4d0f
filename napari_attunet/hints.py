"""The remedies core messages name, in the words of each interface.

The core speaks the Python API ("pass family=..."); the command line and the widget offer the
same remedy through their own options, so their messages name those instead.
"""

from __future__ import annotations

FAMILY = "pass family=..."
OVERRIDES_OR_FAMILY = "pass overrides=... or family=..."
NO_FAMILY = "leave family=... out"

_CONVERT = "napari-attunet convert CHECKPOINT OUT.safetensors"
_SAID = {
    "cli": {
        FAMILY: f"name the family when converting it: {_CONVERT} --family NAME",
        OVERRIDES_OR_FAMILY: f"describe it when converting it: {_CONVERT} --family NAME "
        "(and --strides, --gate-mode, ... as it needs)",
        NO_FAMILY: "leave --family out",
    },
    "widget": {
        FAMILY: "choose its family in the widget's 'family' list",
        OVERRIDES_OR_FAMILY: "choose its family in the widget's 'family' list, or describe it "
        f"with {_CONVERT} --family NAME --strides ...",
        NO_FAMILY: "choose 'auto' in the widget's 'family' list",
    },
}


def for_interface(message: str, interface: str) -> str:
    """``message`` with each remedy said as ``interface`` ("api", "cli" or "widget") offers it."""
    for phrase, said in _SAID.get(interface, {}).items():
        message = message.replace(phrase, said)
    return message
