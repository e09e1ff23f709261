"""Run directories dask-train writes into: checked before any cluster starts, never someone else's files.

A run directory may be missing (it is created), empty, or one dask-train wrote (it holds one of the run's
marker files); anything else is refused, as is a parent that cannot be written or is nearly full. ``--new``
sets aside only a run dask-train wrote.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import itertools
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError
from .limits import short

log = logging.getLogger(__name__)

#: Files that mark a directory as a dask-train sweep run, a DDP job's run, a model directory.
SWEEP_MARKERS = ("store.sqlite", "sweep.yaml")
DDP_MARKERS = ("checkpoint.pt", "model")
MODEL_MARKERS = ("model.json", "checkpoint.pt")
#: Free space a run needs on its filesystem before it starts.
MIN_FREE_BYTES = 64 * 2**20


def _new_beside(path: Path) -> tuple[Path, int]:
    """A new file beside ``path`` of a name no one can have planted (random, created exclusively, not through
    a link, with the umask's permissions), and its descriptor, open for writing."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through, whole: a new one beside it (:func:`_new_beside`), renamed over
    ``path`` once the block ends, removed if it fails. A link at ``path`` is replaced, never written through;
    a reader never sees half a file, and a crash or a full disk leaves the old one."""
    tmp, fd = _new_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing_path(path: Path) -> Iterator[Path]:
    """As :func:`replacing`, for a writer that takes a path: the new (empty) file's, to write in the block."""
    tmp, fd = _new_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive_run(run_dir: Path, what: str, other: str) -> Iterator[None]:
    """Hold ``run_dir`` (created if missing) for this process while the block runs: a second run on the same
    directory at once (another terminal, another client) is refused instead of both writing its files. An
    advisory lock on the folder itself (``flock``), which the kernel releases when this process ends, however
    it ends; taken again inside the block by the same thread (the CLI, then the Python API it calls), it is
    already held; another thread of this process is refused as another process is. Where
    the filesystem takes no such lock (some NFS, Lustre or FUSE mounts), the run goes on without it.
    ``what``: the run, as the refusal names it; ``other``: what to choose instead (e.g. another ``--name``)."""
    if not _FLOCK:  # not a POSIX system: no lock to take
        yield
        return
    if run_dir.is_symlink() and not run_dir.exists():  # mkdir says only "File exists"
        raise ConfigError(f"{short(str(run_dir))} is a link to {short(os.readlink(run_dir))}, which does not "
                          f"exist: make that folder, or remove the link, or {other}.")
    existing = _nearest_existing(run_dir)
    missing = list(itertools.takewhile(lambda folder: folder != existing, [run_dir, *run_dir.parents]))
    made: list[Path] = []  # the folders this call made, innermost first: only those are removed on a failure
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
                made.insert(0, folder)
            except FileExistsError:  # made meanwhile by another run: its, never removed here
                if not folder.is_dir():
                    raise
    except OSError as exc:  # e.g. a name too long for the filesystem: the folders made on the way go again
        _remove_empty(made)
        raise ConfigError(f"{short(str(run_dir))} cannot be made ({exc.strerror or exc}): {other}.") from None
    key, me = os.path.realpath(run_dir), threading.get_ident()
    with _HELD_LOCK:
        owner, held = _HELD.get(key, (me, 0))
        if owner == me:
            _HELD[key] = (me, held + 1)
    if owner != me:  # a flock is the process's: a second thread would get it again (the folders are its)
        raise _in_use(run_dir, what, other)
    fd = -1
    try:
        if not held:
            fd = _open_folder(run_dir)
            try:
                _lock(fd, run_dir, what, other)
            except ConfigError:  # in use: another run holds it, folders made here included, and uses them
                made.clear()
                raise
        yield
    except BaseException:
        if not held:  # folders made for this run (``runs/`` too), which failed before writing anything
            _remove_empty(made)
        raise
    finally:
        with _HELD_LOCK:
            count = _HELD[key][1] - 1
            if count:
                _HELD[key] = (me, count)
            else:
                del _HELD[key]
        if fd >= 0:
            os.close(fd)  # releases the lock


def _open_folder(run_dir: Path) -> int:
    """A descriptor of the folder itself, to lock."""
    return os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _lock(fd: int, run_dir: Path, what: str, other: str) -> None:
    """Take the run directory's lock on ``fd`` (an open folder), or refuse: another process holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, what, other) from None
    except OSError as exc:  # a filesystem without flock on folders: no lock, as before there was one
        log.debug("No lock on %s (%s): going on without it", run_dir, exc)


def _in_use(run_dir: Path, what: str, other: str) -> ConfigError:
    return ConfigError(f"{run_dir} is in use: another {what} is running on it now (from another terminal, "
                       f"client or thread). Wait for it to end, or {other}.")


def check_not_in_use(run_dir: Path, what: str, other: str) -> None:
    """Refuse now a run directory another process holds (:func:`exclusive_run`): before a cluster starts for a
    run that would be refused once it had (a second sweep of the same run started its workers first)."""
    if not _FLOCK or not run_dir.is_dir():
        return
    owner = _HELD.get(os.path.realpath(run_dir))
    if owner is not None:  # this process holds it: this thread (the CLI, then its run), or another one
        if owner[0] != threading.get_ident():
            raise _in_use(run_dir, what, other)
        return
    try:
        fd = _open_folder(run_dir)
    except OSError:  # found when the run opens it
        return
    try:
        _lock(fd, run_dir, what, other)
    finally:
        os.close(fd)  # a lock taken here goes with it


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first, those not there skipped) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENAMETOOLONG):  # never made: the making failed at it
                continue
            return  # not empty (or not ours to remove): nor are the folders above it


#: Folder locks (``flock``) exist here: a POSIX system.
_FLOCK = importlib.util.find_spec("fcntl") is not None
#: The run directories this process holds (:func:`exclusive_run`), by real path: how many blocks hold each.
_HELD: dict[str, tuple[int, int]] = {}  # held folders: the thread holding each, and how many times
_HELD_LOCK = threading.Lock()


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path``, whole (see :func:`replacing`)."""
    with replacing(path) as handle:
        handle.write(data)


def check_own_folder(folder: Path) -> None:
    """Refuse ``folder`` where it is a link or not a folder: a link planted there would send what is written
    into it elsewhere."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"{str(folder)!r} is a link or not a folder, and dask-train writes only into a "
                          "folder of its own there. Remove it, then run again.")


def own_folder(folder: Path) -> Path:
    """``folder``, made if missing (refused as :func:`check_own_folder` says)."""
    check_own_folder(folder)
    folder.mkdir(exist_ok=True)
    return folder


def check_ddp_start(name: str, runs_dir: Path, resume: bool) -> None:
    """What a DDP job named ``name`` checks before anything starts: its name, a run directory dask-train would
    write (``runs_dir/name``), holding a checkpoint exactly when the job resumes (``--resume``)."""
    from .sweep_spec import NAME_PATTERN

    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"Job name {short(name)} must be 1-64 letters, digits, '_', '.' or '-'.")
    run_dir = runs_dir / name
    if (run_dir / "model.json").is_file():  # checkpoint.pt beside it is train's, not a DDP job's
        raise ConfigError(f"{run_dir} is a model directory of `dask-train train`, not a DDP job's run directory: "
                          "choose another --name (name=...).")
    check_run_dir(run_dir, DDP_MARKERS)
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file() and (checkpoint.exists() or checkpoint.is_symlink()):
        raise ConfigError(f"{checkpoint} is not a regular file (a link to nothing, a device, a folder): not one "
                          "dask-train wrote. Move it away, or choose another --name (name=...).")
    if resume and not checkpoint.is_file():
        raise ConfigError(f"Nothing to resume: {checkpoint} does not exist. Run without --resume (resume=False) "
                          "first.")
    if not resume and checkpoint.is_file():
        raise ConfigError(f"{run_dir} already holds a DDP run (checkpoint.pt). Pass --resume (resume=True) to "
                          "continue it, or choose another --name (name=...).")


def check_run_dir(run_dir: str | Path, markers: Sequence[str], what: str = "run directory") -> Path:
    """``run_dir`` resolved, after checking dask-train may write there; nothing is created.

    Raises
    ------
    ConfigError
        ``run_dir`` is a file, holds files dask-train did not write, or its filesystem is not writable
        or has less than 64 MiB free.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> check_run_dir(pathlib.Path(tempfile.mkdtemp()) / "new", SWEEP_MARKERS).name
    'new'
    """
    try:
        path = Path(run_dir).expanduser().resolve()
    except OSError as exc:  # e.g. a name longer than the filesystem takes, in a link it follows
        raise ConfigError(f"The {what} {short(str(run_dir))} cannot be used ({exc.strerror or exc}): choose "
                          "another name or folder.") from None
    shown = short(str(path))
    existing = _nearest_existing(path)
    _check_makeable(path, existing, what)  # first: a name too long fails every look at the path itself
    if path.exists() and not path.is_dir():
        raise ConfigError(f"The {what} {shown} is a file, not a directory: choose another name or folder.")
    if path.is_dir() and not is_ours(path, markers):
        choose = "another folder (--out)" if what == "model directory" else "another name (--name) or --runs-dir"
        raise ConfigError(f"The {what} {shown} holds files dask-train did not write (no {' or '.join(markers)}); "
                          f"it will not write there. Choose {choose}.")
    _check_writable(existing, what)
    return path


def _check_makeable(path: Path, existing: Path, what: str) -> None:
    """Refuse a ``path`` whose folders to make under ``existing`` have names longer than its filesystem takes
    (found at the first mkdir, after a cluster had started)."""
    try:
        longest, whole = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):  # not said here: found when it is made
        return
    if len(os.fsencode(str(path))) >= whole:
        raise ConfigError(f"The {what} {short(str(path))} cannot be made: its path is longer than the {whole} "
                          "bytes this system takes. Choose a shorter --name or --runs-dir.")
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) > longest:
            raise ConfigError(f"The {what} {short(str(path))} cannot be made: its folder name {short(part, 40)} "
                              f"is longer than the {longest} bytes this filesystem takes. Choose a shorter --name "
                              "or --runs-dir.")


def is_ours(path: Path, markers: Sequence[str]) -> bool:
    """Whether ``path`` is empty or holds one of ``markers`` (a directory dask-train wrote)."""
    return not any(path.iterdir()) or any((path / m).exists() for m in markers)


def check_set_aside(run_dir: Path) -> None:
    """Refuse ``--new`` for ``run_dir`` unless it is absent or a sweep run dask-train wrote (nothing moved)."""
    if run_dir.exists() and (not run_dir.is_dir() or not all((run_dir / m).exists() for m in SWEEP_MARKERS)):
        raise ConfigError(f"--new sets aside only a sweep run dask-train wrote; {short(str(run_dir))} is not one "
                          f"(no {' and '.join(SWEEP_MARKERS)}). Move it yourself or choose another --name "
                          "(name=...).")


def set_aside(run_dir: Path, what: str = "sweep") -> Path | None:
    """Move a sweep run dask-train wrote to ``NAME.old-TIME`` (``--new``); refuse anything else, and a run
    another process holds (:func:`exclusive_run`; moved, its lock would go with it and a second run would start
    beside it). ``what``: that run, as the refusal names it."""
    check_set_aside(run_dir)
    if not run_dir.exists():
        return None
    aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    if aside.exists():
        raise ConfigError(f"{short(str(aside))} already exists; wait a second and run again.")
    with exclusive_run(run_dir, what, "choose another --name (name=...)"):
        run_dir.rename(aside)
    return aside


def _nearest_existing(path: Path) -> Path:
    """The closest of ``path`` and its parents that exists (a name too long for its filesystem does not)."""
    while path != path.parent:
        try:
            if path.exists():
                return path
        except OSError:  # ENAMETOOLONG: Path.exists raises it
            pass
        path = path.parent
    return path


def _check_writable(folder: Path, what: str) -> None:
    """Create and delete a probe file in ``folder`` (os.access says yes to root even where writes fail)."""
    shown = short(str(folder))
    if not folder.is_dir():
        raise ConfigError(f"{shown}, where the {what} would go, is not a directory: choose another folder.")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".dask-train-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"Cannot write in {shown}, where the {what} goes (making a file there failed: "
                          f"{exc.strerror}): choose a folder you can write (--runs-dir, --out) or fix its "
                          "permissions.") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"Only {free // 2**20} MiB free on the filesystem of {shown}; a run needs at least "
                          f"{MIN_FREE_BYTES // 2**20} MiB. Free some space or choose another --runs-dir.")
