"""Reusable test helpers: polling instead of sleeping, the CLI as a subprocess, process trees."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

EXE = shutil.which("dask-train")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_command(*args: str) -> list[str]:
    return [EXE, *args] if EXE else [sys.executable, "-c", "from training.cli import main; main()", *args]


def cli_env() -> dict[str, str]:
    """The environment for a CLI subprocess: this process's ``os.environ``, explicitly. (Left to inherit, a
    child gets the C-level environment, where readline, loaded by pytest, has put COLUMNS=80 and LINES=24.)"""
    return dict(os.environ)


def run_cli(*args: str, timeout: float = 120, cwd: Any = None) -> subprocess.CompletedProcess:
    """Run ``dask-train ARGS`` to completion (bounded by ``timeout``)."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=cli_env())


def start_cli(*args: str, cwd: Any = None, new_session: bool = True, importable: bool = False,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``dask-train ARGS`` in the background, in its own process group (like a terminal job).
    ``importable``: the CLI can import this checkout's test modules (workloads named ``tests....:Class``)."""
    env = {**cli_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if importable:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, start_new_session=new_session, env=env)


def poll_for(predicate: Callable[[], Any], timeout: float, period: float = 0.1, what: str = "condition") -> Any:
    """Call ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(period)


def stop_processes(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """Terminate ``processes``, then kill whichever has not ended within ``timeout`` seconds."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def cannot_mount_namespaces() -> str | None:
    """Why a test cannot give processes their own mounts here (None: it can): needs root and unshare(1)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to give processes their own view of the filesystem"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True, text=True, timeout=30)
    return f"cannot make mount namespaces here: {probe.stderr.strip()}" if probe.returncode else None


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def slow_warm_up(seconds: float) -> Any:
    """dask-train's worker plugin with a warm-up ``seconds`` longer: a worker still importing torch."""
    from cluster.plugin import TrainingWorkerPlugin

    class SlowWarmUp(TrainingWorkerPlugin):
        def _warm_up(self) -> None:
            time.sleep(seconds)
            super()._warm_up()

    return SlowWarmUp()


def processes_marked(variable: str, value: str) -> list[psutil.Process]:
    """The live processes whose environment holds ``variable=value`` (what a command started, its
    descendants and their descendants, re-parented or not)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(variable) == value and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


class OutputLines:
    """A process's stdout, read on a thread of its own: waiting for a line is bounded (a ``readline`` in a
    ``poll_for`` blocks past its timeout while the process stays silent)."""

    def __init__(self, process: subprocess.Popen) -> None:
        import threading

        self.process, self.lines = process, list[str]()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        poll_for(lambda: any(text in line for line in self.lines), timeout, what=f"{text!r} in the output")

    def rest(self, timeout: float) -> str:
        """Everything it printed, once it has ended (TimeoutExpired past ``timeout``)."""
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return "".join(self.lines)
