"""Output files that appear whole or not at all, never replace what was not meant to be replaced,
and say in one sentence why they could not be written.

Files are written into a hidden staging folder next to their destination (same file system, so
the final rename is atomic), flushed to disk, checked, and only then moved into place: without
``overwrite`` by a hard link, which fails when the name exists (also when another process got
there first), with it by ``os.replace``. A failure (a full disk included) removes the staging
folder, so nothing partial or empty is left and every file that was there before is untouched.

A set of files (a scan's labels, gates, uncertainty, tables) is linked one file at a time. The
staging folder is the set's manifest: it holds the very files (each a hard link of the one put
in place) and, once every one is linked, a record (``COMMITTED``). A process killed between two
links leaves its staging folder without the record; the next run on the folder
(``sweep_stale``) removes from the destination the files that are those very files (same inode:
ours, never a file of the same name that someone else put there) and then the staging folder, so
the set is absent rather than partial, and a re-run writes it whole without ``--overwrite``.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError

STAGING_PREFIX = ".attunet-"
# a staging folder's name says which process made it: "<prefix><pid>-<host>-<random>", so that
# a later run can remove what a killed process left, and never what a live one is writing
VOLUME_COLUMNS = ("scan", "class", "volume_ml", "path")
METRIC_COLUMNS = ("dice", "hd95_mm", "assd_mm", "volume_ref_ml")  # with predict --reference


COMMITTED = ".committed"  # in a staging folder: every file of its set is in place
PAUSE_SETTING = "NAPARI_ATTUNET_TEST_PAUSE_AFTER_LINKS"  # fault tests only: "N:FLAG" (see _linked)


class OutputError(InputError):
    """An output that could not be written (nothing was left behind)."""


class OutputExists(OutputError):
    """An output whose name is taken, and replacing it was not asked for."""


NOTHING_LEFT = "nothing was written and any file already there is unchanged"


def _reason(exc: BaseException, folder: Path) -> str:
    """A few words for an OS error, without its ``[Errno N]`` text."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code == errno.ENAMETOOLONG:
        return "the name is too long"
    if _disk_full(folder):  # ITK reports no errno, and may even leave a fragment silently
        return "the disk is full"
    text = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
    return (text if isinstance(text, str) else text[0]).lower()


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def check_folder(folder: str | os.PathLike, option: str = "the output folder") -> Path:
    """The folder, created if needed; an InputError naming ``option`` when it cannot be used."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; give {option} a folder.")
    parent = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{folder}: {parent} is a file, not a folder; give {option} a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=STAGING_PREFIX):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write into {folder} ({_reason(exc, folder)}); choose another folder for {option}."
        ) from None
    return folder


def check_target(path: str | os.PathLike, overwrite: bool, option: str = "--overwrite") -> Path:
    """Refuse a destination that is a folder, or that exists when ``overwrite`` is not given."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name (such as labels.nii.gz).")
    if path.exists() and not overwrite:
        raise OutputExists(
            f"{path} already exists and was left as it is; pass {option} to "
            "replace it, or choose another output folder."
        )
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        _fsync(folder)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass


def owned_prefix(prefix: str) -> str:
    """A staging name's prefix that says which process on which host writes it."""
    import socket

    return f"{prefix}{os.getpid()}-{socket.gethostname()}-"


def _owner_gone(name: str, prefix: str) -> bool:
    """Whether the staging folder ``name`` (``owned_prefix(prefix)`` + random) was made by a
    process of this host that no longer runs."""
    import socket

    pid, _, rest = name[len(prefix) :].partition("-")
    if not (name.startswith(prefix) and pid.isdigit() and rest.startswith(socket.gethostname() + "-")):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits for its parent to reap it (a killed Dask worker until
    its nanny notices): it still answers signals, but writes nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] == "Z"


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders in ``folder`` that a killed process of this host left (files
    of a scan or a table being written, a store being filled); those of live processes stay."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        prefix = STAGING_PREFIX if path.name.startswith(STAGING_PREFIX) else None
        for tag in (".partial-", ".old-"):  # a store being filled; one renamed aside to be replaced
            if prefix is None and path.name.startswith(".") and tag in path.name:
                prefix = path.name[: path.name.index(tag) + len(tag)]
        if prefix is not None and _owner_gone(path.name, prefix):
            if prefix == STAGING_PREFIX and path.is_dir():
                removed += roll_back(path, folder)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def roll_back(staging: Path, folder: Path) -> list[Path]:
    """The files of ``folder`` that a commit from ``staging`` put in place before it was killed,
    removed (its set was not whole: no ``COMMITTED`` record). Only the very files (hard links of
    the staged ones, same device and inode) go; a file of the same name that is not one of them
    is someone else's and stays. Returns what was removed."""
    if (staging / COMMITTED).exists():
        return []
    removed = []
    for staged_file in sorted(staging.iterdir()):
        target = folder / staged_file.name
        try:
            ours, there = staged_file.lstat(), target.lstat()
        except OSError:
            continue
        if staged_file.is_file() and (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
            target.unlink(missing_ok=True)
            removed.append(target)
    if removed:
        _fsync_folder(folder)
    return removed


@contextmanager
def held_interrupts():
    """Ctrl-C held back (main thread only) while files or a store are created or moved into
    place, and raised as KeyboardInterrupt once they are whole: an interrupt cannot stop zarr in
    the middle of a write (its event loop would go on writing, and print a traceback at exit)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt


@contextmanager
def _deferred_signals():
    """SIGINT/SIGTERM held back while a set of files is moved into place (main thread only), so
    that an interrupt cannot leave half of the set."""
    import signal
    import threading

    block = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, block)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Staging:
    """Files written together and moved into ``folder`` together by :meth:`commit`."""

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False, option: str = "--overwrite"):
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.option = option
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=owned_prefix(STAGING_PREFIX), dir=self.folder))
        except OSError as exc:
            raise OutputError(
                f"cannot write into {self.folder} ({_reason(exc, self.folder)}); {NOTHING_LEFT}."
            ) from None
        self.names: list[str] = []

    def write(
        self, name: str, writer: Callable[[Path], None], verify: Callable[[Path], None] | None = None
    ) -> Path:
        """Run ``writer(path)`` on a staged path, flush what it produced to disk and check it.

        ``verify(path)`` reads the file back and raises when it is not whole.
        """
        target = self.folder / name
        check_target(target, self.overwrite, self.option)
        staged = self.root / name
        before = set(self.root.iterdir())
        try:
            writer(staged)
            produced = sorted(set(self.root.iterdir()) - before)
            for path in produced:
                if path.stat().st_size == 0:
                    raise OSError(errno.EIO, "an empty file was produced")
                _fsync(path)
            if verify is not None:
                verify(staged)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            reason = _reason(exc, self.root)
            self.abort()
            raise OutputError(f"{target} could not be written ({reason}); {NOTHING_LEFT}.") from None
        self.names += [p.name for p in produced if p.name not in self.names]
        return target

    def commit(self) -> list[Path]:
        """Move every staged file into place; without ``overwrite``, a taken name is refused
        (also when another process took it meanwhile) and nothing of this set is moved."""
        try:
            with _deferred_signals():
                return self._move_all()
        finally:
            self.abort()

    def _move_all(self) -> list[Path]:
        moved: list[Path] = []
        try:
            if not self.overwrite:
                for name in self.names:
                    check_target(self.folder / name, False, self.option)
            for name in self.names:
                source, target = self.root / name, self.folder / name
                if self.overwrite:
                    os.replace(source, target)
                else:
                    os.link(source, target)  # fails if the name exists: no clobbering race
                moved.append(target)
                _linked(len(moved))
            _fsync_folder(self.folder)
            (self.root / COMMITTED).touch()  # the set is whole: nothing for a re-run to roll back
        except FileExistsError as exc:
            self._undo(moved)
            raise OutputExists(
                f"{exc.filename} was created by someone else meanwhile and was "
                f"left as it is; pass {self.option} to replace it."
            ) from None
        except OutputError:
            self._undo(moved)
            raise
        except OSError as exc:
            self._undo(moved)
            raise OutputError(
                f"{self.folder / self.names[len(moved)]} could not be moved into "
                f"place ({_reason(exc, self.folder)}); {NOTHING_LEFT}."
            ) from None
        return moved

    def _undo(self, moved: Sequence[Path]) -> None:
        if not self.overwrite:  # linked names were new: remove them; replaced ones cannot return
            for path in moved:
                path.unlink(missing_ok=True)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _linked(count: int) -> None:
    """For the fault tests (``PAUSE_SETTING`` = "N:FLAG"): once N files of a set are in place,
    write this process's id into FLAG, the first time only, and wait there to be killed."""
    setting = os.environ.get(PAUSE_SETTING)
    if not setting:
        return
    wanted, _, flag = setting.partition(":")
    if count != int(wanted) or not flag:
        return
    try:
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # one process of many stops
    except FileExistsError:
        return
    import time

    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(600)


@contextmanager
def staged(folder: str | os.PathLike, overwrite: bool = False, option: str = "--overwrite"):
    """``with staged(folder) as stage: stage.write(...)``: all files or none of them."""
    stage = Staging(folder, overwrite, option)
    try:
        yield stage
    except BaseException:
        stage.abort()
        raise
    stage.commit()


# ---- names ---------------------------------------------------------------------------------


def unique_names(paths: Sequence[str | os.PathLike], stem: Callable[[Path], str]) -> list[str]:
    """One output name per input path: the file's stem; where different inputs share it, the
    suffix tells apart files of one folder (``scan_nrrd``, ``scan_nii_gz``) and as many parent
    folder names as it takes tell apart folders (``site_a_ct``, ``site_b_ct``). The same path
    given twice is numbered."""
    paths = [Path(p).expanduser().absolute() for p in paths]
    distinct = list(dict.fromkeys(paths))
    names = {p: stem(p) for p in distinct}
    for group in _collisions(names):
        folders = [p.parent for p in group]
        for p in group:
            if folders.count(p.parent) > 1:
                tail = p.name[len(stem(p)) :].strip(".").replace(".", "_")
                names[p] = f"{names[p]}_{tail}" if tail else names[p]
    base = dict(names)
    depth = 0
    while (groups := _collisions(names)) and depth < 64:
        depth += 1
        for group in groups:
            for p in group:
                names[p] = _with_parents(p, base[p], depth)
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = names[p]
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _collisions(names: dict[Path, str]) -> list[list[Path]]:
    groups: dict[str, list[Path]] = {}
    for p, n in names.items():
        groups.setdefault(n, []).append(p)
    return [g for g in groups.values() if len(g) > 1]


def _with_parents(path: Path, stem: str, depth: int) -> str:
    parts = [p for p in path.parent.parts[-depth:] if p not in ("/", "\\")]
    return "_".join(parts + [stem]) if parts else stem


# ---- volumes.csv -----------------------------------------------------------------------------


@contextmanager
def _locked(folder: Path, name: str):
    """An exclusive lock on the folder itself (advisory, between cooperating processes): no
    lock file is left behind."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def merge_volumes(path: str | os.PathLike, rows: Iterable[Sequence[str]]) -> Path:
    """Add this run's rows (scan, class, volume_ml, path[, METRIC_COLUMNS]) to ``path`` without
    losing any other run's: under a lock, the file is read, rows of the same input path are
    replaced, and the whole table is written atomically (with the metric columns when any row
    has them)."""
    path = Path(path)
    rows = [tuple(str(v) for v in r) for r in rows]
    with _locked(path.parent, path.name):
        kept: list[tuple[str, ...]] = []
        if path.exists():
            with open(path, newline="") as fh:
                table = list(csv.reader(fh))
            header = table[0] if table else []
            ours = {r[3] for r in rows}
            for row in table[1:]:
                # a row of another tool or version may be shorter or longer than the header
                record = dict(zip(header, row, strict=False))
                old = tuple(record.get(c, "") for c in VOLUME_COLUMNS + METRIC_COLUMNS)
                if old[3] not in ours or not old[3]:
                    kept.append(old)
        scored = any(any(r[len(VOLUME_COLUMNS) :]) for r in kept + rows)
        columns = VOLUME_COLUMNS + METRIC_COLUMNS if scored else VOLUME_COLUMNS
        every = [(r + ("",) * len(columns))[: len(columns)] for r in kept + rows]

        def write(target: Path) -> None:
            with open(target, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows(every)
                fh.flush()
                os.fsync(fh.fileno())

        def verify(target: Path) -> None:
            with open(target, newline="") as fh:
                if sum(1 for _ in csv.reader(fh)) != 1 + len(kept) + len(rows):
                    raise OSError(errno.EIO, "the table did not read back whole")

        with staged(path.parent, overwrite=True) as stage:
            stage.write(path.name, write, verify)
    return path
