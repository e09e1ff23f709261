"""The program the embedded CPU cluster's nannies run in (``python -m cluster.worker_main``), seen from the
cluster's process: :class:`WorkerHost` starts it, sends it commands and follows its replies.

It imports nothing of Dask, so a command line can start the program (:func:`start_early`) as soon as it knows
it will start an embedded CPU cluster: the program's fork server imports torch while the command line still
imports Dask and reads its input, and the cluster then takes that program (:func:`take_early`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cpus import cpu_cores, thread_environ, torch_threads
from .devices import detect_gpus

if TYPE_CHECKING:
    from .target import Target

log = logging.getLogger(__name__)

_CLOSE_GRACE = 10.0  # seconds a nanny gets to close its worker (the host's own bound, see worker_main)
_REPLY_GRACE = _CLOSE_GRACE + 10.0  # seconds the host gets to say a nanny closed before it is killed
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `cluster` is importable from
#: ``python -m`` puts the current directory first on ``sys.path``: a ``grp.py``, ``random.py`` or ``cluster/``
#: where a user runs ``dask-train`` would be imported (run) by every worker in place of Python's or ours.
#: ``-P`` (Python 3.11+; the fork server and the workers inherit it) leaves it off: the workers import from
#: where this process imports (:func:`_import_path`). Python 3.10 has no such flag: its workers still look
#: in the current directory first.
_SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _import_path() -> str:
    """The workers' ``PYTHONPATH``: every place this process imports from, in its order (a script's folder,
    ``pytest``'s ``pythonpath``, a notebook's folder, ``PYTHONPATH``; Python's own folders, which the workers
    have anyway, are dropped there as duplicates), then dask-train's root: a workload this process can import
    (``mypkg.work:MyModel``), the workers can too. The current directory of a ``dask-train`` command is not on
    it, as it is not on the command's own path."""
    here = [os.getcwd() if p == "" else p for p in sys.path if isinstance(p, str)]  # '': the current folder
    # Only folders and archives: a path hook's marker (an editable install's) is added by the workers' own site.
    return os.pathsep.join(dict.fromkeys([*(p for p in here if os.path.exists(p)), _PACKAGE_ROOT]))


class WorkerHost:
    """The one ``cluster.worker_main`` program that runs every nanny of an embedded CPU cluster, started as
    this object is made (before the scheduler, so that its fork server imports torch while the scheduler
    starts), and again by the next nanny's start should it have ended.

    Parameters
    ----------
    environ : dict
        The workers' environment: the fork server they come from starts with it (OpenMP reads its thread
        settings when torch loads), and so do they.

    Examples
    --------
    >>> host = WorkerHost({"OMP_NUM_THREADS": "1"})  # doctest: +SKIP
    >>> options = {"host": host, "nanny": {"nthreads": 1}, "config": {}}  # doctest: +SKIP
    >>> spec = {"cls": WorkerProcess, "options": options}  # doctest: +SKIP
    """

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.process: subprocess.Popen[bytes] | None = None
        self._replies = -1  # the read end of the current process's reply pipe
        self._states: dict[str, str] = {}  # worker name: starting, started, failed or closed
        self._ended: dict[str, asyncio.Event] = {}
        self._reading: asyncio.Task[None] | None = None  # follows the current process's replies, once read
        self._closed = False  # closed for good (the cluster closes): no program starts again
        self.start()

    def __deepcopy__(self, memo: dict[int, Any]) -> WorkerHost:
        return self  # one per cluster: SpecCluster copies its worker specs, which name it

    def start(self) -> None:
        """Start the program unless it runs (or this host was closed)."""
        if self._closed or (self.process is not None and self.process.poll() is None):
            return
        read, write = os.pipe()
        environ = {**os.environ, "PYTHONPATH": _import_path()}
        try:
            self.process = subprocess.Popen(
                [sys.executable, *_SAFE_PATH, "-m", "cluster.worker_main", str(write), json.dumps(self.environ)],
                env=environ, stdin=subprocess.PIPE, pass_fds=(write,),
                start_new_session=True)  # the terminal's Ctrl-C is the client's
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._replies, self._reading = read, None
        self._states, self._ended = {}, {}

    async def start_nanny(self, request: dict[str, Any]) -> None:
        """Ask the program to start the nanny ``request`` describes (``name``, ``scheduler``, ``nanny``,
        ``config``, ``tls``): it joins the scheduler on its own."""
        name = request["name"]
        if self._closed:  # the cluster closed while this worker was on its way (Ctrl-C as it started)
            self._states[name] = "failed"
            return
        self.start()
        await self._read_replies()
        self._states[name] = "starting"
        self._ended[name] = asyncio.Event()
        self._send({"start": request})

    async def close_nanny(self, name: str) -> None:
        """Ask the program to close a nanny and wait for it (killing the program, and with it every nanny,
        if it does not answer within :data:`_REPLY_GRACE`)."""
        if self.process is None or self.process.poll() is not None or name not in self._ended:
            return
        if self._states[name] not in ("failed", "closed"):
            self._send({"close": name})
        try:
            await asyncio.wait_for(self._ended[name].wait(), _REPLY_GRACE)
        except asyncio.TimeoutError:
            log.warning("The embedded cluster's worker program did not close worker %s within %gs: ending it.",
                        name, _REPLY_GRACE)
            _kill_tree(self.process.pid)

    def exit_code(self, name: str) -> int | None:
        """None while the nanny ``name`` runs (or starts); 1 if it failed to start, 0 once it closed, the
        program's exit code if the program ended."""
        state = self._states.get(name)
        if state == "failed":
            return 1
        if state == "closed":
            return 0
        return None if self.process is None else self.process.poll()

    async def close(self) -> None:
        """End the program: it closes the nannies still running, then ends (killed after :data:`_REPLY_GRACE`)."""
        self._closed = True
        process = self.process
        if process is None:
            return
        self._close_pipes()
        deadline = time.monotonic() + _REPLY_GRACE
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._end(process)

    def close_now(self) -> None:
        """:meth:`close`, outside an event loop (the cluster did not start)."""
        self._closed = True
        process = self.process
        if process is None:
            return
        self._close_pipes()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_REPLY_GRACE)
        self._end(process)

    def _close_pipes(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the end of its commands: it closes its nannies and ends
        if self._reading is None and self._replies >= 0:
            os.close(self._replies)  # else its reader's transport closes it at the program's end
        self._replies, self._reading = -1, None

    def _end(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            _kill_tree(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def _send(self, command: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it ended: exit_code says so
            pass

    async def _read_replies(self) -> None:
        """Read the current program's replies in this (the cluster's) event loop, from its first nanny on."""
        if self._reading is not None or self._replies < 0:
            return
        reader = asyncio.StreamReader()
        self._reading = asyncio.get_running_loop().create_task(self._follow(reader, self._states, self._ended))
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._replies, "rb"))

    @staticmethod
    async def _follow(reader: asyncio.StreamReader, states: dict[str, str],
                      ended: dict[str, asyncio.Event]) -> None:
        """Keep ``states`` as the replies tell; at their end (the program ended), every nanny has too."""
        with contextlib.suppress(Exception):  # a closed pipe ends the replies like the program's end does
            while line := await reader.readline():
                reply = json.loads(line)
                for state in ("started", "failed", "closed"):
                    if state in reply:
                        states[reply[state]] = state
                        if state != "started" and reply[state] in ended:
                            ended[reply[state]].set()
        for event in ended.values():
            event.set()


def _kill_tree(pid: int) -> None:
    """Kill the worker program, its fork server and the worker processes (they would outlive it a while)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        parent.kill()


_early: WorkerHost | None = None  # started by start_early, not yet taken by a cluster


def cpu_worker_environ(workers: int, torch_threads: int | None = None) -> dict[str, str]:
    """The environment CPU workers start with: no GPU, their share of the CPUs for torch and OpenMP.

    Examples
    --------
    >>> env = cpu_worker_environ(2, torch_threads=3)
    >>> env["CUDA_VISIBLE_DEVICES"], env["DASK_TRAIN_SLOT_WORKERS"], env["OMP_NUM_THREADS"]
    ('', '2', '3')
    """
    environ = {"CUDA_VISIBLE_DEVICES": "", **thread_environ(workers, torch_threads)}
    return {**environ, **openmp_environ(environ)}


def openmp_environ(worker_environ: dict[str, str]) -> dict[str, str]:
    """OpenMP/BLAS pool sizes equal to the torch threads the workers will use (they inherit our CPUs)."""
    threads = str(torch_threads({**os.environ, **worker_environ}))
    return dict.fromkeys(THREAD_VARIABLES, threads)


def start_early(target: Target) -> None:
    """Where ``target`` is an embedded cluster of CPU workers (no GPU in sight), start its worker program
    now, so that its fork server imports torch while the caller goes on to start the cluster, which takes it
    (:func:`take_early`). One never taken ends with this process (its commands' pipe closes)."""
    global _early
    spec = target.local
    if _early is not None or not target.embedded or (spec.gpus == "auto" and detect_gpus()):
        return
    _early = WorkerHost(cpu_worker_environ(spec.workers or cpu_cores(), spec.torch_threads))


def take_early(environ: dict[str, str]) -> WorkerHost | None:
    """The program :func:`start_early` started, if it runs with ``environ``; else None (and it is ended)."""
    global _early
    host, _early = _early, None
    if host is None:
        return None
    if host.environ == environ and host.process is not None and host.process.poll() is None:
        return host
    host.close_now()
    return None
