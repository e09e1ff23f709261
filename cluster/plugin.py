"""Worker setup as a Dask worker plugin: record the worker's device, size torch's thread pool, and allow
DataLoader subprocesses (Dask workers are daemonic, and daemonic processes may not have children).

Torch's thread count follows ``cluster.cpus``: ``DASK_TRAIN_TORCH_THREADS`` in the environment the worker
was started with, else the CPUs the worker process may use divided among the ``DASK_TRAIN_SLOT_WORKERS``
started on them. The plugin only reads the environment; it never writes it.

Importing torch takes seconds, so setup starts it on a background thread and returns at once: the
cluster is usable immediately and the first task finds torch already (or nearly) imported.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from typing import Any

from distributed import WorkerPlugin
from distributed.core import Status
from distributed.worker import Worker

from .cpus import torch_threads as threads_for_environ

log = logging.getLogger(__name__)

PLUGIN_NAME = "dask-train"
#: The worker resource every worker offers once: one trial or one DDP rank at a time.
TRAINING_SLOT = "training_slot"
_DESCRIBE_TIMEOUT = 120.0


class TrainingWorkerPlugin(WorkerPlugin):
    """Prepares a worker for training; register once per client with ``client.register_plugin``.

    Parameters
    ----------
    torch_threads : int, optional
        Intra-op threads for torch on every worker. Default: each worker's own, from its environment and
        CPUs (``DASK_TRAIN_TORCH_THREADS``, else its share of its CPUs; see ``cluster.cpus``).
    allow_subprocesses : bool
        Let training code start processes (``DataLoader(num_workers=...)``) on a daemonic worker.
    preload : tuple of str
        Modules the warm-up thread imports after torch (e.g. the trial runner), so a first task finds
        them loaded.

    Examples
    --------
    >>> plugin = TrainingWorkerPlugin(torch_threads=1)
    >>> plugin.name
    'dask-train'
    """

    name = PLUGIN_NAME

    def __init__(self, torch_threads: int | None = None, allow_subprocesses: bool = True,
                 preload: tuple[str, ...] = ()) -> None:
        self.torch_threads = torch_threads
        self.allow_subprocesses = allow_subprocesses
        self.preload = tuple(preload)
        self.threads = torch_threads or 1
        self.device: dict[str, Any] = {}
        self._ready: threading.Event | None = None  # created on the worker: events do not pickle

    def setup(self, worker: Worker) -> None:
        if self.allow_subprocesses:
            _allow_children()
        if worker.nanny and threading.current_thread() is threading.main_thread():
            # Ctrl-C in a terminal signals the whole process group. A nanny owns this process and closes
            # it; without this, every worker prints a KeyboardInterrupt traceback on the way down.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        logging.getLogger("distributed.worker").addFilter(HEARTBEAT_WHILE_CLOSING)
        _WORKERS.add(worker)
        logging.getLogger("distributed.worker.state_machine").addFilter(CANCELLED_WHILE_CLOSING)
        self.threads = self.torch_threads or threads_for_environ()
        self._ready = threading.Event()
        threading.Thread(target=self._warm_up, name="dask-train-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.device = describe_device(self.threads)
            for module in self.preload:
                _preload(module)
            _exercise_torch()
        except Exception as exc:  # a broken CUDA install must show up in `cluster info`, not kill the worker
            log.exception("dask-train: could not describe this worker's device")
            self.device = {"kind": "error", "name": f"{type(exc).__name__}: {exc}", "memory": 0}
        finally:
            assert self._ready is not None
            self._ready.set()

    def warm(self) -> bool:
        """Whether the warm-up (torch, the preloaded modules) has finished; does not wait."""
        return self._ready is not None and self._ready.is_set()

    def describe(self, timeout: float = _DESCRIBE_TIMEOUT) -> dict[str, Any]:
        """This worker's device, waiting for the warm-up if it is still importing torch."""
        if self._ready is None:
            raise RuntimeError("the dask-train plugin has not been set up on this worker")
        if not self._ready.wait(timeout):
            raise TimeoutError(f"dask-train worker warm-up did not finish in {timeout:.0f}s")
        return self.device


class _HeartbeatWhileClosing(logging.Filter):
    """A heartbeat in flight as the cluster stops fails on a connection closed under it, the worker's own
    (``CommClosedError: ConnectionPool closing.``) or the closing scheduler's (``... Stream is closed``),
    and Dask logs it as an error with its traceback ("Failed to communicate with scheduler during
    heartbeat"): not news, so debug level only (a scheduler that really went away ends the worker's
    stream to it, and the worker stops saying so: "Reason: worker-handle-scheduler-connection-broken").
    A heartbeat that cannot reach its scheduler (a connect timing out or refused) is shown as before, unless
    its worker is closing (its client was killed, and the scheduler with it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Failed to communicate with scheduler during heartbeat") and \
                (type(error).__name__ == "CommClosedError" or _a_worker_closing()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


HEARTBEAT_WHILE_CLOSING = _HeartbeatWhileClosing()  # one instance: a second setup adds no second filter

_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()  # the workers of this process with our plugin


def _a_worker_closing() -> bool:
    """Whether a worker of this process (with our plugin) is closing or closed."""
    return any(w.status in (Status.closing, Status.closed) for w in _WORKERS)


class _CancelledWhileClosing(logging.Filter):
    """A worker that closes while it trains (its cluster ends under a sweep whose client was killed, or a
    nanny ends it) cancels the running task, and Dask warns "Async instruction for <Task ...
    execute('trial-...')> ended with CancelledError" for each: not news from a closing worker, so debug
    level only (``-vv`` still has it). From a worker that is not closing it is shown as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Async instruction for") and message.endswith("ended with CancelledError") and \
                _a_worker_closing():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


CANCELLED_WHILE_CLOSING = _CancelledWhileClosing()  # one instance, as HEARTBEAT_WHILE_CLOSING


def _preload(module: str) -> None:
    """Import ``module`` ahead of the first task; a failure is the task's to report, not the worker's."""
    try:
        importlib.import_module(module)
    except Exception:
        log.warning("dask-train: could not preload %s; the first task that needs it will say why", module,
                    exc_info=True)


def _exercise_torch() -> None:
    """Train a tiny model for two steps (Adam, then SGD), save and load its state, and evaluate it, on this
    worker's device: a process's first optimizer step imports ``torch._dynamo`` (seconds on a small CPU),
    and autograd, the optimizers' code and serialisation each have a first-use cost. Paid here, while the
    cluster starts, a worker's first trial costs what its later ones do. A failure is logged: the first
    task then pays it, or reports it."""
    import io

    import torch
    from torch import nn

    try:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)).to(device)
        x, y = torch.ones(2, 4, device=device), torch.zeros(2, 1, device=device)
        for optimizer in (torch.optim.Adam(model.parameters()), torch.optim.SGD(model.parameters(), momentum=0.9)):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
            buffer.seek(0)
            state = torch.load(buffer, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            model.eval()(x)
    except Exception:
        log.warning("dask-train: the torch warm-up on this worker failed; its first task pays the start-up",
                    exc_info=True)


def _allow_children() -> None:
    """Clear the daemon flag of this (worker) process so it may start child processes.

    Dask starts workers as daemonic processes and multiprocessing refuses children to those; the nanny
    still ends the worker's process tree when it closes.
    """
    process = multiprocessing.current_process()
    if process.daemon:
        process._config["daemon"] = False  # type: ignore[attr-defined]  # the setter refuses a started process


def describe_device(threads: int) -> dict[str, Any]:
    """What this process trains on: a GPU (name, memory, id) or the CPU (cores, threads), as plain JSON."""
    import torch

    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        return {"kind": "cuda", "name": props.name, "memory": int(props.total_memory), "gpu": visible,
                "threads": threads}
    return {"kind": "cpu", "name": f"cpu ({threads} thread{'s' if threads > 1 else ''})", "memory": 0,
            "threads": threads}


def worker_plugin() -> TrainingWorkerPlugin | None:
    """The plugin on the worker running the current task (None outside a dask-train worker)."""
    from distributed import get_worker

    try:
        return get_worker().plugins.get(PLUGIN_NAME)  # type: ignore[return-value]
    except ValueError:  # not inside a worker task
        return None


def prepare_task_thread() -> dict[str, Any]:
    """Call at the top of a training task: sizes torch's thread pool for this thread (torch's OpenMP
    setting is per thread) and returns the worker's device description."""
    import torch

    plugin = worker_plugin()
    if plugin is None:
        return describe_device(torch.get_num_threads())
    torch.set_num_threads(plugin.threads)
    return plugin.describe()
