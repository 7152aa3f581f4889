"""The GPU backend: numba.cuda kernels on CuPy arrays, detected once.

:func:`gpu_backend` returns a :class:`~portalign.backends.Backend` whose kernels
are ``portalign.kernels.gpu`` (twins of the CPU kernels: same names, arguments
and output buffers) and whose array module is CuPy, so the reference, the
pyramid and every per-frame buffer that the engine allocates with
``backend.xp.empty`` live on the device. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported) the same kernels run
as Python on host numpy arrays: the backend is still called ``"gpu"``, ``xp`` is
numpy, and the tests run every GPU code path without a GPU (slowly).

What is missing is detected once per process and reported in the error::

    BackendUnavailableError: no CUDA device: no NVIDIA GPU or driver is visible to numba.cuda
    BackendUnavailableError: CuPy is not installed: pip install 'portalign[gpu-cuda13]'

Streams, pinned memory and batches
----------------------------------
Each engine (a prepared reference and a frame geometry: a ``FramePlan``, see
:mod:`portalign.registration`) may have several *lanes*: copies of its per-frame
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

:func:`portalign.register_batch` is the throughput entry point (see
:mod:`portalign.registration`).
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from ._base import NO_CUDA_DEVICE, Backend

__all__ = ["gpu_backend", "gpu_status", "GpuBackend", "DEFAULT_LANES", "default_lanes", "listed_bucket"]

#: Lanes per frame geometry on a device unless the caller says otherwise. Measured on an H200 with a 16-core host
#: (``bench/gpu_check.sh``, 256 frames of 1024 x 768, two runs): 259-260 frames/s on one lane, 273-320 on two,
#: 185-224 on four. A frame still spends about 2 ms in Python, which lanes share through the interpreter lock:
#: beyond two they contend.
DEFAULT_LANES = 2


def listed_bucket(usable: int, capacity: int) -> int:
    """``usable`` rounded up to the next of eight buckets per octave (``m * 2**e``, ``8 <= m < 16``), at most ``capacity``.

    Parameters
    ----------
    usable : int
        Usable pixels of a level (0 or more).
    capacity : int
        Length of the level's pixel list (its rows x cols).

    Returns
    -------
    int
        ``usable`` for 16 or fewer (each its own bucket), else the bucket; never below ``usable`` nor above
        ``capacity`` (unless ``usable`` itself is).
    """
    usable = int(usable)
    if usable <= 16:
        return usable
    unit = 1 << (usable.bit_length() - 4)  # usable / unit lies in [8, 16)
    return max(usable, min(-(-usable // unit) * unit, int(capacity)))


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
        return None if self.simulated else self.host_empty(shape, np.float32)

    def staged(self, name: str, host_array: np.ndarray) -> Any:
        """Return a device buffer ``name`` filled with ``host_array`` by a queued copy through pinned memory."""
        from portalign.kernels.gpu import launch

        return launch.staged(name, np.ascontiguousarray(host_array))

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Return an uninitialised pinned (page-locked) host array: :meth:`copy_in` from it is asynchronous."""
        if self.simulated:
            return np.empty(shape, dtype=dtype)
        import cupyx

        return cupyx.empty_pinned(tuple(shape), dtype=dtype)

    def copy_in(self, device_array: Any, host_array: np.ndarray) -> None:
        """Queue a copy of ``host_array`` (pinned, from :meth:`host_empty`) into ``device_array`` on the current stream.

        ``host_array`` may be rewritten only after the stream has passed the copy: a lane's next frame
        comes after its previous result was read, which waits for the stream.
        """
        if self.simulated:
            device_array[...] = host_array
            return
        device_array.set(host_array, stream=self.xp.cuda.get_current_stream())

    def listed_count(self, usable: int, capacity: int) -> int:
        """Entries of a usable-pixel list the metric kernels visit: ``usable`` rounded up to a bucket.

        The count is a launch argument, and a CUDA graph replays its launches' arguments as they were
        captured: with the exact count a frame whose field came out one pixel larger would need a graph of
        its own (a capture costs milliseconds), and a cine stream would capture on nearly every frame. The
        count is rounded up to the next of eight buckets per octave (at most 12.5 % more entries, 2 % for
        the usual 12,000-pixel level), never beyond ``capacity``; the entries from ``usable`` on are
        pixel ``(0, 0)``, which no level ever uses (the erosion takes the image border), so they add
        nothing to a sum or a histogram: the metrics are those of the ``usable`` pixels alone.
        """
        return listed_bucket(usable, capacity)

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
        self.copy_in(device_buffer, staging)
        return device_buffer


def host_level_stage() -> bool:
    """Whether GPU frames make their levels ready on the host (``PORTALIGN_GPU_LEVELS``: ``host``, the default, or ``device``).

    ``host``: the frame's pyramid, usable pixels, bins, edge features and statistics are the CPU's compiled
    level stage (one call, about 1 ms for 1024 x 768 on one or two cores), then copied to the device's level
    buffers, where the global search and the refinement run. ``device``: the same steps as GPU kernels, which
    need a dozen host reads and about 30 launches per frame; measured on an H200 with a 16-core host,
    ``bench/gpu_check.sh`` prints both.
    """
    value = os.environ.get("PORTALIGN_GPU_LEVELS", "host").strip().lower()
    if value not in ("host", "device"):
        raise ValueError(f"PORTALIGN_GPU_LEVELS must be 'host' or 'device'; got {value!r}")
    return value == "host"


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
        import importlib.util

        if allow_simulator and reason.startswith("no CUDA device") and importlib.util.find_spec("cupy") is None:
            # asked for the GPU by name (auto passes allow_simulator=False): say the other half too, while auto's
            # fallback reason, said with every CPU result, stays short
            reason += f"; CuPy is not installed either: {_install_hint()}"
        raise BackendUnavailableError(reason)
    if isinstance(backend, GpuBackend) and backend.simulated and not allow_simulator:
        raise BackendUnavailableError(
            "only numba's CUDA simulator is available (NUMBA_ENABLE_CUDASIM=1); "
            "choose backend='gpu' explicitly to run it (for tests: it runs the kernels in Python, thousands of "
            "times slower than the CPU backend; a 1024x768 frame takes minutes)"
        )
    return backend


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
        return None, f"numba.cuda cannot be imported ({exc}): {_install_hint()}"
    try:
        from portalign.kernels import gpu as gpu_kernels
    except ImportError as exc:  # pragma: no cover - packaging error
        return None, f"portalign.kernels.gpu cannot be imported ({exc}); reinstall portalign"
    simulated = bool(getattr(config, "ENABLE_CUDASIM", 0))
    if not simulated:
        try:
            available = bool(cuda.is_available())
        except Exception as exc:  # noqa: BLE001 - a broken driver must not take the engine down
            return None, f"{NO_CUDA_DEVICE}: numba.cuda.is_available() failed ({exc})"
        if not available:
            return None, f"{NO_CUDA_DEVICE}: no NVIDIA GPU or driver is visible to numba.cuda"
        try:
            import cupy
        except ImportError:
            return None, f"CuPy is not installed: {_install_hint()}"
    failure = _compile_check()
    if failure:
        return None, failure
    if simulated:
        return (
            GpuBackend(
                name="gpu",
                xp=np,
                kernels=gpu_kernels.KERNELS,
                device="numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)",
                simulated=True,
                host_level_stage=host_level_stage(),
            ),
            "",
        )
    try:  # pragma: no cover - needs a device
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        cc = ".".join(str(v) for v in device.compute_capability)
        description = f"{name} (compute capability {cc}, CuPy {cupy.__version__})"
    except Exception as exc:  # noqa: BLE001 # pragma: no cover - needs a device
        return None, f"no usable CUDA device: {exc}"
    return (  # pragma: no cover - needs a device
        GpuBackend(name="gpu", xp=cupy, kernels=gpu_kernels.KERNELS, device=description,
                   host_level_stage=host_level_stage()),
        "",
    )


def _compile_check() -> str:
    """Compile and run one tiny kernel; return why the GPU cannot be used ("" when it can).

    A numpy release newer than the installed numba-cuda supports fails here, at the first
    compilation, rather than at the first frame; the reason names both versions and the fix.
    """
    try:
        from portalign.kernels.gpu.probe import run_probe

        run_probe()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", with the cause
        text = f"{type(exc).__name__}: {exc}"
        if "numpy" in str(exc):
            try:
                from importlib.metadata import version

                numba_cuda = version("numba-cuda")
            except Exception:  # noqa: BLE001 - the built-in numba.cuda has no distribution of its own
                numba_cuda = "the installed numba.cuda"
            return (
                f"CUDA kernels do not compile with numpy {np.__version__} and numba-cuda {numba_cuda} ({text}): "
                "install a numpy they support, e.g. pip install 'numpy<2.5', or a newer numba-cuda"
            )
        return f"a test kernel failed to compile or run on the GPU ({text})"
    return ""


def _install_hint() -> str:
    """Return the pip command of the GPU extra that matches the installed CUDA driver (both, without a driver)."""
    try:
        from numba import cuda

        major = cuda.cudadrv.driver.driver.get_version()[0]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no driver: name both
        return "pip install 'portalign[gpu-cuda13]' (or 'portalign[gpu-cuda12]' with a CUDA 12 driver)"
    return f"pip install 'portalign[{'gpu-cuda13' if major >= 13 else 'gpu-cuda12'}]'"
