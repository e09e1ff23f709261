"""The program the embedded cluster's nannies run in: ``python -m cluster.worker_main REPLY_FD ENVIRON_JSON``.

Started once per CPU cluster by :class:`cluster.worker_process.WorkerHost`. It reads one JSON command a line
on its standard input: ``{"start": REQUEST}`` starts a nanny (its worker joins the scheduler named in
REQUEST), ``{"close": NAME}`` closes one; and it answers on file descriptor REPLY_FD: ``{"started": NAME}``,
``{"failed": NAME}`` (its error is printed on standard error) and ``{"closed": NAME}``, the last also when a
nanny ends on its own. The end of its standard input (the cluster's process closed it, or died) closes every
nanny, within a bound, and ends the program. Each nanny's worker process imports this module again as its
main module: importing it must do nothing (the package does not import it).

The worker processes are forked from one fork server that this program starts first, with ENVIRON (the
workers' environment: OpenMP reads its thread settings when torch loads), which imports torch and the
training loop (:mod:`cluster.fork_preload`) while the cluster's scheduler starts and the nannies join: every
worker starts with them loaded, and so does every worker a nanny starts again after dask-train ended one (a
timed-out trial, a cancelled sweep, a hung DDP rank), in a fraction of a second instead of the seconds of a
fresh import. One fork server for all the workers imports torch once, on one core, where one a worker had
them import it side by side on every core at once. The fork server is a fresh, single-threaded process that
only imports: forking it is safe, where forking a nanny's process (an event loop and its threads) is not.
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
from typing import IO, Any

_CLOSE_TIMEOUT = 10.0  # seconds a nanny gets to close (its scheduler may be gone) before its worker is killed


class _Host:
    """The nannies of this program, by worker name, and the replies about them."""

    def __init__(self, replies: IO[str], forked: bool) -> None:
        self.replies = replies
        self.forked = forked
        self.nannies: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False  # set once the program ends: a nanny still starting then fails quietly

    def reply(self, **message: str) -> None:
        with contextlib.suppress(OSError):  # the cluster's process is gone: nobody to tell
            self.replies.write(json.dumps(message) + "\n")

    def run(self, command: dict[str, Any]) -> None:
        if "start" in command:
            task = asyncio.ensure_future(self.start(command["start"]))
        elif "close" in command:
            task = asyncio.ensure_future(self.close(command["close"]))
        else:
            raise ValueError(f"unknown command {sorted(command)}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, request: dict[str, Any]) -> None:
        name = request["name"]
        try:
            nanny = await _start_nanny(request, self.forked)
        except Exception:
            if not self.closing:  # else ended with the program (Ctrl-C while the cluster started): not news
                logging.getLogger(__name__).exception("The nanny of worker %r did not start", name)
            self.reply(failed=name)
            return
        self.nannies[name] = nanny
        self.reply(started=name)
        await nanny.finished()
        if self.nannies.get(name) is nanny:
            del self.nannies[name]
            self.reply(closed=name)

    async def close(self, name: str) -> None:
        nanny = self.nannies.pop(name, None)
        if nanny is not None:
            await _close_nanny(nanny)
        self.reply(closed=name)

    async def close_all(self) -> None:
        """Close the nannies that started; end the ones still starting, and the fork server with them.

        What fails from here on is the end of this program, not news, and Dask logs it with tracebacks: the
        starts this cuts short (in Dask's threads and streams), nannies closing after their scheduler went
        (the client killed, its scheduler with it). So Dask's log says nothing more."""
        self.closing = True
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        nannies, self.nannies = list(self.nannies.values()), {}
        await asyncio.gather(*(_close_nanny(n) for n in nannies))
        if self.forked:
            _end_fork_server()
        for task in list(self.tasks):
            task.cancel()


def _end_fork_server() -> None:
    """Kill the fork server and the worker processes it forked that are left: those of nannies still
    starting as the program ends (the workers of started nannies have closed). Left alone, such a process
    goes on unpickling what its nanny sent after this program's exit removed it, and prints a traceback
    for nothing (Ctrl-C while the cluster starts)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for server in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if "multiprocessing.forkserver" not in " ".join(server.cmdline()):
                    continue  # the resource tracker: it removes what the killed processes leave
                server.suspend()  # forks no more while its children go
                for child in server.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                server.kill()


async def _start_nanny(request: dict[str, Any], forked: bool) -> Any:
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
    nanny = Nanny(request["scheduler"], name=request["name"], silence_logs=logging.WARNING, **options)
    await nanny
    return nanny


async def _close_nanny(nanny: Any) -> None:
    """Close within a bound (a nanny whose scheduler is gone can wait on it forever); kill its worker
    process when that bound passes."""
    with contextlib.suppress(Exception):  # closing is all that is left to do
        await asyncio.wait_for(nanny.close(timeout=_CLOSE_TIMEOUT), _CLOSE_TIMEOUT + 5)
    process = getattr(getattr(nanny, "process", None), "process", None)  # the worker's multiprocessing one
    with contextlib.suppress(Exception):
        if process is not None and process.is_alive():
            process.kill()


async def _serve(commands: int, replies: IO[str], forked: bool) -> None:
    """Run the commands read from ``commands`` until it ends or this process is told to stop, then close every
    nanny."""
    loop = asyncio.get_running_loop()
    host = _Host(replies, forked)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(commands, "rb"))

    async def read() -> None:
        while line := await reader.readline():
            host.run(json.loads(line))

    reading = asyncio.ensure_future(read())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    reading.cancel()
    stopping.cancel()
    await host.close_all()


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
    """Start the fork server the worker processes come from, with the workers' environment, which imports
    :mod:`cluster.fork_preload`. False where the platform has none (Windows): the nannies spawn their
    workers, as Dask does."""
    os.environ.update(environ)  # this process exists for these workers: its environment is theirs
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cluster.fork_preload"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True


def main(argv: list[str]) -> int:
    """Entry point: ``python -m cluster.worker_main REPLY_FD ENVIRON_JSON``."""
    replies = os.fdopen(int(argv[1]), "w", buffering=1)
    environ = json.loads(argv[2])
    # Told to stop before the loop is up (its own handler comes with it): end as a normal exit does, which
    # also ends the worker processes and cleans up after the fork server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The commands come on a descriptor of their own; standard input becomes /dev/null, which is what the
    # fork server and the workers inherit (a trial that reads its input must not read the commands).
    commands = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    forked = _start_fork_server(environ)
    import dask
    from distributed import utils

    # After distributed's import, which sets its loggers' levels from Dask's config (INFO): set before, a
    # closing nanny said "Nanny at ... closed." in the user's terminal.
    logging.getLogger("distributed").setLevel(logging.WARNING)  # as LocalCluster's silence_logs
    logging.getLogger("distributed.nanny").addFilter(_Expected())
    if forked:
        dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
        # The fork server is ours, already running with its own preload: Dask would import numpy, pandas
        # and lz4 here to set one (private flag; should it go, those imports are all it costs).
        utils._forkserver_preload_set = True
    try:
        asyncio.run(_serve(commands, replies, forked))
    finally:  # multiprocessing's exit joins the workers, so none may be left; the fork server ends with us
        for child in multiprocessing.active_children():
            child.kill()
    return 0


if __name__ == "__main__":  # the worker processes import this module again as their main: it must do nothing
    sys.exit(main(sys.argv))
