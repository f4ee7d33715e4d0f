"""The command-line commands, one module each; ``cli`` parses the arguments and dispatches.

``predict`` runs scan by scan on this machine; ``cohort`` runs the same on Dask (a scan per task)
and into OME-Zarr stores."""

from . import demo, evaluate, info, predict, train

__all__ = ["demo", "evaluate", "info", "predict", "train"]
