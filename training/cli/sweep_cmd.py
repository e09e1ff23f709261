"""``dask-train sweep``: run a sweep file (or a shipped example) on a cluster, with live progress."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from cluster import Target

from ..errors import ConfigError
from ..integrations import MlflowLogger, TensorBoardLogger, combine
from ..protocol import TrialRecord, TrialState
from ..sweep import Sweep, SweepProgress, SweepResult
from ..sweep_spec import SweepSpec, load_sweep_file
from ..workloads import get_workload
from . import display
from .cluster_cmd import target_options
from .train_cmd import allow_option


def example_files() -> dict[str, Path]:
    """The sweep files shipped in the package, by name."""
    folder = resources.files("training").joinpath("examples")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_sweep_file(name_or_path: str) -> Path:
    """A path to an existing file, or the name of a shipped example (``pets-quick``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    examples = example_files()
    if name_or_path in examples:
        return examples[name_or_path]
    raise ConfigError(f"No sweep file {name_or_path!r}, and no shipped example of that name "
                      f"(examples: {', '.join(sorted(examples))}; see `dask-train sweep --examples`).")


class SweepDisplay(SweepProgress):
    """A progress bar over trials, plus one line per trial start and end."""

    def __init__(self) -> None:
        self.progress = display.Progress(display.TextColumn("{task.description}"), display.BarColumn(),
                                         display.MofNCompleteColumn(), display.TimeElapsedColumn(),
                                         console=display.console, transient=True)
        self.task: Any = None
        self.metric = "val_loss"

    def __enter__(self) -> SweepDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        self.metric = spec.metric or self.metric
        self._print(f"Sweep '{spec.name}': {total} trials of {spec.workload} ({spec.search}), "
                    f"{todo} to run, {total - todo} already finished. Run directory: {spec.run_dir}")
        self._print(f"Dashboard: {dashboard}")
        self.task = self.progress.add_task("trials", total=total, completed=total - todo)

    def on_page(self, url: str | None) -> None:
        self._print(f"Training page: {url or 'not available on this scheduler'}")

    def on_trial_start(self, number: int, worker: str) -> None:
        self._print(f"  trial {number:04d} started on {worker}")

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        shown = (f"best {self.metric}={display.format_value(row.best)} (epoch {row.best_epoch})"
                 if row.best is not None else row.error_type or "")
        state = f"promoted at epoch {row.epochs}" if row.state == TrialState.PROMOTED else row.state.value
        self._print(f"  trial {row.number:04d} {state} {shown} ({display.format_value(row.seconds)} s"
                    f" on {row.worker})")
        finished = sum(n for state, n in counts.items() if state.is_finished)
        errors = sum(n for state, n in counts.items() if state.is_error)
        best_text = f", best #{best.number} {self.metric}={display.format_value(best.best)}" if best else ""
        self.progress.update(self.task, completed=finished, description=(
            f"trials: {finished - errors} done, {counts.get(TrialState.RUNNING, 0)} running, "
            f"{errors} failed{best_text}"))

    def _print(self, line: str) -> None:
        self.progress.console.print(line)


@click.command()
@click.argument("sweep_file", required=False)
@click.option("--examples", is_flag=True, help="List the sweep files shipped with dask-train.")
@click.option("--name", default=None, help="Override the sweep's name (its run directory).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override epochs per trial.")
@click.option("--runs-dir", default=None, help="Parent folder of run directories (default: runs).")
@click.option("--new", is_flag=True, help="Set an existing run of this name aside and start afresh.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN_DIR/tensorboard.")
@click.option("--mlflow", "mlflow_experiment", default=None, metavar="EXPERIMENT",
              help="Also log each trial as an MLflow run (MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db).")
@allow_option
@target_options
def sweep_command(sweep_file: str | None, examples: bool, name: str | None, epochs: int | None,
                  runs_dir: str | None, new: bool, tensorboard: bool, mlflow_experiment: str | None,
                  target: Target, allow: tuple[str, ...] = ()) -> None:
    """Run the hyperparameter sweep in SWEEP_FILE (YAML, or a shipped example's name) on a cluster.

    Rerunning the same sweep finishes only the trials not yet finished.
    """
    if examples or not sweep_file:
        _list_examples()
        return
    spec = load_sweep_file(resolve_sweep_file(sweep_file), allow=allow, name=name, epochs=epochs,
                           runs_dir=runs_dir)
    started = time.perf_counter()
    with SweepDisplay() as shown:
        loggers: list[SweepProgress] = []
        if tensorboard:
            loggers.append(TensorBoardLogger(spec.run_dir / "tensorboard"))
        if mlflow_experiment:
            loggers.append(MlflowLogger(mlflow_experiment, spec.run_dir))
        result = Sweep.from_spec(spec).run(progress=combine(shown, *loggers), new=new, target=target)
    show_result(result, time.perf_counter() - started)
    if result.best is None:
        raise click.ClickException(f"No trial of sweep '{spec.name}' completed.")


def _list_examples() -> None:
    rows = []
    for name, path in sorted(example_files().items()):
        content = yaml.safe_load(path.read_text())
        trials = content.get("num_trials") or len(SweepSpec.create(**content).trials())
        rows.append([name, content["workload"], content.get("search", "grid"), trials, str(path)])
    display.table("Shipped sweeps (run one with `dask-train sweep NAME`)",
                  ["name", "workload", "search", "trials", "file"], rows)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--plot", is_flag=True, help="Write the report (PNG plots, summary.md) again.")
@allow_option
def results_command(run_dir: Path, plot: bool, allow: tuple[str, ...]) -> None:
    """Show a sweep's results table and best trial from its run directory (runs/NAME)."""
    from ..report import read_run, read_spec, write_report
    from ..sweep import result_of
    from ..workloads import trusted_workload

    trusted_workload(read_spec(run_dir).get("workload"), allow, source=f"Run directory {str(run_dir)!r}")
    run = read_run(run_dir)
    spec = SweepSpec.create(**{**run.spec, "runs_dir": str(run_dir.parent)})
    show_result(result_of(spec, run.trials, run_dir), sum(t.seconds or 0 for t in run.trials),
                label="trial time summed")
    if plot:
        folder = write_report(run)
        display.console.print(f"Report: {', '.join(str(p) for p in sorted(folder.iterdir()))}")


def show_result(result: SweepResult, seconds: float, label: str = "wall time") -> None:
    """The table, failures (first traceback in full), the best trial, and its model put to use."""
    table = result.table.drop(columns=["started", "finished", "best"], errors="ignore")
    display.table(f"Sweep '{result.spec.name}' ({label} {seconds:.1f} s): {result.run_dir / 'results.csv'}, "
                  f"report in {result.run_dir / 'report'}",
                  list(table.columns), table.itertuples(index=False))
    if result.failed:
        first = result.failed[0]
        display.console.print(f"{len(result.failed)} trial(s) failed. First: trial {first.number:04d} on "
                              f"{first.worker} with params {first.params}:\n{first.traceback}", style="red")
    if result.best is None or result.best_trial is None:
        return
    best, number = result.best, result.best_trial
    display.console.print(f"Best trial: {number:04d} {result.spec.metric}="
                          f"{display.format_value(best.metrics.get(result.spec.metric))} at epoch "
                          f"{best.best_epoch} params { {k: best.params[k] for k in result.spec.space} } -> "
                          f"{result.run_dir / 'trials' / f'{number:04d}'}")
    if get_workload(best.workload).use == "generate":
        samples = best.generate(20 if best.workload == "names" else 300, seed=0)
        display.console.print("Generated by the best model: " + ", ".join(samples))
    else:
        display.report(best.evaluate())
