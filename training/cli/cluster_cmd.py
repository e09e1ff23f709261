"""``dask-train cluster up`` / ``cluster info``, and the options every cluster-using command shares."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cluster import ClusterError, ClusterSpec, Target
from cluster.target import MAX_TIMEOUT

from . import display
from .deploy_cmd import manifest_command, sbatch_command, slurm_options, tls_files

if TYPE_CHECKING:
    from cluster.slurm import SlurmSpec

# Options are parsed with the light dataclasses above; Dask is imported when a command runs.

DEFAULT_SCHEDULER_FILE = "dask-train-scheduler.json"


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback refusing NaN (a FloatRange lets it through: every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value} is not a number of seconds.")
    return value


def _cluster_options(embedded: bool, ranks: bool = False) -> Callable[[Callable], Callable]:
    """Adds --address/--scheduler-file/--timeout/--tls-* (a running cluster) and, where the command can
    start one (``embedded``), --workers/--gpus (the embedded cluster) to a command, and hands it a
    ``target: Target``. ``ranks``: --workers is also how many workers of a running cluster to train on
    (``ddp``); otherwise it sizes the embedded cluster only, and is refused with a running one."""
    default = "default: start an embedded one" if embedded else "this or --scheduler-file is needed"
    path = click.Path(dir_okay=False)
    workers_help = ("Workers (ranks) to train on: of the embedded cluster, or of the running one (default: one "
                    "per GPU, or per CPU core; every free worker of a running cluster)." if ranks else
                    "Embedded cluster: worker count (default: one per GPU, or per CPU core).")
    embedded_options = [
        click.option("--workers", type=click.IntRange(min=1), default=None, help=workers_help),
        click.option("--gpus", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
                     help="Embedded cluster: one worker per visible GPU, or CPU workers only.")]
    options = [
        click.option("--address", help=f"Scheduler of a running cluster ({default})."),
        click.option("--scheduler-file", type=path, help="Scheduler file of a running cluster."),
        *(embedded_options if embedded else []),
        click.option("--timeout", type=click.FloatRange(min=0.1, max=MAX_TIMEOUT), default=30.0, show_default=True,
                     callback=finite,
                     help="Seconds to wait for the scheduler and workers."),
        click.option("--tls-ca-file", type=path, default=None,
                     help="TLS: the cluster's CA certificate (with --tls-cert and --tls-key)."),
        click.option("--tls-cert", type=path, default=None, help="TLS: this client's certificate."),
        click.option("--tls-key", type=path, default=None, help="TLS: this client's key."),
    ]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, address: str | None, scheduler_file: str | None, timeout: float,
                    tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None, workers: int | None = None,
                    gpus: str = "auto", **kwargs: Any) -> Any:
            tls = tls_files(tls_ca_file, tls_cert, tls_key)
            running = bool(address or scheduler_file)
            if workers is not None and not ranks and running:
                raise click.UsageError(f"--workers {workers} sizes the built-in cluster, but "
                                       f"{'--address' if address else '--scheduler-file'} names a running one, "
                                       "whose workers are its own: leave out one or the other.")
            try:
                target = Target(address=address, scheduler_file=scheduler_file, timeout=timeout,
                                security=tls.security() if tls else None,
                                local=ClusterSpec(workers=None if running else workers, gpus=gpus))
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
            if ranks:  # of a running cluster too (not bounded by what this machine could start)
                kwargs["workers"] = workers
            return command(*args, target=target, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


#: The cluster options of a command that runs on a running cluster or starts an embedded one.
target_options = _cluster_options(embedded=True)
#: ... where --workers is also the ranks to train on of a running cluster (`ddp`).
ddp_target_options = _cluster_options(embedded=True, ranks=True)
#: ... of one that needs a running cluster (`runs`, `attach`, `cancel`).
running_cluster_options = _cluster_options(embedded=False)


@click.group()
def cluster_group() -> None:
    """Start a cluster, or look at one."""


@cluster_group.command("up")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per GPU, or per CPU core).")
@click.option("--gpus", type=click.Choice(["auto", "off"]), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface for scheduler, workers and dashboard; 0.0.0.0 exposes them to the network.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=0, show_default=True,
              help="Scheduler port (0: a free one).")
@click.option("--dashboard-address", default=None, help="Dashboard host:port (default: HOST:8787).")
@click.option("--scheduler-file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(DEFAULT_SCHEDULER_FILE), show_default=True, help="Where to write connection details.")
@click.option("--tls", "use_tls", is_flag=True, help="Require TLS (temporary certificates unless given below).")
@click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--slurm", "use_slurm", is_flag=True,
              help="Workers as Slurm jobs (dask-jobqueue), one per node, with the Slurm options below.")
@slurm_options
def cluster_up(workers: int | None, gpus: str, host: str, port: int, dashboard_address: str | None,
               scheduler_file: Path, use_tls: bool, tls_ca_file: str | None, tls_cert: str | None,
               tls_key: str | None, use_slurm: bool, slurm: SlurmSpec) -> None:
    """Start a scheduler and one worker per GPU (or CPU slot); stay up until Ctrl-C."""
    from cluster import check_scheduler_file_path, make_tls_files, remove_tls_files, write_scheduler_file
    from cluster.security import holds_address
    from cluster.spec import check_listen

    from ..dashboard import page_url

    tls = tls_files(tls_ca_file, tls_cert, tls_key)
    if use_slurm and (use_tls or workers):
        raise click.UsageError("--slurm takes the Slurm options (--nodes, --gpus-per-node, ...), not --workers "
                               "or --tls.")
    try:
        check_scheduler_file_path(scheduler_file)
        spec = ClusterSpec(workers=workers, gpus=gpus, host=host, tls=tls, scheduler_port=port,
                           dashboard_address=dashboard_address or (f"{host}:8787" if ":" not in host else ":8787"))
        if not use_slurm:
            check_listen(host, port)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    temporary, written, address = None, False, ""
    if use_tls and tls is None:  # a fresh private folder; only what is created there is removed on exit
        temporary = make_tls_files(scheduler_file.parent / f"{scheduler_file.stem}-tls",
                                   hosts=("127.0.0.1", "localhost", host))
        tls = temporary
        spec = dataclasses.replace(spec, tls=tls)
    stop = _stop_on_signals()
    display.console.print(f"Starting {'TLS ' if tls else ''}cluster on {'Slurm' if use_slurm else host} ...")
    try:
        with (_started_on_slurm(slurm) if use_slurm else _started(spec)) as cluster:
            url = cluster.dashboard_link
            address = cluster.scheduler_address
            written = bool(write_scheduler_file(scheduler_file, address, url, tls))
            display.console.print(f"Scheduler:      {cluster.scheduler_address}")
            display.console.print(f"Dashboard:      {url}")
            display.console.print(f"Training page:  {page_url(url)}")
            display.console.print(f"Scheduler file: {scheduler_file.resolve()}")
            if use_slurm:
                display.console.print(f"Workers:        {slurm.slots} in {slurm.nodes} Slurm job(s), joining as "
                                      "the jobs start (squeue shows them; training_slot=1 each)")
            else:
                display.console.print(f"Workers:        {len(cluster.workers)} (training_slot=1 each)")
            display.console.print("Press Ctrl-C to stop.")
            while not stop():
                time.sleep(0.2)
            display.console.print("Stopping ... (cancelling its detached sweeps first, if any: Ctrl-C again to "
                                  "stop without waiting for them)")
            from ..detached import stop_all, stopped_line

            first = stop()
            for run in stop_all(give_up=lambda: stop() > first):  # cancelled while the workers are there
                display.console.print(stopped_line(run))
    finally:
        if written and holds_address(scheduler_file, address):  # only this cluster's file, not replaced since
            scheduler_file.unlink(missing_ok=True)
        if temporary is not None:
            remove_tls_files(temporary)
    display.console.print("Cluster stopped.")


def _started(spec: ClusterSpec):
    from distributed import Client

    from cluster import prepare_workers, start_local_cluster

    from ..dashboard import enable_page

    cluster = start_local_cluster(spec)
    try:
        with Client(cluster) as client:
            prepare_workers(client)
            enable_page(client)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _started_on_slurm(spec: SlurmSpec):
    """dask-jobqueue's SLURMCluster (scheduler here, workers as one Slurm job per node), jobs submitted."""
    from cluster.slurm import slurm_cluster

    if shutil.which("sbatch") is None:
        raise ClusterError("--slurm needs Slurm's `sbatch` on PATH: run this on a login node of the Slurm "
                           "cluster, or write a whole-cluster job script with `dask-train cluster sbatch` and "
                           "submit that.")
    cluster = slurm_cluster(spec)
    try:
        cluster.scale(jobs=spec.nodes)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _stop_on_signals() -> Callable[[], int]:
    """How many SIGINT or SIGTERM came, so the main thread can shut the cluster down cleanly (and a second one
    can skip a wait). The handler only counts: one that set a threading.Event deadlocked when a second signal
    came while the first handler, or the main thread's wait, held the event's lock (a SIGTERM forwarded twice
    left `cluster up` hung)."""
    came: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        came.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: len(came)


@cluster_group.command("info")
@target_options
def cluster_info(target: Target) -> None:
    """Show the workers: host, device, training slot, memory, tasks running."""
    from cluster import dashboard_url, describe_workers, open_client

    from ..dashboard import enable_page

    started = time.perf_counter()
    if target.embedded:  # what `sweep` would run on here: started for this command, closed after it
        found = Path(DEFAULT_SCHEDULER_FILE)
        hint = (f"the running cluster of {found}: pass --scheduler-file {found}" if found.is_file() else
                "a running cluster: pass --address or --scheduler-file")
        display.console.print(f"The built-in local cluster, started for this command and closed after it (for "
                              f"{hint}).", soft_wrap=True)
    with open_client(target) as client:
        url = dashboard_url(client)
        rows = describe_workers(client)
        page = enable_page(client)
        display.console.print(f"Scheduler: {client.scheduler_info()['address']}   Dashboard: {url}   "
                              f"Training page: {page}")
        display.table(
            f"{len(rows)} workers ({time.perf_counter() - started:.1f}s)",
            ["worker", "host", "device", "slot", "memory", "tasks running"],
            ([r["worker"], r["host"], r["device"], r["slot"],
              f"{r['memory_used'] / 2**30:.1f} / {r['memory_limit'] / 2**30:.1f} GiB", r["tasks_running"]]
             for r in rows),
        )


cluster_group.add_command(sbatch_command, "sbatch")
cluster_group.add_command(manifest_command, "manifest")
