"""Optional integrations people already use: TensorBoard event files and MLflow runs, one per trial.

Both are written on the client from the metric events the trials stream, so nothing depends on the
workers' filesystems. Neither package is required for the core: each logger says how to install it.
Combine them with the display through :func:`combine`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .protocol import TrialRecord, TrialState
from .sweep import SweepProgress, guarded
from .sweep_spec import SweepSpec

#: MLflow's run status for a trial's final state (FAILED for the rest).
_MLFLOW_STATUS = {TrialState.COMPLETED: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.CANCELLED: "KILLED"}


class TensorBoardLogger(SweepProgress):
    """``RUN_DIR/tensorboard/trial-NNNN/``: every numeric epoch metric as a scalar, step = epoch.

    Examples
    --------
    >>> sweep.run(client, progress=TensorBoardLogger("runs/pets/tensorboard"))  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoard logging needs the tensorboard package: "
                              "`pip install 'dask-train[tensorboard]'`.") from None
        self.folder, self._writer_class = Path(folder), SummaryWriter
        self.writers: dict[int, Any] = {}

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        writer = self.writers.get(number)
        if writer is None:
            writer = self.writers[number] = self._writer_class(str(self.folder / f"trial-{number:04d}"))
        for key, value in _numeric(record).items():
            writer.add_scalar(key, value, global_step=int(record["epoch"]))
        writer.flush()

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        writer = self.writers.get(row.number)
        if writer is not None and row.state != TrialState.PROMOTED:  # promoted by ASHA: more to come
            writer.add_text("params", str(row.params))
            writer.close()
            del self.writers[row.number]


class MlflowLogger(SweepProgress):
    """One MLflow run per trial in experiment ``experiment``: params, per-epoch metrics, final status.

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI`` or, failing that, ``sqlite:///RUN_DIR/mlflow.db``.
    """

    def __init__(self, experiment: str, run_dir: str | Path, tracking_uri: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("MLflow logging needs mlflow: `pip install 'dask-train[mlflow]'`.") from None
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.experiment, self._client_class = experiment, MlflowClient
        self.client: Any = None
        self.runs: dict[int, str] = {}

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        """Connect once the sweep has started: its run directory is checked and made by then (the default
        tracking database lives in it)."""
        self.client = self._client_class(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)

    def _run(self, number: int) -> str:
        if number not in self.runs:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}",
                                         tags={"dask_train.trial": str(number)})
            self.runs[number] = run.info.run_id
        return self.runs[number]

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        run_id = self._run(number)
        for key, value in _numeric(record).items():
            self.client.log_metric(run_id, key, value, step=int(record["epoch"]))

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        if row.state == TrialState.PROMOTED:
            return
        run_id = self._run(row.number)
        for key, value in row.params.items():
            self.client.log_param(run_id, key, value)
        self.client.set_terminated(run_id, status=_MLFLOW_STATUS.get(row.state, "FAILED"))
        self.runs.pop(row.number, None)


class _Fanout(SweepProgress):
    own_errors = True  # each part is guarded as it is its own

    def __init__(self, parts: tuple[SweepProgress, ...]) -> None:
        self.parts = tuple(guarded(part) for part in parts)  # one failing leaves the others going

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        for part in self.parts:
            part.on_start(spec, total, todo, dashboard)

    def on_page(self, url: str | None) -> None:
        for part in self.parts:
            part.on_page(url)

    def on_trial_start(self, number: int, worker: str) -> None:
        for part in self.parts:
            part.on_trial_start(number, worker)

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        for part in self.parts:
            part.on_epoch(number, record)

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        for part in self.parts:
            part.on_trial_end(row, counts, best)


def combine(*parts: SweepProgress) -> SweepProgress:
    """One progress hook that calls each of ``parts`` in turn (display, TensorBoard, MLflow ...)."""
    return _Fanout(parts)


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)}
