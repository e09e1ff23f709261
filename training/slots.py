"""Training slots given back: ending a worker whose training thread is stuck, and Ctrl-C while cleaning up.

A Python thread cannot be stopped, so a trial or rank that hangs (or that nobody wants any more) keeps its
worker's only slot until the process ends. Ending the process from its event loop is immediate, and the
worker's nanny starts a fresh one in its place. Used by the coordinator (timeouts, Ctrl-C), DDP jobs
(Ctrl-C) and the scheduler's reaper (clients that vanish). No torch here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_GONE_TIMEOUT = 60.0  # how long to wait for an ended worker to leave the scheduler
_POLL = 0.2


async def end_process() -> None:
    """Runs on a worker's event loop (its task thread may be stuck): end the worker process at once; its
    nanny sees it die and starts a fresh worker in its place. (A nanny's own restart first asks the worker
    to close, which can wait on the stuck thread.)"""
    os._exit(75)


def free_workers(client: Any, workers: list[str]) -> None:
    """End the processes of ``workers`` so their nannies start fresh ones: the only way to stop a training
    thread, and so to give its slot back. Waits (bounded) until they are gone from the scheduler."""
    workers = sorted({w for w in workers if w})
    if not workers:
        return
    try:
        client.run(end_process, workers=workers, wait=False)
    except Exception as exc:  # e.g. the worker is already gone
        log.warning("Could not end worker %s to free its slot: %s", workers, exc)
        return
    wait_until_gone(client, workers)


def wait_until_gone(client: Any, workers: list[str], timeout: float = _GONE_TIMEOUT) -> None:
    """Wait (at most ``timeout`` seconds) until the ended ``workers`` have left the scheduler, so that no
    later request is sent to a process that is no more."""
    from cluster import ClusterError, cluster_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not set(workers) & set(cluster_workers(client)):
                return
        except ClusterError:  # the scheduler did not answer: ask again until the deadline
            pass
        time.sleep(_POLL)


def end_hung_processes(client: Any, workers: list[str]) -> None:
    """Kill the processes of ``workers`` from their nannies, which start fresh ones. SIGKILL is the one
    signal a stopped process obeys; its event loop cannot be asked to do anything. Bounded: best effort."""
    from cluster import ClusterError, cluster_workers

    try:
        known = cluster_workers(client)
    except ClusterError as exc:
        log.warning("Could not end the hung worker(s) %s (%s); restart them by hand.", sorted(workers), exc)
        return
    nannied = [w for w in workers if known.get(w, {}).get("nanny")]
    if set(workers) - set(nannied):  # started with --no-nanny, or already gone
        log.warning("Hung worker(s) %s have no nanny to end them: restart them by hand.",
                    sorted(set(workers) - set(nannied)))
    if not nannied:
        return
    try:
        client.sync(client._run, kill_worker_process, workers=nannied, nanny=True, callback_timeout=10)
    except Exception as exc:  # a nanny gone too
        log.warning("Could not end the hung worker(s) %s through their nannies (%s); restart them by hand.",
                    nannied, exc)
        return
    wait_until_gone(client, nannied)


def kill_worker_process(dask_worker: Any) -> None:
    """Run on a nanny: kill its worker process (the nanny notices and starts a fresh one). Lives in this
    light module because the nanny imports it to run it: a torch import there would cost seconds."""
    pid = getattr(dask_worker, "pid", None)
    if pid:
        os.kill(pid, signal.SIGKILL)


_CLEANING = [0]  # how many second_interrupt_exits blocks run now (main thread)


def cleaning_up() -> bool:
    """True while a sweep or DDP job cleans up after Ctrl-C (inside :func:`second_interrupt_exits`)."""
    return _CLEANING[0] > 0


@contextlib.contextmanager
def second_interrupt_exits(said: str = "") -> Iterator[None]:
    """While cleaning up after Ctrl-C (or SIGTERM), a second Ctrl-C exits at once, 130, and a second SIGTERM
    too, 143 (main thread only: where signals go), printing ``said`` (what is kept, what resumes it) first;
    an ignored SIGTERM stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    line = f"{said}\n".encode(errors="replace") if said else b""

    def exit_now(code: int) -> None:
        with contextlib.suppress(OSError):  # a closed stderr does not keep this process alive (never made
            os.write(2, line)  # non-blocking: a terminal's descriptor is the shell's too)
        os._exit(code)

    previous = signal.signal(signal.SIGINT, lambda *_: exit_now(130))
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, lambda *_: exit_now(128 + signal.SIGTERM))
    _CLEANING[0] += 1
    try:
        yield
    finally:
        _CLEANING[0] -= 1
        signal.signal(signal.SIGINT, previous)
        if previous_term is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, previous_term)


