"""Compute backends: who runs the kernels, on which arrays (``auto``, ``cpu``, ``gpu``).

A backend owns the array module (numpy or CuPy) and the kernel functions, which
have the same names and arguments on every backend (``kernels/cpu/*`` and
``kernels/gpu/*`` are twins).
"""

from ._base import NO_CUDA_DEVICE, Backend
from ._cpu import (
    CpuBackend,
    ThreadTuner,
    batch_lanes,
    cpu_backend,
    cpu_exclusive,
    frame_threads,
    set_thread_policy,
    single_threaded,
    threading_layer,
)
from ._gpu import DEFAULT_LANES, GpuBackend, default_lanes, gpu_backend, gpu_status
from ._select import BACKENDS, select_backend

__all__ = [
    "BACKENDS",
    "DEFAULT_LANES",
    "NO_CUDA_DEVICE",
    "Backend",
    "CpuBackend",
    "GpuBackend",
    "ThreadTuner",
    "batch_lanes",
    "cpu_backend",
    "cpu_exclusive",
    "default_lanes",
    "frame_threads",
    "gpu_backend",
    "gpu_status",
    "select_backend",
    "set_thread_policy",
    "single_threaded",
    "threading_layer",
]
