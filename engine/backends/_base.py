"""The backend object: a kernel set, the array module it works on, and how frames reach it.

The registration program calls a backend and never branches on which one it is.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["Backend", "NO_CUDA_DEVICE"]

#: How the GPU backend's reason begins where the machine has no GPU (``auto`` then takes the CPU: no fault, no warning).
NO_CUDA_DEVICE = "no CUDA device"


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
        ``pixel_list``, ``gradient_row_sums``, ``feature_spectrum``, ``correlation_window``,
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
    #: Whether the kernel set runs a frame's search and refinement as one compiled call (``search_program``);
    #: otherwise the program calls its kernels one by one (the GPU: each level a CUDA-graph replay).
    compiled_program: bool = False
    #: Whether a frame's pyramid and level stage run on the host as the CPU's compiled calls, their results then
    #: copied to this backend's level buffers (the GPU; see ``portalign.registration._program``), instead of this
    #: kernel set's own level kernels one by one.
    host_level_stage: bool = False

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move a host array onto this backend (a no-op on the CPU)."""
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array: Any) -> np.ndarray:
        """Return a numpy copy/view of a backend array."""
        if self.xp is np:
            return np.asarray(array)
        return self.xp.asnumpy(array)

    def fft_workers(self) -> int:
        """Return the threads a compiled kernel's FFTs use (1: see :data:`portalign.kernels.cpu.correlation.FFT_WORKERS`)."""
        return 1

    def frame_threads(self) -> int:
        """Return the threads this frame's compiled kernels run on (1 where the device does the work)."""
        return 1

    def synchronize(self, stream: Any = None) -> None:
        """Wait for queued device work, on ``stream`` or the whole device (a no-op on the CPU)."""

    # --- per-engine streams and frame upload (see portalign.backends._gpu); trivial on the CPU --------------

    def new_stream(self) -> Any:
        """Return a new stream for one engine's work (None on the CPU: there is no queue)."""
        return None

    def on_stream(self, stream: Any) -> AbstractContextManager[None]:
        """Return a context in which this thread's kernels are queued on ``stream``."""
        return nullcontext()

    #: Whether a scope from :meth:`frame_scope` may be kept by a lane and entered again for its next frame.
    scope_reusable = False

    def frame_scope(self, stream: Any, tuner: Any = None) -> AbstractContextManager[None]:
        """Return the context one frame's work runs in (the GPU: its lane's stream; the CPU: its thread count).

        ``tuner`` is the frame geometry's thread tuner (used by the CPU backend's ``auto`` thread policy).
        """
        return self.on_stream(stream)

    def staging_buffer(self, shape: tuple[int, int]) -> Any:
        """Return a host buffer that frames of ``shape`` are uploaded through (None: not needed)."""
        return None

    def upload(self, pixels: Any, device_buffer: Any, staging: Any) -> Any:
        """Return ``pixels`` as a backend array, filling ``device_buffer`` through ``staging`` where there is one.

        On the CPU the frame's own pixels are used, without a copy.
        """
        return self.asarray(pixels)

    def staged(self, name: str, host_array: np.ndarray) -> Any:
        """Return the small host array ``host_array`` as a backend array for the next kernels (the array itself here).

        A device copies it into a reusable buffer ``name`` (one per thread and stream) without waiting for
        the stream; its contents hold until the next call with the same name.
        """
        return host_array

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Return an uninitialised host array that :meth:`copy_in` copies from quickly (pinned on a device)."""
        return np.empty(shape, dtype=dtype)

    def copy_in(self, device_array: Any, host_array: np.ndarray) -> None:
        """Copy ``host_array`` into the backend array ``device_array`` of the same shape (queued on a device)."""
        device_array[...] = host_array

    def listed_count(self, usable: int, capacity: int) -> int:
        """Entries of a level's usable-pixel list that the metric kernels visit: ``usable`` itself here.

        A device visits a padded list (:meth:`portalign.backends.GpuBackend.listed_count`) so that one
        captured launch sequence serves every frame of a geometry.
        """
        return usable


