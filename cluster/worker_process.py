"""The embedded CPU cluster's workers, started in a program of their own, as ``dask worker`` is.

``LocalCluster`` runs its nannies inside the creating process, and each nanny starts its worker with
multiprocessing's "spawn", which re-imports the creator's ``__main__``. A client script without an
``if __name__ == "__main__":`` guard then starts a cluster inside every worker (a storm of tracebacks), and a
script's heavy top-level imports slow every worker's start. Here the cluster's nannies run in one fresh
``python -m cluster.worker_main`` process instead (:class:`WorkerHost`): what a worker process re-imports is
that module, which does nothing on import. Its nannies still restart a worker that dies, as in ``dask worker``.
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
from typing import Any

from distributed.deploy.spec import ProcessInterface

log = logging.getLogger(__name__)

_CLOSE_GRACE = 10.0  # seconds a nanny gets to close its worker (the host's own bound, see worker_main)
_REPLY_GRACE = _CLOSE_GRACE + 10.0  # seconds the host gets to say a nanny closed before it is killed
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `cluster` is importable from


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
        self.start()

    def __deepcopy__(self, memo: dict[int, Any]) -> WorkerHost:
        return self  # one per cluster: SpecCluster copies its worker specs, which name it

    def start(self) -> None:
        """Start the program unless it runs."""
        if self.process is not None and self.process.poll() is None:
            return
        read, write = os.pipe()
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cluster.worker_main", str(write), json.dumps(self.environ)],
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
        self.start()
        await self._read_replies()
        name = request["name"]
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


class WorkerProcess(ProcessInterface):
    """One nanny and its worker, run by the cluster's :class:`WorkerHost`; a ``SpecCluster`` worker spec
    class.

    Parameters
    ----------
    scheduler : str
        The scheduler's address (given by ``SpecCluster``).
    name : str
        The worker's name (``cpu-0``).
    host : WorkerHost
        The program that runs the cluster's nannies.
    nanny : dict
        JSON-serialisable ``distributed.Nanny`` keywords (``nthreads``, ``resources``, ``env``, ``host``...).
    config : dict
        Dask config (dotted keys) set in the program before the nanny starts.
    tls : dict, optional
        ``ca_file``, ``cert``, ``key``: the worker's TLS files.

    Examples
    --------
    >>> options = {"host": host, "nanny": {"nthreads": 1}, "config": {}}  # doctest: +SKIP
    >>> cluster.worker_spec["cpu-0"] = {"cls": WorkerProcess, "options": options}  # doctest: +SKIP
    """

    def __init__(self, scheduler: str, name: str, host: WorkerHost, nanny: dict[str, Any],
                 config: dict[str, Any], tls: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.host = host
        self.request = {"scheduler": scheduler, "name": name, "nanny": nanny, "config": config, "tls": tls}

    async def start(self) -> None:
        await self.host.start_nanny(self.request)
        await super().start()

    @property
    def exit_code(self) -> int | None:
        """Its nanny's exit code (see :meth:`WorkerHost.exit_code`), None while it runs."""
        return self.host.exit_code(self.name)

    async def close(self) -> None:
        """Ask the nanny to close its worker, and wait for it to."""
        await self.host.close_nanny(self.name)
        await super().close()


def _kill_tree(pid: int) -> None:
    """Kill the worker program, its fork server and the worker processes (they would outlive it a while)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        parent.kill()
