"""Which GPUs this machine offers, and how to give each worker its own. Pure functions first; the
detection wrapper asks NVML (or nvidia-smi) and never initialises CUDA in the calling process. Last, whether
dask-cuda can be used here, and why not."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

#: What every GPU worker is started with (a running worker never writes its environment): a failing or
#: timed-out NCCL collective aborts that rank's communicators and raises in the rank (torch's mode 2), so the
#: job names the rank and the worker stays usable; torch's default (3) ends the whole worker process, which
#: the client can only report as a lost worker.
GPU_WORKER_ENVIRON = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def visible_gpus(cuda_visible_devices: str | None, physical_count: int) -> list[str]:
    """The GPU ids a process may use, following CUDA's reading of ``CUDA_VISIBLE_DEVICES``.

    Unset means every physical GPU; an empty value or ``-1`` means none. CUDA stops reading the list at
    the first entry it cannot use (a bad index), so this does too. UUIDs (``GPU-...``, ``MIG-...``) pass.

    Examples
    --------
    >>> visible_gpus(None, 2)
    ['0', '1']
    >>> visible_gpus("1,0", 4)
    ['1', '0']
    >>> visible_gpus("0,7,1", 2)
    ['0']
    >>> visible_gpus("", 8), visible_gpus("-1", 8)
    ([], [])
    >>> visible_gpus("GPU-5a1b", 1)
    ['GPU-5a1b']
    """
    if cuda_visible_devices is None:
        return [str(i) for i in range(physical_count)]
    ids: list[str] = []
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        usable = (entry.isdigit() and int(entry) < physical_count) or entry.startswith(("GPU-", "MIG-"))
        if not usable or entry in ids:
            break
        ids.append(entry)
    return ids


def cuda_visible_devices(i: int, devices: Sequence[str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for worker ``i``: the list rotated so worker ``i``'s GPU comes first
    (and is ``cuda:0`` inside it), the same scheme dask-cuda uses.

    Examples
    --------
    >>> cuda_visible_devices(0, ["0", "1", "2"])
    '0,1,2'
    >>> cuda_visible_devices(2, ["0", "1", "2"])
    '2,0,1'
    """
    devices = list(devices)
    if not devices:
        raise ValueError("cuda_visible_devices needs at least one device")
    i %= len(devices)
    return ",".join(devices[i:] + devices[:i])


def physical_gpu_count() -> int:
    """GPUs on this machine by NVML, else ``nvidia-smi -L``, else 0. Never touches the CUDA runtime."""
    try:
        import pynvml  # from nvidia-ml-py, in the [gpu] extra

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, no driver, no GPU: all mean "no NVML answer"
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def detect_gpus(environ: Mapping[str, str] | None = None,
                count: Callable[[], int] = physical_gpu_count) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` applied to the physical count.

    Examples
    --------
    >>> detect_gpus({"CUDA_VISIBLE_DEVICES": "1"}, count=lambda: 2)
    ['1']
    """
    environ = os.environ if environ is None else environ
    return visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), count())


def dask_cuda_problem() -> str | None:
    """Why ``dask_cuda`` cannot be used in this environment, as a sentence with the fix; None when it can.

    Tells "not installed" from "installed but failed to import" (typically CUDA bindings missing, or built
    for another CUDA than torch's), since the fixes differ.

    Examples
    --------
    >>> problem = dask_cuda_problem()
    >>> problem is None or problem.startswith("dask-cuda is")
    True
    """
    if importlib.util.find_spec("dask_cuda") is None:
        return ("dask-cuda is not installed: `pip install 'dask-train[gpu]'` (CUDA 12; for a CUDA 13 torch "
                "`pip install 'dask-cuda[cu13]' nvidia-ml-py`) for one worker per GPU.")
    try:
        importlib.import_module("dask_cuda")
    except Exception as exc:  # an ImportError for its CUDA bindings, or whatever its own imports raise
        return (f"dask-cuda is installed but failed to import ({type(exc).__name__}: {exc}). Install it with the "
                "CUDA bindings that match torch's CUDA (`python -c 'import torch; print(torch.version.cuda)'`): "
                "`pip install 'dask-cuda[cu12]'` for CUDA 12, `pip install 'dask-cuda[cu13]'` for CUDA 13.")
    return None
