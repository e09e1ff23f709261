"""The ``dask-train`` command line."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import sys
import traceback
from typing import Any

import click

from cluster.errors import ClusterError

from ..errors import ConfigError, DaskTrainError
from ..limits import one_line, short
from . import display
from .cluster_cmd import cluster_group
from .ddp_cmd import ddp_command
from .detach_cmd import attach_command, cancel_command, runs_command
from .sweep_cmd import results_command, sweep_command
from .train_cmd import evaluate_command, generate_command, train_command, workloads_command

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns every failure below into one line: exit code 2 for bad input (ConfigError, usage errors), 1 for
    runtime failures (cluster, DDP job, disk, anything unexpected), 130 for a Ctrl-C (143 for SIGTERM) no command
    summed up itself. ``--debug`` shows the traceback too."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # an option of dask-train itself (before any command)
            _help_for_no_command(exc)
            raise display.BadInput(f"{one_line(exc.format_message())} (see `dask-train --help`)") from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except display.OutputClosed:  # nothing the command started goes on: nothing to say, and nowhere
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            ctx.exit(display.interrupt.code)
        except KeyboardInterrupt:  # one the command did not turn into its own summary (e.g. during start-up)
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()  # re-raised, click would say "Aborted!" instead
            click.echo(f"Interrupted ({display.interrupt.cause}).", err=True)
            ctx.exit(display.interrupt.code)
        except click.UsageError as exc:
            _help_for_no_command(exc)
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()  # and the same line and exit code as without --debug
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            raise display.BadInput(f"{one_line(exc.format_message())} (see `{command} --help`)") from None
        except click.ClickException as exc:
            flat = display.BadInput if exc.exit_code == display.BadInput.exit_code else click.ClickException
            raise flat(one_line(exc.format_message())) from None
        except Exception as exc:
            debug = bool(ctx.obj and ctx.obj.get("debug"))
            if debug:
                traceback.print_exc()  # --debug adds the traceback; the line and the exit code stay
            raise _one_line_error(exc, debug) from None


def _help_for_no_command(exc: click.UsageError) -> None:
    """A group given no command (`dask-train`, `dask-train cluster`) shows its help, as it is, and exits 0
    (click 8.2 on makes that an error, which the one-line rule would flatten)."""
    if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
        click.echo(exc.ctx.get_help())
        exc.ctx.exit(0)


def _one_line_error(exc: Exception, debug: bool = False) -> click.ClickException:
    """The ClickException (one line, right exit code) a failure is shown as (``debug``: after its traceback)."""
    if isinstance(exc, ConfigError):
        return display.BadInput(one_line(str(exc)))
    if isinstance(exc, ClusterError | DaskTrainError):
        return click.ClickException(one_line(str(exc)))
    if isinstance(exc, OSError):
        bad_path = exc.errno in (errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)
        return (display.BadInput if bad_path else click.ClickException)(one_line(disk_message(exc)))
    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):  # the run store's disk
        return click.ClickException(one_line(disk_message(OSError(errno.ENOSPC, str(exc)))))
    hint = "" if debug else " (rerun with --debug for the traceback)"
    return click.ClickException(one_line(f"{type(exc).__name__}: {exc}{hint}"))


def disk_message(exc: OSError) -> str:
    """What a failed read or write means and what to do (a full disk: free space, rerun to resume)."""
    where = f" {short(str(exc.filename))}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"No space left on the device holding{where or ' the run directory'}. Free some space and run the "
                "same command again: a sweep finishes only what is missing, `--resume` continues a job.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"Cannot write{where}: {exc.strerror}. Choose a folder you can write (--runs-dir, --out) or "
                "fix its permissions.")
    return f"{exc.strerror or type(exc).__name__}{where}: check the path and try again."


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure instead of one line.")
@click.version_option(package_name="dask-train")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Distributed PyTorch training on Dask: sweeps and DDP jobs, one worker per GPU."""
    ctx.obj = {"debug": debug}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Dask sets its loggers' levels from its config when distributed is first imported, which the commands
    # do later (lazily): through the config's environment variable, so its INFO lines stay away unless -v.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(level).lower())
    if not verbose:  # a command says its own failure in one line: not Dask's client's errors and tracebacks too
        logging.getLogger("distributed.client").addFilter(_critical_only)


def _critical_only(record: logging.LogRecord) -> bool:
    """A filter (on Dask's client logger, which Dask sets up when imported: a filter stays where a level would
    not) passing only CRITICAL records. Its ERRORs are what a command reports itself, plus a traceback: e.g.
    "Failed to reconnect to scheduler after 5.00 seconds" and the CancelledError of its own closing."""
    return record.levelno >= logging.CRITICAL


cli.add_command(train_command, "train")
cli.add_command(generate_command, "generate")
cli.add_command(evaluate_command, "evaluate")
cli.add_command(workloads_command, "workloads")
cli.add_command(cluster_group, "cluster")
cli.add_command(sweep_command, "sweep")
cli.add_command(ddp_command, "ddp")
cli.add_command(results_command, "results")
cli.add_command(attach_command, "attach")
cli.add_command(runs_command, "runs")
cli.add_command(cancel_command, "cancel")


def main() -> None:
    """Console-script entry point."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a launcher that ignores it for us keeps it so
        signal.signal(signal.SIGTERM, _terminated)
    sys.stdout = display.Output(sys.stdout)
    sys.exit(cli.main(prog_name="dask-train", standalone_mode=True))


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a batch system's time limit, ``docker stop``) stops a command as Ctrl-C does: a
    sweep's running trials are cancelled and recorded, their workers freed, one line is printed; exit code
    143 (128 + 15). ``cluster up`` handles both signals itself."""
    display.interrupt.cause, display.interrupt.code = "SIGTERM", 128 + signal.SIGTERM
    raise KeyboardInterrupt
