"""Compute backends: who runs the kernels, on which arrays.

A backend is chosen once per prepared reference (``auto``, ``cpu``, ``gpu``). It
owns the array module (numpy or CuPy) and the kernel functions, which have the
same names and arguments on every backend (``kernels/cpu/*`` and
``kernels/gpu/*`` are twins). The optimiser calls the backend and never
branches on which one it is.

``auto`` falls back to the CPU and records why; an explicit ``gpu`` that cannot
run raises :class:`BackendUnavailableError` naming what is missing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import BackendUnavailableError

__all__ = ["Backend", "select_backend", "cpu_backend", "BACKENDS"]

BACKENDS = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class Backend:
    """A kernel set and the array module it works on.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"gpu"``.
    xp : module
        numpy or cupy.
    kernels : SimpleNamespace
        ``downsample2``, ``downsample2_mask``, ``orientation_features``, ``quantize``,
        ``joint_histograms``, ``mutual_information``, ``gradient_correlation``,
        ``warp_bilinear``, ``threshold_mask``, ``erode_box``, ``masked_range``,
        ``pixel_list``, ``gradient_row_sums``, ``feature_spectrum``, ``correlation_surfaces``,
        and ``project_cone_beam`` (the DRR ray caster).
    fallback_reason : str
        Why ``auto`` did not get a GPU (empty otherwise).
    device : str
        Human-readable device description.
    """

    name: str
    xp: Any
    kernels: SimpleNamespace
    fallback_reason: str = ""
    device: str = ""

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move a host array onto this backend (a no-op on the CPU)."""
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array: Any) -> np.ndarray:
        """Return a numpy copy/view of a backend array."""
        if self.xp is np:
            return np.asarray(array)
        return self.xp.asnumpy(array)

    def synchronize(self, stream: Any = None) -> None:
        """Wait for queued device work, on ``stream`` or the whole device (a no-op on the CPU)."""

    # --- per-engine streams and frame upload (see portalign.gpu); trivial on the CPU --------------

    def new_stream(self) -> Any:
        """Return a new stream for one engine's work (None on the CPU: there is no queue)."""
        return None

    def on_stream(self, stream: Any) -> AbstractContextManager[None]:
        """Return a context in which this thread's kernels are queued on ``stream``."""
        return nullcontext()

    def staging_buffer(self, shape: tuple[int, int]) -> Any:
        """Return a host buffer that frames of ``shape`` are uploaded through (None: not needed)."""
        return None

    def upload(self, pixels: Any, device_buffer: Any, staging: Any) -> Any:
        """Return ``pixels`` as a backend array, filling ``device_buffer`` through ``staging`` where there is one.

        On the CPU the frame's own pixels are used, without a copy.
        """
        return self.asarray(pixels)


def cpu_backend(fallback_reason: str = "") -> Backend:
    """Return the numba CPU backend."""
    from portalign.kernels import cpu

    return Backend(name="cpu", xp=np, kernels=cpu.KERNELS, fallback_reason=fallback_reason, device=_cpu_name())


def select_backend(name: str = "auto") -> Backend:
    """Return the backend called ``name`` (``auto``, ``cpu`` or ``gpu``).

    Raises
    ------
    BackendUnavailableError
        For ``gpu`` when CuPy, numba.cuda or a CUDA device is missing, and for an
        unknown name.
    """
    if name == "cpu":
        return cpu_backend()
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        from .gpu import gpu_backend
    except ImportError as exc:  # the GPU module imports cupy/numba.cuda lazily; this is a packaging gap
        reason = f"GPU backend not available: {exc}"
        if name == "gpu":
            raise BackendUnavailableError(reason) from exc
        return cpu_backend(reason)
    try:
        # the CUDA simulator (tests) only when asked for by name: `auto` must never pick it
        return gpu_backend(allow_simulator=(name == "gpu"))
    except BackendUnavailableError as exc:
        if name == "gpu":
            raise
        return cpu_backend(str(exc))


def _cpu_name() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
