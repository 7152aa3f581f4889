"""The GPU backend: numba.cuda kernels on CuPy arrays, detected once.

:func:`gpu_backend` returns a :class:`~portalign.backend.Backend` whose kernels
are ``portalign.kernels.gpu`` (twins of the CPU kernels: same names, arguments
and output buffers) and whose array module is CuPy, so the reference, the
pyramid and every per-frame buffer that the engine allocates with
``backend.xp.empty`` live on the device. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported) the same kernels run
as Python on host numpy arrays: the backend is still called ``"gpu"``, ``xp`` is
numpy, and the tests run every GPU code path without a GPU (slowly).

What is missing is detected once per process and reported in the error::

    BackendUnavailableError: no CUDA device: numba.cuda.is_available() is False
    BackendUnavailableError: CuPy is not installed: pip install portalign[gpu]

Streams and pinned memory (design; the engine does not use them yet)
-------------------------------------------------------------------
Today every kernel is queued on the legacy default stream, which CuPy and numba
share, so their work stays ordered without synchronisation; each result the
optimiser reads (a metric vector of a few poses) is one small synchronous copy.
For throughput the plan is one ``cupy.cuda.Stream(non_blocking=True)`` per
prepared reference and frame geometry (its ``FramePlan``): the kernels of one
engine are launched on it (numba: ``kernel[grid, block, cuda.external_stream(
stream.ptr)]``), frames arrive through two pinned host buffers
(``cupyx.empty_pinned``) so that the copy of frame ``n + 1`` overlaps the
search of frame ``n``, and the per-iteration metric vectors come back through a
pinned buffer with ``stream.synchronize()`` instead of a device-wide sync. Two
engines (two references, or two treatment rooms) then run concurrently on one
device. :func:`register_batch` is the entry point that will own that pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend
from .errors import BackendUnavailableError

__all__ = ["gpu_backend", "gpu_status", "GpuBackend", "register_batch"]

_lock = threading.Lock()
_detected: tuple[Backend | None, str] | None = None


@dataclass(frozen=True)
class GpuBackend(Backend):
    """The GPU backend: device arrays (CuPy, or numpy under the simulator) and CUDA kernels."""

    simulated: bool = False

    def to_host(self, array: Any) -> np.ndarray:
        """Return a numpy copy of a device array (the array itself under the simulator)."""
        if isinstance(array, np.ndarray):
            return array
        return self.xp.asnumpy(array)

    def synchronize(self) -> None:
        """Wait until the device has finished the queued kernels and copies."""
        if self.simulated:
            return
        from numba import cuda

        cuda.synchronize()


def gpu_status() -> tuple[bool, str]:
    """Return ``(available, detail)``: whether the GPU backend can run here, and the device or why not."""
    backend, reason = _detect()
    if backend is None:
        return False, reason
    return True, backend.device


def gpu_backend(*, allow_simulator: bool = True) -> Backend:
    """Return the GPU backend (detected once per process).

    Parameters
    ----------
    allow_simulator : bool
        Accept numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) as the device.
        An ``auto`` backend choice should pass False: the simulator is for tests,
        thousands of times slower than the CPU backend.

    Returns
    -------
    Backend
        Named ``"gpu"``; ``xp`` is CuPy on a device and numpy under the simulator.

    Raises
    ------
    BackendUnavailableError
        When numba.cuda cannot be imported, no CUDA device is visible, or CuPy is
        missing; the message names what is missing and how to get it.
    """
    backend, reason = _detect()
    if backend is None:
        raise BackendUnavailableError(reason)
    if isinstance(backend, GpuBackend) and backend.simulated and not allow_simulator:
        raise BackendUnavailableError(
            "only numba's CUDA simulator is available (NUMBA_ENABLE_CUDASIM=1); "
            "choose backend='gpu' explicitly to run it"
        )
    return backend


def register_batch(reference: Any, frames: Iterable[Any], *, pixel_spacing_mm: Any = None) -> list[Any]:
    """Register many frames against one prepared reference; return their results in order.

    Parameters
    ----------
    reference : Reference
        A reference prepared with ``backend="gpu"`` (any backend works).
    frames : iterable of Image, numpy.ndarray, path or pydicom.Dataset
        Frames of one treatment field; arrays need ``pixel_spacing_mm``.
    pixel_spacing_mm : float or (float, float), optional

    Returns
    -------
    list of RegistrationResult

    Notes
    -----
    Frames are registered one after the other on the reference's buffers (the
    plan for their geometry is built once, on the first frame). The pipelined
    version described in this module's docstring (pinned double buffers, one
    stream per engine, all frames' metric evaluations in one launch) keeps this
    signature.
    """
    from .reference import Reference

    if not isinstance(reference, Reference):
        raise TypeError(
            f"register_batch needs a prepared Reference, got {type(reference).__name__}; "
            "call portalign.prepare_reference(image, backend='gpu') first"
        )
    results = [reference.register(frame, pixel_spacing_mm=pixel_spacing_mm) for frame in frames]
    reference.backend.synchronize()
    return results


def _detect() -> tuple[Backend | None, str]:
    """Find out once whether the GPU backend can run; cache ``(backend, "")`` or ``(None, reason)``."""
    global _detected
    with _lock:
        if _detected is None:
            _detected = _probe()
        return _detected


def _probe() -> tuple[Backend | None, str]:
    try:
        from numba import config, cuda
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        return None, f"numba.cuda cannot be imported ({exc}): pip install portalign[gpu]"
    try:
        from portalign.kernels import gpu as gpu_kernels
    except ImportError as exc:  # pragma: no cover - packaging error
        return None, f"portalign.kernels.gpu cannot be imported ({exc}); reinstall portalign"
    if getattr(config, "ENABLE_CUDASIM", 0):
        return (
            GpuBackend(
                name="gpu",
                xp=np,
                kernels=gpu_kernels.KERNELS,
                device="numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)",
                simulated=True,
            ),
            "",
        )
    try:
        available = bool(cuda.is_available())
    except Exception as exc:  # noqa: BLE001 - a broken driver must not take the engine down
        return None, f"no CUDA device: numba.cuda.is_available() failed ({exc})"
    if not available:
        return None, "no CUDA device: numba.cuda.is_available() is False"
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed: pip install portalign[gpu]"
    try:  # pragma: no cover - needs a device
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        cc = ".".join(str(v) for v in device.compute_capability)
        description = f"{name} (compute capability {cc}, CuPy {cupy.__version__})"
    except Exception as exc:  # noqa: BLE001 # pragma: no cover - needs a device
        return None, f"no usable CUDA device: {exc}"
    return (  # pragma: no cover - needs a device
        GpuBackend(name="gpu", xp=cupy, kernels=gpu_kernels.KERNELS, device=description),
        "",
    )
