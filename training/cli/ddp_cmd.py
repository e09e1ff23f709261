"""``dask-train ddp``: one model trained with DistributedDataParallel over the cluster's workers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from cluster import Target
from cluster.target import MAX_TIMEOUT

from ..errors import ConfigError, Interrupted
from ..limits import MAX_RESTARTS
from . import display
from .cluster_cmd import ddp_target_options, finite
from .train_cmd import _EXTRA, check_not_options, parse_param_args, precision_option


@click.command(context_settings=_EXTRA)
@click.argument("workload")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Total epochs (default: the workload's).")
@click.option("--name", default=None, help="Job name: its run directory is RUNS_DIR/NAME (default WORKLOAD-ddp).")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seeds data split, weights, batch order.")
@click.option("--resume", is_flag=True, help="Continue from the job's last checkpoint.")
@click.option("--rank-timeout", type=click.FloatRange(min=1, max=MAX_TIMEOUT), default=60.0, show_default=True,
              callback=finite,
              help="Seconds a collective may wait and a rank may stay silent: a lost or hung rank ends the "
                   "run within about this long.")
@click.option("--max-restarts", type=click.IntRange(min=0, max=MAX_RESTARTS), default=0, show_default=True,
              help="After a rank fails or its worker is lost, start again from the last checkpoint, up to N "
                   "times.")
@click.option("--min-workers", type=click.IntRange(min=1), default=None,
              help="A restart may go on with this many ranks when fewer workers come back (default: as many "
                   "as it started with); the global batch stays the same.")
@precision_option("fp32")
@ddp_target_options
@click.pass_context
def ddp_command(ctx: click.Context, workload: str, epochs: int | None, name: str | None, runs_dir: str, seed: int,
                resume: bool, rank_timeout: float, max_restarts: int, min_workers: int | None,
                precision: str, workers: int | None, target: Target) -> None:
    """Train WORKLOAD on several workers with DistributedDataParallel (--workers N ranks; default: every
    free worker). Hyperparameters: --name value, as for `dask-train train`."""
    from cluster import start_early

    from ..limits import check_path
    from ..params import resolve
    from ..run_dirs import check_ddp_start, exclusive_run
    from ..workloads import get_workload

    # What is refused is refused before any worker starts (train_ddp checks it all again).
    if name is not None and not name.strip():
        raise ConfigError("--name is empty: name the job (its run directory is RUNS_DIR/NAME), or leave --name "
                          "out for WORKLOAD-ddp.")
    check_path("--runs-dir", runs_dir)
    params = parse_param_args(ctx.args)
    work = get_workload(workload)
    check_not_options(params, ctx, (p.name for p in work.params))
    resolve(work.params, params, owner=work.name)
    job = name or f"{work.name}-ddp"
    check_ddp_start(job, Path(runs_dir), resume)
    # A run directory that is there (a resume) is held from here, before any worker starts, to the end
    # (train_ddp takes it again: already held); a new one is made and held by train_ddp once all is checked.
    run_dir = Path(runs_dir) / job
    held = exclusive_run(run_dir, f"run of DDP job '{job}'", "choose another --name") if run_dir.is_dir() else \
        contextlib.nullcontext()
    with held:
        if resume:  # torch, to read the checkpoint: only then before the workers start
            from ..loop import check_resumable_file
            from ..workloads import workload_ref

            check_resumable_file(run_dir / "checkpoint.pt", workload_ref(work),
                                resolve(work.params, params, owner=work.name), seed, precision)
        start_early(target)  # its workers import torch while this process imports the DDP runner (torch too)
        from ..ddp import train_ddp
        from ..ddp_progress import LiveDDP

        try:
            result = train_ddp(None, workload, params, epochs=epochs, workers=workers, name=name,
                               runs_dir=runs_dir, seed=seed, resume=resume, timeout=rank_timeout,
                               progress=(shown := LiveDDP(display.console)), target=target,
                               max_restarts=max_restarts, min_workers=min_workers, precision=precision)
        except Interrupted as stop:
            if (run_dir / "checkpoint.pt").is_file():
                display.interrupted(stop, add=("--resume",))
            display.interrupted(stop, drop=("--resume",), again="Start again")  # no epoch saved: nothing to resume
        if resume and shown.columns is None:  # no epoch ran
            total = work.default_epochs if epochs is None else epochs
            display.console.print(f"Nothing left to train: the checkpoint is already at epoch "
                                  f"{len(result.history)} of --epochs {total}; pass a larger --epochs to train "
                                  f"on. Model: {result.model_dir}")
        else:
            restarts = f" after {len(result.restarts)} restart(s)" if result.restarts else ""
            ranks = f"{len(result.placements)} rank{'s' if len(result.placements) != 1 else ''}"
            display.console.print(f"Trained in {result.seconds:.1f} s on {ranks}{restarts}; "
                                  f"model saved to {result.model_dir}")
        display.show_use(result.trained, "Generated", seed)
