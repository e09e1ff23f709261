"""One call of ``train_ddp`` on a cluster: where its ranks go, its first run and its automatic restarts.

Each run ("attempt") submits one task per rank, pinned to its worker, and hands them to the watcher
(``training.ddp_watch``). When an attempt fails and restarts are left, the job waits for free slot workers
(bounded), places the ranks again (on fewer when ``min_workers`` allows) and resumes every rank from the
client's copy of the checkpoint (``training.ddp_checkpoint``), so the history stays continuous.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed import Client, Future

from cluster import TRAINING_SLOT, cluster_workers

from .beats import BeatWatch
from .ddp_checkpoint import CheckpointCopy
from .ddp_watch import Attempt, RankWatcher
from .errors import ConfigError, DDPJobFailed, Interrupted
from .events import Inbox, publish
from .limits import clip, printable
from .protocol import JobEnded, JobRestarted, JobState, RankOutcome
from .rank import RankSpec, free_port, run_rank
from .slots import free_workers, second_interrupt_exits

if TYPE_CHECKING:
    from .ddp import DDPProgress, _Job

log = logging.getLogger(__name__)

_RESTART_WAIT = 120.0  # seconds a restart waits at most for --min-workers free slot workers
_POLL = 0.5


@dataclass(frozen=True)
class Placement:
    """Where one rank runs."""

    rank: int
    local_rank: int
    worker: str
    host: str


def _outcomes(attempt: Attempt, name_of: Callable[[int], str]) -> list[RankOutcome]:
    """The ranks' outcomes once every rank ended, each fetched within the job's timeout: a rank's worker that
    leaves just after the rank ended takes its outcome with it (pinned there, it would wait for that worker
    for ever), which fails this attempt, as a lost worker does."""
    deadline = time.monotonic() + attempt.timeout
    outcomes = []
    for placement, future in zip(attempt.placements, attempt.futures, strict=True):
        try:
            outcomes.append(future.result(timeout=max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            raise DDPJobFailed(
                f"rank {placement.rank} on {placement.worker} ({name_of(placement.rank)}): its worker left the "
                "cluster just after the rank ended, and its outcome with it.", rank=placement.rank,
                worker=placement.worker) from None
    return outcomes


def assign_ranks(workers: Mapping[str, str]) -> list[Placement]:
    """Ranks for ``{address: host}``: grouped by host (so local ranks count up per host), stable order.

    Examples
    --------
    >>> [(p.rank, p.local_rank, p.host) for p in assign_ranks({"b:2": "h2", "a:1": "h1", "c:3": "h1"})]
    [(0, 0, 'h1'), (1, 1, 'h1'), (2, 0, 'h2')]
    """
    ordered = sorted(workers.items(), key=lambda item: (item[1], item[0]))
    placements: list[Placement] = []
    per_host: dict[str, int] = {}
    for rank, (address, host) in enumerate(ordered):
        local = per_host.get(host, 0)
        per_host[host] = local + 1
        placements.append(Placement(rank, local, address, host))
    return placements


class JobRun:
    """One call of ``train_ddp`` on a cluster: its first attempt and its restarts, under one event token."""

    def __init__(self, job: _Job, client: Client, progress: DDPProgress) -> None:
        self.job, self.client, self.progress = job, client, progress
        self.token = uuid.uuid4().hex[:6]
        self.copy = CheckpointCopy(client, job.checkpoint, job.timeout)
        self.first_step: float | None = None
        self.restarts: list[str] = []
        self.current: Attempt | None = None

    def train(self, placements: list[Placement], backend: str) -> list[RankOutcome]:
        """Run the ranks; after a failure start again from the checkpoint, up to ``max_restarts`` times."""
        world, number = len(placements), 0
        while True:
            try:
                return self._attempt(number, placements, backend)
            except DDPJobFailed as failure:
                if failure.refused or number >= self.job.max_restarts:
                    raise self._final(failure) from None
                self.current = None  # its ranks ended; a Ctrl-C while waiting has nothing to cancel
                number += 1
                placements = self._wait_for_workers(world, str(failure))
                backend = backend_of(self.client, placements)
                self._announce_restart(number, failure.summary, placements)

    def _attempt(self, number: int, placements: list[Placement], backend: str) -> list[RankOutcome]:
        client, job, world = self.client, self.job, len(placements)
        head = placements[0]
        key = f"{self.token}.{number}"
        port = self._port(head)
        specs = [RankSpec(job=job.name, run=self.token, rank=p.rank, local_rank=p.local_rank, world_size=world,
                          init_method=f"tcp://{_url_host(head.host)}:{port}", backend=backend,
                          workload=job.workload, params=job.params, epochs=job.epochs, seed=job.seed,
                          timeout=job.timeout, record_samples=job.record_samples, host=p.host, attempt=number,
                          precision=job.precision)
                 for p in placements]
        state = self._send_checkpoint(placements)
        futures = [client.submit(run_rank, spec, state, key=f"ddp-{job.name}-{key}-rank{spec.rank}",
                                 workers=[p.worker], allow_other_workers=False, pure=False,
                                 resources={TRAINING_SLOT: 1}, retries=0)
                   for spec, p in zip(specs, placements, strict=True)]
        self.current = Attempt(job.name, self.token, number, job.timeout, futures, placements, self.copy.epoch)
        names = _worker_names(client)

        def name_of(rank: int) -> str:
            return names.get(placements[rank].worker, "?")

        try:
            with Inbox(client, self.token) as inbox, BeatWatch(client, self.token, world, number,
                                                               job.timeout) as beats:
                first = RankWatcher(client, self.current, inbox, beats, self.copy, self.progress,
                                    name_of).watch()
            self.first_step = self.first_step or first
            return _outcomes(self.current, name_of)
        finally:
            self.copy.remove_from(head.worker, job.name, key)
            for future in [*futures, *([state] if state is not None else [])]:
                future.release()

    def _port(self, head: Placement) -> int:
        """A free port on rank 0's worker; a worker that left meanwhile fails this attempt (restartable)."""
        future = self.client.submit(free_port, head.host, workers=[head.worker], allow_other_workers=False,
                                    pure=False, key=f"ddp-{self.job.name}-port-{uuid.uuid4().hex[:6]}")
        try:
            return int(future.result(self.job.timeout))
        except Exception as exc:
            future.cancel()
            raise DDPJobFailed(f"rank 0 on {head.worker}: its worker did not answer within {self.job.timeout:g} s "
                               f"({type(exc).__name__}: {exc}).", rank=0, worker=head.worker) from None

    def _send_checkpoint(self, placements: list[Placement]) -> Future | None:
        """The client's checkpoint, once on each rank's worker (None before the first epoch): no shared disk."""
        data = self.copy.data()
        if data is None:
            return None
        try:
            return self.client.scatter(data, workers=[p.worker for p in placements], broadcast=True, hash=False,
                                       timeout=self.job.timeout)
        except Exception as exc:  # a worker left meanwhile: this attempt fails, a restart may follow
            raise DDPJobFailed(f"the checkpoint could not be sent to the ranks' workers ({type(exc).__name__}: "
                               f"{exc}).", rank=0, worker=placements[0].worker) from None

    def _wait_for_workers(self, world: int, reason: str) -> list[Placement]:
        """Free slot workers for the restart: ``world`` of them within ``timeout`` seconds, else as many as
        are free once at least ``min_workers`` are (waiting up to ``_RESTART_WAIT`` for those)."""
        job = self.job
        least = job.min_workers or world
        started, before = time.monotonic(), None
        while True:
            free = _free_slot_workers(self.client)
            waited = time.monotonic() - started
            usable = [n for n in range(min(len(free), world), least - 1, -1) if job.params["batch_size"] % n == 0]
            settled, before = free == before, free  # the same workers twice in a row: none is just leaving
            if settled and usable and (usable[0] == world or waited >= job.timeout):
                return assign_ranks(dict(list(free.items())[:usable[0]]))
            if waited >= max(job.timeout, _RESTART_WAIT):
                raise self._final(DDPJobFailed(
                    f"{reason} Restarting needs {least} free slot worker(s) (--min-workers) but {len(free)} "
                    f"were free after {waited:.0f} s.", rank=-1, worker=""))
            time.sleep(_POLL)

    def _announce_restart(self, number: int, reason: str, placements: list[Placement]) -> None:
        self.restarts.append(reason)
        log.info("DDP job %r restarts (%d of %d) from epoch %d on %d ranks: %s", self.job.name, number,
                    self.job.max_restarts, self.copy.epoch, len(placements), reason)
        self.progress.on_restart(number, self.job.max_restarts, reason, placements, self.copy.epoch)
        publish(self.client, JobRestarted(self.job.name, self.token, time=time.time(), attempt=number,
                                          reason=clip(reason, 500), world_size=len(placements),
                                          epoch=self.copy.epoch))
        self.job.announce(self.client, self.token, placements)

    def _final(self, failure: DDPJobFailed) -> DDPJobFailed | ConfigError:
        """The job's error: what failed, the restarts spent, and what the checkpoint lets you do; a rank that
        refused its input (its data, checkpoint or device) is the user's to fix: a :class:`ConfigError`."""
        epoch, path = self.copy.epoch, self.job.checkpoint
        spent = (f"It had restarted {len(self.restarts)} time(s) (--max-restarts {self.job.max_restarts}). "
                 if self.restarts else "")
        advice = (f"The checkpoint at {path} holds epoch {epoch}: rerun with --resume (resume=True) to continue "
                  "from it." if epoch else "No epoch had finished; nothing to resume.")
        if failure.refused:
            return ConfigError(f"DDP job '{self.job.name}': {str(failure).strip()} {spent}{advice}")
        return DDPJobFailed(f"DDP job '{self.job.name}' failed: {str(failure).strip()} {spent}{advice}",
                            rank=failure.rank, worker=failure.worker)

    def interrupted(self) -> Interrupted:
        """Ctrl-C: cancel the ranks, free their workers, say what the checkpoint keeps."""
        current = self.current
        workers = [p.worker for p in current.placements] if current else []
        kept = (f"; {printable(str(self.job.checkpoint))} keeps epoch {self.copy.epoch} (the same command with "
                "--resume goes on from it)" if self.copy.epoch else "")
        again = f"Interrupted again: DDP job '{printable(self.job.name)}' stopped at once{kept}."
        with second_interrupt_exits(again):
            if current is not None:
                self.client.cancel(current.futures, force=True)
            free_workers(self.client, workers)
        publish(self.client, JobEnded(self.job.name, self.token, state=JobState.STOPPED, error="interrupted"))
        epoch, path = self.copy.epoch, self.job.checkpoint
        return Interrupted(f"DDP job '{self.job.name}' stopped and its {len(workers)} workers freed; "
                           + (f"{path} keeps epoch {epoch}." if epoch else "no epoch had finished."))


def backend_of(client: Client, placements: list[Placement]) -> str:
    """nccl when every rank's worker trains on a GPU, gloo otherwise."""
    kinds = client.run(_device_kind, workers=[p.worker for p in placements])
    return "nccl" if all(kinds.get(p.worker) == "cuda" for p in placements) else "gloo"


def _device_kind(dask_worker) -> str:
    plugin = dask_worker.plugins.get("dask-train")
    return plugin.describe().get("kind", "cpu") if plugin is not None else "cpu"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_slot_workers(client: Client) -> dict[str, str]:
    """Slot workers running nothing now, by address, with their hosts, in address order."""
    workers = cluster_workers(client)
    busy = {w for w, keys in client.processing().items() if keys}
    return {a: str(workers[a]["host"]) for a in sorted(workers)
            if workers[a].get("resources", {}).get(TRAINING_SLOT) and a not in busy}


def _worker_names(client: Client) -> dict[str, str]:
    """Worker names (``cpu-1``) by address: what people know a worker by."""
    return {a: str(w.get("name") or a) for a, w in cluster_workers(client).items()}
