"""Named exceptions for getting workers. Each message says what is wrong and what to do."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """Workers could not be had: no scheduler, no workers, or no training slots."""


class ClusterConnectError(ClusterError):
    """No scheduler answered at the address, or no workers joined in time."""


class NoTrainingSlots(ClusterError):
    """Workers are there, but none offers the training-slot resource."""
