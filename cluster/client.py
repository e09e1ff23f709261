"""Getting a client with workers that can train: connect to a running scheduler (address or scheduler
file) or start the embedded cluster; wait for workers with a timeout; check they offer training slots;
register the worker plugin."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from distributed import Client
from distributed.security import Security

from .errors import ClusterConnectError, NoTrainingSlots
from .local import start_local_cluster
from .plugin import PLUGIN_NAME, TRAINING_SLOT, TrainingWorkerPlugin
from .security import read_scheduler_file, refuses
from .spec import ClusterSpec  # noqa: F401  (the doctests, and callers that import it from here)
from .target import SCHEMES, Target, check_address  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

_WORKER_HINT = (
    f"Start workers with `dask worker ADDRESS --nthreads 1 --resources {TRAINING_SLOT}=1` (CPU) or "
    f"`dask cuda worker ADDRESS --resources {TRAINING_SLOT}=1` (one per GPU), or run without --address "
    "to use the built-in local cluster."
)


def connect(address: str | None = None, *, scheduler_file: str | None = None,
            security: Security | None = None, timeout: float = 30.0, min_workers: int = 1,
            preload: tuple[str, ...] = ()) -> Client:
    """A client of a running cluster whose workers offer training slots (``min_workers`` 0: of its scheduler
    alone, workers or none, e.g. to list or cancel its detached sweeps when its workers are gone).

    Raises
    ------
    ClusterConnectError
        Nothing answered at the address within ``timeout``, or no worker joined in time.
    NoTrainingSlots
        Workers joined but none offers the ``training_slot`` resource.

    Examples
    --------
    >>> client = connect("tcp://127.0.0.1:8786")  # doctest: +SKIP
    """
    if scheduler_file:
        address, file_security = read_scheduler_file(scheduler_file)
        security = security or file_security
    if not address:
        raise ClusterConnectError("No scheduler address: pass --address or --scheduler-file.")
    if address.startswith("tls://") and security is None:
        raise ClusterConnectError(f"{address} uses TLS: connect with --scheduler-file from `dask-train "
                                  "cluster up --tls`, or pass the certificate files.")
    given = f"--scheduler-file {scheduler_file}" if scheduler_file else "--address"
    if scheduler_file and refuses(address):  # written once its scheduler listened: that cluster is gone
        raise ClusterConnectError(f"Nothing listens at {address}, the scheduler in {scheduler_file}: the cluster "
                                  "that wrote it has stopped (killed, or its machine restarted). Start one with "
                                  "`dask-train cluster up`.")
    try:
        _probe(address, security, timeout)
        client = Client(address, security=security, timeout=timeout)
    except _NotAScheduler:
        raise ClusterConnectError(
            f"{address} took the connection but did not answer as a Dask scheduler within {timeout:g}s (is it "
            f"a dashboard's port, or another service?). Pass the scheduler's address ({given}).") from None
    except (OSError, TimeoutError) as exc:
        raise ClusterConnectError(
            f"Could not connect to a Dask scheduler at {address} within {timeout:g}s ({exc}). Is it running "
            f"and reachable? Start one with `dask-train cluster up`"
            + (f", or leave out {given} to use the built-in local cluster." if min_workers else ".")) from None
    if not min_workers:
        return client
    try:
        _wait_for_slots(client, min_workers, timeout)
        prepare_workers(client, preload=preload)
        wait_for_warm_up(client)
    except BaseException:
        client.close()
        raise
    return client


def cluster_workers(client: Client) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler knows now, by address, asked afresh.

    Not ``client.scheduler_info(n_workers=-1)["workers"]``: that returns the client's cached identity,
    which the client's own periodic refresh (every 2 s, asking for no workers) can overwrite between the
    fetch and the read, so a cluster of live workers now and then looks empty.

    Raises
    ------
    ClusterConnectError
        The client is closed, or the scheduler did not answer (callers that check periodically wait and
        ask again).
    """
    if client.scheduler is None:
        raise ClusterConnectError("The client is closed: it knows of no workers.")
    try:
        return dict(client.sync(client.scheduler.identity, n_workers=-1)["workers"])
    except OSError as exc:  # distributed's CommClosedError and connect timeouts among them
        raise ClusterConnectError(f"The scheduler did not answer ({type(exc).__name__}: {exc}).") from None


class _NotAScheduler(Exception):
    """Something took the connection and never answered Dask's handshake."""


def _probe(address: str, security: Security | None, timeout: float) -> None:
    """Connect to ``address`` as Dask does, bounded by ``timeout`` in all: Dask's own connect waits without end
    for the handshake of something that takes the connection and says nothing (a dashboard's port, another
    service). OSError where nothing answered within ``timeout`` (Dask retries meanwhile: a scheduler starting);
    :class:`_NotAScheduler` where something took the connection and said nothing."""
    import asyncio
    import queue
    import threading

    from distributed.comm import connect as dask_connect

    async def handshake() -> None:
        args = security.get_connection_args("client") if security is not None else {}
        try:
            comm = await asyncio.wait_for(dask_connect(address, timeout=timeout, **args), timeout + 1)
        except TimeoutError:  # Dask's own timeout is an OSError: this one is the handshake's
            raise _NotAScheduler from None
        await comm.close()

    # On a thread of its own (any caller, one with a running event loop too), a daemon one: Ctrl-C here leaves
    # at once, not when the probe's retries end (a pool's thread is joined, up to the whole --timeout).
    ended: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

    def probe() -> None:
        try:
            asyncio.run(handshake())
            ended.put(None)
        except BaseException as exc:  # handed to the caller
            ended.put(exc)

    threading.Thread(target=probe, name="dask-train-probe", daemon=True).start()
    try:
        failed = ended.get(timeout=timeout + 5)  # its own wait ends after timeout + 1
    except queue.Empty:
        raise _NotAScheduler from None
    if failed is not None:
        raise failed


def _wait_for_slots(client: Client, min_workers: int, timeout: float) -> None:
    try:
        client.wait_for_workers(min_workers, timeout=timeout)
    except TimeoutError:
        have, address = len(cluster_workers(client)), client.scheduler_info()["address"]
        raise ClusterConnectError(f"Only {have} of {min_workers} workers joined {address} "
                                  f"within {timeout:g}s. {_WORKER_HINT}") from None
    require_slots(client)


def require_slots(client: Client, needed: int = 1) -> list[str]:
    """Addresses of the workers offering a training slot; at least ``needed`` of them, or a clear error."""
    workers = cluster_workers(client)
    slotted = sorted(a for a, w in workers.items() if w.get("resources", {}).get(TRAINING_SLOT, 0) >= 1)
    if len(slotted) < needed:
        resources = sorted({k for w in workers.values() for k in w.get("resources", {})})
        raise NoTrainingSlots(
            f"{'No worker offers' if not slotted else f'Only {len(slotted)} workers offer'} a training slot "
            f"({len(workers)} workers, resources={{{', '.join(f'{r!r}' for r in resources)}}}, "
            f"needed {needed}). {_WORKER_HINT}")
    return slotted


def prepare_workers(client: Client, torch_threads: int | None = None, preload: tuple[str, ...] = ()) -> None:
    """Register the dask-train worker plugin (replacing an earlier one: workers keep a single copy).

    ``torch_threads`` forces one count on every worker; by default each worker sizes torch to its own CPUs.
    """
    client.register_plugin(TrainingWorkerPlugin(torch_threads=torch_threads, preload=preload), name=PLUGIN_NAME)


#: How long a new client waits for the workers' warm-up before it goes on (their first task then waits).
WARM_UP_TIMEOUT = 120.0
_WARM_POLL = 0.02  # seconds between a worker's looks at its own warm-up (no message: on the worker itself)


def wait_for_warm_up(client: Client, timeout: float = WARM_UP_TIMEOUT) -> bool:
    """Wait until every worker has imported torch and the preloaded modules (the plugin's warm-up), so the
    first trial starts as fast as later ones: that time counts as the cluster's start, not the first
    trial's. Each worker answers as its warm-up ends (it looks, not this client). Bounded: a worker still
    warming after ``timeout`` is logged and left to finish on its own. True when all were warm."""
    warm = client.run(_warmed, timeout, on_error="return")
    if all(v is True for v in warm.values()):
        return True
    log.warning("Workers %s were still warming up after %gs; their first tasks wait for it.",
                sorted(a for a, v in warm.items() if v is not True), timeout)
    return False


async def _warmed(timeout: float, dask_worker) -> bool:
    """On a worker: True once its warm-up has finished (at once without our plugin, or one that cannot tell),
    False after ``timeout`` seconds. Looks every 20 ms on the worker's event loop, not from a thread: a
    worker told to close meanwhile closes at once."""
    import asyncio

    warm = getattr(dask_worker.plugins.get(PLUGIN_NAME), "warm", None)
    if warm is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not warm():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(_WARM_POLL)
    return True


@contextlib.contextmanager
def open_client(target: Target | None = None, workers: bool = True) -> Iterator[Client]:
    """A ready client: connected to ``target``'s cluster, or to an embedded one closed on exit. ``workers``
    False: of a running cluster's scheduler, whether or not training workers are there.

    Examples
    --------
    >>> with open_client(Target(local=ClusterSpec(workers=1, gpus="off", dashboard_address=":0"))) as c:
    ...     len(require_slots(c))
    1
    """
    target = target or Target()
    if target.address or target.scheduler_file:
        client = connect(target.address, scheduler_file=target.scheduler_file, security=target.security,
                         timeout=target.timeout, preload=target.preload, min_workers=1 if workers else 0)
        with client:
            yield client
        return
    with start_local_cluster(target.local) as cluster, Client(cluster, timeout=target.timeout) as client:
        _wait_for_slots(client, len(cluster.workers), target.timeout)
        prepare_workers(client, preload=target.preload)  # threads: from the environment the workers start with
        wait_for_warm_up(client)
        yield client


def dashboard_url(client: Client) -> str | None:
    """The dashboard's URL, or None when the scheduler runs without one."""
    try:
        return client.dashboard_link
    except Exception:  # no dashboard service (bokeh missing) raises various errors across versions
        return None


def describe_workers(client: Client) -> list[dict[str, Any]]:
    """One row per worker: address, name, host, device, slots, memory, tasks running."""
    info = cluster_workers(client)
    devices = client.run(_device_of, wait=True, on_error="return")
    # Tasks the scheduler has handed each worker; with one training slot a worker, those are running.
    processing = client.processing()
    rows = []
    for address, worker in sorted(info.items()):
        device = devices.get(address)
        rows.append({
            "worker": address,
            "name": str(worker.get("name", "")),
            "host": worker.get("host", ""),
            "device": device.get("name", "?") if isinstance(device, dict) else f"unknown ({device})",
            "slot": worker.get("resources", {}).get(TRAINING_SLOT, 0),
            "memory_limit": worker.get("memory_limit", 0),
            "memory_used": worker.get("metrics", {}).get("memory", 0),
            "tasks_running": len(processing.get(address, ())),
        })
    return rows


def _device_of(dask_worker) -> dict[str, Any]:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return {"name": "no dask-train plugin"}
    return plugin.describe()
