"""``dask-train sweep --detach``, ``attach``, ``runs``, ``cancel``: sweeps that run inside the cluster's
scheduler and outlive the command that started them (:mod:`training.detached`)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError, Interrupted
from . import display
from .cluster_cmd import running_cluster_options

if TYPE_CHECKING:  # the commands import what they use when they run: `--help` stays fast
    from cluster import Target

    from ..sweep_spec import SweepSpec


def _running_cluster(target: Target, command: str) -> None:
    if target.embedded:
        raise ConfigError(f"{command} needs a running cluster: pass --address or --scheduler-file (a detached "
                          "sweep runs in the cluster's scheduler, which an embedded cluster is not).")


def _where(target: Target) -> str:
    return f"--address {target.address}" if target.address else f"--scheduler-file {target.scheduler_file}"


def detach_sweep(spec: SweepSpec, target: Target) -> None:
    """Start ``spec`` in the cluster's scheduler, say where to follow it, and return."""
    from cluster import dashboard_url, open_client

    from ..dashboard import page_url
    from ..detached import submit

    _running_cluster(target, "--detach")
    with open_client(target) as client:
        handle = submit(client, spec)
        dashboard = dashboard_url(client)
    where = _where(target)
    display.console.print(f"Detached sweep '{handle.name}' is running in the cluster's scheduler; its run "
                          f"directory (on the scheduler's machine): {handle.run_dir}")
    display.console.print(f"Training page: {page_url(dashboard) if dashboard else 'not available'}")
    display.console.print(f"Follow it: dask-train attach {handle.name} {where}")
    display.console.print(f"Stop it:   dask-train cancel {handle.name} {where}")


@click.command()
@click.argument("name")
@running_cluster_options
def attach_command(name: str, target: Target) -> None:
    """Show a detached sweep's live progress (from its start) and its final table."""
    from distributed.comm import CommClosedError

    from cluster import ClusterConnectError, open_client

    from ..detached import RunReplaced, attach
    from ..progress import LiveSweep

    _running_cluster(target, "attach")
    with open_client(target, workers=False) as client:  # the scheduler's: workers or none
        handle = _handle(attach, client, name)
        try:
            with LiveSweep(display.console) as shown:
                status = handle.follow(shown)
        except KeyboardInterrupt:  # only the following stops
            display.interrupted(Interrupted(_still(handle, name)), again="Follow it again")
        except RunReplaced as exc:
            raise click.ClickException(str(exc)) from None
        except (CommClosedError, TimeoutError, OSError) as exc:  # the scheduler went away, or stopped answering
            if isinstance(exc, BrokenPipeError):  # a closed pipe of ours, not the scheduler's
                raise
            raise ClusterConnectError(f"Lost the cluster's scheduler while following sweep '{name}' "
                                      f"({type(exc).__name__}: {exc}): the cluster stopped, or the network "
                                      "failed.") from None
    if status["state"] == "cancelled":
        raise click.ClickException(f"Sweep '{name}' was cancelled: {_said(name, status['error'])} Submitting it "
                                   "again resumes it.")
    if status["state"] != "finished":
        raise click.ClickException(f"Sweep '{name}' {status['state']}: {_said(name, status['error'])}")
    if "best_trial" in status and status["best_trial"] is None:  # as a foreground sweep of these trials ends
        first = f" ({status['first_failure']})" if status.get("first_failure") else ""
        raise click.ClickException(f"No trial of sweep '{name}' completed{first}.")


@click.command()
@running_cluster_options
def runs_command(target: Target) -> None:
    """List the detached sweeps of a running cluster."""
    from rich.table import Table

    from cluster import open_client

    from ..detached import list_runs
    from ..shown import cell

    _running_cluster(target, "runs")
    with open_client(target, workers=False) as client:  # the scheduler's: workers or none
        found = list_runs(client)
    if not found:
        display.console.print("No detached sweeps on this cluster (start one with `dask-train sweep FILE "
                              "--detach --address ...`).")
        return
    table = Table("name", "state", "started", "ended", "run directory", "error")
    for run in found:  # what the scheduler says, shown as it is
        table.add_row(*(cell(v) for v in (run["name"], run["state"], _clock(run["started"]), _clock(run["ended"]),
                                          run["run_dir"], run["error"] or "")))
    display.console.print(table)


@click.command()
@click.argument("name")
@running_cluster_options
def cancel_command(name: str, target: Target) -> None:
    """Stop a detached sweep as Ctrl-C stops a foreground one: running trials cancelled and recorded, their
    workers freed; rerunning the sweep finishes it."""
    from cluster import open_client

    from ..detached import attach

    _running_cluster(target, "cancel")
    with open_client(target, workers=False) as client:  # the scheduler's: workers or none
        handle = _handle(attach, client, name)
        if not handle.cancel():
            raise ConfigError(f"Sweep '{name}' is not running ({handle.status()['state']}): nothing to cancel.")
        status = handle.wait(timeout=120)
    if status["state"] == "cancelled":
        display.console.print(f"Cancelled: {status['error']} Submitting it again resumes it.")
    else:
        display.console.print(f"Sweep '{name}' {status['state']} before it could be cancelled.")


def _still(handle, name: str) -> str:
    """What following a sweep that stopped leaves: the sweep going on, or as it ended."""
    state = handle.seen.get("state", "running")  # as last seen: no wait for the scheduler after a Ctrl-C
    if state == "running":
        return f"sweep '{name}' goes on in the cluster; only following it stopped."
    return f"sweep '{name}' had {state} (`dask-train results` shows its table); following it stopped."


def _said(name: str, error: str | None) -> str:
    """What a detached sweep's end recorded, without its own "sweep 'NAME': " prefix (the line names it)."""
    text = (error or "no detail").strip()
    prefix = f"sweep '{name}': "
    return text[len(prefix):] if text.startswith(prefix) else text


def _handle(attach, client, name: str):
    try:
        return attach(client, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _clock(stamp: float | None) -> str:
    return "" if stamp is None else datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
