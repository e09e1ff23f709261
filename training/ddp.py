"""Train one model on several workers with DistributedDataParallel, launched and watched through Dask.

Ranks go to distinct workers holding one training slot each (grouped by host for local ranks); rank 0's
worker picks a free port; every rank builds the same data under the same seed and trains a disjoint shard
of each global batch; validation sums are all-reduced. Rank 0 reports each epoch as a Dask event and saves
a checkpoint on its own worker, which the client copies into the run directory (no shared disk needed:
``training.ddp_checkpoint``). Every rank beats (``training.beats``): a lost worker, a failing rank or a hung
one ends the run within about ``timeout`` seconds with an error that names it (``training.ddp_watch``).
With ``max_restarts`` the job then waits for slot workers and resumes from the client's checkpoint, on
fewer ranks if ``min_workers`` allows; ``resume=True`` continues a job that ended.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client

from cluster import TRAINING_SLOT, Target, open_client, require_slots

from .beats import BeatWatch
from .dashboard import enable_page
from .ddp_checkpoint import CheckpointCopy
from .ddp_watch import Attempt, RankWatcher
from .errors import ConfigError, DDPJobFailed, Interrupted
from .events import Inbox, publish
from .limits import MAX_RESTARTS, check_count, clip
from .loop import _check_epochs
from .model_file import TrainedModel, save_model
from .params import resolve
from .protocol import JobAnnounced, JobEnded, JobRestarted, JobState, RankOutcome, TrialState
from .rank import RankSpec, free_port, run_rank
from .slots import free_workers, second_interrupt_exits
from .sweep_spec import NAME_PATTERN
from .workloads import get_workload, workload_ref

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


@dataclass
class DDPResult:
    """The trained model (on the CPU), its per-epoch history and where its files are. ``placements``: the
    ranks of the last run; ``restarts``: why each automatic restart happened, in order."""

    trained: TrainedModel
    run_dir: Path
    model_dir: Path
    placements: list[Placement]
    seconds: float
    first_step_seconds: float | None
    rank_outputs: list[RankOutcome]
    restarts: list[str] = field(default_factory=list)

    @property
    def model(self):
        return self.trained.model

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.trained.history


class DDPProgress:
    """Hooks ``train_ddp`` calls; the CLI's display subclasses this."""

    def on_start(self, name: str, placements: list[Placement], backend: str, dashboard: str | None,
                 resumed: bool) -> None:
        """After rendezvous details are fixed, before the ranks start."""

    def on_page(self, url: str | None) -> None:
        """Right after on_start: the dashboard's Training page (None where the scheduler cannot serve it)."""

    def on_epoch(self, record: dict[str, Any]) -> None:
        """Rank 0 finished an epoch (its checkpoint is already on the client)."""

    def on_restart(self, attempt: int, max_restarts: int, reason: str, placements: list[Placement],
                   epoch: int) -> None:
        """The job failed and starts again (``attempt`` of ``max_restarts``) from epoch ``epoch``."""


def train_ddp(client: Client | None = None, workload: str = "names", params: Mapping[str, Any] | None = None,
              *, epochs: int | None = None, workers: int | Sequence[str] | None = None, name: str | None = None,
              runs_dir: str = "runs", seed: int = 0, resume: bool = False, timeout: float = 60.0,
              progress: DDPProgress | bool | None = None, target: Target | None = None,
              record_samples: bool = False, max_restarts: int = 0, min_workers: int | None = None) -> DDPResult:
    """Train ``workload`` with DDP on ``workers`` (a count or addresses; default every free slot worker).

    Everything the user gave is validated before any rank starts. Without ``client`` the job runs on
    ``target`` (default: an embedded local cluster, closed afterwards). ``timeout``: seconds a collective
    may wait and a rank may stay silent. ``max_restarts``: how many times a failed job starts again by
    itself from its last checkpoint; it waits up to ``timeout`` seconds for as many slot workers as it
    started with, then goes on with fewer if ``min_workers`` allows (the global batch stays the same).

    Examples
    --------
    >>> result = train_ddp(client, "names", {"corpus": "first"}, epochs=2, workers=2)  # doctest: +SKIP
    >>> result.model, result.history[-1]["val_loss"], result.model_dir  # doctest: +SKIP
    >>> train_ddp(client, "xor", epochs=9, max_restarts=2, min_workers=1).restarts  # doctest: +SKIP
    []
    """
    work = get_workload(workload)
    resolved = resolve(work.params, params or {}, owner=work.name)
    job = _Job(name=name or f"{work.name}-ddp", workload=workload_ref(work), params=resolved,
               runs_dir=Path(runs_dir),
               epochs=_check_epochs(epochs if epochs is not None else work.default_epochs), seed=seed,
               resume=resume, timeout=float(timeout), record_samples=record_samples,
               max_restarts=max_restarts, min_workers=min_workers)
    job.validate()
    job.check_world(workers if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0
                    else len(workers) if isinstance(workers, Sequence) and workers else None)
    hooks = _progress_hooks(progress)
    if client is not None:
        return job.run(client, workers, hooks)
    target = dataclasses.replace(target or Target(), preload=("training.rank",))
    with open_client(target) as own:
        return job.run(own, workers, hooks)


def _progress_hooks(progress: DDPProgress | bool | None) -> DDPProgress:
    """By default (None or True) the job's progress is printed (``training.ddp_progress``); False: silent."""
    if progress is None or progress is True:
        from .ddp_progress import LiveDDP

        return LiveDDP()
    return progress if isinstance(progress, DDPProgress) else DDPProgress()


@dataclass
class _Job:
    name: str
    workload: str
    params: dict[str, Any]
    runs_dir: Path
    epochs: int
    seed: int
    resume: bool
    timeout: float
    record_samples: bool
    max_restarts: int = 0
    min_workers: int | None = None

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def validate(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"Job name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'.")
        if not self.timeout > 0:
            raise ConfigError(f"timeout={self.timeout!r}: must be a positive number of seconds.")
        check_count("max_restarts", self.max_restarts, MAX_RESTARTS, low=0)
        if self.min_workers is not None:
            check_count("min_workers", self.min_workers, 100_000)
        from .run_dirs import DDP_MARKERS, check_run_dir

        check_run_dir(self.run_dir, DDP_MARKERS)
        if self.resume and not self.checkpoint.is_file():
            raise ConfigError(f"Nothing to resume: {self.checkpoint} does not exist. Run without --resume first.")
        if not self.resume and self.checkpoint.is_file():
            raise ConfigError(f"{self.run_dir} already holds a DDP run (checkpoint.pt). Pass --resume to "
                              "continue it, or choose another --name.")

    def check_world(self, world: int | None) -> None:
        """The first run's rank count fits the batch size and ``min_workers`` (None: not known yet)."""
        if world is None:
            return
        if self.params["batch_size"] % world:
            raise ConfigError(f"batch_size={self.params['batch_size']} does not split evenly over {world} ranks; "
                              f"use a multiple of {world}.")
        if self.min_workers is not None and self.min_workers > world:
            raise ConfigError(f"min_workers={self.min_workers} is more than the {world} ranks the job starts "
                              f"with; use --min-workers {world} or fewer.")

    def run(self, client: Client, workers: int | Sequence[str] | None, progress: DDPProgress) -> DDPResult:
        started = time.time()
        placements = _choose(client, workers)
        self.check_world(len(placements))
        backend = _backend(client, placements)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = _Run(self, client, progress)
        from cluster import dashboard_url

        page = enable_page(client)
        progress.on_start(self.name, placements, backend, dashboard_url(client), self.resume)
        progress.on_page(page)
        self.announce(client, run.token, placements)
        try:
            outputs = run.train(placements, backend)
        except KeyboardInterrupt:
            raise run.interrupted() from None
        except BaseException as exc:
            publish(client, JobEnded(self.name, run.token, state=JobState.FAILED, error=str(exc)))
            raise
        publish(client, JobEnded(self.name, run.token, state=JobState.FINISHED))
        return self._finish(outputs, run, started)

    def announce(self, client: Client, token: str, placements: list[Placement]) -> None:
        """Tell the Training page about this job: one row per rank, where it runs."""
        work = get_workload(self.workload)
        ranks = [{"number": p.rank, "worker": p.worker, "state": TrialState.RUNNING.value, "params": self.params}
                 for p in placements]
        publish(client, JobAnnounced(self.name, token, time=time.time(), type="ddp", workload=self.workload,
                                     metric=work.metric, mode=work.mode, epochs=self.epochs, total=len(placements),
                                     client=client.id, params=self.params, trials=ranks))

    def _finish(self, outputs: list[RankOutcome], run: _Run, started: float) -> DDPResult:
        """The model of rank 0's best epoch (``model/``); the last epoch's state stays in checkpoint.pt."""
        head = outputs[0]
        placements = run.current.placements if run.current else []
        work = get_workload(self.workload)
        model = work.build_model(self.params, head.meta)
        model.load_state_dict(head.state_dict or {})
        trained = TrainedModel(self.workload, self.params, head.meta, head.artifacts, list(head.history),
                               model.eval(), self.seed, extra={"ddp": self.name, "world_size": len(placements)},
                               best_epoch=head.best_epoch)
        model_dir = save_model(trained, self.run_dir / "model")
        first_step = None if run.first_step is None else run.first_step - started
        return DDPResult(trained, self.run_dir, model_dir, placements, time.time() - started, first_step,
                         outputs, list(run.restarts))


class _Run:
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
                if number >= self.job.max_restarts:
                    raise self._final(failure) from None
                number += 1
                placements = self._wait_for_workers(world, str(failure))
                backend = _backend(self.client, placements)
                self._announce_restart(number, str(failure), placements)

    def _attempt(self, number: int, placements: list[Placement], backend: str) -> list[RankOutcome]:
        client, job, world = self.client, self.job, len(placements)
        head = placements[0]
        key = f"{self.token}.{number}"
        port = client.submit(free_port, head.host, workers=[head.worker], allow_other_workers=False,
                             pure=False, key=f"ddp-{job.name}-port-{uuid.uuid4().hex[:6]}").result(job.timeout)
        specs = [RankSpec(job=job.name, run=self.token, rank=p.rank, local_rank=p.local_rank, world_size=world,
                          init_method=f"tcp://{_url_host(head.host)}:{port}", backend=backend,
                          workload=job.workload, params=job.params, epochs=job.epochs, seed=job.seed,
                          timeout=job.timeout, record_samples=job.record_samples, host=p.host, attempt=number)
                 for p in placements]
        data = self.copy.data()  # the client's checkpoint goes to every rank: no shared disk needed
        state = (client.scatter(data, workers=[p.worker for p in placements], broadcast=True, hash=False)
                 if data is not None else None)
        futures = [client.submit(run_rank, spec, state, key=f"ddp-{job.name}-{key}-rank{spec.rank}",
                                 workers=[p.worker], allow_other_workers=False, pure=False,
                                 resources={TRAINING_SLOT: 1}, retries=0)
                   for spec, p in zip(specs, placements, strict=True)]
        self.current = Attempt(job.name, self.token, number, job.timeout, futures, placements, self.copy.epoch)
        names = _worker_names(client)
        try:
            with Inbox(client, self.token) as inbox, BeatWatch(client, self.token, world, number,
                                                               job.timeout) as beats:
                first = RankWatcher(client, self.current, inbox, beats, self.copy, self.progress,
                                    lambda r: names.get(placements[r].worker, "?")).watch()
            self.first_step = self.first_step or first
            return client.gather(futures)
        finally:
            self.copy.remove_from(head.worker, job.name, key)
            for future in [*futures, *([state] if state is not None else [])]:
                future.release()

    def _wait_for_workers(self, world: int, reason: str) -> list[Placement]:
        """Free slot workers for the restart: ``world`` of them within ``timeout`` seconds, else as many as
        are free once at least ``min_workers`` are (waiting up to ``_RESTART_WAIT`` for those)."""
        job = self.job
        least = job.min_workers or world
        started = time.monotonic()
        while True:
            free = _free_slot_workers(self.client)
            waited = time.monotonic() - started
            usable = [n for n in range(min(len(free), world), least - 1, -1) if job.params["batch_size"] % n == 0]
            if usable and (usable[0] == world or waited >= job.timeout):
                hosts = {w: i["host"] for w, i in self.client.scheduler_info(n_workers=-1)["workers"].items()}
                return assign_ranks({w: hosts[w] for w in free[:usable[0]]})
            if waited >= max(job.timeout, _RESTART_WAIT):
                raise self._final(DDPJobFailed(
                    f"{reason} Restarting needs {least} free slot worker(s) (--min-workers) but {len(free)} "
                    f"were free after {waited:.0f} s.", rank=-1, worker=""))
            time.sleep(_POLL)

    def _announce_restart(self, number: int, reason: str, placements: list[Placement]) -> None:
        self.restarts.append(reason)
        log.warning("DDP job '%s' restarts (%d of %d) from epoch %d on %d ranks: %s", self.job.name, number,
                    self.job.max_restarts, self.copy.epoch, len(placements), reason)
        self.progress.on_restart(number, self.job.max_restarts, reason, placements, self.copy.epoch)
        publish(self.client, JobRestarted(self.job.name, self.token, time=time.time(), attempt=number,
                                          reason=clip(reason, 500), world_size=len(placements),
                                          epoch=self.copy.epoch))
        self.job.announce(self.client, self.token, placements)

    def _final(self, failure: DDPJobFailed) -> DDPJobFailed:
        """The job's error: what failed, the restarts spent, and what the checkpoint lets you do."""
        epoch, path = self.copy.epoch, self.job.checkpoint
        spent = (f"It had restarted {len(self.restarts)} time(s) (--max-restarts {self.job.max_restarts}). "
                 if self.restarts else "")
        advice = (f"The checkpoint at {path} holds epoch {epoch}: rerun with --resume (resume=True) to continue "
                  "from it." if epoch else "No epoch had finished; nothing to resume.")
        return DDPJobFailed(f"DDP job '{self.job.name}' failed: {str(failure).strip()} {spent}{advice}",
                            rank=failure.rank, worker=failure.worker)

    def interrupted(self) -> Interrupted:
        """Ctrl-C: cancel the ranks, free their workers, say what the checkpoint keeps."""
        current = self.current
        workers = [p.worker for p in current.placements] if current else []
        with second_interrupt_exits():
            if current is not None:
                self.client.cancel(current.futures, force=True)
            free_workers(self.client, workers)
        publish(self.client, JobEnded(self.job.name, self.token, state=JobState.STOPPED, error="interrupted"))
        epoch, path = self.copy.epoch, self.job.checkpoint
        return Interrupted(f"DDP job '{self.job.name}' stopped and its {len(workers)} workers freed; "
                           + (f"{path} keeps epoch {epoch}." if epoch else "no epoch had finished."))


def _choose(client: Client, workers: int | Sequence[str] | None) -> list[Placement]:
    """Free slot workers for the ranks: a count, explicit addresses, or all of them."""
    slotted = require_slots(client)
    busy = {w for w, keys in client.processing().items() if keys}
    free = [w for w in slotted if w not in busy]
    hosts = {w: info["host"] for w, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    if workers is None:
        chosen = free
    elif isinstance(workers, int):
        if isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers={workers!r}: need at least 1 rank.")
        if workers > len(free):
            raise ConfigError(f"Asked for {workers} DDP ranks but only {len(free)} of the {len(slotted)} workers "
                              "with a training slot are free. Use --workers "
                              f"{len(free) or 1}, wait for running work to finish, or add workers.")
        chosen = free[:workers]
    else:
        unknown = [w for w in workers if w not in free]
        if unknown:
            raise ConfigError(f"Workers {unknown} are not free workers with a training slot (free: {free}).")
        chosen = list(dict.fromkeys(workers))
    if not chosen:
        raise ConfigError(f"No free worker with a training slot ({len(slotted)} slot workers, all busy).")
    return assign_ranks({w: hosts[w] for w in chosen})


def _backend(client: Client, placements: list[Placement]) -> str:
    """nccl when every rank's worker trains on a GPU, gloo otherwise."""
    kinds = client.run(_device_kind, workers=[p.worker for p in placements])
    return "nccl" if all(kinds.get(p.worker) == "cuda" for p in placements) else "gloo"


def _device_kind(dask_worker) -> str:
    plugin = dask_worker.plugins.get("dask-train")
    return plugin.describe().get("kind", "cpu") if plugin is not None else "cpu"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_slot_workers(client: Client) -> list[str]:
    """Slot workers running nothing now (none while every one of them is still rejoining)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    busy = {w for w, keys in client.processing().items() if keys}
    return sorted(a for a, w in workers.items() if w.get("resources", {}).get(TRAINING_SLOT) and a not in busy)


def _worker_names(client: Client) -> dict[str, str]:
    """Worker names (``cpu-1``) by address: what people know a worker by."""
    return {a: str(w.get("name") or a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
