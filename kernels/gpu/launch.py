"""Launch settings and host-side helpers shared by the CUDA kernels.

Every GPU kernel runs a grid-stride loop over its pixels (or poses x pixels),
so the launch shape below changes the speed, never the result. Tests patch
``THREADS_PER_BLOCK`` and ``MAX_BLOCKS`` small (STUMPY patches 10) so that
multi-block, multi-stride and chunk-flush paths really run in numba's CUDA
simulator, where a block of 256 Python threads would take minutes.

The settings are read by the Python wrappers at call time and passed to the
kernels as launch dimensions or arguments: numba freezes module globals when it
compiles a kernel, so a kernel must never read them itself.

Array module: under the simulator (``NUMBA_ENABLE_CUDASIM=1``) kernels take host
numpy arrays, so the GPU backend's arrays are numpy; on a device they are CuPy
arrays, handed to numba through ``__cuda_array_interface__`` without a stream
synchronisation.

Streams: :func:`on_stream` makes a stream the calling thread's current one for
a block of work. Inside it every kernel launch here (``kernel[grid, block,
launch.stream()]``) and every CuPy operation (allocations, FFTs, copies; CuPy's
own current stream is entered too) is queued on that stream, so the kernels and
the CuPy work of one frame stay ordered without device-wide synchronisation,
and two threads on two streams overlap on the device. Outside it everything goes
to the legacy default stream. Under the simulator a stream is a
``numba.cuda.stream()`` object, accepted in the launch and otherwise ignored.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numba import config, cuda

__all__ = [
    "THREADS_PER_BLOCK",
    "MAX_BLOCKS",
    "PIXELS_PER_THREAD",
    "REDUCE_MAX_THREADS",
    "SHARED_HISTOGRAM_MAX_BYTES",
    "simulator_enabled",
    "array_module",
    "device_arg",
    "to_host",
    "threads_per_block",
    "blocks_for",
    "scratch",
    "staged",
    "on_stream",
    "stream",
    "configured",
    "run_captured",
    "graphs_enabled",
]

#: Threads per block of every kernel (at most ``REDUCE_MAX_THREADS``). Tests patch it small.
THREADS_PER_BLOCK = 256
#: Largest grid (blocks along x); kernels stride over what does not fit. Tests patch it small.
MAX_BLOCKS = 1024
#: Pixels each thread handles per block-sized chunk of the pose kernels (joint histogram, edge sums).
PIXELS_PER_THREAD = 16
#: Size of the static shared-memory reduction buffers; ``THREADS_PER_BLOCK`` may not exceed it.
REDUCE_MAX_THREADS = 256
#: A privatised (per-block) joint histogram larger than this falls back to global atomics.
SHARED_HISTOGRAM_MAX_BYTES = 48 * 1024

_scratch = threading.local()
_current = threading.local()
_numba_streams: dict[int, Any] = {}
_numba_streams_lock = threading.Lock()
_configured: dict[tuple, Any] = {}
_configured_lock = threading.Lock()
#: CUDA graphs of launch sequences, by key: "seen" once run eagerly, then the captured graph, or "eager" after a failure.
_graphs: dict[Any, Any] = {}
#: How the launch sequences of :func:`run_captured` ran since the process started: ``"eager"``, ``"captured"``,
#: ``"replayed"`` (read it before and after some frames: ``bench/gpu_latency.py`` reports the difference).
GRAPH_RUNS: dict[str, int] = {"eager": 0, "captured": 0, "replayed": 0}
_graphs_lock = threading.Lock()
#: Most graphs kept (oldest dropped first): one per (lane, level, metric, bucket of the usable-pixel count) in use.
MAX_GRAPHS = 256
#: numba views of CuPy arrays by (address, shape, strides, dtype), made once (:func:`device_arg`); at most this many.
_views: dict[tuple, Any] = {}
MAX_VIEWS = 4096
#: numba-cuda's low-occupancy warning (class ``numba.cuda.core.errors.NumbaPerformanceWarning``, not numba's own).
LOW_OCCUPANCY_MESSAGE = r".*under-utilization"


def simulator_enabled() -> bool:
    """Return True when numba runs CUDA kernels in its Python simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(config.ENABLE_CUDASIM)


def array_module() -> Any:
    """Return the array module of GPU-backend arrays: numpy under the simulator, CuPy on a device.

    Raises
    ------
    ImportError
        On a device without CuPy (``pip install portalign[gpu]``).
    """
    if simulator_enabled():
        return np
    import cupy

    return cupy


def device_arg(array: Any) -> Any:
    """Return ``array`` in the form a numba kernel launch takes without a hidden synchronisation.

    numpy arrays go as they are (the simulator uses them in place; on a device
    numba copies them in and out, which is correct but slow). CuPy arrays become
    numba device views with ``sync=False``: numba would otherwise synchronise on
    the exporting stream at every launch.

    A numba view costs about 20 us of host time to make and its argument type
    another few on its first launch, several times a kernel's own run on a
    small level. Views are therefore made once per (device address, shape,
    strides, dtype) and reused. A cached view holds only that description, not
    the CuPy array (:class:`_Described`): it keeps no memory alive, and a view of
    an address that was freed and given to a new array of the same shape is the
    same view. Callers keep the CuPy array alive while its launches are queued,
    as before (CuPy's pool reuses memory in stream order).
    """
    if simulator_enabled() or isinstance(array, np.ndarray):
        return array
    try:
        key = (array.data.ptr, array.shape, array.strides, array.dtype.str)  # a CuPy array
    except AttributeError:  # numba's own device array as it is; another library's: a view of its own, not cached
        return array if hasattr(array, "device_ctypes_pointer") else cuda.as_cuda_array(array, sync=False)
    view = _views.get(key)
    if view is None:
        if len(_views) >= MAX_VIEWS:
            _views.clear()  # every entry can be made again; a bound, not a policy
        view = _views[key] = cuda.as_cuda_array(_Described(array.__cuda_array_interface__), sync=False)
    return view


class _Described:
    """An owner-less ``__cuda_array_interface__``: address, shape, strides and type only (no stream, no owner)."""

    __slots__ = ("__cuda_array_interface__",)

    def __init__(self, interface: dict) -> None:
        self.__cuda_array_interface__ = {key: interface[key] for key in ("shape", "typestr", "data", "strides")
                                         if key in interface} | {"version": 3}


def to_host(array: Any) -> np.ndarray:
    """Return a numpy array with the contents of a numpy, CuPy or numba device array."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return array.get()


def threads_per_block() -> int:
    """Return the validated ``THREADS_PER_BLOCK`` setting."""
    tpb = int(THREADS_PER_BLOCK)
    if not 1 <= tpb <= REDUCE_MAX_THREADS:
        raise ValueError(
            f"portalign.kernels.gpu.launch.THREADS_PER_BLOCK must be within 1..{REDUCE_MAX_THREADS}; got {tpb}"
        )
    return tpb


def blocks_for(n_items: int, items_per_block: int) -> int:
    """Return the number of blocks for ``n_items`` (at least 1, at most ``MAX_BLOCKS``)."""
    return max(1, min(int(math.ceil(n_items / items_per_block)), int(MAX_BLOCKS)))


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """Return a reusable per-thread device buffer ``name`` of ``shape`` and ``dtype`` (contents undefined).

    One buffer per calling thread: two host threads queue kernels on the same
    stream, so a buffer shared between them could be overwritten between the
    kernel that fills it and the one that reads it.
    """
    cache = getattr(_scratch, "buffers", None)
    if cache is None:
        cache = _scratch.buffers = {}
    # per stream too: a thread that moves to another stream must not reuse a buffer still queued on the first
    key = (name, tuple(shape), np.dtype(dtype).str, id(getattr(_current, "stream", None)))
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = array_module().empty(shape, dtype=dtype)
    return buf


def staged(name: str, host: np.ndarray) -> Any:
    """Return a per-thread device buffer ``name`` holding a copy of the small host array ``host``, copied without a wait.

    ``cupy.asarray`` of a numpy array copies from pageable memory, and CUDA makes such a copy wait for
    everything queued on the stream first: the host stops until the device catches up, a dozen times a
    frame. Here the values go through a pinned buffer of the same name (one per thread and stream) and
    the copy is queued; the pinned buffer is rewritten only after its previous copy has run (an event).
    Under the simulator the device buffer is filled in place.
    """
    buf = scratch(name, host.shape, host.dtype)
    if simulator_enabled():
        buf[...] = host
        return buf
    import cupy
    import cupyx

    cache = getattr(_scratch, "pinned", None)
    if cache is None:
        cache = _scratch.pinned = {}
    key = (name, host.shape, host.dtype.str, id(getattr(_current, "stream", None)))
    entry = cache.get(key)
    if entry is None:
        entry = cache[key] = [cupyx.empty_pinned(host.shape, dtype=host.dtype), None]
    pinned, done = entry
    if done is not None:
        done.synchronize()  # the previous copy from this pinned buffer has run (at once, normally)
    pinned[...] = host
    device_stream = cupy.cuda.get_current_stream()
    buf.set(pinned, stream=device_stream)
    entry[1] = device_stream.record()
    return buf


@contextmanager
def on_stream(device_stream: Any) -> Iterator[None]:
    """Queue this thread's kernels and CuPy work on ``device_stream`` inside the ``with`` block.

    Parameters
    ----------
    device_stream : cupy.cuda.Stream, numba simulator stream or None
        None keeps the legacy default stream. Blocks nest; the previous stream is
        restored on exit.
    """
    previous = getattr(_current, "stream", None)
    _current.stream = device_stream
    try:
        if device_stream is None or simulator_enabled():
            yield
        else:
            with device_stream:  # CuPy's current stream: allocations, copies and FFTs
                yield
    finally:
        _current.stream = previous


def stream() -> Any:
    """Return the stream argument for a kernel launch of the calling thread (0: the default stream)."""
    current = getattr(_current, "stream", None)
    if current is None:
        return 0
    if simulator_enabled():
        return current
    ptr = int(current.ptr)
    with _numba_streams_lock:
        wrapped = _numba_streams.get(ptr)
        if wrapped is None:
            # numba launches on CuPy's stream through its handle; one wrapper per stream, made once
            wrapped = _numba_streams[ptr] = cuda.external_stream(ptr)
    return wrapped


def configured(kernel: Any, grid: Any, block: int, shared_bytes: int = 0) -> Any:
    """Return ``kernel`` configured for ``grid`` x ``block`` on the calling thread's stream, made once per shape.

    numba-cuda builds a launch configuration at every ``kernel[grid, block, stream]``
    (host time on the per-frame path) and warns there when the grid has fewer than
    128 blocks. Our grids are sized to the work: a 1-thread decision kernel or a
    coarse pyramid level is small on purpose. The configuration is therefore made
    once per (kernel, grid, block, stream, shared memory) with that one warning
    silenced for that one call, and reused afterwards; nothing process-wide
    (``config.CUDA_LOW_OCCUPANCY_WARNINGS``, global filters) is changed for the caller.
    Under the simulator nothing is cached, and each launch is configured and run under
    one process-wide lock (:class:`_SimulatedLaunch`).
    """
    launch_stream = stream()
    if simulator_enabled():
        return _SimulatedLaunch(kernel, (grid, block, launch_stream, shared_bytes))
    key = (id(kernel), grid, block, id(launch_stream), shared_bytes)
    found = _configured.get(key)
    if found is None:
        with _configured_lock:
            found = _configured.get(key)
            if found is None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=LOW_OCCUPANCY_MESSAGE)
                    found = _configured[key] = _FirstLaunch(key, kernel[grid, block, launch_stream, shared_bytes])
    return found


#: Held around each simulated launch, its configuration included (:class:`_SimulatedLaunch`).
_simulator_lock = threading.RLock()


class _SimulatedLaunch:
    """A launch under numba's CUDA simulator: configured and run while holding a process-wide lock.

    The simulator is not thread-safe: ``kernel[grid, block]`` writes the configuration into the one
    kernel object, and a launch swaps the ``cuda`` name in the kernel module's globals for a fake module
    that carries the launch's block shape and shared memory. Two lanes launching at once (two host
    threads) then ran one launch's threads against the other's fake module: a CI run saw a kernel index
    a pixel list with uninitialised shared memory (``IndexError: index 280980250168744 is out of bounds``),
    and (its likely cause) a run whose numbers came out 2e-5 mm from the CPU's. A device has neither problem (a
    configuration is a value and threads have their own indices), so only the simulator serialises.
    """

    __slots__ = ("kernel", "configuration")

    def __init__(self, kernel: Any, configuration: tuple) -> None:
        self.kernel = kernel
        self.configuration = configuration

    def __call__(self, *args: Any) -> Any:
        with _simulator_lock:
            return self.kernel[self.configuration](*args)


def _lock_simulated_shared_arrays() -> None:
    """Make the simulator's static ``cuda.shared.array`` allocation atomic (simulator only; idempotent).

    numba's simulator gives a block one array per ``cuda.shared.array`` call site by looking the site up
    in a dict and storing a new array when it is missing, with no lock: two of a block's threads that
    reach the call at once can each store their own array, and a reduction then reads values its
    partners never wrote. A CI run's MI refinement on the simulator came out at another pose than the
    CPU's (same kernels, same inputs; it passed on every rerun here). On a device a shared array is one
    per block by construction, so only the simulator is changed.
    """
    try:
        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
    except ImportError:  # pragma: no cover - a numba without the simulator
        return
    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if shared is None or getattr(shared.array, "_portalign_locked", False):
        return
    allocate = shared.array
    lock = threading.Lock()

    def array(self: Any, shape: Any, dtype: Any) -> Any:
        if shape == 0:  # dynamic shared memory: one buffer per launch, no lookup
            return allocate(self, shape, dtype)
        # the simulator's key, the call site (file, line), found and stored under one lock
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(site)
            if found is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                found = self._allocations[site] = np.empty(shape, dtype)
        return found

    array._portalign_locked = True  # type: ignore[attr-defined]
    shared.array = array


if simulator_enabled():
    _lock_simulated_shared_arrays()


#: Held around the first launch of each configuration (:class:`_FirstLaunch`).
_first_launch_lock = threading.RLock()


class _FirstLaunch:
    """A kernel configuration whose first launch holds a process-wide lock; later launches go straight to numba.

    numba-cuda 0.30.4 loads a compiled kernel's module on its first launch without a lock
    (``CUDACodeLibrary.get_cufunc``). Two threads launching a new kernel at once (two lanes'
    first frames) both load it; the driver returned the same module handle twice on an H200,
    numba-cuda then raised ``AssertionError: key already in dictionary: <CUlibrary ...>`` in one of
    them, and the module was unloaded twice at interpreter exit (a segmentation fault). Each
    configuration's first launch is therefore serialised; once it has run, its kernel's module is
    loaded and the configuration replaces this wrapper in the cache.
    """

    __slots__ = ("key", "configuration")

    def __init__(self, key: tuple, configuration: Any) -> None:
        self.key = key
        self.configuration = configuration

    def __call__(self, *args: Any) -> Any:
        with _first_launch_lock:
            result = self.configuration(*args)
        _configured[self.key] = self.configuration
        return result


def graphs_enabled() -> bool:
    """Return whether launch sequences are captured into CUDA graphs (a device, a stream, ``PORTALIGN_CUDA_GRAPHS`` not 0)."""
    import os

    if simulator_enabled() or getattr(_current, "stream", None) is None:
        return False
    return os.environ.get("PORTALIGN_CUDA_GRAPHS", "1").strip() not in ("0", "false", "no", "off")


def run_captured(key: Any, enqueue: Any) -> str:
    """Queue ``enqueue()``'s launches on the current stream, as a CUDA graph once the sequence has been seen.

    The first call with a ``key`` runs ``enqueue`` eagerly (it also allocates any scratch
    buffer, which a capture must not do); the second captures it with CuPy's stream capture
    (numba launches on an external stream are captured too) and launches the graph; later
    calls only launch the graph: one host call for the whole sequence instead of one per
    kernel. ``key`` must name everything the launches depend on: the buffers' addresses, the
    grid shapes, every scalar argument. A failed capture makes that key eager for good.
    Returns how the sequence ran: ``"eager"``, ``"captured"`` or ``"replayed"`` (counted in :data:`GRAPH_RUNS`).
    """
    mode = _run_captured(key, enqueue)
    with _graphs_lock:
        GRAPH_RUNS[mode] += 1
    return mode


def _run_captured(key: Any, enqueue: Any) -> str:
    """:func:`run_captured` without the count."""
    if not graphs_enabled():
        enqueue()
        return "eager"
    device_stream = _current.stream
    with _graphs_lock:
        entry = _graphs.get(key)
        if entry is None:
            if len(_graphs) >= MAX_GRAPHS:
                _graphs.pop(next(iter(_graphs)))
            _graphs[key] = "seen"
    if entry is None or entry == "eager":
        enqueue()
        return "eager"
    if entry == "seen":
        graph = None
        recorded = False
        device_stream.begin_capture()
        try:
            enqueue()
            recorded = True
        except Exception:  # noqa: BLE001 - a launch that cannot be captured: this sequence runs eagerly from now on
            recorded = False
        finally:
            try:
                graph = device_stream.end_capture()
            except Exception:  # noqa: BLE001 - an invalidated capture: the same
                graph = None
        if not recorded:
            graph = None
        with _graphs_lock:
            _graphs[key] = graph if graph is not None else "eager"
        if graph is None:
            enqueue()
            return "eager"
        graph.launch(device_stream)
        return "captured"
    entry.launch(device_stream)
    return "replayed"
