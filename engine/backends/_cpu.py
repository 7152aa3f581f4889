"""The numba CPU backend and its thread policy.

numba's parallel kernels run on a thread pool whose workers spin while they
wait at the end of each parallel region (OpenMP's default wait policy). On a
quiet machine that is what makes a 1024x768 frame take a few milliseconds; on a
machine whose cores are busy with other work it is catastrophic: measured on
this project's 2-core machine at a load average of 8-11, a frame took 6-15 ms on
one thread and 480-800 ms (median) on two. The policy here therefore chooses the
thread count per frame:

* ``PORTALIGN_THREADS=N`` (environment) or ``RegistrationOptions``-independent
  :func:`set_thread_policy` ``(N)``: always N threads (at most numba's pool size);
* a batch (:func:`portalign.register_batch`) on the CPU runs one frame per core, each on one thread;
* ``auto`` (default): all usable cores up to :data:`MAX_USEFUL_THREADS`, and one
  thread while the 1-minute load average shows the cores busy with other work
  (load above usable cores + 1: our own threads add at most the cores). Between
  those, the frames themselves decide (:class:`ThreadTuner`, one per frame
  geometry): the frame time of each count is measured, the faster one is used,
  and the other is tried again now and then. A load average lags by a minute and
  cannot tell our spinning workers from other work: a new user's first demo, next
  to other jobs at load 2.8-3.0 on 2 cores, ran 318 ms frames on two threads where
  one thread took 9 ms.

The count is set for the calling thread only (``numba.set_num_threads`` is
thread-local) for the duration of one frame, and restored afterwards.

numba's ``workqueue`` threading layer (what numba falls back to where neither
OpenMP nor TBB loads, as on a macOS Python without libomp) is not thread-safe:
two parallel kernels running at once from two threads abort the process. Where
it is the layer, frames, reference preparations and 6-DOF registrations take
one process-wide lock (:func:`cpu_exclusive`) and batches run one lane, so a
service's worker threads queue instead of taking the process down.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PortalignError
from ..kernels.cpu.correlation import FFT_WORKERS
from ._base import Backend

__all__ = ["cpu_backend", "CpuBackend", "frame_threads", "set_thread_policy", "batch_lanes", "single_threaded",
           "cpu_exclusive", "threading_layer", "ThreadTuner", "MAX_USEFUL_THREADS"]

#: More threads than this do not pay on a frame's levels (measured on a 16-core Xeon: 8 threads 9.7 ms, 16 11.2 ms).
MAX_USEFUL_THREADS = 8

_policy: str | int = "auto"
#: Per-thread override: a batch worker runs its frames on one thread each (frames in parallel instead).
_local = threading.local()


def set_thread_policy(policy: str | int) -> None:
    """Choose how many threads the CPU kernels use per frame: ``"auto"`` or a fixed count.

    Raises
    ------
    PortalignError
        For anything but ``"auto"`` or a positive integer.
    """
    global _policy
    _policy = _parse_policy(policy, "set_thread_policy")
    _policy_cache[0] = None  # the next frame reads the new policy


#: Held around CPU kernel work where numba's threading layer is not thread-safe (workqueue).
_layer_lock = threading.RLock()
_no_lock = nullcontext()
_layer: str | None = None
def _public_thread_count() -> int:
    import numba

    return int(numba.get_num_threads())


def _public_set_threads(count: int) -> None:
    import numba

    numba.set_num_threads(count)


#: numba's count of this thread's threads, read and set without its Python wrappers once the pool is launched (set
#: with the layer: one call each, whatever the count); numba's public functions until then. The frame scope only
#: sets counts between 1 and the pool's size, which is all numba's wrapper checks.
_get_threads: Any = _public_thread_count
_set_threads: Any = _public_set_threads
#: The frame policy as last worked out, ``[perf_counter time, (count, auto)]``: frames within
#: :data:`POLICY_REFRESH_S` of it use it (it reads the environment, the CPU affinity and the load average).
_policy_cache: list[Any] = [None, (1, False)]
POLICY_REFRESH_S = 0.25


def threading_layer() -> str:
    """Return numba's threading layer in this process (``"omp"``, ``"tbb"`` or ``"workqueue"``).

    numba chooses it at the first parallel region; if none has run, one tiny parallel kernel runs first.
    """
    global _layer
    if _layer is None:
        import numba

        with _layer_lock:  # the probe itself must not run in two threads at once
            try:
                layer = numba.threading_layer()
            except ValueError:  # no parallel region has run in this process yet
                from portalign.kernels.cpu import threshold_mask

                try:
                    threshold_mask(np.zeros((2, 2), np.float32), 0.5, True, np.zeros((2, 2), np.uint8))
                except ValueError as exc:  # e.g. NUMBA_THREADING_LAYER=tbb without TBB installed
                    asked = os.environ.get("NUMBA_THREADING_LAYER", "default")
                    raise PortalignError(
                        f"numba could not load a threading layer (NUMBA_THREADING_LAYER={asked}): "
                        f"{' '.join(str(exc).split())[:200]}; install it (pip install tbb for 'tbb'), or unset "
                        "NUMBA_THREADING_LAYER") from exc
                layer = numba.threading_layer()
            _layer = str(layer)
            _set_thread_reader()
    return _layer


def _set_thread_reader() -> None:
    """Read and set this thread's numba thread count with numba's own C functions once its pool runs."""
    global _get_threads, _set_threads
    import numba

    try:
        from numba.np.ufunc import parallel

        # bound to the threading layer's library when the pool was launched
        reader = parallel._get_num_threads  # type: ignore[attr-defined]
        writer = parallel._set_num_threads  # type: ignore[attr-defined]
        if callable(reader) and callable(writer) and int(reader()) == int(numba.get_num_threads()):
            _get_threads, _set_threads = reader, writer
            return
    except Exception:  # noqa: BLE001 - another numba: its public functions
        pass
    _get_threads, _set_threads = numba.get_num_threads, numba.set_num_threads


def cpu_exclusive() -> AbstractContextManager[Any]:
    """Return the context CPU kernel work runs in: a process-wide lock under ``workqueue``, else nothing.

    Re-entrant: a 6-DOF registration that registers 2D frames inside holds it once per thread.
    """
    return _layer_lock if threading_layer() == "workqueue" else _no_lock


def _parse_policy(policy: Any, source: str) -> str | int:
    if isinstance(policy, str) and policy.strip().lower() == "auto":
        return "auto"
    try:
        count = int(policy)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise PortalignError(f"{source}: thread policy must be 'auto' or a positive integer; got {policy!r}")
    return count


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def frame_threads(policy: str | int | None = None) -> int:
    """Return the thread count a frame runs with under ``policy`` (default: the process's policy).

    ``PORTALIGN_THREADS`` in the environment overrides the default policy. Under ``auto`` this is the wide
    count (or 1 on a busy machine); a geometry's :class:`ThreadTuner` may still choose one thread.
    """
    return _frame_policy(policy)[0]


def _frame_policy(policy: str | int | None = None) -> tuple[int, bool]:
    """Return the frame thread count under ``policy`` and whether it came from ``auto`` (then it may be tuned)."""
    import numba

    if policy is None and getattr(_local, "single", False):
        return 1, False
    if policy is None:
        env = os.environ.get("PORTALIGN_THREADS")
        policy = _parse_policy(env, "PORTALIGN_THREADS") if env else _policy
    pool = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if policy != "auto":
        return max(1, min(int(policy), pool)), False
    cores = _usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        load = 0.0
    if load > cores + 1:
        return 1, False
    return max(1, min(pool, cores, MAX_USEFUL_THREADS)), True


class ThreadTuner:
    """Choose a geometry's frame thread count from the frame times it gave: one thread or the wide count.

    The first frame of a geometry (compilation, first touch of its buffers) is not timed. The next
    :attr:`EXPLORE` frames alternate the wide count and one thread, and each count keeps its fastest time
    (one slow frame, a page fault or another process, does not decide). Then the faster count is used;
    the other is tried again after :attr:`PROBE_EVERY` frames, and each time it loses again the wait
    doubles (up to :attr:`MAX_PROBE_EVERY`), so a busy machine costs one slow frame in thousands. A
    probe's time replaces what that count had (the machine may have changed); the count in use is
    smoothed (:attr:`SMOOTHING`), so one slow frame does not switch it.
    """

    EXPLORE = 4
    PROBE_EVERY = 64
    MAX_PROBE_EVERY = 4096
    SMOOTHING = 0.3
    __slots__ = ("seconds", "frames", "next_probe", "interval", "probing")

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.frames = 0
        self.next_probe = 0
        self.interval = self.PROBE_EVERY
        self.probing = 0

    def choose(self, wide: int) -> int:
        """Return the thread count of the next frame, ``1`` or ``wide``."""
        frames = self.frames = self.frames + 1
        self.probing = 0
        if frames <= self.EXPLORE + 1:
            return wide if frames % 2 == 0 or frames == 1 else 1  # untimed first frame, then wide, 1, wide, 1
        seconds = self.seconds
        # membership tests and indexing, not dict.get: this runs for every frame
        one = seconds[1] if 1 in seconds else None
        many = seconds[wide] if wide in seconds else None
        if one is None or many is None:
            # a count never timed (the usable cores changed, or exploring frames failed): explore again
            self.seconds = {}
            self.frames = 2
            return wide
        best, other = (1, wide) if one < many else (wide, 1)
        if frames >= self.next_probe:
            self.probing = other
            return other
        return best

    def record(self, threads: int, elapsed_s: float) -> None:
        """Take the frame time of a frame that ran with ``threads`` (as :meth:`choose` said)."""
        frames = self.frames
        if frames <= 1:
            return
        seconds = self.seconds
        old = seconds[threads] if threads in seconds else None
        if frames <= self.EXPLORE + 1:
            seconds[threads] = elapsed_s if old is None else min(old, elapsed_s)
            self.next_probe = frames + self.interval
        elif self.probing:
            chosen = 1 if threads != 1 else max(seconds, default=1)  # the count in use before this probe
            seconds[threads] = elapsed_s
            # lost again: wait twice as long before the next try; won: try the other one soon
            won = elapsed_s < seconds.get(chosen, float("inf"))
            self.interval = self.PROBE_EVERY if won else min(2 * self.interval, self.MAX_PROBE_EVERY)
            self.next_probe = frames + self.interval
        else:
            seconds[threads] = elapsed_s if old is None else old + self.SMOOTHING * (elapsed_s - old)


def batch_lanes() -> int:
    """Return how many frames a CPU batch registers side by side (one thread each): the cores the policy allows.

    The kernels release the GIL (``nogil=True``), so frames on worker threads run in parallel; one thread per
    frame avoids the per-region synchronisation of parallel kernels, which dominates on small levels.
    """
    return 1 if threading_layer() == "workqueue" else frame_threads()


class single_threaded:  # noqa: N801 - used like a function: ``with single_threaded():``
    """Within this context the calling thread's frames run on one numba thread (a batch worker)."""

    def __enter__(self) -> None:
        self.previous = getattr(_local, "single", False)
        _local.single = True

    def __exit__(self, *exc: object) -> None:
        _local.single = self.previous


class _ThreadScope:
    """Set this thread's numba thread count for one frame and restore it (a plain class: few calls per frame).

    Under the ``auto`` policy the geometry's :class:`ThreadTuner` picks between one thread and the wide count
    and is told the frame's time.
    """

    __slots__ = ("previous", "wanted", "exclusive", "tuner", "started", "lane_tuner")
    tuner: ThreadTuner | None
    lane_tuner: ThreadTuner | None

    def __enter__(self) -> None:
        # _layer is known: cpu_backend() asked for it when the backend was made
        self.exclusive = _layer == "workqueue"
        if self.exclusive:
            _layer_lock.acquire()
        self.previous = _get_threads()
        now = time.perf_counter()
        try:
            single = _local.single
        except AttributeError:
            single = False
        if single:  # a batch worker: one thread, nothing to learn
            wanted, auto = 1, False
        else:
            cached = _policy_cache[0]
            if cached is None or not 0.0 <= now - cached < POLICY_REFRESH_S:
                _policy_cache[1] = _frame_policy()
                _policy_cache[0] = now
            wanted, auto = _policy_cache[1]
        tuner = self.lane_tuner
        if auto and wanted > 1 and tuner is not None:
            wanted = tuner.choose(wanted)
            self.tuner = tuner
        else:
            self.tuner = None  # a fixed count, a batch worker or a busy machine: nothing to learn from
        self.wanted = wanted
        _local.threads = wanted  # this frame's thread count (frame_threads)
        if wanted != self.previous:
            _set_threads(wanted)
        self.started = now

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.tuner is not None and exc_type is None:
            self.tuner.record(self.wanted, time.perf_counter() - self.started)
        if self.wanted != self.previous:
            _set_threads(self.previous)
        if self.exclusive:
            _layer_lock.release()


@dataclass(frozen=True)
class CpuBackend(Backend):
    """The CPU backend: numpy arrays, numba kernels, a thread count chosen per frame."""

    #: A lane may keep its frame scope and enter it again for each frame (see :meth:`frame_scope`).
    scope_reusable = True

    def frame_scope(self, stream: Any, tuner: Any = None) -> AbstractContextManager[None]:
        """Return the context one frame runs in: this thread's numba thread count per the thread policy.

        ``tuner`` (a :class:`ThreadTuner`, one per frame geometry) lets the ``auto`` policy learn from frame times.
        The scope can be entered again, one frame at a time.
        """
        scope = _ThreadScope()  # no __init__: one call fewer per frame
        scope.lane_tuner = tuner
        scope.tuner = tuner
        return scope

    def fft_workers(self) -> int:
        """Return the threads a compiled kernel's FFTs use: always ``kernels.cpu.correlation.FFT_WORKERS`` (one).

        Not the frame's thread count: rocket-fft's transforms at some lengths round differently on one worker than
        on several (see ``FFT_WORKERS``), and a frame's count follows the thread policy, the load and the tuner.
        """
        return FFT_WORKERS

    def frame_threads(self) -> int:
        """Return this thread's frame thread count (set by :meth:`frame_scope`; numba's count outside one)."""
        try:
            return _local.threads  # type: ignore[no-any-return]
        except AttributeError:  # outside a frame scope: numba's count for this thread
            import numba

            return int(numba.get_num_threads())


def cpu_backend(fallback_reason: str = "") -> Backend:
    """Return the numba CPU backend."""
    from portalign.kernels import cpu

    threading_layer()  # known before the first frame (its scope takes the lock under workqueue)
    return CpuBackend(name="cpu", xp=np, kernels=cpu.KERNELS, fallback_reason=fallback_reason, device=_cpu_name(),
                      compiled_program=True)


def _cpu_name() -> str:
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
