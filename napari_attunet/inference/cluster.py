"""Dask schedulers by address: ``local:N`` (a LocalCluster of N worker processes on this machine,
N at most its cores) or ``tcp://host:8786`` / ``host:8786`` (a running scheduler: ``dask
scheduler`` + ``dask worker``, or dask-jobqueue's SLURMCluster/PBSCluster, see the README). Only
the word ``local`` means this machine: ``localhost:8786`` is a scheduler's address.
"""

from __future__ import annotations

import os

from ..errors import InputError

_STARTED: dict = {}  # id(client) -> the LocalCluster this module started for it


def cores() -> int:
    """CPU cores this process may run on (its affinity, where the system says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse(scheduler: str) -> tuple[str, int | None]:
    """("local", N) for ``local`` or ``local:N``, ("remote", None) for a scheduler's address
    (``tcp://host:8786``, ``host:8786``); InputError for anything else. Only the word local
    means this machine: ``localhost:8786`` is the address of a running scheduler."""
    text = str(scheduler).strip()
    if text == "local" or text.startswith("local:"):
        return "local", _local_workers(text)
    if "://" in text:
        return "remote", None
    host, colon, port = text.rpartition(":")
    if colon and host and port.isdigit() and 0 < int(port) < 65536:
        return "remote", None
    raise InputError(
        f"--scheduler {text!r} is neither local:N nor a scheduler address such as "
        "tcp://host:8786 or host:8786."
    )


def _local_workers(text: str) -> int:
    limit = cores()
    _, _, count = text.partition(":")
    if not count:
        return limit
    try:
        workers = int(count)
    except ValueError:
        workers = 0
    if not 1 <= workers <= limit:
        raise InputError(
            f"--scheduler {text!r}: give local:N with N from 1 to {limit} worker processes, "
            "at most one per CPU core this process may use."
        )
    return workers


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
        threads = max(1, cores() // (workers or 1))
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
