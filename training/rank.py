"""One DDP rank as one Dask task: rendezvous, train a shard of every batch, all-reduce, clean up.

Runs on a worker. The process group is always destroyed (``finally``), so a failed job leaves the worker
ready for the next one; every collective is bounded by the job's timeout, so a lost peer ends in an
error instead of a hang. Nothing here writes ``os.environ``: the rendezvous is a TCPStore at ``tcp://host:port``,
listening on rank 0's own address only and closed at the end of every job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from .beats import Heartbeat, beat_period
from .ddp_checkpoint import local_checkpoint, state_from_bytes
from .errors import ConfigError, RankRefused
from .events import emit
from .loop import Callback, Shard, build_trainer, isolated_rng, pick_device
from .protocol import EpochEnded, FirstStep, RankOutcome
from .workloads import get_workload

log = logging.getLogger(__name__)
#: torch's NCCL error handling: "2" aborts a failed collective's communicators and raises in the rank; torch's
#: default ("3") ends the whole worker process. Workers get it where they are started (cluster.devices).
_NCCL_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"


@dataclass(frozen=True)
class RankSpec:
    """One rank's part of a DDP job, built and validated on the client."""

    job: str
    run: str
    rank: int
    local_rank: int
    world_size: int
    init_method: str
    backend: str
    workload: str
    params: dict[str, Any]
    epochs: int
    seed: int
    timeout: float
    record_samples: bool = False
    #: The address the cluster knows this rank's worker by: gloo's sockets use it (see _gloo_bound_to).
    host: str = ""
    #: ``fp32``, ``bf16`` or ``fp16`` (see :mod:`training.precision`).
    precision: str = "fp32"
    #: 0 for the first run of the job, n after its n-th automatic restart.
    attempt: int = 0

    @property
    def local_key(self) -> str:
        """This attempt's name for rank 0's worker-local checkpoint (see ``training.ddp_checkpoint``)."""
        return f"{self.run}.{self.attempt}"


class _RankZeroEvents(Callback):
    """Rank 0 reports each epoch, on the same event topic as sweep trials."""

    def __init__(self, spec: RankSpec, worker: str) -> None:
        self.spec, self.worker = spec, worker
        self.first_step_at: float | None = None

    def on_batch_end(self, epoch: int, batch: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
            emit(FirstStep(self.spec.job, self.spec.run, time=self.first_step_at))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        emit(EpochEnded(self.spec.job, self.spec.run, time=time.time(), trial=-1, rank=0, worker=self.worker,
                        record=record))


def free_port(host: str) -> int:
    """A port free on ``host`` right now (run on rank 0's worker; the OS picks it, never hard-coded)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_rank(spec: RankSpec, resume_state: bytes | None = None) -> RankOutcome:
    """Join the process group, train this rank's shards, and return (rank 0: the model) or raise.

    ``resume_state``: the bytes of the job's checkpoint (the client's copy) to continue from. The
    rendezvous store listens on rank 0's own address only (never the wildcard) and is closed when the
    rank ends, whether it trained or failed. A heartbeat runs beside the training thread throughout.
    """
    from cluster.plugin import prepare_task_thread

    prepare_task_thread()
    with _heartbeat(spec) as beat:
        return _run_rank(spec, resume_state, beat)


class _QuietRefusals(logging.Filter):
    """Drops the worker's "Compute Failed" record (a traceback, logged where the worker logs) of a rank that
    refused its input: the client reports it, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (str(record.msg).startswith("Compute Failed") and len(args) > 3
                    and str(args[3]).startswith(f"{RankRefused.__name__}("))


_QUIET_REFUSALS = _QuietRefusals()


def _heartbeat(spec: RankSpec) -> Heartbeat:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # called outside a Dask worker (tests, a debugger): nobody to beat to
        worker = None
    return Heartbeat(worker, job=spec.job, run=spec.run, rank=spec.rank, attempt=spec.attempt,
                     period=beat_period(spec.timeout))


def _run_rank(spec: RankSpec, resume_state: bytes | None, beat: Heartbeat) -> RankOutcome:
    worker = _worker_address()
    timeout = datetime.timedelta(seconds=spec.timeout)
    backend = _gloo_bound_to(spec.host) if spec.backend == "gloo" and spec.host else spec.backend
    store: Any = None
    listener: socket.socket | None = None
    try:
        beat.doing("rendezvous")
        device = _rank_device(spec)  # inside: a GPU that cannot be used is this rank's error, named as such
        store, listener = rendezvous_store(spec.init_method, spec.world_size, spec.rank == 0, timeout)
        dist.init_process_group(backend, store=store, rank=spec.rank, world_size=spec.world_size, timeout=timeout,
                                **_bound_device(device))
        return _train_rank(spec, worker, device, resume_state, beat)
    except ConfigError as exc:  # its input (data, checkpoint, device): the client says it in one line
        logging.getLogger("distributed.worker").addFilter(_QUIET_REFUSALS)
        refused = RankRefused(str(exc))
        traceback.clear_frames(exc.__traceback__)  # frames holding its data and model would stay with the error
        raise refused from None
    except Exception as exc:
        text = traceback.format_exc()
        traceback.clear_frames(exc.__traceback__)  # frames holding the store would keep it alive
        raise RuntimeError(f"DDP rank {spec.rank} on {worker} failed: {type(exc).__name__}: {exc}\n"
                           f"{text}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        del store
        _close_listener(listener)


def rank_cuda_index(local_rank: int, device_count: int, cuda_visible_devices: str | None) -> int:
    """The GPU (an index among those this process sees) an nccl rank trains on.

    A worker started with ``CUDA_VISIBLE_DEVICES`` set has its own GPU first (dask-cuda rotates the list;
    Slurm and Kubernetes show it only its own): index 0, as trials use. A worker that sees every GPU of its
    host (the variable unset) takes its local rank's, so two such workers on one host never share a GPU.

    Examples
    --------
    >>> rank_cuda_index(1, 4, "1,2,3,0"), rank_cuda_index(1, 4, None), rank_cuda_index(5, 4, None)
    (0, 1, 1)
    """
    if cuda_visible_devices is not None or device_count < 1:
        return 0
    return local_rank % device_count


def _rank_device(spec: RankSpec) -> torch.device:
    """This rank's device; an nccl rank makes its GPU the current one first (NCCL's communicator and every
    tensor made without an index then use it, never another worker's ``cuda:0``)."""
    if spec.backend != "nccl":
        return pick_device("cpu")
    index = rank_cuda_index(spec.local_rank, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    _check_nccl_error_handling(spec.rank)
    return device


def device_label(device: torch.device) -> str:
    """``cpu``, or a GPU's index here and its UUID, the same whatever ``CUDA_VISIBLE_DEVICES`` a worker has.

    Examples
    --------
    >>> device_label(torch.device("cpu"))
    'cpu'
    """
    if device.type != "cuda":
        return device.type
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", "")
    return f"cuda:{device.index} GPU-{uuid}" if uuid else f"cuda:{device.index}"


def _bound_device(device: torch.device) -> dict[str, Any]:
    """``init_process_group`` keywords binding an nccl group to this rank's GPU (its communicator is made
    at once, on that device, and a wrong pairing fails at the rendezvous rather than in the first step)."""
    return {"device_id": device} if device.type == "cuda" else {}


def _check_nccl_error_handling(rank: int) -> None:
    """Warn where this worker was started without ``TORCH_NCCL_ASYNC_ERROR_HANDLING=2``: a failing collective
    may then end the worker process, and the job is reported as a lost worker instead of this rank's error."""
    mode = os.environ.get(_NCCL_ERROR_HANDLING)
    if mode != "2":
        log.warning("DDP rank %s: this worker was started with %s=%s; a failing NCCL collective may end the "
                    "worker process. Start GPU workers with %s=2 (dask-train's own clusters, deploy files and "
                    "image do).", rank, _NCCL_ERROR_HANDLING, mode if mode is not None else "(unset)",
                    _NCCL_ERROR_HANDLING)


def rendezvous_store(init_method: str, world_size: int, is_master: bool,
                     timeout: datetime.timedelta) -> tuple[dist.TCPStore, socket.socket | None]:
    """The job's TCPStore at ``tcp://HOST:PORT``, and (rank 0) a handle on its listening socket.

    Rank 0's store listens on HOST only, through a socket bound here (a TCPStore left to itself listens on
    every interface, IPv4 and IPv6). The handle closes that listener for certain when the job ends: torch's
    DistributedDataParallel keeps its process group, and with it the store, alive after
    ``destroy_process_group``.

    Examples
    --------
    >>> import datetime
    >>> url = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    >>> store, listener = rendezvous_store(url, 1, True, datetime.timedelta(seconds=5))
    >>> store.set("k", "v"); store.get("k"), listener.getsockname()[0]
    (b'v', '127.0.0.1')
    >>> _close_listener(listener)
    """
    parts = urlsplit(init_method)
    host, port = parts.hostname or "", int(parts.port or 0)
    if not is_master:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout), None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(max(128, world_size))
        handle = sock.dup()
    except BaseException:
        sock.close()
        raise
    try:
        store = dist.TCPStore(host, port, world_size, True, timeout=timeout, wait_for_workers=False,
                              master_listen_fd=sock.detach())
    except BaseException:
        _close_listener(handle)
        raise
    return store, handle


def _close_listener(handle: socket.socket | None) -> None:
    """Stop a listening socket whoever else holds it (shutdown acts on the socket, not on this fd)."""
    if handle is None:
        return
    with contextlib.suppress(OSError):
        handle.shutdown(socket.SHUT_RDWR)
    handle.close()


def _train_rank(spec: RankSpec, worker: str, device: torch.device, resume_state: bytes | None,
                beat: Heartbeat) -> RankOutcome:
    from torch.nn.parallel import DistributedDataParallel

    work = get_workload(spec.workload)
    device_ids = [device.index] if device.type == "cuda" else None
    with isolated_rng(device):
        beat.doing("loading data")
        trainer = build_trainer(
            work, spec.params, spec.seed, device, shard=Shard(spec.rank, spec.world_size),
            wrap=lambda model: DistributedDataParallel(model, device_ids=device_ids),
            reduce=_all_reduce_sum, precision=spec.precision)
        if resume_state is not None:
            trainer.load_state(state_from_bytes(resume_state, "sent by the client"), "the job's checkpoint")
        events = _RankZeroEvents(spec, worker) if spec.rank == 0 else Callback()
        started_epoch = trainer.epoch
        trainer.train(spec.epochs, _Both(beat, events), _rank_zero_checkpoint(spec))
    samples = None
    if spec.record_samples:  # which training samples this rank saw in its last epoch
        samples = torch.cat(trainer.last_batches).cpu() if trainer.last_batches else torch.zeros(0)
    outcome = RankOutcome(rank=spec.rank, worker=worker, history=list(trainer.history),
                          resumed_from=started_epoch, samples=samples, device=device_label(device))
    if spec.rank != 0:
        return outcome
    return dataclasses.replace(outcome, state_dict=trainer.best_weights(), best_epoch=trainer.best.epoch,
                               meta=dict(trainer.data.meta), artifacts=dict(trainer.data.artifacts),
                               first_step_at=getattr(events, "first_step_at", None))


def _rank_zero_checkpoint(spec: RankSpec) -> Path | None:
    """Rank 0 saves each epoch's state on its own worker; the client copies it (no shared disk needed)."""
    if spec.rank != 0:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        worker = None
    return local_checkpoint(spec.job, spec.local_key, worker)


class _Both(Callback):
    """The heartbeat's progress and rank 0's events, from one callback."""

    def __init__(self, first: Callback, second: Callback) -> None:
        self.callbacks = (first, second)

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(epoch, num_batches)

    def on_batch_end(self, epoch: int, batch: int) -> None:
        for callback in self.callbacks:
            callback.on_batch_end(epoch, batch)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(record)


def _gloo_bound_to(host: str) -> str:
    """A gloo backend whose sockets use ``host``, the address the cluster reaches this worker at.

    Left alone, gloo uses whatever this machine's hostname resolves to, which on many machines (Debian's
    127.0.1.1, containers, network namespaces) is a loopback address no peer on another host can reach:
    the job then dies in ``connectFullMesh``. ``GLOO_SOCKET_IFNAME`` would fix it through ``os.environ``,
    which a long-lived worker must not write; a registered backend with an explicit device does not.
    """
    name = "gloo-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")
    if name not in dist.Backend.backend_list:
        def create(store: Any, rank: int, size: int, timeout: datetime.timedelta) -> Any:
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # not in the stubs
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
            return dist.ProcessGroupGloo(store, rank, size, options)

        dist.Backend.register_backend(name, create, devices=["cpu"])
    return name


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return "local"
