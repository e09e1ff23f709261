"""The program each embedded-cluster worker runs in: ``python -m cluster.worker_main REQUEST_JSON``.

Started by :class:`cluster.worker_process.WorkerProcess`. The nanny here spawns its worker process, which
re-imports this module as its main module: importing it must do nothing (the package does not import it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any

_ORPHAN_CHECK_EVERY = 1.0  # seconds between checks that the cluster's process is still there
_ORPHAN_CLOSE_TIMEOUT = 10.0  # seconds an orphaned nanny gets to close before its process just ends


async def _serve(request: dict[str, Any]) -> None:
    """Run the nanny until the scheduler closes it (or this process is told to stop)."""
    import dask
    from distributed import Nanny

    dask.config.set(request["config"])
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


def main(argv: list[str]) -> int:
    """Entry point of the worker subprocess: ``python -m cluster.worker_main REQUEST_JSON``."""
    logging.getLogger("distributed").setLevel(logging.WARNING)  # as LocalCluster's silence_logs
    logging.getLogger("distributed.nanny").addFilter(_Expected())
    asyncio.run(_serve(json.loads(argv[1])))
    return 0


if __name__ == "__main__":  # the worker process the nanny spawns re-imports this module: it must do nothing
    sys.exit(main(sys.argv))
