"""What the embedded cluster starts (:class:`ClusterSpec`), checked on construction, and its bounds.

No Dask here: the CLI validates ``--workers`` and ``--gpus`` before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .security import TLSFiles

#: Dask's timers, slowed for clusters whose workers train (every cluster dask-train starts or writes). At
#: the defaults the 20 ms event-loop tick alone wakes the scheduler and every nanny and worker 50 times a
#: second: an idle 2-worker embedded cluster took ~11% of a core here, taken from training where there is a
#: worker per core; with these, ~2%. The tick still reports a stalled event loop (past
#: ``distributed.admin.tick.limit``, 3 s); the dashboard's system plots update each second; nannies and
#: workers check the worker's memory twice a second.
QUIET_TIMERS = {"distributed.admin.tick.interval": "500ms", "distributed.admin.system-monitor.interval": "1s",
                "distributed.worker.memory.monitor-interval": "500ms"}
#: The same as Dask reads them from the environment, for processes started elsewhere (Slurm jobs, containers).
QUIET_TIMERS_ENVIRON = {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): value
                        for key, value in QUIET_TIMERS.items()}


@dataclass(frozen=True)
class ClusterSpec:
    """What to start. Validated on construction: bad values fail before any process starts.

    ``torch_threads`` sets every worker's torch threads (as ``DASK_TRAIN_TORCH_THREADS`` in the environment
    they start with); None leaves each its share of this machine's CPUs (see ``cluster.cpus``).

    Examples
    --------
    >>> ClusterSpec(workers=2, gpus="off").host
    '127.0.0.1'
    """

    workers: int | None = None
    gpus: str = "auto"
    host: str = "127.0.0.1"
    dashboard_address: str = "127.0.0.1:8787"
    tls: TLSFiles | None = None
    torch_threads: int | None = None
    scheduler_port: int = 0

    def __post_init__(self) -> None:
        if self.gpus not in ("auto", "off"):
            raise ValueError(f"gpus={self.gpus!r}: use 'auto' (one worker per visible GPU) or 'off' (CPU).")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise ValueError(f"workers={self.workers!r}: need at least 1 worker (or None for one per "
                             "GPU / CPU core).")
        if self.workers is not None and self.workers > max_local_workers():
            raise ValueError(f"workers={self.workers}: this machine can run at most {max_local_workers()} "
                             f"embedded workers ({WORKERS_PER_CPU} per CPU, {WORKER_MEMORY // 2**20} MiB of "
                             "available memory each). Use fewer, or start workers on more machines and pass "
                             "--address.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads={self.torch_threads!r}: need at least 1.")
        check_host(self.host, "--host (host=)")
        check_host_port(self.dashboard_address, "--dashboard-address (dashboard_address=)")


_HOSTNAME = re.compile(r"(?=.{1,253}$)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def check_host(host: object, option: str) -> str:
    """``host`` if it is an IP address or a host name, else a ValueError naming ``option``.

    Examples
    --------
    >>> check_host("0.0.0.0", "--host"), check_host("node-1.cluster", "--host")
    ('0.0.0.0', 'node-1.cluster')
    >>> check_host("999.1.1.1", "--host")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --host '999.1.1.1' is not an IP address or a host name: e.g. 127.0.0.1 (this machine only) ...
    """
    if isinstance(host, str):
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host.strip("[]"))
            return host
        if _HOSTNAME.fullmatch(host) and not re.fullmatch(r"[\d.]+", host):
            return host
    shown = repr(host) if len(str(host)) <= 80 else repr(str(host)[:77] + "...")
    raise ValueError(f"{option} {shown} is not an IP address or a host name: e.g. 127.0.0.1 (this machine only) "
                     "or 0.0.0.0 (every interface).")


def check_host_port(value: object, option: str) -> str:
    """``value`` if it is ``HOST:PORT`` (a port from 0 to 65535; an empty host: every interface), else a
    ValueError naming ``option``.

    Examples
    --------
    >>> check_host_port("127.0.0.1:8787", "--dashboard-address")
    '127.0.0.1:8787'
    """
    if isinstance(value, str) and value.isdigit() and int(value) <= 65535:  # a port: every interface
        return value
    host, sep, port = str(value).rpartition(":")
    if isinstance(value, str) and ":" in host:
        raise ValueError(f"{option} {value[:80]!r}: Dask's dashboard takes an IPv4 address or a host name with "
                         "its port, or a port alone (every interface), e.g. :8787.")
    if not isinstance(value, str) or not sep or not port.isdigit() or int(port) > 65535:
        shown = repr(value) if len(str(value)) <= 80 else repr(str(value)[:77] + "...")
        raise ValueError(f"{option} {shown}: use HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:8787.")
    if host:
        check_host(host, option)
    return value


def check_listen(host: str, port: int | None) -> None:
    """A scheduler can listen on ``host`` at ``port`` (0 or None: any free port) here, else a ValueError that
    names the option: a port in use, or a host that is not this machine's, failed as "Scheduler failed to
    start" (the cause only in --debug's traceback). Bound and let go at once (another process may still take
    the port in between: its failure is then Dask's)."""
    import errno
    import socket

    try:
        found = socket.getaddrinfo(host.strip("[]"), port or 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host!r} is not a name this machine can look up ({exc}): give one of its "
                         "addresses, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).") from None
    failures = []
    for family, kind, proto, _, address in found:  # as Dask's listener: one that binds is enough (a name's
        with socket.socket(family, kind, proto) as probe:  # ::1 may be off in a container while 127.0.0.1 works)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closing listener there is fine
            try:
                probe.bind(address)
                return
            except OSError as exc:
                failures.append(exc)
    if any(exc.errno == errno.EADDRINUSE for exc in failures):
        raise ValueError(f"--port {port} on {host} is in use (another cluster or service?): pick another port, "
                         "or 0 for any free one.")
    if failures and all(exc.errno == errno.EADDRNOTAVAIL for exc in failures):
        raise ValueError(f"--host {host} is not an address of this machine: give one of its addresses, e.g. "
                         "127.0.0.1 (this machine only) or 0.0.0.0 (every interface).")
    why = failures[0].strerror or failures[0] if failures else "no address"
    raise ValueError(f"Cannot listen on {host}:{port or 0} ({why}): pick another --host or --port.")


#: The embedded cluster's bounds: worker processes per CPU this process may use, and memory each needs.
WORKERS_PER_CPU = 4
WORKER_MEMORY = 256 * 2**20


def max_local_workers() -> int:
    """The most worker processes the embedded cluster may start here: 4 per usable CPU, and no more than
    the available memory holds at 256 MiB each (at least 1).

    Examples
    --------
    >>> max_local_workers() >= 1
    True
    """
    import psutil

    from .cpus import cpu_cores

    by_memory = psutil.virtual_memory().available // WORKER_MEMORY
    return max(1, min(WORKERS_PER_CPU * cpu_cores(), by_memory))
