"""The ``dask-train`` command line."""

from __future__ import annotations

import logging
import sys

import click

from cluster import ClusterError

from ..errors import ConfigError
from . import display
from .cluster_cmd import cluster_group
from .ddp_cmd import ddp_command
from .sweep_cmd import results_command, sweep_command
from .train_cmd import evaluate_command, generate_command, train_command, workloads_command

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns bad user input raised anywhere below into one clear message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise display.BadInput(str(exc)) from None
        except ClusterError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="dask-train")
def cli(verbose: int) -> None:
    """Distributed PyTorch training on Dask: sweeps and DDP jobs, one worker per GPU."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(train_command, "train")
cli.add_command(generate_command, "generate")
cli.add_command(evaluate_command, "evaluate")
cli.add_command(workloads_command, "workloads")
cli.add_command(cluster_group, "cluster")
cli.add_command(sweep_command, "sweep")
cli.add_command(ddp_command, "ddp")
cli.add_command(results_command, "results")


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="dask-train", standalone_mode=True))
