"""``dask-train ddp``: one model trained with DistributedDataParallel over the cluster's workers."""

from __future__ import annotations

from typing import Any

import click

from cluster import Target

from ..ddp import DDPProgress, Placement, train_ddp
from ..errors import Interrupted
from . import display
from .cluster_cmd import target_options
from .train_cmd import _EXTRA, _show_use, parse_param_args


class DDPDisplay(DDPProgress):
    """Where the ranks run, then rank 0's epoch table as epochs finish."""

    def __init__(self) -> None:
        self._rows = display.EpochRows()

    def on_start(self, name: str, placements: list[Placement], backend: str, dashboard: str | None,
                 resumed: bool) -> None:
        display.console.print(f"DDP job '{name}': {len(placements)} ranks, {backend}"
                              f"{', resuming from its checkpoint' if resumed else ''}.")
        for p in placements:
            display.console.print(f"  rank {p.rank} (local {p.local_rank}) on {p.worker}")
        display.console.print(f"Dashboard: {dashboard}")

    def on_page(self, url: str | None) -> None:
        display.console.print(f"Training page: {url or 'not available on this scheduler'}")

    def on_epoch(self, record: dict[str, Any]) -> None:
        self._rows.print(record, display.console)


@click.command(context_settings=_EXTRA)
@click.argument("workload")
@click.option("--epochs", type=int, default=None, help="Total epochs (default: the workload's).")
@click.option("--name", default=None, help="Job name: its run directory is RUNS_DIR/NAME (default WORKLOAD-ddp).")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the job's last checkpoint.")
@click.option("--rank-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds a collective may wait: a lost rank ends the job within about this long.")
@target_options
@click.pass_context
def ddp_command(ctx: click.Context, workload: str, epochs: int | None, name: str | None, runs_dir: str, seed: int,
                resume: bool, rank_timeout: float, target: Target) -> None:
    """Train WORKLOAD on several workers with DistributedDataParallel (--workers N ranks; default: every
    free worker). Hyperparameters: --name value, as for `dask-train train`."""
    params = parse_param_args(ctx.args)
    try:
        result = train_ddp(None, workload, params, epochs=epochs, workers=target.local.workers, name=name,
                           runs_dir=runs_dir, seed=seed, resume=resume, timeout=rank_timeout,
                           progress=DDPDisplay(), target=target)
    except Interrupted as stop:
        display.interrupted(stop, add=("--resume",))
    display.console.print(f"Trained in {result.seconds:.1f} s on {len(result.placements)} ranks; model saved to "
                          f"{result.model_dir}")
    _show_use(result.trained, seed)
