"""Where the workers are (:class:`Target`): an address, a scheduler file, or the embedded cluster to start.

Only dataclasses and checks: the CLI builds a Target from its options, and reports a bad address as a usage
error, without importing Dask (``cluster.client`` does that when it connects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .spec import ClusterSpec

if TYPE_CHECKING:
    from distributed.security import Security


@dataclass(frozen=True)
class Target:
    """Where the workers are: an address, a scheduler file, or neither (start the embedded cluster)."""

    address: str | None = None
    scheduler_file: str | None = None
    security: Security | None = None
    timeout: float = 30.0
    local: ClusterSpec = field(default_factory=ClusterSpec)
    #: Modules workers import in the background as soon as they join (the code that will run there).
    preload: tuple[str, ...] = ()

    @property
    def embedded(self) -> bool:
        """The workers are an embedded cluster on this machine (they see what this process sees)."""
        return not (self.address or self.scheduler_file)

    def __post_init__(self) -> None:
        if self.address and self.scheduler_file:
            raise ValueError("Give --address or --scheduler-file, not both.")
        if not self.embedded and self.local.gpus != ClusterSpec.gpus:
            running = "--address" if self.address else "--scheduler-file"
            raise ValueError(f"--gpus {self.local.gpus} (gpus=) is for the built-in cluster, but {running} names "
                             "a running one, whose workers have their own devices: leave out one or the other.")
        if not 0 < self.timeout <= MAX_TIMEOUT:  # NaN too
            raise ValueError(f"--timeout {self.timeout!r} (timeout=): expected seconds above 0, at most "
                             f"{MAX_TIMEOUT:,.0f} (a week).")
        if self.address:
            check_address(self.address)
        if self.scheduler_file:
            from .security import load_scheduler_file

            load_scheduler_file(self.scheduler_file)  # a file is data: checked before anything uses it


#: The longest wait for a scheduler and its workers (and any timeout dask-train takes): a week.
MAX_TIMEOUT = 7 * 24 * 3600.0

#: Address schemes a dask-train client connects with.
SCHEMES = ("tcp", "tls", "ucx")


def check_address(address: str) -> str:
    """``address`` if it is ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``HOST:PORT``; else a clear ValueError.

    Examples
    --------
    >>> check_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> check_address("http://10.0.0.5:8786")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Address 'http://10.0.0.5:8786' has scheme 'http': use tcp://HOST:PORT ...
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    shown = address if len(address) <= 80 else address[:77] + "..."
    if scheme not in SCHEMES:
        raise ValueError(f"Address {shown!r} has scheme {scheme[:20]!r}: use tcp://HOST:PORT (or tls:// for a "
                         "TLS cluster).")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or len(host) > 255 or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Address {shown!r} is not {scheme}://HOST:PORT (e.g. tcp://10.0.0.5:8786).")
    return address


def check_client(client: object) -> None:
    """Refuse what was passed as a Dask client and is not one (None, no client, is fine): the Python API's
    functions would otherwise fail deep inside with an AttributeError.

    Examples
    --------
    >>> from cluster import open_client
    >>> check_client(open_client())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: client=<contextlib._GeneratorContextManager ...> is not a Dask Client: open_client() is a ...
    """
    if client is None:
        return
    from distributed import Client  # a client was given: Dask is imported already

    if isinstance(client, Client):
        return
    hint = (": open_client() is a context manager, use `with cluster.open_client() as client:`"
            if hasattr(client, "__enter__") else "")
    raise TypeError(f"client={_short(client)} is not a Dask Client{hint}. Pass a distributed.Client (e.g. "
                    "cluster.connect(address)), or None for an embedded local cluster.")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
