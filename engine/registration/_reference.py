"""Reference preparation: everything that depends only on the reference, computed once.

``Reference.prepare(image)`` keeps the reference pixels and its field. The first
frame of a given geometry (shape, spacing, beam axis) builds a :class:`FramePlan`:
the pyramid levels the search will use, the reference resampled onto each
level's pixel spacing (with its intensity bins, edge features and validity
mask), the FFT spectra of the reference edge features under every candidate
rotation for the global search, and every per-frame buffer. Later frames of the
same geometry only fill those buffers. ``Reference.warm_up(frame_geometry)``
pays for the plan (and the JIT compilation) before the first real frame.

A plan's per-frame buffers serve one frame at a time. Frames registered
concurrently against one reference (a batch, several service requests) get
*lanes*: copies of the plan that share every reference-side array and own their
frame buffers, their device stream and their pinned upload buffer. On the CPU there
is one lane per geometry unless :meth:`Reference.allow_lanes` asks for more; on
a device up to ``portalign.backends.DEFAULT_LANES`` (see :func:`portalign.backends.default_lanes`).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
from portalign.kernels.cpu.edge import INVALID_FEATURE
from portalign.kernels.cpu.field import line_means
from portalign.kernels.cpu.gradient import gradient_limit
from portalign.kernels.cpu.mask import robust_tail
from portalign.kernels.cpu.refine import MAX_STENCIL
from scipy import fft as sp_fft
from scipy import ndimage

from ..backends import Backend, ThreadTuner, cpu_backend, cpu_exclusive, default_lanes, select_backend
from ..errors import OptionValueError, PortalignError, ReferencePreparationError
from ..field import (
    NO_FIELD,
    FieldEstimate,
    box_reduce,
    core_extent_px,
    core_sides_fine_mm,
    core_sides_mm,
    dead_lines_only,
    field_centre_mm,
    field_pixels,
    field_size_mm,
    find_field,
    line_screen,
    penumbra_extent_mm,
    sample_mask,
)
from ..image import PIXEL_ASPECT_LIMIT, Image, as_image, check_frame_pixels, check_registration_size
from ..options import RegistrationOptions
from ._frame import bridge_lines, bridged_frame, dead_detector_lines, denoised_frame
from ._interior import InteriorModel
from ._plan import (
    MAX_FIELD_MARGIN_MM,
    MAX_MARGIN_FRACTION,
    CoarseSearch,
    FramePlan,
    LanePool,
    Level,
    edge_features,
    pose_affines,
    wants_field,
)
from ._program import register_frame
from ._quality import MIN_USABLE_PIXELS
from ._search import DISTINCT_MM, MAX_CANDIDATES
from ._search_program import program_scratch
from ._views import extent_box, grid_extent, with_view_reason

__all__ = ["Reference", "prepare_reference", "prepare_reference_for"]

#: Global-search translations go this far beyond the capture range, so that an
#: optimum outside it is seen (and reported) instead of clipped.
SEARCH_MARGIN_MM = 5.0
#: Pixels across the smaller side of the searched region at the coarse level.
COARSE_MIN_PIXELS = 40
#: The global search's FFTs stay affordable: its level is at most this many pixels on its longer side.
COARSE_MAX_PIXELS = 384
#: Pixels across the smaller side of the anatomy region at the finest level, at least.
FINEST_MIN_PIXELS = 48
#: Levels below the finest that a clean frame is refined on as well.
POLISH_LEVELS = 1
#: Two portal images (a portal reference) in near-perfect agreement: the mutual-information optimum they report is
#: followed down to the levels below the working ones that have at most this many pixels (``_program.FINE_POLISH``:
#: a 1024 x 768 or 680 x 920 image's level 1, not its own pixels, which cost 7x the frame's time for 0.004 mm).
FINE_POLISH_MAX_PIXELS = 300_000
#: ...and their intensities are fitted last (``_program._intensity_polish``) on the finest level with at most this many
#: pixels: a 1024 x 768 or 1280 x 1280 EPID image's own pixels (one Gauss-Newton pass visits each pixel once).
INTENSITY_MAX_PIXELS = 2_000_000
#: Penumbra (Gaussian sigma, mm) of :meth:`Reference.aperture_model`. A trial's failures matched the model of 1.5 mm
#: and of 3 mm alike (edge correlations 0.66-0.72); sound portal pairs reached 0-0.45 with either.
APERTURE_SIGMA_MM = 2.0
#: Search range (mm) of the aperture model's match (``_program.APERTURE_NEAR_MM`` and a margin).
APERTURE_SEARCH_MM = 5.0
#: Frame geometries whose plans a reference keeps (least recently used dropped first).
MAX_PLANS = 8
#: Exact (unrounded) frame geometries the per-frame lookup remembers before it starts again.
MAX_FRAME_POOL_KEYS = 64
#: Field detection runs on the first level no larger than this.
FIELD_LEVEL_MAX_PIXELS = 200
#: Fewest reference pixels a level must keep inside the field, off its edge band.
MIN_REFERENCE_PIXELS = 16
#: A resampled reference pixel is compared only where at least this share of its filters' weight came from live
#: detector pixels (``_resample_reference``): a reference portal image's dead lines, and the pixels on them at every
#: level, leave the match as a frame's do. Before, the zero lines were strong edges the frame lacked and made the
#: noisy reference look clean: 5 of 7 TotalSegmentator portal pairs with two dead rows and a dead column in the
#: reference were refused.
REFERENCE_LIVE_WEIGHT = 0.9
#: A frame whose pixels (at a plan's level) are this many times longer one way than the other: named as the cause when
#: the reference has too few usable pixels there (imagers' pixels are square; a binned readout's at most 2:1).
ANISOTROPIC_RATIO = PIXEL_ASPECT_LIMIT  # one bound with the size check's (image.py)


def is_lane_count(value: Any) -> bool:
    """Whether ``value`` can be a count of lanes: a whole number (an int or numpy integer, not a bool) of at least 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


class Reference:
    """A reference image prepared for registering many frames against it.

    Use :func:`prepare_reference` (or :meth:`Reference.prepare`). Thread-safe:
    frames registered from several threads against one reference take turns on
    the buffers of their geometry, unless :meth:`allow_lanes` lets them run side
    by side on lanes of their own.
    """

    def __init__(self, image: Image, options: RegistrationOptions, backend: Backend, field_estimate: FieldEstimate,
                 field_level_factor: int, field_margin_mm: float) -> None:
        self.image = image
        self.options = options
        self.backend = backend
        self.field = field_estimate
        self._field_factor = field_level_factor
        #: Band excluded around the field edge: the option, widened to the reference's measured penumbra.
        self.field_margin_mm = field_margin_mm
        self._plans: dict[tuple, LanePool] = {}
        self._plans_lock = threading.Lock()
        #: The pools of geometries already seen, by the frame's own (shape, spacing, axis): one dict lookup a frame.
        self._frame_pools: dict[tuple, LanePool] = {}
        self._uses = 0
        # on a device, frames that overlap (service requests, batches) run side by side on their own streams
        self._lane_limit = default_lanes(backend)
        self._cpu_reference: Reference | None = None
        #: The reference resampled per level spacing (plans of several geometries and the coarse search share them).
        self._resampled: dict[tuple[float, float], tuple[np.ndarray, np.ndarray, tuple[float, float]]] = {}
        #: The reference's 2x2 box-mean pyramid (float64, with its live weights), by box size: each level's
        #: resampling starts from the largest box it takes, made once for all of them (``_resample_reference``).
        self._boxes: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        #: The reference's radiation field alone (``aperture_model``), prepared on first use; False: none can be
        #: made (no field); the model's own ``_aperture`` is False too (it is checked against nothing).
        self._aperture: Reference | bool | None = None
        #: The 99th percentile of this reference's field-detection level (``_program._shared_shielding``), on first use.
        self._shielding_top: float | None = None
        #: The reference side of the deep-interior check (``interior_model``), made on first use; False: none.
        self._interior: InteriorModel | bool | None = None
        #: This reference smoothed (``smoothed_twin``), made on first need; and, on such a twin, the reference it
        #: was smoothed from (None on every other reference).
        self._smoothed: Reference | None = None
        self._smoothed_of: Reference | None = None

    @classmethod
    def prepare(cls, image: Image, options: RegistrationOptions | None = None, backend: str | Backend = "auto") -> Reference:
        """Prepare ``image`` as a reference.

        Parameters
        ----------
        image : Image
            The reference (a DRR, or an approved reference portal image).
        options : RegistrationOptions, optional
            Defaults to ``RegistrationOptions()``.
        backend : {"auto", "cpu", "gpu"} or Backend

        Returns
        -------
        Reference
        """
        check_frame_pixels(image)
        options = options or RegistrationOptions()
        chosen = backend if isinstance(backend, Backend) else select_backend(backend)
        with cpu_exclusive():  # a lock only under numba's workqueue layer (not thread-safe)
            field_estimate, factor, margin = NO_FIELD, 1, options.field_margin_mm
            if wants_field(options, image):
                small, factor = box_reduce(image.pixels, FIELD_LEVEL_MAX_PIXELS)
                field_estimate = find_field(image, small, thorough=True)  # once: the detector's own lines too
                if field_estimate.dead_rows or field_estimate.dead_cols:  # a dead line across the edge is no penumbra
                    small = bridge_lines(small, field_estimate.dead_rows, field_estimate.dead_cols)
                # a reference portal image shows the frame's field too: its penumbra must be cut out whole
                penumbra = penumbra_extent_mm(small, field_estimate, min(image.spacing_mm) * factor)
                margin = max(margin, min(penumbra, MAX_FIELD_MARGIN_MM))
                size = field_size_mm(field_estimate, _scaled(image.spacing_mm, factor))
                if size is not None:
                    # a small field's own structure (a BB, a cone's interior) fills it: neither the penumbra
                    # measure nor a fixed band may eat it
                    margin = min(margin, MAX_MARGIN_FRACTION * size)
            elif options.field == "none" and image.info.kind != "drr":  # no field looked for: its dead lines still are
                small, factor = box_reduce(image.pixels, FIELD_LEVEL_MAX_PIXELS)
                field_estimate = dead_lines_only(image, small, thorough=True)
            elif image.info.kind == "drr":
                # a DRR has no detector and no field, but a corrupt or interlaced file's stripes: every other row at 0
                # was prepared without a word and every frame matched ok, up to 0.56 mm and 1.1 deg off (a new user's
                # trial). Its lines' means are screened as a frame's are (strong spikes, or a striped share: a real
                # DRR's CT slices leave a few weak single lines, rtkit's phantom DRRs, which are matched as they are);
                # a striped pattern refuses it, a few lines found are left out of the match as a portal reference's
                candidates = line_screen(*line_means(image.pixels))
                if candidates is not None:  # rare: a line spikes
                    small, factor = box_reduce(image.pixels, FIELD_LEVEL_MAX_PIXELS)
                    field_estimate = dead_lines_only(image, small, candidates=candidates)
                    if field_estimate.striped:
                        raise ReferencePreparationError(
                            f"{image.info.source} (a DRR): {field_estimate.striped.replace('detector ', '')}; render "
                            "or export it again")
            if field_estimate.striped:
                # every frame would meet the stripes: refused once, here, and not per frame
                raise ReferencePreparationError(
                    f"{image.info.source}: {field_estimate.striped}; acquire the reference again, or correct the "
                    "detector's calibration (dark and flood fields) before using it")
            return cls(image, options, chosen, field_estimate, factor, margin)

    def aperture_model(self) -> Reference | None:
        """Return this reference's radiation field alone, prepared as a reference; None without a field.

        The field (the reference's full-resolution pixels past its field threshold) blurred by a penumbra of
        ``APERTURE_SIGMA_MM`` and scaled to the reference's robust range (2nd-98th percentile), with the reference's
        geometry and an edge-only search. Where a frame of a fixed aperture matches this about as well as the
        reference itself, the aperture's own shape placed the match, not the anatomy (``_program._aperture_check``).
        """
        if self._aperture is None:
            with self._plans_lock:
                if self._aperture is None:
                    self._aperture = self._make_aperture_model() or False
        return self._aperture or None

    def interior_model(self) -> InteriorModel | None:
        """Return the reference side of the deep-interior check (``_interior.InteriorModel``); None without one.

        Made on first use: the field's working-grid crop, its fitted penumbra, the interior far from every
        aperture-strong step and the log anatomy there. None where the reference has no field or the field no deep
        interior (a small cone).
        """
        if self._interior is None:
            with self._plans_lock:
                if self._interior is None:
                    # its dead detector lines bridged: a zero or hot line across the field is no anatomy
                    model = (InteriorModel(bridged_frame(self.image, *dead_detector_lines(self.field, self._field_factor)),
                                           self.field) if self.field.detected else None)
                    self._interior = model if model is not None and model.usable else False
        return self._interior or None

    def _make_aperture_model(self) -> Reference | None:
        field = self.field
        if not field.detected:
            return None
        pixels = self.image.pixels
        inside = field_pixels(pixels, field)
        spacing = self.image.spacing_mm
        shape = ndimage.gaussian_filter(inside.astype(np.float64),
                                        (APERTURE_SIGMA_MM / spacing[0], APERTURE_SIGMA_MM / spacing[1]))
        lo, hi = np.percentile(pixels, (2.0, 98.0))
        if not field.field_is_bright:
            shape = 1.0 - shape
        model = replace(self.image, pixels=(lo + (hi - lo) * shape).astype(np.float32))
        # what is asked is how well the aperture alone matches near its own position: an edge-only search of one
        # candidate, no rotation, within a few mm, without the last full-resolution polish
        options = replace(self.options, method="edge", mirror_check="never", candidates=1, estimate_rotation=False,
                          fine_polish=False, max_shift_mm=APERTURE_SEARCH_MM)
        # prepared as any reference: its own field and the edge band its penumbra asks for (the reference's band, from
        # a noisy edge, was narrower, and the soft edge's tail then hid what the aperture explains inside the field)
        made = Reference.prepare(model, options, self.backend)
        made._aperture = False
        return made

    def register(self, frame: Any, *, pixel_spacing_mm: Any = None) -> Any:
        """Register one frame against this reference.

        Parameters
        ----------
        frame : Image, numpy.ndarray, path or pydicom.Dataset
            Arrays need ``pixel_spacing_mm`` (at the isocentre plane); their beam axis
            is taken at the image centre.
        pixel_spacing_mm : float or (float, float), optional

        Returns
        -------
        RegistrationResult
        """
        image = frame if type(frame) is Image else as_image(frame, name="frame", pixel_spacing_mm=pixel_spacing_mm)
        # the pixels are checked (NaN, constant) by the frame program, the geometry's size when its plan is made
        if self.backend.name == "cpu":
            return register_frame(self, image)
        try:
            return register_frame(self, image)
        except Exception as exc:  # a device failure (out of memory, driver error) must not lose the frame
            if isinstance(exc, PortalignError):
                raise
            reason = f"{self.backend.name} backend failed ({type(exc).__name__}: {exc}); this frame ran on the CPU"
            result = register_frame(self._cpu_twin(), image)
            return replace(result, warnings=[*result.warnings, reason])

    def _cpu_twin(self) -> Reference:
        """Return this reference prepared on the CPU, made on first need (the fallback for device failures)."""
        with self._plans_lock:
            if self._cpu_reference is None:
                self._cpu_reference = Reference(self.image, self.options, cpu_backend(), self.field,
                                                self._field_factor, self.field_margin_mm)
            return self._cpu_reference

    def smoothed_twin(self, sigma_mm: float) -> Reference:
        """Return this reference with its pixels smoothed by a Gaussian of ``sigma_mm``, made on first need.

        A noisy frame or reference portal image, refused as taken, is registered again with both images smoothed
        alike (``_program.SMOOTH_PAIR``); the twin is prepared on this reference's backend, options and lanes, with its field
        (found on the pixels as taken), field level and edge band. Its dead detector lines keep their values
        (:func:`~portalign.registration._frame.denoised_frame`). Its own twins are never made.

        Parameters
        ----------
        sigma_mm : float
            The Gaussian's standard deviation, mm at the isocentre plane; the first call's is kept.
        """
        with self._plans_lock:
            if self._smoothed is None:
                image = denoised_frame(self.image, self.field, self._field_factor, sigma_mm)
                twin = Reference(image, self.options, self.backend, self.field, self._field_factor,
                                 self.field_margin_mm)
                twin._smoothed_of = self
                twin._lane_limit = self._lane_limit
                self._smoothed = twin
            return self._smoothed

    # --- geometry plans -------------------------------------------------------------------------

    def plan_for(self, shape: tuple[int, int], spacing: tuple[float, float], axis: tuple[float, float],
                 field_mm: float | None = None, band_mm: float | None = None) -> FramePlan:
        """Return (building on first use) the plan for frames of this geometry: its first lane.

        ``field_mm``: the frames' own radiation field size (largest inscribed disc, mm) when the reference has
        no field (a DRR) and the frames' field is small: the plan's pyramid and edge band then follow it.
        ``band_mm``: the frames' own penumbra extent (mm from the field edge) when the reference has no field and
        it reaches deeper than ``field_margin_mm``: the plan's edge band is widened to it.
        """
        return self._pool(shape, spacing, axis, field_mm, band_mm=band_mm).lanes[0]

    @contextmanager
    def lane(self, shape: tuple[int, int], spacing: tuple[float, float], axis: tuple[float, float],
             field_mm: float | None = None, band_mm: float | None = None) -> Iterator[FramePlan]:
        """Hold a lane of this geometry's plan for one frame (waiting while all allowed lanes are busy)."""
        pool = self._pool(shape, spacing, axis, field_mm, band_mm=band_mm)
        self._uses += 1
        pool.last_used = self._uses
        lane = pool.acquire(self._lane_limit, self.backend)
        try:
            yield lane
        finally:
            pool.release(lane)

    def frame_pool(self, frame: Image, field_mm: float | None = None, band_mm: float | None = None) -> LanePool:
        """Return the lanes of ``frame``'s geometry (building its plan on first use); one dict lookup when seen.

        Take a lane with ``pool.acquire(reference.lane_limit, reference.backend)`` and give it back with
        ``pool.release(lane)``: the per-frame program does so without a context manager.

        Raises
        ------
        GeometryError
            When a new geometry would make the plan allocate far beyond the two images' own size.
        ReferencePreparationError
            When the reference cannot be prepared for the new geometry (its field too small for it); where the
            frame's header shows another view, patient, or the two swapped, the error says that too
            (:func:`~portalign.registration._views.with_view_reason`).
        """
        self._uses += 1  # not atomic across threads: a stamp for "recently used", nothing counts on it exactly
        plain = field_mm is None  # (the geometry's plan, or its plan with a widened band: one lookup when seen)
        if plain:
            key = ((frame.pixels.shape, frame.spacing_mm, frame.beam_axis_px) if band_mm is None
                   else (frame.pixels.shape, frame.spacing_mm, frame.beam_axis_px, band_mm))
            pools = self._frame_pools
            if key in pools:
                pool = pools[key]
                pool.last_used = self._uses
                return pool
        try:
            pool = self._pool(frame.pixels.shape, frame.spacing_mm, frame.beam_axis_px, field_mm, frame, band_mm)
        except ReferencePreparationError as exc:  # the views' difference said too, where there is one
            raise with_view_reason(exc, self.image.info, frame.info, self.options) from exc
        pool.last_used = self._uses
        if plain:
            with self._plans_lock:
                if len(self._frame_pools) >= MAX_FRAME_POOL_KEYS:
                    # headers whose values jitter in the last digits: exact keys beyond the rounded geometries
                    self._frame_pools.clear()
                self._frame_pools[key] = pool  # (the exact key looked up above)
        return pool

    @property
    def lane_limit(self) -> int:
        """Most lanes of one geometry (see :meth:`allow_lanes`)."""
        return self._lane_limit

    def allow_lanes(self, count: int) -> None:
        """Let up to ``count`` frames of one geometry be registered at once, each on its own buffers and stream.

        Lanes are made when frames overlap, never taken away; the limit only grows.
        """
        if not is_lane_count(count):
            raise OptionValueError(f"allow_lanes: count must be a whole number (an int) of at least 1; got {count!r}")
        with self._plans_lock:
            self._lane_limit = max(self._lane_limit, int(count))

    def lane_count(self) -> int:
        """Return how many lanes exist over all geometries (one per geometry plus those made for overlap)."""
        with self._plans_lock:
            return sum(len(pool.lanes) for pool in self._plans.values())

    def _pool(self, shape: tuple[int, int], spacing: tuple[float, float], axis: tuple[float, float],
              field_mm: float | None = None, frame: Image | None = None, band_mm: float | None = None) -> LanePool:
        # a new exact geometry (frame_pool finds the ones seen) or a lane() call: the rounded key shares plans
        key: tuple = (tuple(shape), (round(spacing[0], 9), round(spacing[1], 9)), (round(axis[0], 6), round(axis[1], 6)))
        if field_mm is not None:
            # half-octave classes of field size share a plan, sized for the class's smallest field
            size_class = math.floor(2.0 * math.log2(max(field_mm, 1e-3))) / 2.0
            field_mm = 2.0**size_class
            key = (*key, size_class)
        if band_mm is not None:
            # the measured extents are whole rings of the field level's pixels: a few values per geometry
            key = (*key, "band", band_mm)
        with self._plans_lock:
            pool = self._plans.get(key)
            if pool is None:
                if frame is not None:
                    # a frame whose spacing would make the plan allocate far beyond the two images' size is refused
                    check_registration_size(self.image, frame, max_shift_mm=self.options.max_shift_mm)
                base = self._plans.get(key[:3]) if band_mm is not None and field_mm is None else None
                if base is not None and not self.field.detected:
                    plan = self._band_plan(base.lanes[0], key, band_mm)  # type: ignore[arg-type]
                else:
                    with cpu_exclusive():
                        plan = self._build_plan(key, tuple(shape), tuple(spacing), tuple(axis),  # type: ignore[arg-type]
                                                field_mm, band_mm)
                # reference arrays were uploaded on the default stream; lanes' streams do not wait for it
                self.backend.synchronize()
                pool = self._plans[key] = LanePool(plan)
                pool.last_used = self._uses  # the newest: not the one dropped
                self._evict_plans()
        return pool

    def _evict_plans(self) -> None:
        """Drop the least recently used geometries beyond :data:`MAX_PLANS` whose lanes are all free.

        Frames with ever-new geometries (beam axes, sizes) would otherwise keep one plan each for
        ever: a service fed varied uploads would grow without bound. "Used" is each pool's stamp of the
        last frame that took it (frames served from the per-frame lookup never pass through ``_plans``).
        """
        for key in sorted(self._plans, key=lambda k: self._plans[k].last_used):
            if len(self._plans) <= MAX_PLANS:
                break
            if self._plans[key].idle():
                del self._plans[key]
                self._frame_pools.clear()  # rebuilt from the kept plans as frames come

    def warm_up(self, frame: Image) -> None:
        """Build the plan for ``frame``'s geometry and compile every kernel by registering it once."""
        register_frame(self, frame)

    def _band_plan(self, base: FramePlan, key: tuple, band_mm: float) -> FramePlan:
        """Return the plan of ``base``'s geometry with the frames' edge band widened to ``band_mm`` (a DRR reference).

        A reference without a field has no edge band of its own, so the band changes nothing on the reference's side
        of the plan (its levels, resampled images, features, search spectra: :meth:`_build_plan` chooses the same ones
        whatever the band when there is no field): the new plan shares them with ``base`` (``FramePlan.new_lane``) and
        only its frame levels' erosion differs. A first frame whose own penumbra asks for the band (a one-shot
        ``register``) prepared two plans in full before, 2 x 38 ms on ``bench.latency``'s pair.
        """
        band = self._widened_band(band_mm)
        plan = base.new_lane(self.backend)
        for level in plan.levels.values():
            level.erosion_px = _erosion_px(band, level.spacing)
        return replace(plan, key=key, band_mm=band_mm, threads=ThreadTuner(), scale_confirmed=False)

    def _widened_band(self, band_mm: float) -> float:
        """Return the frames' edge band (mm) for their own penumbra's ``band_mm``.

        At least ``field_margin_mm``, at most ``MAX_FIELD_MARGIN_MM``.
        """
        return max(self.field_margin_mm, min(band_mm, MAX_FIELD_MARGIN_MM))

    def _build_plan(self, key: tuple, shape: tuple[int, int], spacing: tuple[float, float],
                    axis: tuple[float, float], field_mm: float | None = None,
                    band_mm: float | None = None) -> FramePlan:
        opts = self.options
        base = min(spacing)
        depth = 0
        while min(shape[0] >> (depth + 1), shape[1] >> (depth + 1)) >= 16:
            depth += 1
        extent = self._search_extent_mm(shape, spacing)
        band = self.field_margin_mm
        if band_mm is not None:  # the frames' own penumbra reaches deeper (the reference has no field to measure)
            band = self._widened_band(band_mm)
        if field_mm is not None:  # the frames' own small field (the reference has none)
            extent = min(extent, field_mm)
            if band_mm is None:  # (a measured penumbra's band comes capped where the field is compact: _program)
                band = min(band, MAX_MARGIN_FRACTION * field_mm)
        # small fields need finer pixels: keep at least FINEST_MIN_PIXELS across the anatomy region, which is
        # the field less its edge band on both sides
        has_field = self.field.detected or field_mm is not None
        interior = max(extent - 2.0 * band, 0.5 * extent) if has_field else extent
        finest_target = min(opts.finest_spacing_mm, interior / FINEST_MIN_PIXELS)
        finest = 0
        while finest < depth and base * 2**finest < finest_target * 0.999:
            finest += 1
        if has_field:
            # the level must keep enough usable pixels inside a small field: the square band reaches sqrt(2)
            # further along the diagonals of a round field, so count a disc of the field less 2 sqrt(2) bands;
            # coarser pixels average noise away, so the finer level is taken only when the count asks for it
            def usable_estimate(level: int) -> float:
                pixel = base * 2**level
                band_mm = (math.ceil(band / pixel) + 1) * pixel  # the erosion a level applies, whole pixels
                return math.pi / 4.0 * max(extent - 2.0 * math.sqrt(2.0) * band_mm, 0.0) ** 2 / pixel**2

            while finest > 0 and usable_estimate(finest) < MIN_USABLE_PIXELS:
                finest -= 1
        coarse_target = min(opts.coarse_spacing_mm, extent / COARSE_MIN_PIXELS)
        coarse = finest
        while coarse < depth and (
            base * 2 ** (coarse + 1) <= coarse_target * 1.001
            or max(shape[0] >> coarse, shape[1] >> coarse) > COARSE_MAX_PIXELS
        ):
            coarse += 1
        refine = list(range(coarse - 1, finest - 1, -1)) or [finest]
        field_level = 0
        while field_level < depth and max(shape[0] >> field_level, shape[1] >> field_level) > FIELD_LEVEL_MAX_PIXELS:
            field_level += 1
        # finer levels used only for clean (noise-free or nearly) frames, where they still add accuracy
        polish = list(range(refine[-1] - 1, max(refine[-1] - POLISH_LEVELS, 0) - 1, -1))
        # a portal reference: two portal images' MI optimum is followed down to finer levels (see _program)
        fine = ([k for k in range(refine[-1] - 1, -1, -1)
                 if (shape[0] >> k) * (shape[1] >> k) <= FINE_POLISH_MAX_PIXELS]
                if self.image.info.kind == "portal" else [])
        intensity = None
        if self.image.info.kind in ("portal", ""):  # a portal image, or an unknown kind (an array): see _program
            intensity = next((k for k in range(refine[-1] + 1) if (shape[0] >> k) * (shape[1] >> k) <= INTENSITY_MAX_PIXELS),
                             None)
        matched = set(refine) | set(polish) | set(fine) | {coarse}  # the levels the frame is matched on
        # the intensity level is filled on first use (ensure_level_filled): most frames never reach it
        used = sorted(matched | {field_level})  # the field level holds the frame's pyramid image only
        xp = self.backend.xp
        levels: dict[int, Level] = {}
        for k in range(max(used) + 1):
            lvl_shape = (shape[0] >> k, shape[1] >> k)
            lvl_spacing = (spacing[0] * 2**k, spacing[1] * 2**k)
            # a level-k pixel i covers level-0 pixels 2^k i .. 2^k (i+1) - 1: centre (2^k i + (2^k - 1)/2)
            lvl_axis = ((axis[0] - (2**k - 1) / 2) / 2**k, (axis[1] - (2**k - 1) / 2) / 2**k)
            level = Level(k, lvl_shape, lvl_spacing, lvl_axis, (0.0, 0.0), (0, 0), _erosion_px(band, lvl_spacing))
            level.image = xp.empty(lvl_shape, dtype=xp.float32)
            if k in matched:
                self._fill_level(level)
            levels[k] = level
        coarse_search = self._build_coarse(levels[coarse])
        bins = opts.bins
        n_pose = MAX_STENCIL  # the most poses one refine iteration evaluates: the histogram scratch holds them
        return FramePlan(
            key=key,
            frame_shape=shape,
            levels=levels,
            pyramid_depth=max(used),
            field_level=field_level,
            refine_levels=refine,
            polish_levels=polish,
            fine_polish_levels=fine,
            intensity_level=intensity,
            coarse=coarse_search,
            extent_mm=extent,
            field_mm=field_mm,
            band_mm=band_mm,
            hist=xp.zeros((n_pose, bins, bins), dtype=xp.int64),
            mi_out=xp.zeros(n_pose, dtype=xp.float64),
            edge_out=xp.zeros((n_pose, 3), dtype=xp.float64),
            refine_out=np.zeros(5),
            program_scratch=program_scratch(),
            view_boxes=(extent_box(self.image), grid_extent(shape, spacing, axis)),
            stream=self.backend.new_stream(),
            staging=self.backend.staging_buffer(shape),
            threads=ThreadTuner(),
        )

    def _search_extent_mm(self, shape: tuple[int, int], spacing: tuple[float, float]) -> float:
        """Smaller side (mm) of the region that carries anatomy: the reference field, else the images."""
        frame_extent = min(shape[0] * spacing[0], shape[1] * spacing[1])
        ref_extent = min(self.image.extent_mm)
        extent = min(frame_extent, ref_extent)
        size = self.field_size_mm
        return extent if size is None else min(extent, size)

    def ensure_level_filled(self, level: Level) -> None:
        """Fill ``level`` (the reference resampled onto it, the frame's buffers) if the plan left it empty.

        A plan fills the levels every frame is matched on; the intensity polish's level (``FramePlan.intensity_level``)
        is filled here, by the first frame that reaches it.
        """
        if level.ref_bins is not None:
            return
        with self._plans_lock:
            if level.ref_bins is None:
                self._fill_level(level)

    def _fill_level(self, level: Level) -> None:
        """Resample the reference onto ``level``'s spacing; bins, features and validity there."""
        backend, opts = self.backend, self.options
        ref_img, valid, ref_axis = self._resampled_at(level.spacing)
        valid &= self._field_valid(ref_img.shape, level)
        valid &= _erode(np.ones_like(valid), 1)
        if valid.sum() < MIN_REFERENCE_PIXELS:
            raise ReferencePreparationError(self._too_small_message(level, int(valid.sum())))
        level.ref_axis = ref_axis
        level.ref_shape = ref_img.shape
        level.geometry = np.array([*level.frame_axis, *level.spacing, *ref_axis], dtype=np.float64)
        lo, hi = _robust_range(ref_img[valid])
        # pixels next to an outlier left out, as on the frame's levels
        limit = level.ref_limit = gradient_limit(float(lo), float(hi))
        if hi <= lo:  # flat: one unit above, or one part in 10^6 where values are beyond 2^53 (lo + 1 == lo)
            hi = lo + max(1.0, abs(float(lo)) * 1e-6)
        bins = np.empty(ref_img.shape, dtype=np.int16)
        from portalign.kernels import cpu

        valid_u8 = valid.astype(np.uint8)
        cpu.quantize(ref_img, valid_u8, float(lo), float(hi), opts.bins, bins)
        re, im = _features(ref_img, valid, limit)
        # outside the valid region a frame pixel is not compared at all (both masks, as for MI's bins)
        re[~valid] = INVALID_FEATURE
        level.ref_image = ref_img
        level.ref_valid = valid_u8
        level.ref_bins = backend.asarray(bins)
        level.ref_re = backend.asarray(re)
        level.ref_im = backend.asarray(im)
        xp = backend.xp
        level.stats = np.zeros(4)
        level.mask = xp.empty(level.shape, dtype=xp.uint8)
        level.scratch = xp.empty(level.shape, dtype=xp.uint8)
        level.eroded = xp.empty(level.shape, dtype=xp.uint8)
        level.bins = xp.empty(level.shape, dtype=xp.int16)
        level.feat_re = xp.empty(level.shape, dtype=xp.float32)
        level.feat_im = xp.empty(level.shape, dtype=xp.float32)
        level.row_sums = xp.empty((level.shape[0], 2), dtype=xp.float64)
        level.pixel_rows = xp.empty(level.shape[0] * level.shape[1], dtype=xp.int32)
        level.pixel_cols = xp.empty(level.shape[0] * level.shape[1], dtype=xp.int32)

    @functools.cached_property
    def field_size_mm(self) -> float | None:
        """Diameter (mm) of the largest disc inside the reference's detected field; None without one (cached)."""
        return field_size_mm(self.field, _scaled(self.image.spacing_mm, self._field_factor))

    @functools.cached_property
    def field_centre_mm(self) -> tuple[float, float] | None:
        """Centroid ``(x, y)`` mm of the reference's detected field from its beam axis; None without one (cached)."""
        return field_centre_mm(self.field, self._field_factor, self.image)

    @functools.cached_property
    def field_extent_mm(self) -> tuple[float, float] | None:
        """Width and height ``(x, y)`` mm at the isocentre of the reference's detected field's box; None without one.

        The coverage of its field-detection pixels (``field.box_px``'s extreme pixels included), as
        :func:`._program._box_extent_mm` measures a frame's.
        """
        if not self.field.detected or self.field.box_px is None:
            return None
        c0, c1, r0, r1 = self.field.box_px
        sy, sx = _scaled(self.image.spacing_mm, self._field_factor)
        return (c1 - c0 + 1) * sx, (r1 - r0 + 1) * sy

    @property
    def field_core_extent_mm(self) -> tuple[float, float] | None:
        """Width and height ``(x, y)`` mm at the isocentre of the reference's detected field's core; None without one.

        ``field.core_extent_px``: without thin appendages (a detector line joined to it); its box's
        (:attr:`field_extent_mm`) without a mask.
        """
        core = core_extent_px(self.field)
        if core is None:
            return self.field_extent_mm
        sy, sx = _scaled(self.image.spacing_mm, self._field_factor)
        return core[0] * sx, core[1] * sy

    @functools.cached_property
    def field_core_sides_mm(self) -> list[float | None] | None:
        """The sides ``[x_min, x_max, y_min, y_max]`` (mm from the beam axis) of the reference's field's core.

        None without one; a side at the image's border ``None`` (``field.core_sides_mm``).
        """
        return core_sides_mm(self.field, self._field_factor, self.image)

    @functools.cached_property
    def field_core_sides_fine_mm(self) -> list[float | None] | None:
        """:attr:`field_core_sides_mm` placed to a fraction of a detector pixel (``field.core_sides_fine_mm``)."""
        return core_sides_fine_mm(self.field, self._field_factor, self.image)

    @property
    def field_pixel_mm(self) -> float:
        """The larger side (mm) of the reference's field-detection pixels."""
        sy, sx = _scaled(self.image.spacing_mm, self._field_factor)
        return max(sy, sx)

    def _too_small_message(self, level: Level, usable: int) -> str:
        """Say why a level of the reference has almost nothing to match: which image, and the real cause."""
        name = self.image.info.source
        size = self.field_size_mm
        low, high = min(level.spacing), max(level.spacing)
        if high > ANISOTROPIC_RATIO * low:
            # the frame's pixels, not the reference's field: a damaged spacing tag (a new user's mutated file,
            # 0.336 x 3.36 mm) was reported as a 21.5 mm field "smaller than the 10.5 mm needed"
            return (f"{name} (the reference): only {usable} usable pixels remain at the frame's pixels, {level.spacing[0]:.2f} x "
                    f"{level.spacing[1]:.2f} mm (rows x columns) at this level: {high / low:.1f} times longer one way "
                    "than the other, which no portal imager's are; check the frame's ImagePlanePixelSpacing "
                    "(0018,1164) (or pass pixel_spacing_mm)")
        if size is not None:
            band = level.erosion_px * low
            # a round field under the square erosion keeps a disc 2 sqrt(2) bands narrower (its diagonals),
            # which must hold MIN_REFERENCE_PIXELS pixels
            need = 2.0 * math.sqrt(2.0) * band + math.sqrt(4.0 * MIN_REFERENCE_PIXELS / math.pi) * low
            # (the fix said too: a new user's trial read "16 pixels of 1.05 mm" on a 0.52 mm image and found no flag)
            return (f"{name}: its radiation field is {size:.1f} mm across, smaller than the {need:.1f} mm needed "
                    f"(a {band:.1f} mm field-edge band on each side, the field edge's penumbra as measured, and "
                    f"{MIN_REFERENCE_PIXELS} pixels of the {low:.2f} mm working level inside); only {usable} usable "
                    f"pixels remain: too small a field to register; use a field at least {math.ceil(need)} mm across "
                    "(narrowing the band, field_margin_mm, is not the fix: a narrower band leaves the penumbra in "
                    "what is matched)")
        return (f"{name}: the reference is {min(self.image.extent_mm):.1f} mm across; at {level.spacing[0]:.2f} mm "
                f"pixels only {usable} usable pixels remain: too small an image to register")

    def _resampled_at(self, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Return the reference resampled to ``spacing`` (computed once per spacing; the mask is a fresh copy)."""
        key = (round(spacing[0], 9), round(spacing[1], 9))
        found = self._resampled.get(key)
        if found is None:
            found = self._resampled[key] = _resample_reference(self.image, spacing, self.field, self._field_factor,
                                                               self._boxes)
        return found[0], found[1].copy(), found[2]

    def _field_valid(self, shape: tuple[int, int], level: Level) -> np.ndarray:
        """Return the reference pixels on ``level``'s grid inside the field and off its edge band."""
        if not self.field.detected or self.field.mask is None:
            return np.ones(shape, dtype=bool)
        # resampled pixel c' is original pixel c' * (s'/s); the field level holds f x f boxes of originals
        f = self._field_factor
        step = level.spacing[0] / self.image.spacing_mm[0]
        inside = sample_mask(self.field.mask, step / f, -(f - 1) / (2 * f), shape)
        return _erode(inside, level.erosion_px)

    def _build_coarse(self, level: Level) -> CoarseSearch:
        """Compute the reference edge spectra on the coarse frame grid, one per candidate rotation."""
        opts = self.options
        step = math.radians(opts.rotation_step_deg)
        if opts.estimate_rotation and opts.max_rotation_deg > 0:
            reach = math.radians(opts.max_rotation_deg) + step
            n = int(math.ceil(reach / step))
            thetas = np.arange(-n, n + 1) * step
        else:
            thetas = np.zeros(1)
        margin = int(math.ceil((opts.max_shift_mm + SEARCH_MARGIN_MM) / min(level.spacing))) + 1
        rows, cols = level.shape
        # 5-smooth lengths (real=True): pocketfft's radix 7 and 11 passes cost more than the extra zeros (a
        # 1024x768 frame's 122x154 grid takes 266 us of inverse FFTs at 154 columns, 223 us at 160)
        padded = (sp_fft.next_fast_len(rows + 2 * margin, real=True), sp_fft.next_fast_len(cols + 2 * margin, real=True))
        ref_img, valid, ref_axis = self._resampled_at(level.spacing)
        valid &= self._field_valid(ref_img.shape, level)
        # the extended grid: pixel (u, v) is coarse frame pixel (u - margin, v - margin)
        shift = np.array([[1.0, 0.0, -margin], [0.0, 1.0, -margin], [0.0, 0.0, 1.0]])
        ext_shape = (rows + 2 * margin, cols + 2 * margin)
        spectra = np.empty((len(thetas), *padded), dtype=np.complex64)
        energy = np.empty(len(thetas))
        from portalign.kernels import cpu

        warped = np.empty(ext_shape, dtype=np.float32)
        warped_valid = np.empty(ext_shape, dtype=np.float32)
        valid_f = valid.astype(np.float32)
        limit = level.ref_limit  # its own features' (_fill_level runs first on every matched level)
        for i, theta in enumerate(thetas):
            affine = pose_affines(np.array([[0.0, 0.0, theta]]), level.frame_axis, level.spacing, ref_axis, level.spacing)[0]
            affine = affine @ shift
            cpu.warp_bilinear(ref_img, affine, 0.0, warped)
            cpu.warp_bilinear(valid_f, affine, 0.0, warped_valid)
            ok = _erode(warped_valid > 0.999, 1)
            re, im = _features(warped, ok, limit)
            energy[i] = float((re.astype(np.float64) ** 2 + im.astype(np.float64) ** 2).sum())
            spectra[i] = np.conj(cpu.feature_spectrum(re, im, padded, 0))
        ty = np.arange(-margin, margin + 1)
        backend = self.backend
        return CoarseSearch(
            level=level.index,
            thetas=thetas,
            margin_px=margin,
            padded_shape=padded,
            ref_spectra_conj=backend.asarray(spectra),
            ref_spectra_host=spectra,
            ref_energy=energy,
            window=backend.xp.empty((len(thetas), len(ty), len(ty)), dtype=backend.xp.float32),
            normalised=np.empty((len(thetas), len(ty), len(ty))) if backend.compiled_program else None,
            window_rows=backend.asarray(ty % padded[0]),
            window_cols=backend.asarray(ty % padded[1]),
            peak_poses=np.zeros((MAX_CANDIDATES, 3)),
            peak_scores=np.zeros(MAX_CANDIDATES),
            zero_index=int(np.argmin(np.abs(thetas))),
            # optima closer than DISTINCT_MM are one peak: the suppressed square's half-width in pixels
            suppress_px=max(2, int(math.ceil(DISTINCT_MM / min(level.spacing)))),
        )


def prepare_reference(image: Image, options: RegistrationOptions | None = None, *, backend: str | Backend = "auto") -> Reference:
    """Prepare a reference image once for registering many frames against it.

    Parameters
    ----------
    image : Image
        The reference: a DRR or an approved reference portal image.
    options : RegistrationOptions, optional
    backend : {"auto", "cpu", "gpu"} or Backend

    Returns
    -------
    Reference
    """
    return Reference.prepare(image, options, backend)


def prepare_reference_for(image: Image, frame: Any, options: RegistrationOptions | None = None, *,
                          backend: str | Backend = "auto", pixel_spacing_mm: Any = None) -> Reference:
    """Prepare ``image`` as :func:`prepare_reference` does, for registering ``frame`` (a one-shot registration).

    Where the reference cannot be prepared (:class:`~portalign.errors.ReferencePreparationError`) and the frame's
    header says it is another view, another patient, or the reference and frame swapped (the view comparison a frame
    gets, :func:`~portalign.registration._views.compare_views`), the error says that too: a frame at another gantry
    angle against a reference whose small field cannot be prepared was told only of the field (a new user's trial).
    ``frame`` is what :func:`~portalign.image.as_image` takes; it is read only on that error path, and a frame that
    cannot be read leaves the reference's error as it is.

    Raises
    ------
    ReferencePreparationError
        As :func:`prepare_reference`, the views' (or patients') difference after it where the headers show one.
    """
    try:
        return Reference.prepare(image, options, backend)
    except ReferencePreparationError as exc:
        try:
            frame_image = frame if isinstance(frame, Image) else as_image(frame, name="frame",
                                                                          pixel_spacing_mm=pixel_spacing_mm)
        except PortalignError:
            raise exc from None
        added = with_view_reason(exc, image.info, frame_image.info, options or RegistrationOptions())
        if added is exc:
            raise
        raise added from exc


def warm_up_kernels(backend: str | Backend = "auto", options: RegistrationOptions | None = None) -> None:
    """Compile (or load from numba's cache) the kernels of a registration before the first frame arrives.

    One small synthetic registration (96 x 96 pixels of smoothed noise, 1 mm, the second moved 2 pixels): on a
    cold numba cache it compiles the kernels every registration uses, minutes on a small machine (220 s on
    2 cores, 2026-12-05); on a warm cache it loads them in about a second. A service calls it before it
    listens, so that a sender's first frame is not answered minutes late (a DICOM sender gives up after its
    DIMSE timeout, 30 s by default in pynetdicom). A frame of another kind (a small field, two portal images)
    may still compile a few kernels of its own the first time.

    Parameters
    ----------
    backend : {"auto", "cpu", "gpu"} or Backend
    options : RegistrationOptions, optional
        The options the service registers with.
    """
    rng = np.random.default_rng(0)
    pixels = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 3).astype(np.float32)
    reference = prepare_reference(Image.from_array(pixels, pixel_spacing_mm=1.0), options, backend=backend)
    moved = np.roll(pixels, 2, axis=1)
    reference.register(Image.from_array(moved, pixel_spacing_mm=1.0))
    # a noisy frame (smoothed and registered again, with its checks) and one of noise alone (refused): each compiled
    # its own kernels on its first arrival after the warm-up, seconds late (a new user's service: 11-31 s)
    noisy = moved + rng.normal(scale=0.3 * float(pixels.std()), size=moved.shape).astype(np.float32)
    reference.register(Image.from_array(noisy, pixel_spacing_mm=1.0))
    reference.register(Image.from_array(rng.normal(size=moved.shape).astype(np.float32), pixel_spacing_mm=1.0))


# --- helpers (preparation time only; not on the per-frame path) ---------------------------------


def _erosion_px(band_mm: float, spacing: tuple[float, float]) -> int:
    """Return a level's field-edge band in whole pixels of its finer ``spacing`` (row, column; mm).

    One pixel more than ``band_mm`` covers (central differences reach a pixel past the usable ones).
    """
    return int(math.ceil(band_mm / min(spacing))) + 1


def _scaled(spacing: tuple[float, float], factor: int) -> tuple[float, float]:
    """Pixel spacing of a level ``factor`` times coarser."""
    return spacing[0] * factor, spacing[1] * factor


def _resample_reference(image: Image, spacing: tuple[float, float], dead: FieldEstimate | None = None,
                        field_factor: int = 1, boxes: dict[int, tuple[np.ndarray, np.ndarray | None]] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resample the reference to ``spacing`` (anti-aliased), keeping the beam axis in mm.

    New pixel ``(c', r')`` samples old pixel ``(c' * sx'/sx, r' * sy'/sy)``, so the
    beam axis moves to ``axis * s / s'``. Whole factors of two are taken first by 2x2 box
    means (one cheap pass each, the anti-aliasing of an image pyramid); only the residual
    factor ``f`` in [1, 2) gets a Gaussian (sigma ``0.5 sqrt(f^2 - 1)`` pixels), so the
    filter stays a few taps wide whatever the level. Returns the image, a validity mask
    and the axis.

    ``dead``: a field estimate whose dead detector lines (``dead_rows`` / ``dead_cols``, lines of the
    field-detection level, ``field_factor`` detector pixels each) leave the reference. Every pass is then a
    normalised convolution (the live pixels' weights carried beside their values, the result divided by them),
    so a dead line's value reaches no new pixel; a new pixel whose live weight is under
    :data:`REFERENCE_LIVE_WEIGHT` (on or next to the line) is not valid, and its value is its live neighbours'.

    ``boxes``: the box-mean pyramid of this image, ``dead`` and ``field_factor`` made so far (box size -> image and
    live weights), extended here; the levels of one reference share it (the same numbers as made afresh: the 2x2
    means of the same arrays). The arrays in it are not modified.
    """
    sy, sx = image.spacing_mm
    fy, fx = spacing[0] / sy, spacing[1] / sx
    if boxes is None:
        boxes = {}
    if 1 not in boxes:
        src = image.pixels.astype(np.float64)
        weight = _live_weight(image.shape, dead, field_factor)
        boxes[1] = (src if weight is None else src * weight, weight)
    src, weight = boxes[1]
    box = 1
    while fy >= 2 * box * (1 - 1e-9) and fx >= 2 * box * (1 - 1e-9) and min(src.shape) >= 4:
        if 2 * box not in boxes:
            boxes[2 * box] = (_box_half(src), None if weight is None else _box_half(weight))
        src, weight = boxes[2 * box]
        box *= 2
    ry, rx = fy / box, fx / box
    sigma = (0.5 * math.sqrt(max(ry * ry - 1.0, 0.0)), 0.5 * math.sqrt(max(rx * rx - 1.0, 0.0)))
    if max(sigma) > 0:
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
        weight = None if weight is None else ndimage.gaussian_filter(weight, sigma, mode="nearest")
    rows = max(int(math.floor((image.shape[0] - 1) / fy)) + 1, 2)
    cols = max(int(math.floor((image.shape[1] - 1) / fx)) + 1, 2)
    # original pixel p is box-reduced pixel (p - (box - 1) / 2) / box
    offset = (box - 1) / 2
    # the sample grid is rectilinear: bilinear interpolation is one linear pass along each axis (map_coordinates'
    # order=1, mode="nearest" values, without its per-point generality: 2.5 -> ~0.5 ms a level of a 1024 x 768 image)
    row_at, col_at = (np.arange(rows) * fy - offset) / box, (np.arange(cols) * fx - offset) / box
    rows_between, cols_between = _between(row_at, src.shape[0]), _between(col_at, src.shape[1])
    out = _interpolated(src, rows_between, cols_between)
    valid = np.ones(out.shape, dtype=bool)
    if weight is not None:
        live = _interpolated(weight, rows_between, cols_between)
        valid = live >= REFERENCE_LIVE_WEIGHT
        out = _fill_dead(out, live)
    axis = (image.beam_axis_px[0] / fx, image.beam_axis_px[1] / fy)
    return np.ascontiguousarray(out.astype(np.float32)), valid, axis


def _box_half(values: np.ndarray) -> np.ndarray:
    """2x2 box means of float64 ``values`` (an odd last row or column dropped): ``kernels.cpu.pyramid.box_half``."""
    from portalign.kernels.cpu.pyramid import box_half

    out = np.empty((values.shape[0] // 2, values.shape[1] // 2))
    box_half(np.ascontiguousarray(values, dtype=np.float64), out)
    return out


def _live_weight(shape: tuple[int, int], dead: FieldEstimate | None, field_factor: int) -> np.ndarray | None:
    """Return 1 on live detector pixels and 0 on ``dead``'s dead lines (None where there are none)."""
    if dead is None or not (dead.dead_rows or dead.dead_cols):
        return None
    rows, cols = dead_detector_lines(dead, field_factor)
    live_rows, live_cols = np.ones(shape[0]), np.ones(shape[1])
    live_rows[[r for r in rows if r < shape[0]]] = 0.0
    live_cols[[c for c in cols if c < shape[1]]] = 0.0
    return np.outer(live_rows, live_cols)


def _fill_dead(weighted: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Divide a normalised convolution's values by their live weight; where none reached, the nearest filled value.

    (A dead line wider than the filters' reach leaves new pixels with no live weight at all; they are not valid
    and take a neighbour's value only so that the edge features next to them stay finite.)
    """
    reached = live > 1e-6
    out = np.where(reached, weighted / np.where(reached, live, 1.0), 0.0)
    if not reached.all():
        index = ndimage.distance_transform_edt(~reached, return_distances=False, return_indices=True)
        out = out[tuple(index)]
    return out


def _between(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the lines ``i0, i1`` (int64) each fractional index of ``coords`` lies between and its weight on ``i1``.

    A line of ``n``; beyond the ends, the end (clipped).
    """
    x = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.int64), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, x - i0


def _interpolated(values: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """Bilinear samples of ``values`` at the grid of ``rows`` and ``cols`` (each :func:`_between`'s), float64.

    ``kernels.cpu.pyramid.interpolate_grid``: linear along the rows, then along the columns (map_coordinates' order=1,
    mode="nearest" values, without its per-point generality).
    """
    from portalign.kernels.cpu.pyramid import interpolate_grid

    out = np.empty((rows[0].size, cols[0].size))
    interpolate_grid(np.ascontiguousarray(values, dtype=np.float64), *rows, *cols, out)
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode a boolean mask by a square of half-width ``radius``; outside the image counts as False.

    The frame levels' compiled erosion (``kernels.cpu.mask.erode_box``: a running count of zeros along each axis; the
    same pixels as binary_erosion with the full square structure, which cost 12-127 ms at 1024 x 768 for radii 1-6,
    and as scipy's minimum filter: radius 3 at 192 x 256, 384 x 512 and 768 x 1024 pixels 0.29, 1.8 and 6.2 ms, this
    0.12, 0.46 and 2.6 ms on two cores).
    """
    if radius <= 0:
        return mask.copy()
    from portalign.kernels import cpu

    values = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    out = np.empty_like(values)
    cpu.erode_box(values, int(radius), np.empty_like(values), out)
    return out.view(bool)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """Return the reference's robust range: the quantiles the frame's levels take (``robust_tail``), exact; 0, 0 if empty.

    Outlier pixels are left out first by the range kernels' fence (``kernels.cpu.mask``: values far beyond a
    squeezed bulk, hot or damaged pixels of a reference portal image); an ordinary image keeps all its values.
    """
    if values.size == 0:
        return 0.0, 0.0
    from portalign.kernels import cpu

    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(1, -1)
    kept_lo, kept_hi, _ = cpu.masked_range(flat, np.ones(flat.shape, dtype=np.uint8), 0.0, 1.0)
    # the kept extremes come off histogram bin edges (a rounding from the values); outliers lie 4 bulk widths out
    slack = 1e-6 * (kept_hi - kept_lo)
    if kept_lo - slack > float(flat.min()) or kept_hi + slack < float(flat.max()):
        values = values[(values >= kept_lo - slack) & (values <= kept_hi + slack)]
    tail = 100.0 * robust_tail(int(values.size))
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _features(image: np.ndarray, valid: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Doubled-angle edge features of a reference image (host, float32), zero where not valid.

    ``limit``: pixels with a central difference beyond it (next to an outlier) are left out (:func:`edge_features`).
    """
    from portalign.kernels import cpu

    re = np.empty(image.shape, dtype=np.float32)
    im = np.empty(image.shape, dtype=np.float32)
    edge_features(cpu, image, valid.astype(np.uint8), np.empty((image.shape[0], 2)), re, im, limit)
    return re, im
