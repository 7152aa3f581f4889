"""Batches: many frames against one prepared reference, results in input order.

:func:`register_batch` opens ``lanes`` lanes and registers the frames on worker
threads, one lane each. Under numba's simulator one worker registers the frames
in turn (its kernel objects keep their launch configuration in shared state,
which threads would race on); ``tests/test_gpu.py`` runs a second lane there by
holding the first, and ``tests/test_batch.py`` runs real worker threads on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

from ..backends import CpuBackend, GpuBackend, batch_lanes, default_lanes, single_threaded
from ..errors import OptionValueError, PortalignError
from ._reference import Reference, is_lane_count

__all__ = ["register_batch", "register_each", "batch_workers", "BatchError"]


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
        Frames in flight at once, each on its own buffers and stream. Default: on a GPU
        :func:`~portalign.backends.default_lanes`; on the CPU one frame per core the thread
        policy allows (:func:`~portalign.backends.batch_lanes`), each frame on one thread.

    Returns
    -------
    list of RegistrationResult

    Raises
    ------
    BatchError
        After every frame has been tried, when some could not be registered
        (unreadable, bad geometry); it names them and carries the other results.
    """
    if not isinstance(reference, Reference):
        raise TypeError(
            f"register_batch needs a prepared Reference, got {type(reference).__name__}; "
            "call portalign.prepare_reference(image) first (its backend='auto' takes a working GPU, else the CPU)"
        )
    items: Sequence[Any] = frames if isinstance(frames, Sequence) else list(frames)
    if lanes is not None and not is_lane_count(lanes):
        raise OptionValueError("register_batch: lanes must be a whole number (an int) of at least 1 (frames registered "
                               f"at once), or None for the backend's default; got {lanes!r}")
    results, errors = register_each(reference, items, pixel_spacing_mm=pixel_spacing_mm, lanes=lanes)
    if errors:
        listed = "; ".join(f"frame {i}: {type(e).__name__}: {e}" for i, e in sorted(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BatchError(f"{len(errors)} of {len(items)} frames could not be registered: {listed}{more}",
                         results, errors)
    return results


def batch_workers(reference: Reference, lanes: int | None = None) -> int:
    """Return how many frames of a batch run side by side on ``reference``'s backend (and allow that many lanes).

    The simulator keeps launch settings on shared kernel objects, so its frames take turns.
    """
    backend = reference.backend
    if lanes is None:
        lanes = batch_lanes() if isinstance(backend, CpuBackend) else default_lanes(backend)
    lanes = max(1, int(lanes))
    reference.allow_lanes(lanes)
    return 1 if isinstance(backend, GpuBackend) and backend.simulated else lanes


def register_each(reference: Reference, items: Sequence[Any], *, pixel_spacing_mm: Any = None, lanes: int | None = None,
                  pool: ThreadPoolExecutor | None = None) -> tuple[list[Any], dict[int, BaseException]]:
    """Register ``items`` side by side; return the results in input order (None where failed) and the errors by index.

    ``pool`` (a caller's executor, e.g. a stream's) is used instead of a new one when given.
    """
    workers = min(batch_workers(reference, lanes), max(len(items), 1))
    # the CPU's kernels run here: its frames, or a device's level stages on the host (Backend.host_level_stage)
    on_cpu = isinstance(reference.backend, CpuBackend) or reference.backend.host_level_stage
    results: list[Any] = [None] * len(items)
    errors: dict[int, BaseException] = {}

    def one(index: int) -> None:
        try:
            # CPU workers: frames side by side, one thread each (the kernels release the GIL)
            with single_threaded() if on_cpu and workers > 1 else nullcontext():
                results[index] = reference.register(items[index], pixel_spacing_mm=pixel_spacing_mm)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not lose the batch
            errors[index] = exc

    if workers == 1:
        for index in range(len(items)):
            one(index)
    elif pool is not None:
        list(pool.map(one, range(len(items))))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="portalign-batch") as executor:
            list(executor.map(one, range(len(items))))
    return results, errors
