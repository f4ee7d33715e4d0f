"""The three errors of the public API. Each message names the file or layer and what to do."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded."""


class InputError(ValueError):
    """An image the model cannot take."""


class Cancelled(ValueError):
    """A run that was cancelled before it finished; no partial result exists."""
