"""Training slots outlive no client: a scheduler plugin that restarts the workers still running the trials
or DDP ranks of a client that left (killed, lost its network, closed without cleaning up).

When a client goes, Dask releases its tasks, but a task already running is a Python thread that nothing
can stop: the worker keeps training for nobody, holding its only slot, and a later sweep's task waits
behind it. The reaper remembers which worker runs which training task for which clients, and when the
last of those clients is removed, ends that worker's process: its nanny starts a fresh one. Runs inside
the scheduler: no torch. Installed with the Training page (:func:`training.dashboard.enable_page`, or
``--preload training.dashboard``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger(__name__)

NAME = "dask-train-reaper"
#: Task keys of training work: sweep trials and DDP ranks (see the coordinator and ddp modules).
TRAINING_PREFIXES = ("trial-", "ddp-")


class Reaper(SchedulerPlugin):
    """Restarts the workers of training tasks whose clients all left while they ran.

    Examples
    --------
    >>> reaper = Reaper()
    >>> reaper.released["trial-s-0001"] = ("tcp://w:1", {"client-a"})
    >>> reaper.orphaned_by("client-a")
    ['tcp://w:1']
    """

    name = NAME

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.running: dict[str, tuple[str, set[str]]] = {}  # key -> (worker, clients wanting it)
        self.released: dict[str, tuple[str, set[str]]] = {}  # running keys released without a result

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if not (isinstance(key, str) and key.startswith(TRAINING_PREFIXES)):
            return
        if finish == "processing" and self.scheduler is not None:
            task = self.scheduler.tasks.get(key)
            if task is not None and task.processing_on is not None:
                wanted = {c.client_key for c in task.who_wants or ()}
                self.running[key] = (task.processing_on.address, wanted)
        elif start == "processing":
            entry = self.running.pop(key, None)
            if entry is not None and finish in ("released", "forgotten"):
                self.released[key] = entry

    def remove_client(self, scheduler: Any, client: str) -> None:
        workers = [w for w in self.orphaned_by(client) if w in scheduler.workers]  # not restarted already
        if workers:
            log.warning("Client %s left while %s ran training tasks for it: ending them (their nannies "
                        "start fresh workers) to free their slots.", client, workers)
            asyncio.get_running_loop().create_task(self._end(scheduler, workers))

    def orphaned_by(self, client: str) -> list[str]:
        """Workers whose released training task only ``client`` wanted (forgotten here once named)."""
        keys = [k for k, (_, wanted) in self.released.items() if wanted <= {client}]
        return sorted({self.released.pop(k)[0] for k in keys})

    async def _end(self, scheduler: Any, workers: list[str]) -> None:
        from distributed.protocol.pickle import dumps

        from .slots import end_process

        message = {"op": "run", "function": dumps(end_process), "args": dumps(()), "kwargs": dumps({}),
                   "wait": False}
        try:
            await scheduler.broadcast(msg=message, workers=workers, on_error="return")
        except Exception:  # logged, never raised into the scheduler
            log.exception("Could not end workers %s", workers)


def install(scheduler: Any) -> None:
    """Add the reaper to ``scheduler`` once."""
    if not isinstance(scheduler.plugins.get(NAME), Reaper):
        reaper = Reaper()
        reaper.scheduler = scheduler
        scheduler.add_plugin(reaper, name=NAME)
