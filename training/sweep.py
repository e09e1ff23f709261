"""Sweeps: the Python API and the coordinator that runs trials as Dask tasks, one per training slot.

The coordinator submits each trial as one task (``pure=False``, key ``trial-<sweep>-<n>``, one
``training_slot``), streams per-epoch events into the run store while trials run, writes each finished
trial's model directory, and returns a :class:`SweepResult`. Rerunning the same sweep finishes only the
trials the store does not record as finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, Future, wait

from cluster import TRAINING_SLOT, ClusterError, Target, open_client, require_slots

from .dashboard import enable_page, publish
from .events import Inbox
from .model_file import TrainedModel, load_model, save_model
from .sources import Source, make_source, read_rung_checkpoint, write_rung_checkpoint
from .store import FINISHED, RunStore, best_of
from .sweep_spec import SweepSpec
from .trial import TrialSpec, run_trial
from .workloads import get_workload

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between checks of the futures and the event queue
_NO_WORKERS_GRACE = 60.0  # how long a sweep waits for a slot worker to come back before giving up
_WORKER_CHECK_EVERY = 5.0  # seconds between checks that slot workers are still there


class SweepProgress:
    """Hooks the coordinator calls; the CLI's display subclasses this."""

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        """Before submitting: ``todo`` of ``total`` trials will run now."""

    def on_page(self, url: str | None) -> None:
        """Right after on_start: the dashboard's Training page (None where the scheduler cannot serve it)."""

    def on_trial_start(self, number: int, worker: str) -> None:
        """A trial began on ``worker``."""

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        """A running trial finished an epoch."""

    def on_trial_end(self, row: dict[str, Any], counts: dict[str, int], best: dict[str, Any] | None) -> None:
        """A trial ended (any state); ``counts`` by state and the best trial so far."""


@dataclass
class SweepResult:
    """What a sweep produced: the table, the best trial's model, the failures, and where it all is."""

    spec: SweepSpec
    run_dir: Path
    table: pd.DataFrame
    best: TrainedModel | None
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_trial(self) -> int | None:
        return None if self.best is None else int(self.best.extra.get("trial", -1))


class Sweep:
    """A hyperparameter sweep over one workload.

    Parameters
    ----------
    workload : str
        Built-in name or ``package.module:Class``.
    space : mapping
        Hyperparameters to search: lists (grid values), ``choice``, ``uniform``, ``loguniform``, ``randint``.
    params : mapping, optional
        Fixed hyperparameters for every trial.
    search : {"grid", "random"}
    num_trials : int, optional
        Random search: how many samples.
    metric, mode : str, optional
        What "best" means (default: the workload's metric and direction).
    scheduler, grace_epochs, reduction_factor
        ``scheduler="asha"`` stops poor trials early at rungs of grace_epochs * reduction_factor**k epochs.
    epochs, seed, max_concurrent, name, runs_dir
        Epochs per trial (the maximum with ASHA); the seed of sampling, data split and initial weights;
        how many trials may run at once (default: every trial, one per slot at a time); the run's name and
        parent folder.

    Examples
    --------
    >>> from training.space import choice
    >>> sweep = Sweep("xor", {"lr": choice([0.05, 0.2])}, epochs=2, name="doc")
    >>> len(sweep.spec.trials())
    2
    >>> result = sweep.run(client)  # doctest: +SKIP
    """

    def __init__(self, workload: str, space: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                 search: str = "grid", num_trials: int | None = None, metric: str | None = None,
                 mode: str | None = None, epochs: int | None = None, seed: int = 0,
                 max_concurrent: int | None = None, name: str | None = None, runs_dir: str = "runs",
                 scheduler: str | None = None, grace_epochs: int = 1, reduction_factor: int = 3) -> None:
        self.spec = SweepSpec(name=name or f"{workload}-sweep", workload=workload, space=space,
                              params=params or {}, search=search, num_trials=num_trials, metric=metric,
                              mode=mode, epochs=epochs, seed=seed, max_concurrent=max_concurrent,
                              runs_dir=runs_dir, scheduler=scheduler, grace_epochs=grace_epochs,
                              reduction_factor=reduction_factor)

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> Sweep:
        sweep = cls.__new__(cls)
        sweep.spec = spec
        return sweep

    def run(self, client: Client | None = None, *, progress: SweepProgress | None = None, new: bool = False,
            target: Target | None = None) -> SweepResult:
        """Run the trials not yet finished and return the results. Without ``client``, the sweep runs on
        ``target`` (default: an embedded local cluster started for it and closed after)."""
        if new:
            _set_aside(self.spec.run_dir)
        if client is not None:
            return _Coordinator(self.spec, client, progress or SweepProgress()).run()
        target = dataclasses.replace(target or Target(), preload=("training.trial",))
        with open_client(target) as own:
            return _Coordinator(self.spec, own, progress or SweepProgress()).run()


def _set_aside(run_dir: Path) -> None:
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        log.warning("Moved the previous run %s to %s", run_dir, aside)


class _Coordinator:
    """One client run of a sweep: submit, watch events, record outcomes."""

    def __init__(self, spec: SweepSpec, client: Client, progress: SweepProgress) -> None:
        self.spec, self.client, self.progress = spec, client, progress
        self.run_token = uuid.uuid4().hex[:8]
        self.best: dict[str, Any] | None = None
        self.asha = spec.asha()
        self.seen: set[tuple[int, int]] = set()  # (trial, epoch) records delivered to the store and display
        self.ended: set[int] = set()  # trials whose final result this run has recorded

    def run(self) -> SweepResult:
        spec = self.spec
        trials = spec.trials()
        slots = len(require_slots(self.client))
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        with RunStore(spec.run_dir / "store.sqlite") as store:
            attempt = store.begin_run(spec.name, spec.fingerprint(), spec.to_json(), trials)
            _write_spec(spec)
            source = make_source(spec, store)
            if self.asha is not None:  # a resumed sweep: rung records from what the store already has
                self.asha.replay((store.history(t["number"]) for t in store.trials()), spec.metric or "")
            total = spec.num_trials if spec.search == "tpe" else len(trials)
            finished = sum(store.counts().get(s, 0) for s in FINISHED)
            self.best = _best_row(store.trials(), spec)
            from cluster import dashboard_url

            page = enable_page(self.client)
            self._announce(store, total)
            self.progress.on_start(spec, total or 0, (total or 0) - finished, dashboard_url(self.client))
            self.progress.on_page(page)
            # Grid and random: every trial is submitted up front (slots keep each worker to one at a time), so
            # the scheduler hands the next one over the moment a slot frees. TPE asks as slots free, so each
            # ask sees the results so far.
            window = spec.max_concurrent or (slots if spec.search == "tpe" else max(1, len(trials)))
            with Inbox(self.client, self.run_token) as self.inbox:
                ended = "stopped"
                try:
                    self._run_trials(store, source, attempt, window)
                    ended = "finished"
                finally:
                    self._drain(store)
                    self._publish({"kind": "job-end", "state": ended})
            rows = store.trials()
        _report(spec.run_dir)
        return result_of(spec, rows)

    def _publish(self, message: dict[str, Any]) -> None:
        publish(self.client, self.spec.name, self.run_token, message)

    def _announce(self, store: RunStore, total: int | None) -> None:
        """Tell the Training page about this sweep, with what the store already knows of its trials."""
        spec, metric = self.spec, self.spec.metric or ""
        trials = [{k: row[k] for k in ("number", "state", "params", "worker", "best")}
                  | {"epoch": row["epochs"] or None, "metrics": row["metrics"],
                     "curve": [[r["epoch"], r[metric]] for r in store.history(row["number"]) if metric in r]}
                  for row in store.trials()]
        self._publish({"kind": "job", "type": "sweep", "workload": spec.workload, "metric": metric,
                       "mode": spec.mode, "epochs": spec.epochs, "total": total, "client": self.client.id,
                       "trials": trials})

    def _run_trials(self, store: RunStore, source: Source, attempt: int, window: int) -> None:
        running: dict[Future, int] = {}
        lost_since: float | None = None
        checked = time.monotonic()
        while True:
            while len(running) < window and (number := source.take()) is not None:
                running[self._submit(store, number, attempt)] = number
            if not running:
                return
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when nothing finished
                wait(list(running), timeout=_POLL, return_when="FIRST_COMPLETED")
            self._drain(store)
            for future in [f for f in running if f.done()]:
                row = self._finish(store, running.pop(future), future)
                if row["state"] == "running":  # promoted by ASHA: its next stretch goes first
                    source.requeue(row["number"])
                else:
                    source.finished(row)
            if time.monotonic() - checked > _WORKER_CHECK_EVERY:
                lost_since, checked = self._check_workers(lost_since), time.monotonic()

    def _submit(self, store: RunStore, number: int, attempt: int) -> Future:
        spec = self.spec
        trial = TrialSpec(job=spec.name, run=self.run_token, number=number, workload=spec.workload,
                          params=store.params(number), epochs=int(spec.epochs or 1), seed=spec.seed)
        key = f"trial-{spec.name}-{number:04d}"
        if self.asha is not None:
            state = read_rung_checkpoint(self._rung_path(number))
            done = int(state["epoch"]) if state else 0
            trial = dataclasses.replace(trial, until_epoch=self.asha.next_stop(done), start_state=state)
            key += f"-to{trial.until_epoch}"
        # Readable keys for the dashboard; a later run of the same sweep gets its own keys.
        key += f"-run{attempt}" if attempt > 1 else ""
        self._publish({"kind": "queued", "trial": number, "params": trial.params})
        return self.client.submit(run_trial, trial, key=key, pure=False, resources={TRAINING_SLOT: 1})

    def _rung_path(self, number: int) -> Path:
        return self.spec.run_dir / "trials" / f"{number:04d}" / "checkpoint.pt"

    def _early_stop(self, number: int, outcome: dict[str, Any]) -> dict[str, Any]:
        """At a rung (ASHA): keep the checkpoint and mark the trial running again, or stop it as pruned."""
        history = outcome.get("history") or []
        epoch = int(history[-1]["epoch"]) if history else 0
        path = self._rung_path(number)
        if outcome["state"] != "completed" or self.asha is None or epoch >= self.asha.max_epochs:
            path.unlink(missing_ok=True)
            return outcome
        value = history[-1].get(self.spec.metric or "")
        if isinstance(value, int | float) and self.asha.promote(epoch, float(value)):
            write_rung_checkpoint(path, outcome["checkpoint"])
            return {**outcome, "state": "running"}
        path.unlink(missing_ok=True)
        return {**outcome, "state": "pruned"}

    def _drain(self, store: RunStore) -> None:
        """Apply the events that arrived: trial starts and per-epoch records, into the store and display."""
        for message in self.inbox.drain():
            number = int(message.get("trial", -1))
            if number in self.ended:
                continue  # arrived after the trial's result, which already carried it
            if message.get("kind") == "start":
                store.trial_started(number, message["worker"], message["time"])
                self.progress.on_trial_start(number, message["worker"])
            elif message.get("kind") == "epoch":
                self._epoch(store, number, message["record"])

    def _epoch(self, store: RunStore, number: int, record: dict[str, Any]) -> None:
        if (number, record["epoch"]) not in self.seen:
            self.seen.add((number, record["epoch"]))
            store.record_epoch(number, record)
            self.progress.on_epoch(number, record)

    def _finish(self, store: RunStore, number: int, future: Future) -> dict[str, Any]:
        outcome = self._early_stop(number, _outcome_of(number, future))
        # Events can trail the result: epochs not yet seen are delivered from the result's history first.
        for record in outcome.get("history", []):
            self._epoch(store, number, record)
        if outcome["state"] != "running":
            self.ended.add(number)
        model_dir = None
        if outcome["state"] in ("completed", "pruned"):
            model_dir = str(self._save_model(number, outcome, store.params(number)))
        best = best_of(outcome.get("history", []), self.spec.metric or "", self.spec.mode or "min")
        store.finish_trial(number, outcome, best, model_dir)
        row = store.trial(number)
        self._publish({"kind": "end", "trial": number, "state": row["state"], "best": row["best"],
                       "error": outcome.get("error")})
        if outcome["state"] in ("completed", "pruned") and _better(row, self.best, self.spec):
            self.best = row
        self.progress.on_trial_end(row, store.counts(), self.best)
        future.release()
        return row

    def _save_model(self, number: int, outcome: dict[str, Any], params: dict[str, Any]) -> Path:
        """Write the trial's model directory first, so a store row marked completed always has its files."""
        spec = self.spec
        work = get_workload(spec.workload)
        model = work.build_model(params, outcome["meta"])
        model.load_state_dict(outcome["state_dict"])
        trained = TrainedModel(spec.workload, params, outcome["meta"], outcome["artifacts"], outcome["history"],
                               model.eval(), spec.seed, extra={"sweep": spec.name, "trial": number})
        return save_model(trained, spec.run_dir / "trials" / f"{number:04d}")

    def _check_workers(self, lost_since: float | None) -> float | None:
        """Fail clearly, instead of hanging, when no worker with a slot has been there for a while."""
        try:
            require_slots(self.client)
            return None
        except ClusterError:
            now = time.monotonic()
            if lost_since is None:
                return now
            if now - lost_since > _NO_WORKERS_GRACE:
                raise ClusterError(f"No worker with a training slot for {_NO_WORKERS_GRACE:.0f}s: the sweep "
                                   f"stopped. Finished trials are saved in {self.spec.run_dir}; rerun the "
                                   "same command when workers are back to finish the rest.") from None
            return lost_since


def _report(run_dir: Path) -> None:
    """Plots and summary.md. Results are already saved, so a plotting failure is logged, not raised."""
    from .report import read_run, write_report

    try:
        write_report(read_run(run_dir))
    except Exception:
        log.exception("Could not write the report of %s; `dask-train results %s --plot` retries", run_dir, run_dir)


def _outcome_of(number: int, future: Future) -> dict[str, Any]:
    """The trial's result, or a failure built from the task's own error (e.g. a worker killed too often)."""
    if future.status == "finished":
        return future.result()
    error = future.exception()
    import traceback as tb

    return {"number": number, "state": "failed", "error_type": type(error).__name__, "error": str(error),
            "traceback": "".join(tb.format_exception(error)), "history": [], "finished": time.time()}


def _write_spec(spec: SweepSpec) -> None:
    import yaml

    (spec.run_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.to_json(), sort_keys=False))


def _better(row: dict[str, Any], best: dict[str, Any] | None, spec: SweepSpec) -> bool:
    if row["best"] is None:
        return False
    if best is None or best["best"] is None:
        return True
    return row["best"] < best["best"] if spec.mode == "min" else row["best"] > best["best"]


def _best_row(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    best = None
    for row in rows:
        if row["state"] in ("completed", "pruned") and _better(row, best, spec):
            best = row
    return best


def result_of(spec: SweepSpec, rows: list[dict[str, Any]]) -> SweepResult:
    table = results_table(rows, spec)
    table.to_csv(spec.run_dir / "results.csv", index=False)
    best_row = _best_row(rows, spec)
    best = None
    if best_row is not None and best_row["model_dir"] and Path(best_row["model_dir"]).exists():
        best = load_model(best_row["model_dir"])
    failed = [{k: r[k] for k in ("number", "state", "params", "worker", "error_type", "error", "traceback")}
              for r in rows if r["state"] in ("failed", "diverged")]
    return SweepResult(spec, spec.run_dir, table, best, failed)


def results_table(rows: list[dict[str, Any]], spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: number, state, searched params, final and best metric, epochs, seconds, worker."""
    searched = list(spec.space)
    metric = spec.metric or "val_loss"
    records = []
    for r in rows:
        records.append({
            "trial": r["number"], "state": r["state"],
            **{name: r["params"].get(name) for name in searched},
            f"final_{metric}": r["metrics"].get(metric), f"best_{metric}": r["best"],
            "epochs": r["epochs"], "seconds": r["seconds"], "worker": r["worker"], "starts": r["starts"],
            "started": r["started"], "finished": r["finished"], "error": r["error_type"],
        })
    table = pd.DataFrame.from_records(records)
    for column in ("started", "finished"):
        table[column] = pd.to_datetime(table[column], unit="s", utc=True)
    return table
