"""Train one model on several workers with DistributedDataParallel, launched and watched through Dask.

Ranks go to distinct workers holding one training slot each (grouped by host for local ranks); rank 0's
worker picks a free port; every rank builds the same data under the same seed and trains a disjoint shard
of each global batch; validation sums are all-reduced. Rank 0 reports each epoch as a Dask event, writes
a checkpoint each epoch and returns the model. A lost worker or a failing rank ends the whole job within
``timeout`` seconds with an error that names it; ``resume=True`` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, Future, wait

from cluster import TRAINING_SLOT, Target, open_client, require_slots

from .dashboard import enable_page
from .errors import ConfigError, DDPJobFailed, Interrupted
from .events import Inbox, publish
from .loop import _check_epochs
from .model_file import TrainedModel, save_model
from .params import check_data_paths, resolve
from .protocol import EpochEnded, FirstStep, JobAnnounced, JobEnded, JobState, RankOutcome, TrialState
from .rank import RankSpec, free_port, run_rank
from .slots import free_workers, second_interrupt_exits
from .sweep_spec import NAME_PATTERN
from .workloads import get_workload, workload_ref

log = logging.getLogger(__name__)

_POLL = 0.2
_WORKER_CHECK_EVERY = 1.0


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
    """The trained model (on the CPU), its per-epoch history and where its files are."""

    trained: TrainedModel
    run_dir: Path
    model_dir: Path
    placements: list[Placement]
    seconds: float
    first_step_seconds: float | None
    rank_outputs: list[RankOutcome]

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
        """Rank 0 finished an epoch."""


def train_ddp(client: Client | None = None, workload: str = "names", params: Mapping[str, Any] | None = None,
              *, epochs: int | None = None, workers: int | Sequence[str] | None = None, name: str | None = None,
              runs_dir: str = "runs", seed: int = 0, resume: bool = False, timeout: float = 60.0,
              progress: DDPProgress | bool | None = None, target: Target | None = None,
              record_samples: bool = False) -> DDPResult:
    """Train ``workload`` with DDP on ``workers`` (a count or addresses; default every free slot worker).

    Everything the user gave is validated before any rank starts. Without ``client`` the job runs on
    ``target`` (default: an embedded local cluster, closed afterwards).

    Examples
    --------
    >>> result = train_ddp(client, "names", {"corpus": "first"}, epochs=2, workers=2)  # doctest: +SKIP
    >>> result.model, result.history[-1]["val_loss"], result.model_dir  # doctest: +SKIP
    """
    work = get_workload(workload)
    resolved = resolve(work.params, params or {}, owner=work.name)
    job = _Job(name=name or f"{work.name}-ddp", workload=workload_ref(work), params=resolved,
               runs_dir=Path(runs_dir),
               epochs=_check_epochs(epochs if epochs is not None else work.default_epochs), seed=seed,
               resume=resume, timeout=float(timeout), record_samples=record_samples)
    job.validate()
    check_data_paths(work.params, [resolved], here=client is None and (target is None or target.embedded))
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
        from .run_dirs import DDP_MARKERS, check_run_dir

        check_run_dir(self.run_dir, DDP_MARKERS)
        if self.resume and not self.checkpoint.is_file():
            raise ConfigError(f"Nothing to resume: {self.checkpoint} does not exist. Run without --resume first.")
        if not self.resume and self.checkpoint.is_file():
            raise ConfigError(f"{self.run_dir} already holds a DDP run (checkpoint.pt). Pass --resume to "
                              "continue it, or choose another --name.")

    def run(self, client: Client, workers: int | Sequence[str] | None, progress: DDPProgress) -> DDPResult:
        started = time.time()
        placements = _choose(client, workers)
        world = len(placements)
        if self.params["batch_size"] % world:
            raise ConfigError(f"batch_size={self.params['batch_size']} does not split evenly over {world} ranks; "
                              f"use a multiple of {world}.")
        backend = _backend(client, placements)
        head = placements[0]
        port = client.submit(free_port, head.host, workers=[head.worker], allow_other_workers=False,
                             pure=False, key=f"ddp-{self.name}-port-{uuid.uuid4().hex[:6]}").result(self.timeout)
        init_method = f"tcp://{_url_host(head.host)}:{port}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:6]
        from cluster import dashboard_url

        page = enable_page(client)
        progress.on_start(self.name, placements, backend, dashboard_url(client), self.resume)
        progress.on_page(page)
        self._announce(client, token, placements)
        specs = [RankSpec(job=self.name, run=token, rank=p.rank, local_rank=p.local_rank, world_size=world,
                          init_method=init_method, backend=backend, workload=self.workload, params=self.params,
                          epochs=self.epochs, seed=self.seed, timeout=self.timeout,
                          checkpoint=str(self.checkpoint.resolve()), resume=self.resume,
                          record_samples=self.record_samples, host=p.host) for p in placements]
        with Inbox(client, token) as inbox:
            futures = [client.submit(run_rank, spec, key=f"ddp-{self.name}-{token}-rank{spec.rank}",
                                     workers=[p.worker], allow_other_workers=False, pure=False,
                                     resources={TRAINING_SLOT: 1}, retries=0)
                       for spec, p in zip(specs, placements, strict=True)]
            try:
                first_step = _Watcher(self, client, futures, placements, inbox, progress).watch()
            except KeyboardInterrupt:
                with second_interrupt_exits():
                    client.cancel(futures, force=True)
                    free_workers(client, [p.worker for p in placements])
                publish(client, JobEnded(self.name, token, state=JobState.STOPPED, error="interrupted"))
                epoch = _checkpoint_epoch(self.checkpoint)
                raise Interrupted(f"DDP job '{self.name}' stopped and its {world} workers freed; "
                                  + (f"{self.checkpoint} keeps epoch {epoch}." if epoch
                                     else "no epoch had finished.")) from None
            except BaseException as exc:
                publish(client, JobEnded(self.name, token, state=JobState.FAILED, error=str(exc)))
                raise
        outputs = client.gather(futures)
        publish(client, JobEnded(self.name, token, state=JobState.FINISHED))
        for future in futures:
            future.release()
        return self._finish(outputs, placements, started, first_step)

    def _announce(self, client: Client, token: str, placements: list[Placement]) -> None:
        """Tell the Training page about this job: one row per rank, where it runs."""
        work = get_workload(self.workload)
        ranks = [{"number": p.rank, "worker": p.worker, "state": TrialState.RUNNING.value, "params": self.params}
                 for p in placements]
        publish(client, JobAnnounced(self.name, token, time=time.time(), type="ddp", workload=self.workload,
                                     metric=work.metric, mode=work.mode, epochs=self.epochs, total=len(placements),
                                     client=client.id, params=self.params, trials=ranks))

    def _finish(self, outputs: list[RankOutcome], placements: list[Placement], started: float,
                first_step: float | None) -> DDPResult:
        """The model of rank 0's best epoch (``model/``); the last epoch's state stays in checkpoint.pt."""
        head = outputs[0]
        work = get_workload(self.workload)
        model = work.build_model(self.params, head.meta)
        model.load_state_dict(head.state_dict or {})
        trained = TrainedModel(self.workload, self.params, head.meta, head.artifacts, list(head.history),
                               model.eval(), self.seed, extra={"ddp": self.name, "world_size": len(placements)},
                               best_epoch=head.best_epoch)
        model_dir = save_model(trained, self.run_dir / "model")
        return DDPResult(trained, self.run_dir, model_dir, placements, time.time() - started,
                         None if first_step is None else first_step - started, outputs)


class _Watcher:
    """Waits for the ranks, shows rank 0's epochs, and turns a lost worker or a failed rank into one
    clear error once every surviving rank has ended (or ``timeout`` passed)."""

    def __init__(self, job: _Job, client: Client, futures: list[Future], placements: list[Placement],
                 inbox: Inbox, progress: DDPProgress) -> None:
        self.job, self.client, self.futures, self.placements = job, client, futures, placements
        self.inbox, self.progress = inbox, progress
        self.first_step: float | None = None
        self.lost: set[Placement] = set()

    def watch(self) -> float | None:
        checked = 0.0
        while not all(f.done() for f in self.futures):
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when nothing finished
                wait([f for f in self.futures if not f.done()], timeout=_POLL, return_when="FIRST_COMPLETED")
            self._drain()
            trouble = any(f.status == "error" for f in self.futures)
            if not trouble and time.monotonic() - checked > _WORKER_CHECK_EVERY:
                trouble, checked = bool(self._lost_ranks()), time.monotonic()
            if trouble:
                self._fail()
        self._drain()
        if any(f.status == "error" for f in self.futures):
            self._fail()
        return self.first_step

    def _drain(self) -> None:
        for event in self.inbox.drain():
            if isinstance(event, FirstStep):
                self.first_step = event.time
            elif isinstance(event, EpochEnded):
                self.progress.on_epoch(event.record)

    def _lost_ranks(self) -> list[Placement]:
        """Ranks whose worker has left the cluster (remembered: their futures get cancelled)."""
        alive = set(self.client.scheduler_info(n_workers=-1)["workers"])
        self.lost |= {p for f, p in zip(self.futures, self.placements, strict=True)
                      if p.worker not in alive and f.status != "finished"}
        return sorted(self.lost, key=lambda p: p.rank)

    def _errors(self) -> dict[int, str]:
        return {p.rank: _first_line(f.exception()) for f, p in zip(self.futures, self.placements, strict=True)
                if f.status == "error"}

    def _fail(self) -> None:
        """Give the surviving ranks ``timeout`` to leave their collectives, find the root cause, raise."""
        deadline = time.monotonic() + self.job.timeout
        while time.monotonic() < deadline:
            lost = self._lost_ranks()
            self.client.cancel([self.futures[p.rank] for p in lost])  # pinned to a dead worker: never runs
            if all(f.done() or p in lost for f, p in zip(self.futures, self.placements, strict=True)):
                break
            time.sleep(_POLL)
        lost, errors = sorted(self.lost, key=lambda p: p.rank), self._errors()
        # A lost worker is the cause; its peers' "connection reset" errors are consequences of it.
        if lost:
            culprit, cause = lost[0], "its worker left the cluster (the process died or was killed)"
        else:
            rank = min(errors, key=lambda r: (_is_peer_error(errors[r]), r))
            culprit, cause = self.placements[rank], errors[rank]
        others = "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items()) if r != culprit.rank)
        stuck = [p.rank for f, p in zip(self.futures, self.placements, strict=True) if not f.done()
                 and p not in lost]
        epoch = _checkpoint_epoch(self.job.checkpoint)
        raise DDPJobFailed(
            f"DDP job '{self.job.name}' failed: rank {culprit.rank} on {culprit.worker} ({culprit.host}): "
            f"{cause}. "
            + (f"Ranks {stuck} had not ended after {self.job.timeout:g}s. " if stuck else "All other ranks ended"
               + (f" ({others}). " if others else ". "))
            + (f"The checkpoint at {self.job.checkpoint} holds epoch {epoch}: rerun with --resume "
               "(resume=True) to continue from it." if epoch else "No epoch had finished; nothing to resume."),
            rank=culprit.rank, worker=culprit.worker)


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _is_peer_error(text: str) -> bool:
    """Errors a rank gets because a peer went away, not because of its own work."""
    return any(s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                                   "Socket Timeout", "Timed out", "timed out"))


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


def _checkpoint_epoch(path: Path) -> int:
    try:
        from .loop import read_checkpoint

        return int(read_checkpoint(path)["epoch"])
    except ConfigError:
        return 0
