"""``dask-train sweep``: run a sweep file (or a shipped example) on a cluster, with live progress."""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from cluster import Target

from ..errors import ConfigError, Interrupted
from ..limits import STALL_TIMEOUT
from . import display
from .cluster_cmd import target_options
from .train_cmd import allow_option, precision_option

if TYPE_CHECKING:
    from ..sweep import SweepProgress, SweepResult

# The sweep machinery (Dask, torch, the workloads) is imported when a command runs, not when the CLI loads.


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


@click.command()
@click.argument("sweep_file", required=False)
@click.option("--examples", is_flag=True, help="List the sweep files shipped with dask-train.")
@click.option("--name", default=None, help="Override the sweep's name (its run directory).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override epochs per trial.")
@click.option("--runs-dir", default=None, help="Parent folder of run directories (default: runs).")
@click.option("--new", is_flag=True, help="Set an existing run of this name aside and start afresh.")
@click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop a trial running longer than this as timed_out (its worker is restarted).")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help=f"Stop a trial that finishes no epoch for this long (default {STALL_TIMEOUT:g}).")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to RUN_DIR/tensorboard.")
@click.option("--mlflow", "mlflow_experiment", default=None, metavar="EXPERIMENT",
              help="Also log each trial as an MLflow run (MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db).")
@click.option("--detach", is_flag=True, help="Run it inside the cluster's scheduler and return at once "
              "(needs --address or --scheduler-file); follow with `dask-train attach NAME`.")
@precision_option(None)
@allow_option
@target_options
def sweep_command(sweep_file: str | None, examples: bool, name: str | None, epochs: int | None,
                  runs_dir: str | None, new: bool, trial_timeout: float | None, stall_timeout: float | None,
                  tensorboard: bool, mlflow_experiment: str | None, target: Target,
                  detach: bool = False, allow: tuple[str, ...] = (), precision: str | None = None) -> None:
    """Run the hyperparameter sweep in SWEEP_FILE (YAML, or a shipped example's name) on a cluster.

    Rerunning the same sweep finishes only the trials not yet finished.
    """
    if examples or not sweep_file:
        _list_examples()
        return
    from ..sweep_spec import finished_trials, load_sweep_file

    spec = load_sweep_file(resolve_sweep_file(sweep_file), allow=allow, name=name, epochs=epochs,
                           runs_dir=runs_dir, trial_timeout=trial_timeout, stall_timeout=stall_timeout,
                           precision=precision)
    if detach:
        from .detach_cmd import detach_sweep

        if new or tensorboard or mlflow_experiment:
            raise click.UsageError("--detach runs the sweep as it is: --new, --tensorboard and --mlflow are for "
                                   "foreground sweeps.")
        detach_sweep(spec, target)
        return
    from cluster import start_early

    from ..run_dirs import SWEEP_MARKERS, check_not_in_use, check_run_dir, set_aside

    # A run directory it would refuse (another run's now too), and a rerun with nothing left to run (no cluster
    # needed), are known before any worker starts (with --new, what it would not set aside too).
    if not new:
        check_run_dir(spec.run_dir, SWEEP_MARKERS)
        check_not_in_use(spec.run_dir, f"run of sweep '{spec.name}'", "choose another --name (name=...)")
    elif (aside := set_aside(spec.run_dir, f"run of sweep '{spec.name}'")) is not None:
        display.console.print(f"Set the previous run aside: {spec.run_dir} -> {aside}", soft_wrap=True)
    if new or finished_trials(spec) is None:
        start_early(target)  # its workers import torch while this process imports the sweep's code
    from ..integrations import MlflowLogger, TensorBoardLogger, combine
    from ..progress import LiveSweep
    from ..results_view import span
    from ..sweep import Sweep

    started = time.perf_counter()
    try:
        with LiveSweep(display.console, afresh="--new") as shown:
            loggers: list[SweepProgress] = []
            if tensorboard:
                loggers.append(TensorBoardLogger(spec.run_dir / "tensorboard"))
            if mlflow_experiment:
                loggers.append(MlflowLogger(mlflow_experiment, spec.run_dir))
            result = Sweep.from_spec(spec).run(progress=combine(shown, *loggers), target=target,
                                           stop=display.watch_output())  # set aside
    except Interrupted as stop:
        display.interrupted(stop, drop=("--new",))
    if not result.ran:  # this run's time would say nothing: the sweep's own, over the runs that ran it
        show_result(result, span(result.trials), label="first start to last finish")
    else:
        show_result(result, time.perf_counter() - started)
    if result.best is None:
        raise click.ClickException(f"No trial of sweep '{spec.name}' completed.")


def _list_examples() -> None:
    from ..sweep_spec import SweepSpec

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
    from ..protocol import TrialState
    from ..report import REPORT_DIR, read_run, write_report
    from ..results_view import so_far, span
    from ..run_dirs import check_own_folder
    from ..sweep import result_of
    from ..sweep_spec import spec_from_record
    from ..workloads import trusted_workload

    run = read_run(run_dir)  # data only: the workload it names is imported once trusted
    trusted_workload(run.spec.get("workload"), allow, source=f"Run directory {str(run_dir)!r}")
    spec = spec_from_record(run.spec, run_dir)
    writable = os.access(run_dir, os.W_OK)
    if plot and not writable:
        raise ConfigError(f"{str(run_dir)!r} is read-only here, and --plot writes the report into it. Copy the "
                          "run directory somewhere writable, or leave out --plot.")
    if plot:
        check_own_folder(run_dir / REPORT_DIR)  # before anything is written
    now = time.time()
    trials = so_far(run.trials, run.histories, now)
    starts = [t.started for t in trials if t.started]
    seconds: float | None = span(trials)
    label = "first start to last finish"
    if any(t.state == TrialState.RUNNING for t in trials) and starts:  # a sweep that runs (or was killed)
        seconds, label = now - min(starts), "running (or left running) since its first start"
    show_result(result_of(spec, trials, run_dir, write=writable), seconds, label=label)
    if not writable:
        display.console.print(f"({run_dir} is read-only here: its results.csv is left as it was.)")
    if plot:
        folder = write_report(run)
        display.console.print(f"Report: {', '.join(str(p) for p in sorted(folder.iterdir()))}")


def show_result(result: SweepResult, seconds: float | None, label: str = "wall time") -> None:
    """The table (fitted to the terminal), failures (first traceback in full), the best trial, and its
    model put to use. ``seconds``: the sweep's wall time, described by ``label``."""
    from ..results_view import duration, results_table

    trial_time = sum(t.seconds or 0 for t in result.trials)
    title = (f"Sweep '{result.spec.name}': {label} {duration(seconds) or 'unknown'}, trial time summed "
             f"{duration(trial_time)}"
             f" (* best). {result.run_dir / 'results.csv'}, report in {result.run_dir / 'report'}")
    display.console.print(title, soft_wrap=True)  # on a line of its own: as the table's, it wrapped at its width
    display.console.print(results_table(result.trials, result.spec.space, result.spec.metric or "val_loss",
                                        result.spec.mode or "min", width=display.console.width),
                          soft_wrap=False)
    if result.failed:
        first = result.failed[0]
        where = f" on {first.worker}" if first.worker else ""  # none: it never started
        display.console.print(f"{len(result.failed)} trial(s) failed. First: trial {first.number:04d}{where} "
                              f"with params {first.params}:\n{first.traceback}", style="red")
    number = result.best_trial
    if number is None:
        return
    try:
        best = result.best
    except ConfigError as exc:  # the results stand; only putting the best model to use cannot be done
        display.console.print(f"Best trial: {number:04d}; its model cannot be loaded: {exc}", style="yellow")
        return
    if best is None:
        recorded = next(t.model_dir for t in result.trials if t.number == number)
        said = ("it has no model directory" if not recorded else
                f"its model directory {result.best_dir} is missing" if result.best_dir is not None else
                "its record names a model directory outside the run directory (dask-train never writes one there)")
        display.console.print(f"Best trial: {number:04d}; {said}.", style="yellow")
        return
    display.console.print(f"Best trial: {number:04d} {result.spec.metric}="
                          f"{display.format_value(best.metrics.get(result.spec.metric))} at epoch "
                          f"{best.best_epoch} params { {k: best.params[k] for k in result.spec.space} } -> "
                          f"{result.run_dir / 'trials' / f'{number:04d}'}")
    display.show_use(best, "Generated by the best model", seed=0)
