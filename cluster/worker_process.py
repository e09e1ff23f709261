"""The embedded CPU cluster's workers, started in a program of their own, as ``dask worker`` is.

``LocalCluster`` runs its nannies inside the creating process, and each nanny starts its worker with
multiprocessing's "spawn", which re-imports the creator's ``__main__``. A client script without an
``if __name__ == "__main__":`` guard then starts a cluster inside every worker (a storm of tracebacks), and a
script's heavy top-level imports slow every worker's start. Here the cluster's nannies run in one fresh
``python -m cluster.worker_main`` process instead (:class:`WorkerHost`): what a worker process re-imports is
that module, which does nothing on import. Its nannies still restart a worker that dies, as in ``dask worker``.
"""

from __future__ import annotations

from typing import Any

from distributed.deploy.spec import ProcessInterface

from .worker_host import WorkerHost


class WorkerProcess(ProcessInterface):
    """One nanny and its worker, run by the cluster's :class:`WorkerHost`; a ``SpecCluster`` worker spec
    class.

    Parameters
    ----------
    scheduler : str
        The scheduler's address (given by ``SpecCluster``).
    name : str
        The worker's name (``cpu-0``).
    host : WorkerHost
        The program that runs the cluster's nannies.
    nanny : dict
        JSON-serialisable ``distributed.Nanny`` keywords (``nthreads``, ``resources``, ``env``, ``host``...).
    config : dict
        Dask config (dotted keys) set in the program before the nanny starts.
    tls : dict, optional
        ``ca_file``, ``cert``, ``key``: the worker's TLS files.

    Examples
    --------
    >>> options = {"host": host, "nanny": {"nthreads": 1}, "config": {}}  # doctest: +SKIP
    >>> cluster.worker_spec["cpu-0"] = {"cls": WorkerProcess, "options": options}  # doctest: +SKIP
    """

    def __init__(self, scheduler: str, name: str, host: WorkerHost, nanny: dict[str, Any],
                 config: dict[str, Any], tls: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.host = host
        self.request = {"scheduler": scheduler, "name": name, "nanny": nanny, "config": config, "tls": tls}

    async def start(self) -> None:
        await self.host.start_nanny(self.request)
        await super().start()

    @property
    def exit_code(self) -> int | None:
        """Its nanny's exit code (see :meth:`WorkerHost.exit_code`), None while it runs."""
        return self.host.exit_code(self.name)

    async def close(self) -> None:
        """Ask the nanny to close its worker, and wait for it to."""
        await self.host.close_nanny(self.name)
        await super().close()
