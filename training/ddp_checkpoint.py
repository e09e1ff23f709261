"""A DDP job's checkpoint without a shared filesystem: rank 0 writes it on its own worker, the client copies it.

Rank 0 saves the trainer's state after every epoch into its worker's local directory (a path only that
worker needs to see). When rank 0 reports the epoch, the client fetches the file's bytes from the worker's
event loop (``Client.run``, which does not wait for the busy training thread) and writes them into the
run directory. Resuming, and restarting after a failure, sends the client's copy back to every rank as
bytes. A runs directory that the workers can also see is fine; nothing needs it. Every fetch is bounded:
a stopped worker never holds the client up for more than ``timeout`` seconds.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

_FETCH_TIMEOUT = 30.0  # seconds at most for one copy from rank 0's worker


# ---------------------------------------------------------------------------------------------- on a worker
def local_checkpoint(job: str, run: str, worker: Any = None) -> Path:
    """Where rank 0 of run ``run`` of ``job`` keeps its checkpoint on its own worker (in the worker's local
    directory, which Dask removes with the worker; the system temp directory outside one)."""
    root = Path(getattr(worker, "local_directory", None) or tempfile.gettempdir())
    return root / "dask-train-ddp" / f"{job}-{run}" / "checkpoint.pt"


def read_local(job: str, run: str, dask_worker: Any = None) -> bytes | None:
    """The bytes of rank 0's checkpoint on this worker (None before the first epoch). Run by ``Client.run``."""
    path = local_checkpoint(job, run, dask_worker)
    return path.read_bytes() if path.is_file() else None


def remove_local(job: str, run: str, dask_worker: Any = None) -> None:
    """Remove the job's folder from this worker. Run by ``Client.run``."""
    shutil.rmtree(local_checkpoint(job, run, dask_worker).parent, ignore_errors=True)


def state_from_bytes(data: bytes, source: str) -> dict[str, Any]:
    """A checkpoint's state from its bytes, loaded without executing pickled code."""
    from .loop import load_state

    return load_state(io.BytesIO(data), source)


# ---------------------------------------------------------------------------------------------- on the client
class CheckpointCopy:
    """The client's copy of a DDP job's checkpoint (``path``, in the run directory) and its epoch.

    Examples
    --------
    >>> copy = CheckpointCopy(client, Path("runs/pets/checkpoint.pt"))  # doctest: +SKIP
    >>> copy.fetch(rank0_worker, "pets", token); copy.epoch  # doctest: +SKIP
    2
    """

    def __init__(self, client: Any, path: Path, timeout: float = _FETCH_TIMEOUT) -> None:
        self.client, self.path, self.timeout = client, path, min(timeout, _FETCH_TIMEOUT)
        self.epoch = _epoch_of(path)

    def fetch(self, worker: str, job: str, run: str) -> int:
        """Copy rank 0's checkpoint from ``worker`` when it is newer than ours; the epoch we now hold."""
        data = self._run(read_local, job, run, worker=worker)
        if not data:
            return self.epoch
        try:
            epoch = int(state_from_bytes(data, f"from {worker}")["epoch"])
        except ConfigError as exc:  # e.g. read while a dying worker's disk was failing: keep ours
            log.warning("Ignored a checkpoint copy: %s", exc)
            return self.epoch
        if epoch > self.epoch:
            _write_atomically(self.path, data)
            self.epoch = epoch
        return self.epoch

    def remove_from(self, worker: str, job: str, run: str) -> None:
        """Remove the job's local folder from ``worker`` (best effort: it may be gone)."""
        self._run(remove_local, job, run, worker=worker)

    def data(self) -> bytes | None:
        """The checkpoint's bytes, to send to the ranks (None when there is none yet)."""
        return self.path.read_bytes() if self.path.is_file() else None

    def _run(self, function: Any, *args: Any, worker: str) -> Any:
        """``function(*args)`` on ``worker``'s event loop, at most ``timeout`` seconds; None on failure."""
        try:
            results = self.client.sync(self.client._run, function, *args, workers=[worker],
                                       callback_timeout=self.timeout)
        except Exception as exc:  # the worker left, is stopped, or the call failed: the copy stays as it is
            log.info("Could not reach %s for the checkpoint (%s: %s)", worker, type(exc).__name__, exc)
            return None
        return results.get(worker)


def _epoch_of(path: Path) -> int:
    if not path.is_file():
        return 0
    return int(state_from_bytes(path.read_bytes(), repr(str(path)))["epoch"])


def _write_atomically(path: Path, data: bytes) -> None:
    from .run_dirs import replace_file

    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data)
