"""The program each embedded-cluster worker runs in: ``python -m cluster.worker_main REQUEST_JSON``.

Started by :class:`cluster.worker_process.WorkerProcess`. The nanny here starts its worker process, which
imports this module again as its main module: importing it must do nothing (the package does not import it).

The worker process is forked from a fork server that this program starts first, which imports torch and
the training loop (:mod:`cluster.fork_preload`) while the nanny starts and joins: the worker starts with
them loaded, and so does every worker the nanny starts again after dask-train ended one (a timed-out
trial, a cancelled sweep, a hung DDP rank), in a fraction of a second instead of the seconds of a fresh
import. The fork server is a fresh, single-threaded process that only imports: forking it is safe, where
forking the nanny (an event loop and its threads) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from typing import Any

_ORPHAN_CHECK_EVERY = 1.0  # seconds between checks that the cluster's process is still there
_ORPHAN_CLOSE_TIMEOUT = 10.0  # seconds an orphaned nanny gets to close before its process just ends


async def _serve(request: dict[str, Any], forked: bool) -> None:
    """Run the nanny until the scheduler closes it (or this process is told to stop); ``forked``: its worker
    processes come from the fork server already running."""
    import dask
    from distributed import Nanny, utils

    dask.config.set(request["config"])
    if forked:
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
        # The fork server is ours, already running with its own preload: Dask would import numpy, pandas
        # and lz4 here to set one (private flag; should it go, those imports are all it costs).
        utils._forkserver_preload_set = True
    options = dict(request["nanny"])
    tls = request.get("tls")
    if tls:
        from distributed.security import Security

        options["security"] = Security(
            tls_ca_file=tls["ca_file"], tls_worker_cert=tls["cert"], tls_worker_key=tls["key"],
            tls_client_cert=tls["cert"], tls_client_key=tls["key"], require_encryption=True)
    async with Nanny(request["scheduler"], name=request["name"], silence_logs=logging.WARNING,
                     **options) as nanny:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(nanny.close()))
        watch = asyncio.ensure_future(_close_when_orphaned(nanny, os.getppid()))
        await nanny.finished()
        watch.cancel()


async def _close_when_orphaned(nanny: Any, parent: int) -> None:
    """Close when the process that started this one is gone (killed before it could close its cluster).
    The scheduler went with it, so a nanny's close can wait on it forever: bounded, then this process and
    its worker end regardless."""
    while os.getppid() == parent:
        await asyncio.sleep(_ORPHAN_CHECK_EVERY)
    with contextlib.suppress(Exception):  # ending is all that is left to do
        await asyncio.wait_for(nanny.close(timeout=_ORPHAN_CLOSE_TIMEOUT), _ORPHAN_CLOSE_TIMEOUT + 5)
    for child in multiprocessing.active_children():
        child.kill()
    # os._exit skips multiprocessing's own clean-up: the fork server's socket folder goes here. The fork
    # server ends by itself once this process is gone.
    shutil.rmtree(multiprocessing.util.get_temp_dir(), ignore_errors=True)
    os._exit(0)


#: What the nanny warns about when dask-train ends a worker on purpose (a timed-out or cancelled trial, a
#: hung DDP rank: dask-train prints its own line) or when the cluster closes: not news to the user.
_EXPECTED = ("Restarting worker", "Worker process still alive after")


class _Expected(logging.Filter):
    """Shows the nanny's expected warnings at debug level only (``-vv`` still has them in full)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(_EXPECTED):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _start_fork_server(environ: dict[str, str]) -> bool:
    """Start the fork server the worker processes come from, with the worker's environment (OpenMP reads
    its thread settings when torch loads, in the server), which imports :mod:`cluster.fork_preload`.
    False where the platform has none (Windows): the nanny spawns its workers, as Dask does."""
    os.environ.update(environ)  # this process exists for this one worker: its environment is the worker's
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cluster.fork_preload"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True


def main(argv: list[str]) -> int:
    """Entry point of the worker subprocess: ``python -m cluster.worker_main REQUEST_JSON``."""
    request = json.loads(argv[1])
    # Told to stop before the nanny is up (its own handler comes with it): end as a normal exit does, which
    # also ends the worker process and cleans up after the fork server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    forked = _start_fork_server(request["nanny"].get("env", {}))
    logging.getLogger("distributed").setLevel(logging.WARNING)  # as LocalCluster's silence_logs
    logging.getLogger("distributed.nanny").addFilter(_Expected())
    asyncio.run(_serve(request, forked))
    return 0


if __name__ == "__main__":  # the worker process imports this module again as its main: it must do nothing
    sys.exit(main(sys.argv))
