"""Imported by the embedded cluster's fork server as it starts (see :mod:`cluster.worker_main`): it
imports what the worker processes it forks need, so a worker starts, and starts again, with them loaded.

Each module is imported on its own, and one that fails is left to the worker, whose warm-up reports it:
an error here must not end the fork server. This module imports nothing of the package on its own (the
worker process runs ``cluster.worker_main`` as its main module, which must not be imported before).
"""

from __future__ import annotations

import contextlib
import importlib

#: What a worker's first trial or DDP rank needs: torch, what a first optimizer step imports, the runners.
PRELOAD = ("distributed", "torch", "torch._dynamo", "training.trial", "training.loop", "training.rank")

for _module in PRELOAD:
    with contextlib.suppress(Exception):
        importlib.import_module(_module)
