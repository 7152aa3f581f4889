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

Streams, pinned memory and batches
----------------------------------
Each engine (a prepared reference and a frame geometry: a ``FramePlan``, see
:mod:`portalign.reference`) may have several *lanes*: copies of its per-frame
buffers that share the reference's device arrays. Every lane owns a
non-blocking ``cupy.cuda.Stream`` and a pinned host buffer
(``cupyx.empty_pinned``). A frame registered on a lane is copied into that
lane's pinned buffer and uploaded asynchronously on the lane's stream; all of
its kernels (numba launches through ``cuda.external_stream``) and CuPy work
(allocations, cuFFT) are queued on the same stream; the small metric vectors the
optimiser reads come back on it, which waits for that stream only. Two lanes
(two frames of a batch, two treatment rooms, two HTTP requests) therefore
overlap on the device: the upload of frame ``n + 1`` runs while frame ``n`` is
searched.

:func:`register_batch` is the throughput entry point: it opens ``lanes`` lanes
and registers the frames on worker threads, one lane each, returning results in
input order. Under numba's simulator one worker registers the frames in turn
(its kernel objects keep their launch configuration in shared state, which
threads would race on); ``tests/test_gpu.py`` runs a second lane there by holding
the first, and ``tests/test_batch.py`` runs real worker threads on the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend
from .errors import BackendUnavailableError, PortalignError

__all__ = ["gpu_backend", "gpu_status", "GpuBackend", "register_batch", "BatchError", "DEFAULT_LANES", "default_lanes"]

#: Lanes per frame geometry on a device unless the caller says otherwise: two streams overlap upload and search.
DEFAULT_LANES = 2


def default_lanes(backend: Backend) -> int:
    """Return how many frames of one geometry may be in flight at once on ``backend`` by default.

    :data:`DEFAULT_LANES` on a device; 1 on the CPU (numba's kernels already use
    every core) and under the simulator (its kernel objects keep their launch
    configuration in shared state, which threads would race on).
    """
    on_device = isinstance(backend, GpuBackend) and not backend.simulated
    return DEFAULT_LANES if on_device else 1

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

    def synchronize(self, stream: Any = None) -> None:
        """Wait until the device has finished the work queued on ``stream`` (None: all work)."""
        if self.simulated:
            return
        if stream is not None:
            stream.synchronize()
            return
        from numba import cuda

        cuda.synchronize()

    def new_stream(self) -> Any:
        """Return a new non-blocking CuPy stream (a numba simulator stream under the simulator)."""
        if self.simulated:
            from numba import cuda

            return cuda.stream()
        return self.xp.cuda.Stream(non_blocking=True)

    def on_stream(self, stream: Any) -> AbstractContextManager[None]:
        """Return a context that queues this thread's kernels and CuPy work on ``stream``."""
        if stream is None:
            return nullcontext()
        from portalign.kernels.gpu import launch

        return launch.on_stream(stream)

    def staging_buffer(self, shape: tuple[int, int]) -> Any:
        """Return a pinned (page-locked) float32 host buffer of ``shape`` for asynchronous uploads."""
        if self.simulated:
            return None
        import cupyx

        return cupyx.empty_pinned(tuple(shape), dtype=np.float32)

    def upload(self, pixels: Any, device_buffer: Any, staging: Any) -> Any:
        """Copy a frame into ``device_buffer`` on the current stream, through the pinned ``staging`` buffer.

        The copy is asynchronous on a device: it is queued on the current stream
        and overlaps other streams' kernels. ``staging`` may be refilled only
        after the stream has passed the copy; the engine's lanes guarantee that,
        since a lane takes its next frame after reading the previous result.
        """
        if device_buffer is None or tuple(device_buffer.shape) != tuple(np.shape(pixels)):
            return self.asarray(pixels, dtype=np.float32)
        if self.simulated or staging is None:
            device_buffer[...] = pixels
            return device_buffer
        np.copyto(staging, pixels, casting="same_kind")
        device_buffer.set(staging, stream=self.xp.cuda.get_current_stream())
        return device_buffer


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


class BatchError(PortalignError):
    """Some frames of a batch could not be registered; the others' results are kept.

    Attributes
    ----------
    results : list of RegistrationResult or None
        One entry per frame, in input order; None where the frame failed.
    errors : dict of int to Exception
        The failed frames' errors, by position in the batch.
    """

    def __init__(self, message: str, results: list[Any], errors: dict[int, BaseException]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors


def register_batch(reference: Any, frames: Iterable[Any], *, pixel_spacing_mm: Any = None,
                   lanes: int | None = None) -> list[Any]:
    """Register many frames against one prepared reference; return their results in input order.

    Parameters
    ----------
    reference : Reference
        A prepared reference (any backend; the GPU is where lanes pay off).
    frames : iterable of Image, numpy.ndarray, path or pydicom.Dataset
        Arrays need ``pixel_spacing_mm``.
    pixel_spacing_mm : float or (float, float), optional
    lanes : int, optional
        Frames in flight at once, each on its own buffers and stream. Default:
        :func:`default_lanes` of the reference's backend.

    Returns
    -------
    list of RegistrationResult

    Raises
    ------
    BatchError
        After every frame has been tried, when some could not be registered
        (unreadable, bad geometry); it names them and carries the other results.
    """
    from .reference import Reference

    if not isinstance(reference, Reference):
        raise TypeError(
            f"register_batch needs a prepared Reference, got {type(reference).__name__}; "
            "call portalign.prepare_reference(image, backend='gpu') first"
        )
    items: Sequence[Any] = frames if isinstance(frames, Sequence) else list(frames)
    backend = reference.backend
    simulated = isinstance(backend, GpuBackend) and backend.simulated
    if lanes is None:
        lanes = default_lanes(backend)
    if int(lanes) < 1:
        raise ValueError(f"register_batch: lanes must be at least 1; got {lanes}")
    lanes = min(int(lanes), max(len(items), 1))
    reference.allow_lanes(lanes)
    results: list[Any] = [None] * len(items)
    errors: dict[int, BaseException] = {}

    def one(index: int) -> None:
        try:
            results[index] = reference.register(items[index], pixel_spacing_mm=pixel_spacing_mm)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not lose the batch
            errors[index] = exc

    # the simulator keeps launch settings on shared kernel objects: its workers must take turns
    workers = 1 if simulated else lanes
    if workers == 1:
        for index in range(len(items)):
            one(index)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="portalign-batch") as pool:
            list(pool.map(one, range(len(items))))
    if errors:
        listed = "; ".join(f"frame {i}: {type(e).__name__}: {e}" for i, e in sorted(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BatchError(f"{len(errors)} of {len(items)} frames could not be registered: {listed}{more}",
                         results, errors)
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
