"""A frame geometry's plan: pyramid levels, the reference resampled onto them, and every per-frame buffer.

A :class:`FramePlan` is built once per (reference, frame geometry) by
:class:`~portalign.registration.Reference` and reused for every frame of that
geometry. Its per-frame buffers serve one frame at a time; frames registered
concurrently get *lanes* (copies that share the reference-side arrays).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..backends import Backend
from ..image import Image
from ..options import RegistrationOptions

__all__ = ["FramePlan", "Level", "CoarseSearch", "pose_affines", "edge_features", "wants_field", "FRAME_BUFFERS", "LanePool",
           "MAX_FIELD_MARGIN_MM", "MAX_MARGIN_FRACTION", "PENUMBRA_REACH_MM"]


def pose_affines(poses: np.ndarray, frame_axis: tuple[float, float], frame_spacing: tuple[float, float],
                 ref_axis: tuple[float, float], ref_spacing: tuple[float, float]) -> np.ndarray:
    """Return ``(K, 2, 3)`` maps from frame pixel ``(col, row, 1)`` to reference pixel ``(col, row)``.

    Parameters
    ----------
    poses : float64[K, 3]
        ``(dx_mm, dy_mm, theta_rad)``: reference point ``q`` appears at frame point
        ``R(theta) q + d``, so the frame point ``p`` shows reference point
        ``R(-theta) (p - d)``.
    frame_axis, ref_axis : (col, row)
        Beam axis in pixels of each grid.
    frame_spacing, ref_spacing : (row_mm, col_mm)
    """
    poses = np.atleast_2d(np.asarray(poses, dtype=np.float64))
    dx, dy, theta = poses[:, 0], poses[:, 1], poses[:, 2]
    c, s = np.cos(theta), np.sin(theta)
    fsy, fsx = frame_spacing
    rsy, rsx = ref_spacing
    ox = -frame_axis[0] * fsx - dx
    oy = -frame_axis[1] * fsy - dy
    out = np.empty((poses.shape[0], 2, 3))
    out[:, 0, 0] = c * fsx / rsx
    out[:, 0, 1] = s * fsy / rsx
    out[:, 0, 2] = (c * ox + s * oy) / rsx + ref_axis[0]
    out[:, 1, 0] = -s * fsx / rsy
    out[:, 1, 1] = c * fsy / rsy
    out[:, 1, 2] = (-s * ox + c * oy) / rsy + ref_axis[1]
    return out


@dataclass
class Level:
    """One pyramid level of a frame geometry with the reference resampled to match.

    Reference-side arrays are filled at plan time; frame-side arrays are the
    per-frame buffers the kernels write into.
    """

    index: int
    shape: tuple[int, int]
    spacing: tuple[float, float]
    frame_axis: tuple[float, float]
    ref_axis: tuple[float, float]
    ref_shape: tuple[int, int]
    erosion_px: int
    # reference side (backend arrays)
    ref_bins: Any = None
    ref_re: Any = None
    ref_im: Any = None
    #: The reference's edge ``limit`` on this level (``kernels.cpu.gradient.gradient_limit`` of its robust range),
    #: set with its features; the global search's rotated features take the same one.
    ref_limit: float = float("inf")
    #: Displacements ``(dx_mm, dy_mm, ratio)`` at which the reference's edges repeat (``_program.reference_periods``),
    #: computed on first use; ``[]``: none.
    ref_periods: Any = None
    #: The reference's robust contrast over its white-noise sigma on this level (``_quality.reference_contrast_to_noise``;
    #: ``inf``: noise-free, a DRR), computed on first use (a noisy frame's denoising decision).
    ref_contrast_to_noise: float | None = None
    #: ``(frame_axis_col, frame_axis_row, spacing_row_mm, spacing_col_mm, ref_axis_col, ref_axis_row)``, host float64[6].
    geometry: Any = None
    #: Host float32 reference resampled onto the level and uint8 where it may be compared (the intensity polish of
    #: two portal images, ``_program._intensity_polish``); its central differences ``(along cols, along rows)`` are
    #: made on first use.
    ref_image: Any = None
    ref_valid: Any = None
    ref_gradient: Any = None
    #: Host ``(ref_re, ref_im)`` (the same arrays on the CPU), copied on first use: the fine polish's screen of a finer
    #: level (``_program._screened_agreement``).
    ref_features_host: Any = None
    # frame side (backend arrays, reused)
    image: Any = None
    mask: Any = None
    scratch: Any = None
    eroded: Any = None
    bins: Any = None
    feat_re: Any = None
    feat_im: Any = None
    row_sums: Any = None
    pixel_rows: Any = None
    pixel_cols: Any = None
    #: Host float64[4] the level stage writes: usable count, intensity range, edge scale.
    stats: Any = None
    # per-frame statistics
    usable: int = 0
    #: Entries of the pixel list the metric kernels visit: ``usable`` on the CPU; on a device ``usable`` padded
    #: with pixel ``(0, 0)``, which adds nothing, to a bucket (``Backend.listed_count``: one CUDA graph per bucket).
    listed: int = 0
    range: tuple[float, float] = (0.0, 1.0)
    eps: float = 1.0

    def affines(self, poses: np.ndarray) -> np.ndarray:
        """Frame-pixel -> reference-pixel maps of this level for ``poses``."""
        return pose_affines(poses, self.frame_axis, self.spacing, self.ref_axis, self.spacing)


@dataclass
class CoarseSearch:
    """Global search data: reference spectra for each candidate rotation."""

    level: int
    thetas: np.ndarray
    margin_px: int
    padded_shape: tuple[int, int]
    ref_spectra_conj: Any
    ref_energy: np.ndarray
    #: Float32 (K, 2m+1, 2m+1): the searched window of every rotation's correlation surface (index m = no shift).
    window: Any
    #: Surface rows / columns of translations -margin..margin (backend arrays: the window is cut on the device).
    window_rows: Any
    window_cols: Any
    #: Host buffers the peak search writes: poses (MAX_CANDIDATES, 3) and their scores.
    peak_poses: Any = None
    peak_scores: Any = None
    #: Index of rotation 0 in ``thetas`` (the translation-only search uses that surface alone).
    zero_index: int = 0
    #: Half-width (pixels) of the square suppressed around each optimum of the search.
    suppress_px: int = 2
    #: Host float64 (K, 2m+1, 2m+1): the normalised window of each rotation (rotation 0's alone without
    #: ``estimate_rotation``), when the CPU's level stage computed them beside the frame's other level
    #: (``kernels.cpu.level.levels_and_surfaces``); None on a device.
    normalised: Any = None
    #: Host (numpy) ``ref_spectra_conj``: the same array on the CPU; on a device the copy that a lane's host twin
    #: searches with (:meth:`FramePlan.host_twin`).
    ref_spectra_host: Any = None

    def on_host(self) -> CoarseSearch:
        """Return a copy whose arrays are all host arrays (reference spectra shared, output buffers its own)."""
        ty = np.arange(-self.margin_px, self.margin_px + 1)
        return replace(self, ref_spectra_conj=self.ref_spectra_host, window=np.empty(tuple(self.window.shape), np.float32),
                       window_rows=ty % self.padded_shape[0], window_cols=ty % self.padded_shape[1],
                       peak_poses=np.zeros_like(self.peak_poses), peak_scores=np.zeros_like(self.peak_scores),
                       normalised=None)


@dataclass
class FramePlan:
    """Everything prepared for frames of one geometry."""

    key: tuple
    frame_shape: tuple[int, int]
    levels: dict[int, Level]
    pyramid_depth: int
    field_level: int
    refine_levels: list[int]
    coarse: CoarseSearch
    polish_levels: list[int] = field(default_factory=list)
    #: Levels finer than the working ones that two portal images' MI optimum is followed down to (coarser first).
    fine_polish_levels: list[int] = field(default_factory=list)
    #: The level (a portal reference's own pixels where small enough) two such images' intensities are fitted on
    #: last (``_program._intensity_polish``); None for other references.
    intensity_level: int | None = None
    hist: Any = None
    mi_out: Any = None
    edge_out: Any = None
    #: Host float64[5]: what the refine kernel returns (pose, score, iterations run).
    refine_out: Any = None
    #: The device stream this plan's kernels are queued on (None on the CPU).
    stream: Any = None
    #: Pinned host buffer that frames are uploaded through (None on the CPU and under the simulator).
    staging: Any = None
    #: Smaller side (mm) of the anatomy region the pyramid was sized for (the reference field, else the images).
    extent_mm: float = 0.0
    #: The frames' own small field size (mm) this plan was sized for, when the reference has no field.
    field_mm: float | None = None
    #: The frames' own penumbra extent (mm) this plan's edge band was widened to, when the reference has no field
    #: (a DRR) and the frames' penumbra reaches deeper than ``field_margin_mm`` (``_program._frame_band_mm``).
    band_mm: float | None = None
    #: Host buffers the compiled search program writes (``ranked``, ``records``, ``out``; see ``_search_program``).
    program_scratch: dict[str, np.ndarray] = field(default_factory=dict)
    #: This frame's level stage computed the global search's windows (``CoarseSearch.normalised``): the program
    #: searches their peaks only. Cleared by ``_register`` before each frame's level stage, set by
    #: ``_frame.frame_levels``, read by the search.
    surfaces_ready: bool = False
    #: The compiled program's inputs that do not change from frame to frame (per lane; see ``_search_program``).
    program_inputs: dict = field(default_factory=dict)
    #: The reference's and this geometry's frame extent at the isocentre plane (mm, ``[x0, x1, y0, y1]``).
    view_boxes: tuple[list[float], list[float]] | None = None
    #: The geometry's CPU thread tuner (``portalign.backends.ThreadTuner``), shared by its lanes.
    threads: Any = None
    #: The lane's frame context (``Backend.frame_scope``), made on its first frame and reused (a lane runs one
    #: frame at a time).
    scope: Any = None
    #: The levels every frame makes ready: the coarse level and the refinement levels, finest first (set here).
    used_levels: list[int] = field(default_factory=list)
    #: A device lane's host twin (:meth:`host_twin`): host copies of the frame buffers, where the CPU's compiled
    #: level stage makes a frame's levels ready (``Backend.host_level_stage``). Made on first need.
    host: FramePlan | None = None
    #: Whether this frame's levels were made ready on the host twin (the device's level images are then not this
    #: frame's: what reads them takes the twin's). Set by the frame program for each frame.
    host_stage: bool = False
    #: This frame's global-search optima when the host twin searched (a device lane whose levels were made ready
    #: on the host: the coarse features are there, and an FFT of this size is host work); None: the search runs on
    #: the plan's backend. Set by the frame program for each frame, read by ``_search_program.search_eager``.
    host_candidates: Any = None
    #: Whether a frame of this geometry confirmed the stated scale (``_scale``): later frames then skip the check.
    scale_confirmed: bool = False
    #: The last spatial-halves check of this lane's frames (``_program._rigidity_check``): the shift it was measured at
    #: (x, y mm) and the record later frames share while their shift stays near it; None: none yet.
    rigidity: tuple | None = None

    def __post_init__(self) -> None:
        self.used_levels = sorted(set(self.refine_levels) | {self.coarse.level})

    def new_lane(self, backend: Backend) -> FramePlan:
        """Return a copy sharing every reference-side array, with its own frame buffers, stream and staging."""
        xp = backend.xp

        def fresh(array: Any) -> Any:
            return None if array is None else xp.empty_like(array)

        levels = {
            index: replace(level, stats=np.zeros(4), **{name: fresh(getattr(level, name)) for name in FRAME_BUFFERS})
            for index, level in self.levels.items()
        }
        return replace(
            self,
            levels=levels,
            coarse=replace(self.coarse, window=fresh(self.coarse.window), peak_poses=np.zeros_like(self.coarse.peak_poses),
                           peak_scores=np.zeros_like(self.coarse.peak_scores),
                           normalised=None if self.coarse.normalised is None else np.empty_like(self.coarse.normalised)),
            hist=xp.zeros_like(self.hist),
            mi_out=xp.zeros_like(self.mi_out),
            edge_out=xp.zeros_like(self.edge_out),
            refine_out=np.zeros(5),
            program_scratch={name: np.zeros_like(array) for name, array in self.program_scratch.items()},
            program_inputs={},
            surfaces_ready=False,
            scope=None,
            stream=backend.new_stream(),
            staging=backend.staging_buffer(self.frame_shape),
            host=None,
            host_stage=False,
            host_candidates=None,
        )

    def host_twin(self, backend: Backend) -> FramePlan:
        """Return this lane's host twin: the same plan with host arrays for every frame buffer (made once).

        The reference side stays the device's (the twin's level stage does not read it). Buffers come
        from ``backend.host_empty`` (pinned on a device, so that copying them in is asynchronous). Level
        0's image is the frame's own pixels, set per frame.
        """
        if self.host is None:
            levels = {}
            for index, level in self.levels.items():
                buffers = {}
                for name in FRAME_BUFFERS:
                    array = getattr(level, name)
                    if name == "image" and (index == 0 or array is None):
                        buffers[name] = None if index == 0 else backend.host_empty(level.shape, np.float32)
                    else:
                        buffers[name] = None if array is None else backend.host_empty(tuple(array.shape),
                                                                                      np.dtype(array.dtype))
                levels[index] = replace(level, stats=np.zeros(4), **buffers)
            coarse = self.coarse.on_host() if self.coarse.ref_spectra_host is not None else self.coarse
            self.host = replace(self, levels=levels, coarse=coarse, program_inputs={}, program_scratch={},
                                surfaces_ready=False, scope=None, stream=None, staging=None, host=None, host_stage=False,
                                host_candidates=None)
        return self.host


#: The measured penumbra widens the field-edge band up to this much (mm): a reference portal image's own, or against
#: a DRR the frame's (``_program._frame_band_mm``).
MAX_FIELD_MARGIN_MM = 10.0
#: How deep (mm) into the field a penumbra is looked for (``field.penumbra_extent_mm``'s ``reach_mm``).
PENUMBRA_REACH_MM = 15.0
#: The field-edge band may take at most this fraction of the field's size (its largest inscribed disc) on
#: each side, so that a small (cone, SRS) field keeps an interior of about half its size to match on, even
#: turned 45 degrees under the square erosion (which reaches sqrt(2) further along a diagonal): 1 / (4 sqrt 2).
MAX_MARGIN_FRACTION = 0.18

#: The per-frame buffers of a :class:`Level`: what a lane must own (the rest is the reference's, shared).
FRAME_BUFFERS = ("image", "mask", "scratch", "eroded", "bins", "feat_re", "feat_im", "row_sums", "pixel_rows",
                 "pixel_cols")


class LanePool:
    """The lanes of one frame geometry: the first plan, and copies made when frames overlap.

    Taking and returning a free lane is one atomic ``deque`` operation each (no lock) while no frame waits:
    this runs for every frame. A frame that finds every lane busy queues; lanes then go to the queued frames
    first come, first served (a frame that has just returned one does not take it back past them).
    """

    def __init__(self, first: FramePlan) -> None:
        self.lanes = [first]
        self.free: deque[FramePlan] = deque([first])
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()
        #: A stamp of the last frame that used this geometry (the least recently used geometry is dropped first).
        self.last_used = 0
        #: A frame of this geometry went through the mirror check (``RegistrationOptions.mirror_check="first"``).
        self.mirror_checked = False
        #: The edge score (``_program._mirror_score``) of the frame that went through it: a later frame scoring under
        #: ``_program.MIRROR_RECHECK_SHARE`` of it is checked again (None: not known).
        self.mirror_score: float | None = None
        #: The lanes of the plan whose widened edge band the last frame of this geometry asked for (a DRR reference,
        #: the frame's own penumbra; ``_program._frame_band_mm``): later frames start there, and each checks it there.
        #: Held here: no second lookup a frame. None: the geometry's own band.
        self.band_pool: LanePool | None = None

    @property
    def band_mm(self) -> float | None:
        """The widened edge band (mm) of :attr:`band_pool`'s plan; None without one."""
        return None if self.band_pool is None else self.band_pool.lanes[0].band_mm

    def acquire(self, limit: int, backend: Backend) -> FramePlan:
        """Take a free lane (the least recently used), making one when none is free and fewer than ``limit`` exist."""
        if not self._queue:
            try:
                return self.free.popleft()
            except IndexError:
                pass
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                while True:
                    if self._queue[0] is ticket:
                        try:
                            return self.free.popleft()
                        except IndexError:
                            pass
                        if len(self.lanes) < limit:
                            lane = self.lanes[0].new_lane(backend)
                            self.lanes.append(lane)
                            return lane
                    # a release that ran before this frame queued is caught by the timeout
                    self._changed.wait(0.01)
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in the queue looks again

    def idle(self) -> bool:
        """Return whether no frame holds a lane of this geometry now."""
        return len(self.free) == len(self.lanes)

    def release(self, lane: FramePlan) -> None:
        self.free.append(lane)
        if self._queue:
            with self._changed:
                self._changed.notify_all()


def wants_field(options: RegistrationOptions, image: Image) -> bool:
    """Whether the field is looked for in ``image`` (a DRR has none unless ``field='detect'``)."""
    if options.field == "none":
        return False
    if options.field == "detect":
        return True
    return image.info.kind != "drr"


def edge_features(kernels: Any, image: Any, mask: Any, row_sums: Any, out_re: Any, out_im: Any, limit: float,
                  to_host: Any = np.asarray) -> float:
    """Fill ``out_re``/``out_im`` with the doubled-angle edge features of ``image``; return the scale ``eps``.

    ``eps`` is the mean gradient magnitude over ``mask`` (rows summed in order, so it is the same for any
    thread count): edges stronger than average get features near 1. Pixels next to an outlier (a central
    difference beyond ``limit``, from ``kernels.cpu.gradient.gradient_limit``; ``inf`` for none) are left out,
    so that one hot pixel cannot flatten every real edge. Used for the reference at preparation time, with the
    kernels of the backend that holds the arrays.
    """
    kernels.gradient_row_sums(image, mask, limit, row_sums)
    sums = to_host(row_sums)
    eps = float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0))
    kernels.orientation_features(image, mask, max(eps, 1e-12), limit, out_re, out_im)
    return eps
