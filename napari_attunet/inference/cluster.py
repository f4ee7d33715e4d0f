"""Dask schedulers by address: ``local:N`` (a LocalCluster of N worker processes on this machine)
or ``tcp://host:8786`` (a running scheduler: ``dask scheduler`` + ``dask worker``, or
dask-jobqueue's SLURMCluster/PBSCluster, see the README).
"""

from __future__ import annotations

import os

from ..errors import InputError

_STARTED: dict = {}  # id(client) -> the LocalCluster this module started for it


def parse(scheduler: str) -> tuple[str, int | None]:
    """("local", N) or ("remote", None) for an address; InputError for anything else."""
    text = str(scheduler).strip()
    if text.startswith("local"):
        _, _, count = text.partition(":")
        try:
            workers = int(count) if count else max(1, os.cpu_count() or 1)
        except ValueError:
            workers = 0
        if workers < 1:
            raise InputError(f"--scheduler {text!r}: give local:N with N >= 1 worker processes.")
        return "local", workers
    if "://" in text or ":" in text:
        return "remote", None
    raise InputError(f"--scheduler {text!r} is neither local:N nor an address such as tcp://host:8786.")


def connect(scheduler: str):
    """A distributed Client for ``scheduler``; a LocalCluster it started closes with it."""
    from distributed import Client, LocalCluster

    kind, workers = parse(scheduler)
    if kind == "local":
        try:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=50,  # a block stopped by a cancel is no error to log
            )
        except (RuntimeError, OSError) as exc:
            raise InputError(
                f"could not start {workers} local Dask worker process(es) ({str(exc).splitlines()[0]})."
            ) from None
        client = Client(cluster)
        _STARTED[id(client)] = cluster
        threads = max(1, (os.cpu_count() or 1) // (workers or 1))
        client.run(_set_threads, threads)
        return client
    try:
        return Client(scheduler, timeout="20s")
    except OSError as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc}).") from None


def close(client) -> None:
    cluster = _STARTED.pop(id(client), None)
    client.close()
    if cluster is not None:
        cluster.close()


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
