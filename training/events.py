"""Training metrics as Dask events: workers ``log_event`` plain dicts on one topic; the client (and the
dashboard page) subscribe. Dask's Pub/Sub was removed in 2025.4; events are its supported replacement.

Every message is msgpack-serialisable: a dict of strings, numbers, lists and dicts, with at least
``kind`` ("start", "epoch", "end"), ``job`` (sweep or DDP job name) and ``run`` (one client run's token,
so events from an earlier, killed client are told apart).
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

TOPIC = "dask-train"


def emit(message: dict[str, Any]) -> None:
    """Send ``message`` from the worker running this task; a no-op outside a Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return
    worker.log_event(TOPIC, plain(message))


def plain(value: Any) -> Any:
    """``value`` with tuples as lists, numpy/torch scalars as Python numbers, NaN/inf as strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)
    return plain(item()) if callable(item) else str(value)
