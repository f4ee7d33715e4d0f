"""Whether a Labels layer still holds what the widget put there.

A re-run or a threshold change may replace a layer's data only when nobody else changed it. Paint
and fill raise ``events.paint``, but scripts and other plugins assign ``layer.data`` or write
into it in place, which raises nothing (or only ``events.data``). So the widget keeps a copy of
what it last wrote and compares: any difference, however made, is an edit.
"""

from __future__ import annotations

import numpy as np


class EditWatch:
    """Tracks one Labels layer: ``edited`` is True once its data differs from what was
    ``record``-ed, or once it was painted."""

    def __init__(self, layer):
        self.layer = layer
        self.painted = False
        self._written = np.array(layer.data, copy=True)
        layer.events.paint.connect(self._on_paint)

    def _on_paint(self, event=None) -> None:
        self.painted = True

    def record(self, data=None, region=None) -> None:
        """What the widget itself wrote: the whole array, or ``data`` at ``region``."""
        if region is None:
            data = np.asarray(self.layer.data if data is None else data)
            if data.shape == self._written.shape and data.dtype == self._written.dtype:
                np.copyto(self._written, data)  # the buffer is reused: no new allocation
            else:
                self._written = np.array(data, copy=True)
        else:
            self._written[region] = data

    def matches(self, region=None) -> bool:
        """Whether the layer (or ``region`` of it) still holds what was recorded."""
        data = self.layer.data
        if getattr(data, "shape", None) != self._written.shape:
            return False
        if region is not None:
            return bool(np.array_equal(np.asarray(data[region]), self._written[region]))
        return bool(np.array_equal(np.asarray(data), self._written))

    @property
    def edited(self) -> bool:
        return self.painted or not self.matches()
