"""A worker of the embedded cluster started as its own program, as ``dask worker`` is.

``LocalCluster`` runs its nannies inside the creating process, and each nanny starts its worker with
multiprocessing's "spawn", which re-imports the creator's ``__main__``. A client script without an
``if __name__ == "__main__":`` guard then starts a cluster inside every worker (a storm of tracebacks), and a
script's heavy top-level imports slow every worker's start. Here each worker's nanny runs in a fresh
``python -m cluster.worker_main`` process instead: what its worker process re-imports is that module,
which does nothing on import. The nanny still restarts a worker that dies, as in ``dask worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from distributed.deploy.spec import ProcessInterface

log = logging.getLogger(__name__)

_CLOSE_GRACE = 10.0  # seconds a nanny gets to close its worker
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where `cluster` is importable from


class WorkerProcess(ProcessInterface):
    """One nanny and its worker in a subprocess; a ``SpecCluster`` worker spec class.

    Parameters
    ----------
    scheduler : str
        The scheduler's address (given by ``SpecCluster``).
    name : str
        The worker's name (``cpu-0``).
    nanny : dict
        JSON-serialisable ``distributed.Nanny`` keywords (``nthreads``, ``resources``, ``env``, ``host``...).
    config : dict
        Dask config (dotted keys) set in the subprocess before the nanny starts.
    tls : dict, optional
        ``ca_file``, ``cert``, ``key``: the worker's TLS files.

    Examples
    --------
    >>> spec = {"cls": WorkerProcess, "options": {"nanny": {"nthreads": 1}, "config": {}}}
    >>> cluster.worker_spec["cpu-0"] = spec  # doctest: +SKIP
    """

    def __init__(self, scheduler: str, name: str, nanny: dict[str, Any], config: dict[str, Any],
                 tls: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self.request = {"scheduler": scheduler, "name": name, "nanny": nanny, "config": config, "tls": tls}

    async def start(self) -> None:
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cluster.worker_main", json.dumps(self.request), env=environ,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)  # the terminal's Ctrl-C is the client's
        await super().start()

    @property
    def exit_code(self) -> int | None:
        """The subprocess's exit code, None while it runs (or before it started)."""
        return None if self.process is None else self.process.returncode

    async def close(self) -> None:
        """Ask the nanny to close its worker (SIGTERM, handled in ``worker_main``); kill what is left after
        ``_CLOSE_GRACE`` seconds."""
        process = self.process
        if process is not None and process.returncode is None:
            _stop(process, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), _CLOSE_GRACE)
            if process.returncode is None:
                _kill_tree(process.pid)
                await process.wait()
        await super().close()


def _stop(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def _kill_tree(pid: int) -> None:
    """Kill a nanny and its worker process (the worker would outlive a killed nanny for a while)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        parent.kill()
