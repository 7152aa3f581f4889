"""Frame side of a level: usable pixels (inside the field, off its edge band), bins and edge features.

One kernel call per level (``kernels.prepare_level``; its steps are described in
:mod:`portalign.kernels.cpu.level`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from portalign.kernels.cpu.field import penumbra_extent
from portalign.kernels.cpu.level import DEAD_LINE, LEVEL_SLOTS
from portalign.kernels.cpu.pyramid import smooth_separable

from ..field import FieldEstimate, bridge_lines, live_neighbours
from ..image import Image
from ._plan import PENUMBRA_REACH_MM, FramePlan, Level
from ._search import lane_rotations

__all__ = ["frame_mask", "field_depths", "frame_levels", "denoised_frame", "bridged_frame", "bridge_lines",
           "dead_detector_lines", "LEVEL_SLOTS"]

#: A two-level plan's level stage computes the global search's surfaces beside its other level (two tasks at
#: once, ``kernels.cpu.level.levels_and_surfaces``: 0.4 ms less a 1024x768 frame on two cores) when the frame
#: runs on exactly two threads, where it was measured: on one thread the two tasks would run one after the
#: other anyway, and with more threads the level kernels' own parallelism is kept. False runs them one after
#: the other (the program's own global search): the same numbers.
SURFACES_BESIDE_LEVELS = True
#: The frame thread count the two tasks are used with (None: any).
SURFACES_BESIDE_LEVELS_THREADS: int | None = 2
#: The level stage's compiled calls this process has made (``"together"``: ``levels_and_surfaces``, ``"apart"``:
#: ``frame_levels``). The first call of each loads it from numba's cache, 35-70 ms; the first frame of a two-level
#: plan makes the other call too, once per process, so that the thread tuner's first one-thread frame (the other
#: call) is not a 37-70 ms frame in the middle of a cine loop (``python -m bench.latency``: p99 20-24 ms).
_LOADED: set[str] = set()
#: Stand-in field mask for levels of a frame without a detected field.
_NO_MASK = np.ones((1, 1), dtype=bool)
#: Stand-in penumbra inputs of the level stage where no band is measured (``frame_levels``' ``band``).
_NO_BAND = (np.zeros((1, 1), dtype=np.float32), np.zeros((1, 1), dtype=bool), 1.0)


def _field_mask(field: FieldEstimate) -> tuple[Any, bool]:
    """Return the small-level mask every level samples, and whether there is one (dead detector lines cut out of it)."""
    has_field = field.detected and field.mask is not None
    small = field.mask if has_field else _NO_MASK
    if (field.dead_rows or field.dead_cols) and field.level_shape is not None:
        # dead detector lines leave the match, and the pixels next to them (their central differences reach the
        # line), but not a field-edge band: their neighbours are sound (``kernels.cpu.level.cut_dead_lines``). With
        # the band, a few dead rows through a 26 mm cone left two slivers, matched 5-29 mm off with ok=true.
        small = np.array(small if has_field else np.ones(field.level_shape, dtype=bool), dtype=np.uint8)
        small[list(field.dead_rows), :] = DEAD_LINE
        small[:, list(field.dead_cols)] = DEAD_LINE
        has_field = True
    return small, has_field


def _placement(level_index: int, field_level: int) -> tuple[float, float]:
    """Level pixel ``i`` lies at ``i * scale + offset`` on the field-detection level."""
    # level pixel i is level-0 pixel 2^L i + (2^L - 1)/2, i.e. field-level pixel (that - (2^F - 1)/2) / 2^F
    scale = 2.0 ** (level_index - field_level)
    offset = ((2.0**level_index - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level
    return scale, offset


def field_depths(backend, level: Level, field: FieldEstimate, field_level: int,  # type: ignore[no-untyped-def]
                 spacing_mm: tuple[float, float]):
    """Return each usable pixel's depth inside ``field`` (mm), on the backend, in ``level``'s pixel-list order.

    The distance (mm) from each pixel of the field's mask (on the field-detection level, host) to the nearest pixel
    outside it (``scipy.ndimage.distance_transform_edt``; the image's border is no edge), read bilinearly at the
    usable pixels of ``level`` (``level.pixel_rows[:usable]``, ``pixel_cols``): the depth map, a few thousand
    pixels, goes to the device; nothing comes back. ``spacing_mm``: the field level's ``(row, column)`` pixel (mm).
    None without a mask.
    """
    if field.mask is None:
        return None
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.asarray(field.mask, dtype=bool), sampling=spacing_mm)
    height, width = depth.shape
    if height < 2 or width < 2:
        return None
    xp = backend.xp
    grid = backend.asarray(np.ascontiguousarray(depth, dtype=np.float32))
    count = int(level.usable)
    scale, offset = _placement(level.index, field_level)
    y = xp.clip(level.pixel_rows[:count] * scale + offset, 0.0, height - 1.0)
    x = xp.clip(level.pixel_cols[:count] * scale + offset, 0.0, width - 1.0)
    r0 = xp.minimum(xp.floor(y).astype(np.int64), height - 2)
    c0 = xp.minimum(xp.floor(x).astype(np.int64), width - 2)
    wy, wx = y - r0, x - c0
    return ((grid[r0, c0] * (1.0 - wx) + grid[r0, c0 + 1] * wx) * (1.0 - wy)
            + (grid[r0 + 1, c0] * (1.0 - wx) + grid[r0 + 1, c0 + 1] * wx) * wy)


def frame_mask(backend, level: Level, field: FieldEstimate, field_level: int, bins: int) -> None:  # type: ignore[no-untyped-def]
    """Usable pixels of a level: inside the field, away from its edge, off the border; then bins and features."""
    small, has_field = _field_mask(field)
    scale, offset = _placement(level.index, field_level)
    stats = level.stats
    backend.kernels.prepare_level(level.image, small, has_field, scale, offset, level.erosion_px, bins, level.mask,
                                  level.scratch, level.eroded, level.pixel_rows, level.pixel_cols, level.bins,
                                  level.row_sums, level.feat_re, level.feat_im, stats)
    _read_stats(level)
    pad_pixel_list(backend, level)


def _read_stats(level: Level) -> None:
    stats = level.stats
    level.usable = level.listed = int(stats[0])
    level.range = (float(stats[1]), float(stats[2]))
    level.eps = float(stats[3])


def pad_pixel_list(backend, level: Level, host_rows: Any = None, host_cols: Any = None) -> None:  # type: ignore[no-untyped-def]
    """Set ``level.listed`` (``backend.listed_count``) and write pixel ``(0, 0)`` into the list's entries past ``usable``.

    Pixel ``(0, 0)`` is never usable (every level's erosion takes the image border): its edge features are
    zero and its bin is -1, so the padded entries add nothing to a metric. With ``host_rows``/``host_cols``
    (the host twin's lists, copied in next) the padding is written there, else into the level's own lists.
    """
    usable = level.usable
    level.listed = listed = backend.listed_count(usable, level.pixel_rows.shape[0])
    if listed > usable:
        rows = level.pixel_rows if host_rows is None else host_rows
        cols = level.pixel_cols if host_cols is None else host_cols
        rows[usable:listed] = 0
        cols[usable:listed] = 0


def frame_levels(backend, plan: FramePlan, used: list[int], field: FieldEstimate, bins: int,  # type: ignore[no-untyped-def]
                 want_clean: bool, noise_samples: int, rotations: bool,
                 band: tuple[np.ndarray, np.ndarray, float] | None = None) -> np.ndarray:
    """Run the CPU's level stage in one compiled call: :func:`frame_mask` of each used level, then the statistics.

    Returns float64[8]: the finest working level's noise MAD and count, the first refinement level's RMS radius
    (mm) and count, and (``want_clean``) the frame's own noise MAD and count inside the field's box (see
    ``portalign.kernels.cpu.level.frame_levels``); ``_quality`` turns them into its verdicts. On two threads a
    two-level plan computes the global search's surfaces beside its other level (``SURFACES_BESIDE_LEVELS``):
    every candidate rotation's with ``rotations`` (``RegistrationOptions.estimate_rotation``), else rotation 0's.
    ``band``: ``(image, field mask, ring mm)`` of the field-detection level, whose penumbra's extent (mm,
    ``kernels.cpu.field.penumbra_extent`` by each ring's median, to ``PENUMBRA_REACH_MM``) is entry 7 (NaN without):
    measured in the level task beside the surfaces (that task finishes first on two threads), else after the call.
    """
    key = ("levels", *used)
    static = plan.program_inputs[key] if key in plan.program_inputs else None
    if static is None:
        levels = [plan.levels[i] for i in used]
        tuples: Any = [(lv.image, lv.mask, lv.scratch, lv.eroded, lv.pixel_rows, lv.pixel_cols, lv.bins, lv.row_sums,
                   lv.feat_re, lv.feat_im, lv.stats) for lv in levels]
        tuples += [tuples[0]] * (LEVEL_SLOTS - len(tuples))
        placed = [_placement(i, plan.field_level) for i in used]
        radius = plan.levels[plan.refine_levels[0]]
        static = plan.program_inputs[key] = (
            levels, tuple(tuples), np.array([p[0] for p in placed]), np.array([p[1] for p in placed]),
            np.array([lv.erosion_px for lv in levels], dtype=np.int64), used.index(plan.refine_levels[-1]),
            used.index(plan.refine_levels[0]),
            np.array([radius.frame_axis[0], radius.frame_axis[1], radius.spacing[0], radius.spacing[1]]),
            2.0 ** (plan.field_level - plan.levels[0].index), np.zeros(8), len(levels),
            used.index(plan.coarse.level) if plan.coarse.level in used else -1,
            # the global search's arrays of every rotation and of rotation 0 (this lane's window buffers)
            lane_rotations(plan))
    (levels, tuples, scales, offsets, erosions, noise_level, radius_level, radius_geometry, clean_scale, out, n,
     coarse_index, searched) = static
    if used[0] == 0:  # level 0 is the frame's own pixels: a new array every frame
        tuples = ((plan.levels[0].image, *tuples[0][1:]), *tuples[1:])
    small, has_field = _field_mask(field)
    box = field.box_px
    has_box = field.detected and box is not None
    clean_box = np.array(box if has_box else (0.0, 0.0, 0.0, 0.0))
    cs = plan.coarse
    # a two-level plan (the usual one): the other level and the global search's surfaces of the coarse one run as
    # two tasks at once (``levels_and_surfaces``); the program then searches the peaks only
    eligible = (SURFACES_BESIDE_LEVELS and n == 2 and cs.normalised is not None
                and coarse_index >= 0 and noise_level == radius_level != coarse_index)
    together = eligible and (SURFACES_BESIDE_LEVELS_THREADS is None
                             or backend.frame_threads() == SURFACES_BESIDE_LEVELS_THREADS)
    own, other = ("together", "apart") if together else ("apart", "together")
    calls = (other, own) if eligible and other not in _LOADED else (own,)
    for call in calls:  # the other call first (once per process, see _LOADED); its buffers are all written again
        if call == "together":
            # the rotations the search may keep (``search_compiled`` reads rotation 0's alone when it does not rotate)
            spectra, energy, _, window = searched[rotations]
            normalised = cs.normalised if rotations else cs.normalised[cs.zero_index:cs.zero_index + 1]
            band_image, band_mask, band_ring = band if band is not None else _NO_BAND
            backend.kernels.levels_and_surfaces(
                tuples, coarse_index, small, has_field, scales, offsets, erosions, bins, radius_geometry,
                plan.levels[0].image, want_clean, clean_box, has_box, clean_scale, noise_samples, out,
                cs.padded_shape[0], cs.padded_shape[1], cs.margin_px, spectra, energy, cs.window_rows, cs.window_cols,
                window, normalised, band is not None, band_image, band_mask, band_ring, PENUMBRA_REACH_MM)
        else:
            backend.kernels.frame_levels(tuples, n, small, has_field, scales, offsets, erosions, bins, noise_level,
                                         radius_level, radius_geometry, plan.levels[0].image, want_clean, clean_box,
                                         has_box, clean_scale, noise_samples, out)
            out[7] = penumbra_extent(band[0], band[1], band[2], PENUMBRA_REACH_MM, True) if band is not None \
                else np.nan
        if call not in _LOADED:  # (no call a frame once both are)
            _LOADED.add(call)
    plan.surfaces_ready = together
    for level in levels:  # _read_stats, written out
        stats = level.stats
        level.usable = level.listed = int(stats[0])
        level.range = (float(stats[1]), float(stats[2]))
        level.eps = float(stats[3])
    return out


def denoised_frame(frame: Image, field: FieldEstimate, field_factor: int, sigma_mm: float,
                   interior: np.ndarray | None = None, interior_factor: int = 1) -> Image:
    """Return ``frame`` with its pixels smoothed by a Gaussian of ``sigma_mm`` (isocentre plane, per axis).

    Dead detector lines (:func:`dead_detector_lines`: those confirmed on the detector's pixels, else every detector
    line of the field-detection level's dead lines, ``field_factor`` detector pixels each) are left out of the
    smoothing (a normalised convolution: their neighbours are averaged without them) and keep their own values, so
    that the registration finds them, and leaves them out, again. Where ``interior`` is given (the usable pixels of a
    pyramid level, ``interior_factor`` detector pixels each: the field less its edge band), the pixels there are
    smoothed over those pixels only: the penumbra's gradient, fixed to the beam, would otherwise be spread by the
    smoothing's reach (3 sigma) into the usable pixels, where a DRR has nothing to match it (still frames through
    20-28 mm fields, smoothed whole, were ok with rotations 1.9-4.2 deg off at 0.2-0.3 deg stated, pulled towards
    the beam's own orientation). Everything else of the frame (spacing, beam axis, header) is kept. One compiled
    call (``kernels.cpu.pyramid.smooth_separable``, the Gaussian truncated at 3 sigma); three with ``interior``.

    Parameters
    ----------
    frame : Image
        ``(rows, cols)`` pixels, finite (the registration checked them).
    field : FieldEstimate
        The frame's field estimate (only its dead lines are read).
    field_factor : int
        Detector pixels per pixel of the field-detection level (``2 ** field_level``).
    sigma_mm : float
        The Gaussian's standard deviation, mm at the isocentre plane (``frame.spacing_mm`` converts it to pixels).
    interior : numpy.ndarray, optional
        Non-zero where a level's pixel is usable (``Level.eroded``, ``(rows, cols)`` of that level).
    interior_factor : int
        Detector pixels per pixel of that level (``2 ** level``).
    """
    pixels = frame.pixels
    rows, cols = pixels.shape
    live_rows = np.ones(rows, dtype=np.uint8)
    live_cols = np.ones(cols, dtype=np.uint8)
    # the detector lines themselves where they were confirmed there: the other lines of their field-detection lines,
    # kept raw beside smoothed ones, read as noisy neighbours of a dead line in the smoothed frame, whose own noise is
    # the smoothed lines', and the dead rows across a field were no longer found there (nor named: a new user's trial)
    if field.dead_rows or field.dead_cols:  # (no call otherwise: a noisy frame's second pass counts its calls)
        dead_rows, dead_cols = dead_detector_lines(field, field_factor)
        live_rows[dead_rows] = 0
        live_cols[dead_cols] = 0
    out = np.empty((rows, cols), dtype=np.float32)
    taps_rows, taps_cols = _gaussian_taps(sigma_mm / frame.spacing_mm[0]), _gaussian_taps(sigma_mm / frame.spacing_mm[1])
    scratch = np.empty((rows, cols), dtype=np.float32)
    smooth_separable(pixels, live_rows, live_cols, taps_rows, taps_cols, scratch, out)
    if interior is not None:
        # the level's usable pixels at the detector's: each covers interior_factor x interior_factor of them
        weight = np.zeros((rows, cols), dtype=np.float32)
        grown = (interior != 0).repeat(interior_factor, 0).repeat(interior_factor, 1)[:rows, :cols]
        weight[:grown.shape[0], :grown.shape[1]] = grown
        total = np.empty((rows, cols), dtype=np.float32)
        smooth_separable(pixels * weight, live_rows, live_cols, taps_rows, taps_cols, scratch, total)
        share = np.empty((rows, cols), dtype=np.float32)
        smooth_separable(weight, live_rows, live_cols, taps_rows, taps_cols, scratch, share)
        inside = (weight > 0.0) & (share > 1e-3)
        out[inside] = total[inside] / share[inside]
    return Image._derived(out, frame)


def dead_detector_lines(field: FieldEstimate, field_factor: int) -> tuple[list[int], list[int]]:
    """Return the detector rows and columns (the image's own pixel indices) on ``field``'s dead lines.

    Those confirmed on the detector's own pixels (``field.detector_rows`` / ``detector_cols``) where known; else
    every detector line of ``field.dead_rows`` / ``dead_cols``, lines of the field-detection level of ``field_factor``
    detector pixels each (before, always these: one dead column of a 1024 x 768 panel was reported as eight).
    """
    rows = list(field.detector_rows) if field.detector_rows else [
        r for line in field.dead_rows for r in range(line * field_factor, (line + 1) * field_factor)]
    cols = list(field.detector_cols) if field.detector_cols else [
        c for line in field.dead_cols for c in range(line * field_factor, (line + 1) * field_factor)]
    return rows, cols


def hot_lines(pixels: np.ndarray, rows: list[int], cols: list[int]) -> tuple[list[int], list[int]]:
    """Return which of the detector ``rows`` and ``cols`` of ``pixels`` are hot, not dead.

    A line is hot when its mean is above that of the nearest live lines either side of it. A dead line
    is dark or stuck. Both are left out of a match the same way; which are hot words the warning and the
    ``details["dead_detector_lines"]`` record (its ``hot_rows`` and ``hot_columns``).

    Parameters
    ----------
    pixels : ndarray, shape (rows, cols)
        The image's own pixels.
    rows, cols : list of int
        Its faulty detector lines (:func:`dead_detector_lines`).

    Returns
    -------
    hot_rows, hot_cols : list of int
        The hot ones among ``rows`` and ``cols`` (the image's pixel indices, ascending).
    """
    hot: list[list[int]] = [[], []]
    for axis, lines in ((0, rows), (1, cols)):
        found = live_neighbours(pixels.shape[axis], lines)
        if found is not None:
            dead, before, after = found
            means = np.mean(pixels, axis=1 - axis, dtype=np.float64)  # each line's mean
            hot[axis] = dead[means[dead] > np.maximum(means[before], means[after])].tolist()
    return hot[0], hot[1]


#: Noise sigmas (of the two live neighbours' difference) by which a faulty line's pixel stands out beyond both of
#: them, or by which they stand clear of the value its faulty stretch reads (where it could show), in
#: :func:`part_lines` (``portalign.field.DEAD_LINE_CONTRAST``'s five).
PART_LINE_CONTRAST = 5.0
#: Pixels along a line over which :func:`part_lines` averages where it stands out and where it reads as its
#: neighbours (a chance pixel either way is no stretch).
PART_LINE_WINDOW = 15


def part_lines(pixels: np.ndarray, lines: list[int], axis: int, hot: list[int]) -> list[list[int]]:
    """Return ``[line, first, last]`` of the faulty ``lines`` that are faulty over part of their length only.

    Each line (rows for ``axis`` 0, columns for 1) is compared pixel by pixel with the nearest live line either side
    (:func:`~portalign.field.live_neighbours`): it stands out where it lies beyond both by ``PART_LINE_CONTRAST`` times
    their difference's noise (1.4826 MAD over sqrt 2), on its side (below for a dead line, above for a hot one); it
    reads as a live line where it could stand out (the neighbours are as far from the value its faulty stretch reads)
    and does not. Both are averaged over ``PART_LINE_WINDOW`` pixels. The faulty stretch runs from the first to the
    last pixel where it stands out, and on to the line's end where nothing beyond shows it live (a dead line in a
    field's faint outside cannot show: it is not cut short there). Lines faulty end to end are not listed.

    Parameters
    ----------
    pixels : ndarray, shape (rows, cols)
        The image's own pixels.
    lines : list of int
        Its faulty detector lines along ``axis`` (:func:`dead_detector_lines`).
    axis : int
    hot : list of int
        Those of ``lines`` that are hot (:func:`hot_lines`); the others are dead.

    Returns
    -------
    list of [int, int, int]
        ``[line, first, last]``: the pixel indices along the line (columns of a row, rows of a column) of its faulty
        stretch, inclusive.
    """
    found = live_neighbours(pixels.shape[axis], lines)
    if found is None:
        return []
    dead, before, after = found
    work = pixels if axis == 0 else pixels.T
    n = work.shape[1]
    kernel = np.ones(min(PART_LINE_WINDOW, n)) / min(PART_LINE_WINDOW, n)
    out = []
    hot_set = set(hot)
    for line, b, a in zip(dead.tolist(), before.tolist(), after.tolist(), strict=True):
        values = work[line].astype(np.float64)
        one, two = work[b].astype(np.float64), work[a].astype(np.float64)
        sigma = 1.4826 * float(np.median(np.abs(one - two))) / math.sqrt(2.0)
        threshold = PART_LINE_CONTRAST * max(sigma, 1e-12 * (float(np.ptp(work)) + 1.0))
        top, bottom = np.maximum(one, two), np.minimum(one, two)
        is_hot = line in hot_set
        standing = (values - top > threshold) if is_hot else (bottom - values > threshold)
        if not standing.any():
            continue
        level = float(np.median(values[standing]))  # what the faulty stretch reads
        could = (level - top > threshold) if is_hot else (bottom - level > threshold)
        stands = np.convolve(standing.astype(np.float64), kernel, mode="same") > 0.5
        live = np.convolve((could & ~standing).astype(np.float64), kernel, mode="same") > 0.5
        if not stands.any():
            continue
        where = np.flatnonzero(stands)
        first, last = int(where[0]), int(where[-1])
        if not live[:first].any():
            first = 0
        if not live[last + 1:].any():
            last = n - 1
        if first > 0 or last < n - 1:
            out.append([int(line), first, last])
    return out


def part_lines_said(record: dict) -> str:
    """Return what a warning adds for a :func:`faulty_lines` record's part lines (``""`` where none).

    ``"; faulty over part of their length only: row 100 (columns 0-127), column 180 (rows 141-255)"``.
    """
    parts = ([f"row {line} (columns {first}-{last})" for line, first, last in record.get("part_rows") or ()]
             + [f"column {line} (rows {first}-{last})" for line, first, last in record.get("part_columns") or ()])
    return f"; faulty over part of their length only: {', '.join(parts)}" if parts else ""


def faulty_lines(pixels: np.ndarray, rows: list[int], cols: list[int]) -> dict:
    """Return ``details["dead_detector_lines"]`` (and ``info``'s): the faulty detector lines, and which are hot.

    ``{"rows", "columns", "hot_rows", "hot_columns"}``: lists of ``pixels``' indices (:func:`hot_lines`);
    ``"part_rows"``, ``"part_columns"``: ``[line, first, last]`` of those faulty over part of their length only
    (:func:`part_lines`; the whole line is left out of a match all the same).
    """
    hot_rows, hot_cols = hot_lines(pixels, rows, cols)
    return {"rows": rows, "columns": cols, "hot_rows": hot_rows, "hot_columns": hot_cols,
            "part_rows": part_lines(pixels, rows, 0, hot_rows), "part_columns": part_lines(pixels, cols, 1, hot_cols)}


def bridged_frame(image: Image, dead_rows: list[int], dead_cols: list[int]) -> Image:
    """Return ``image`` with its dead detector lines replaced by the live lines either side (``image`` if none).

    For the steps that read an image's pixels directly (the deep-interior check, ``_interior``), where a dead
    line's value would otherwise be taken for anatomy (:func:`bridge_lines`).

    Parameters
    ----------
    image : Image
        ``(rows, cols)`` pixels.
    dead_rows, dead_cols : list of int
        Detector rows and columns (``image``'s pixel indices; :func:`dead_detector_lines`).
    """
    if not dead_rows and not dead_cols:
        return image
    return Image._derived(bridge_lines(image.pixels, dead_rows, dead_cols), image)


@functools.lru_cache(maxsize=16)
def _gaussian_taps(sigma_px: float) -> np.ndarray:
    """Return a sampled Gaussian of ``sigma_px`` pixels, truncated at 3 sigma (one tap or more either side), sum 1."""
    half = max(1, int(math.ceil(3.0 * sigma_px)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma_px) ** 2)
    return taps / taps.sum()
