"""Measuring: wall time, peak memory, statistics, and a description of the machine.

Peak memory is measured two ways, because neither sees everything:

* ``peak_rss_mb``: the rise of the process's resident-set high-water mark during
  the call (Linux: ``/proc/self/clear_refs`` resets ``VmHWM``). Sees C/C++
  allocations (ITK, OpenCV) as well as numpy; includes pages the call touched.
* ``tracemalloc_mb``: Python-level allocations (numpy arrays included) during
  the call, from :mod:`tracemalloc`; blind to native libraries' own heaps.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["timed", "peak_memory", "tracemalloc_peak_mb", "stats", "machine_info", "package_versions",
           "thread_counts", "percentile"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call ``fn()`` and return ``(its result, wall milliseconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Call ``fn()`` and return ``(result, rise of peak RSS in MB)``; None where the OS cannot tell."""
    gc.collect()
    try:
        _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return fn(), None
    base = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    if base is None or peak is None:
        return out, None
    return out, max(peak - base, 0.0) / 1024.0


def tracemalloc_peak_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call ``fn()`` under :mod:`tracemalloc`; return ``(result, peak traced MB)``."""
    gc.collect()
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was:
            tracemalloc.stop()
    return out, max(peak - base, 0) / 2**20


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """``q``-th percentile (linear interpolation), NaN for no values."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def stats(values: list[float] | np.ndarray) -> dict[str, float]:
    """``n``, ``median``, ``mean``, ``p99``, ``min``, ``max`` of finite values."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        nan = float("nan")
        return {"n": 0, "median": nan, "mean": nan, "p99": nan, "min": nan, "max": nan}
    return {
        "n": int(arr.size),
        "median": float(np.median(arr)),
        "mean": float(arr.mean()),
        "p99": float(np.percentile(arr, 99)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_model() -> str:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, GPU, OS, Python and the load at the start of the run."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = float(line.split()[1])
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gb": None if mem_kb is None else round(mem_kb / 2**20, 1),
        "gpu": _gpu_model() or "none",
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_1_5_15": [round(v, 2) for v in load],
        "max_rss_mb_at_start": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


#: Distributions whose versions every result records.
PACKAGES = ("portalign", "numpy", "numba", "scipy", "llvmlite", "pydicom", "SimpleITK", "itk-elastix", "itk",
            "opencv-python-headless", "opencv-python", "scikit-image", "matplotlib", "pytest-benchmark", "cupy-cuda12x",
            "numba-cuda")


def package_versions() -> dict[str, str]:
    """Installed versions of every package the benchmark touches ("not installed" otherwise)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def thread_counts() -> dict[str, Any]:
    """Thread counts of every runtime in play (and the environment variables that set them)."""
    out: dict[str, Any] = {}
    try:
        import numba

        out["numba"] = int(numba.get_num_threads())
        out["numba_threading_layer"] = _numba_layer()
    except ImportError:
        pass
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        if name in os.environ:
            out[name] = os.environ[name]
    return out


def _numba_layer() -> str:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:  # no parallel function has run yet
        return "not yet chosen"
