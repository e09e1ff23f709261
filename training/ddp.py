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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

from distributed import Client

from cluster import Target, cluster_workers, open_client, require_slots
from cluster.target import MAX_TIMEOUT

from .dashboard import enable_page
from .ddp_run import JobRun, Placement, assign_ranks, backend_of
from .errors import ConfigError
from .events import publish
from .limits import MAX_RESTARTS, check_count, check_path, short
from .loop import _check_epochs, check_resumable_file
from .model_file import TrainedModel, save_model
from .params import check_data_paths, resolve
from .precision import check_device_supports, check_precision
from .protocol import JobAnnounced, JobEnded, JobState, RankOutcome, TrialState
from .run_dirs import exclusive_run
from .workloads import get_workload, workload_ref

__all__ = ["DDPProgress", "DDPResult", "Placement", "assign_ranks", "train_ddp"]


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
              record_samples: bool = False, max_restarts: int = 0, min_workers: int | None = None,
              precision: str = "fp32") -> DDPResult:
    """Train ``workload`` with DDP on ``workers`` (a count or addresses; default every free slot worker).

    Everything the user gave is validated before any rank starts. Without ``client`` the job runs on
    ``target`` (default: an embedded local cluster, closed afterwards). ``timeout``: seconds a collective
    may wait and a rank may stay silent. ``max_restarts``: how many times a failed job starts again by
    itself from its last checkpoint; it waits up to ``timeout`` seconds for as many slot workers as it
    started with, then goes on with fewer if ``min_workers`` allows (the global batch stays the same).
    ``precision``: ``fp32``, ``bf16`` or ``fp16`` (nccl ranks on GPUs only; see :mod:`training.precision`).

    Examples
    --------
    >>> result = train_ddp(client, "names", {"corpus": "first"}, epochs=2, workers=2)  # doctest: +SKIP
    >>> result.model, result.history[-1]["val_loss"], result.model_dir  # doctest: +SKIP
    >>> train_ddp(client, "xor", epochs=9, max_restarts=2, min_workers=1).restarts  # doctest: +SKIP
    []
    """
    from cluster import check_client

    check_client(client)
    _check_arguments(workload, params, workers, name, runs_dir, resume)
    if isinstance(workers, Integral) and not isinstance(workers, bool):
        workers = int(workers)  # a numpy integer too
    work = get_workload(workload)
    resolved = resolve(work.params, params or {}, owner=work.name)
    job = _Job(name=name or f"{work.name}-ddp", workload=workload_ref(work), params=resolved,
               runs_dir=Path(runs_dir),
               epochs=_check_epochs(epochs if epochs is not None else work.default_epochs), seed=seed,
               resume=resume, timeout=float(timeout), record_samples=record_samples,
               max_restarts=max_restarts, min_workers=min_workers,
               precision=check_precision(precision))
    job.validate()
    job.check_min_workers(workers if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0
                          else len(workers) if isinstance(workers, Sequence) and workers else None)
    check_data_paths(work.params, [resolved], here=client is None and (target is None or target.embedded))
    hooks = _progress_hooks(progress)
    with exclusive_run(job.run_dir, f"run of DDP job '{job.name}'", "choose another --name (name=...)"):
        if client is not None:
            return job.run(client, workers, hooks)
        target = dataclasses.replace(target or Target(), preload=("training.rank",))
        with open_client(target) as own:
            return job.run(own, workers, hooks)


def _check_arguments(workload: Any, params: Any, workers: Any, name: Any, runs_dir: Any, resume: Any) -> None:
    """The Python arguments' types, each refused by name (deep inside they were TypeErrors, or, for a string
    ``workers``, a list of its characters taken for worker addresses)."""
    if not isinstance(workload, str) and not hasattr(workload, "build_model"):
        raise ConfigError(f"workload={short(workload)}: pass a workload name (e.g. 'names') or a Workload.")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"params={short(params)}: pass a mapping of hyperparameters, e.g. {{'lr': 0.01}}.")
    if isinstance(workers, str | bytes) or (workers is not None and not isinstance(workers, Integral | Sequence)):
        raise ConfigError(f"workers={short(workers)}: pass a count of workers or a list of worker addresses.")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"name={short(name)}: pass the job's name as text.")
    check_path("runs_dir", runs_dir)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={short(resume)}: pass True or False.")


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
    precision: str = "fp32"

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def validate(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float) or \
                not 0 < self.timeout <= MAX_TIMEOUT:  # NaN too
            raise ConfigError(f"timeout={short(self.timeout)} (--rank-timeout): expected seconds above 0, at most "
                              f"{MAX_TIMEOUT:,.0f} (a week).")
        check_count("seed", self.seed, 2**32 - 1, low=0)
        check_count("max_restarts", self.max_restarts, MAX_RESTARTS, low=0)
        if self.min_workers is not None:
            check_count("min_workers", self.min_workers, 100_000)
        from .run_dirs import check_ddp_start

        check_ddp_start(self.name, self.runs_dir, self.resume)
        if self.resume:
            check_resumable_file(self.checkpoint, self.workload, self.params, self.seed, self.precision)

    def check_world(self, world: int) -> None:
        """The first run's rank count fits the batch size and ``min_workers``."""
        if self.params["batch_size"] % world:
            raise ConfigError(f"batch_size={self.params['batch_size']} does not split evenly over {world} ranks; "
                              f"use a multiple of {world}.")
        self.check_min_workers(world)

    def check_min_workers(self, world: int | None) -> None:
        """``min_workers`` is no more than the ranks the job starts with (None: not known yet)."""
        if world is not None and self.min_workers is not None and self.min_workers > world:
            raise ConfigError(f"min_workers={self.min_workers} is more than the {world} ranks the job starts "
                              f"with; use --min-workers {world} or fewer.")

    def run(self, client: Client, workers: int | Sequence[str] | None, progress: DDPProgress) -> DDPResult:
        started = time.time()
        placements = _choose(client, workers)
        self.check_world(len(placements))
        backend = backend_of(client, placements)
        check_device_supports(self.precision, "cuda" if backend == "nccl" else "cpu",
                              f"the job's {len(placements)} ranks ({backend}) train")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = JobRun(self, client, progress)
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

    def _finish(self, outputs: list[RankOutcome], run: JobRun, started: float) -> DDPResult:
        """The model of rank 0's best epoch (``model/``); the last epoch's state stays in checkpoint.pt."""
        head = outputs[0]
        placements = run.current.placements if run.current else []
        work = get_workload(self.workload)
        model = work.build_model(self.params, head.meta)
        model.load_state_dict(head.state_dict or {})
        trained = TrainedModel(self.workload, self.params, head.meta, head.artifacts, list(head.history),
                               model.eval(), self.seed, extra={"ddp": self.name, "world_size": len(placements)},
                               best_epoch=head.best_epoch)
        model_dir = save_model(trained, self.run_dir / "model", overwrite=True)  # the job's own, resumed
        first_step = None if run.first_step is None else run.first_step - started
        return DDPResult(trained, self.run_dir, model_dir, placements, time.time() - started, first_step,
                         outputs, list(run.restarts))


def _choose(client: Client, workers: int | Sequence[str] | None) -> list[Placement]:
    """Free slot workers for the ranks: a count, explicit addresses, or all of them."""
    slotted = require_slots(client)
    busy = {w for w, keys in client.processing().items() if keys}
    free = [w for w in slotted if w not in busy]
    hosts = {w: info["host"] for w, info in cluster_workers(client).items()}
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
