"""``dask-train cluster sbatch|manifest``: job scripts and manifests for Slurm and Kubernetes, and the
Slurm options of ``cluster up --slurm``."""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cluster import ClusterError, TLSFiles

from . import display

if TYPE_CHECKING:
    from cluster.slurm import SlurmSpec


def tls_files(ca: str | Path | None, cert: str | Path | None, key: str | Path | None,
              absolute: bool = False) -> TLSFiles | None:
    """The --tls-* files (None: none given), all three or none, each checked as PEM before anything starts
    (UsageError naming it); ``absolute``: as absolute paths (for a job script run elsewhere)."""
    given = [v for v in (ca, cert, key) if v]
    if given and len(given) != 3:
        raise click.UsageError("Pass all three of --tls-ca-file, --tls-cert and --tls-key, or none.")
    if not given:
        return None
    files = TLSFiles(*(str(Path(p).resolve()) if absolute else str(p) for p in given))
    try:
        files.check()
    except ClusterError as exc:
        raise click.UsageError(str(exc)) from None
    return files


def slurm_options(command: Callable) -> Callable:
    """Adds the Slurm job options to a command and hands it ``slurm: SlurmSpec``."""

    @click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Slurm nodes.")
    @click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, show_default=True,
                  help="GPUs per node, one worker each (0: CPU nodes).")
    @click.option("--workers-per-node", type=click.IntRange(min=1), default=1, show_default=True,
                  help="CPU nodes: worker processes (training slots) per node.")
    @click.option("--cpus-per-worker", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--memory-per-worker", default="16GB", show_default=True)
    @click.option("--time", "walltime", default="01:00:00", show_default=True, help="Slurm time limit.")
    @click.option("--partition", default=None, help="Slurm partition.")
    @click.option("--account", default=None, help="Slurm account.")
    @click.option("--python", default="python", show_default=True, help="Python of the dask-train environment.")
    @click.option("--setup", multiple=True, help="A shell line run first on each node (repeatable), e.g. "
                  "'source ~/env/bin/activate'.")
    @click.option("--interface", default=None, help="Network interface for scheduler and workers (e.g. ib0).")
    @functools.wraps(command)
    def wrapper(*args: Any, nodes: int, gpus_per_node: int, workers_per_node: int, cpus_per_worker: int,
                memory_per_worker: str, walltime: str, partition: str | None, account: str | None, python: str,
                setup: tuple[str, ...], interface: str | None, **kwargs: Any) -> Any:
        from cluster.slurm import SlurmSpec

        try:
            spec = SlurmSpec(nodes=nodes, gpus_per_node=gpus_per_node, workers_per_node=workers_per_node,
                             cpus_per_worker=cpus_per_worker, memory_per_worker=memory_per_worker,
                             walltime=walltime, partition=partition, account=account, python=python,
                             setup=setup, interface=interface)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return command(*args, slurm=spec, **kwargs)

    return wrapper


@click.command()
@slurm_options
@click.option("--dashboard-address", default="127.0.0.1:8787", show_default=True,
              help="Where the first node's dashboard listens (loopback: reach it with ssh -L).")
@click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS for scheduler, workers and clients: these files on the shared filesystem.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the script here (default: print it).")
def sbatch_command(slurm: SlurmSpec, dashboard_address: str, tls_ca_file: Path | None, tls_cert: Path | None,
                   tls_key: Path | None, out: Path | None) -> None:
    """A whole-cluster Slurm job: scheduler on the first node, one worker per GPU (or CPU slot) on each."""
    from cluster.slurm import sbatch_script

    tls = tls_files(tls_ca_file, tls_cert, tls_key, absolute=True)  # not a failure on a node once the job starts
    try:
        slurm = dataclasses.replace(slurm, tls=tls, dashboard_address=dashboard_address)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    script = sbatch_script(slurm, str(out) if out is not None else None)
    _check_with_bash(script, slurm.setup)
    _emit(script, out)


def _check_with_bash(script: str, setup: tuple[str, ...]) -> None:
    """Refuse a job script bash's own parser does not read (``bash -n``): what ``--setup`` holds goes in as it
    is. Where there is no bash here, each setup line's quotes must close on it (shlex, a near parser)."""
    bash = shutil.which("bash")
    if bash is None:
        for line in setup:
            try:
                shlex.split(line, comments=True)
            except ValueError as exc:  # No closing quotation: the rest of the script would be inside it
                raise display.BadInput(f"--setup {line!r}: {exc}; the rest of the job script would be read as "
                                       "part of it. Close its quotes.") from None
        return
    try:
        checked = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return  # no verdict: the script is written as the checks above let it
    if checked.returncode != 0:
        said = " ".join(checked.stderr.split())[:300]
        raise display.BadInput(f"The job script would not run: bash -n says {said!r}. Check the --setup lines.")


@click.command()
@click.option("--name", default="dask-train", show_default=True, help="The DaskCluster's name.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker pods.")
@click.option("--gpu/--cpu", default=True, show_default=True, help="GPU workers (nvidia.com/gpu: 1 each) or CPU.")
@click.option("--image", default=None, help="Image with dask-train (default dask-train:cuda / dask-train:cpu, "
              "built from deploy/docker/Dockerfile).")
@click.option("--worker-cpu", default="4", show_default=True)
@click.option("--worker-memory", default="16Gi", show_default=True)
@click.option("--namespace", default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the manifest here (default: print it).")
def manifest_command(name: str, workers: int, gpu: bool, image: str | None, worker_cpu: str, worker_memory: str,
                     namespace: str | None, out: Path | None) -> None:
    """A DaskCluster manifest for the dask-kubernetes operator (kubectl apply -f it)."""
    import yaml

    from cluster.kubernetes import dask_cluster

    try:
        manifest = dask_cluster(name, workers, gpu, image, worker_cpu, worker_memory, namespace)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _emit(yaml.safe_dump(manifest, sort_keys=False), out)


def _emit(text: str, out: Path | None) -> None:
    """Print ``text``, or write it as ``out``: a new file only (never one that is there, nor through a link)."""
    if out is None:
        click.echo(text, nl=False)
        return
    if not out.parent.is_dir():
        raise display.BadInput(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist. Create it, or "
                               "name a file in an existing folder.")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise display.BadInput(f"--out {str(out)!r} already exists: dask-train writes only a new file there. "
                               "Remove it first, or choose another --out.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        out.unlink(missing_ok=True)  # the file made just now, never a whole one left half written
        raise
    name = str(out)
    display.console.print(f"Wrote {name if name.isprintable() else repr(name)}")  # a newline in it: shown as \\n
