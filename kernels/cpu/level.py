"""One frame pyramid level made ready for matching, in one compiled call (numba, CPU).

The stage's steps, in order:

1. usable mask: the detected field (a small mask from the field-detection level)
   sampled nearest-neighbour onto the level, pixel ``i`` at ``i * scale + offset``
   of the small level; or the whole image when no field edge was found;
2. erosion by ``erosion_px`` (the field-edge band; 1 px without a field) with
   :func:`.mask.erode_box`; the usable pixels listed row-major (:func:`.mask.pixel_list`);
3. robust intensity range (0.5 / 99.5 % quantiles, at least 2.5 pixels from each end: :func:`.mask.robust_tail`;
   :func:`.mask.masked_range`, read from the pixel list) and
   the intensity bins for mutual information (:func:`.mutual_information.quantize`);
4. edge features: the mean gradient magnitude ``eps`` over the usable pixels (rows
   summed in order), then the doubled-angle features (:mod:`.gradient`); pixels next
   to an outlier (a central difference beyond ``gradient_limit(low, high)``) are left
   out of both.

``stats`` receives ``(usable, low, high, eps)``. ``kernels/gpu/level.py`` has the
same signature and runs the GPU kernels in the same order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._serial import serial_twin
from .correlation import FFT_WORKERS, coarse_surfaces
from .field import penumbra_extent
from .gradient import gradient_limit, gradient_row_sums, orientation_features
from .mask import erode_box, listed_range, pixel_list, robust_tail
from .mutual_information import quantize
from .statistics import clean_window, rms_radius, second_difference_mad

__all__ = ["prepare_level", "sample_nearest", "cut_dead_lines", "DEAD_LINE", "frame_levels", "levels_and_surfaces", "LEVEL_SLOTS"]


@njit(cache=True, nogil=True)
def sample_nearest(small: np.ndarray, scale: float, offset: float, out: np.ndarray) -> None:  # pragma: no cover
    """Write ``small`` sampled nearest-neighbour onto ``out``'s grid (pixel ``i`` at ``rint(i * scale + offset)``)."""
    rows, cols = out.shape
    s_rows, s_cols = small.shape
    columns = np.empty(cols, dtype=np.int64)  # the same for every row: worked out once
    for j in range(cols):
        columns[j] = min(max(int(np.rint(j * scale + offset)), 0), s_cols - 1)
    for i in range(rows):
        r = min(max(int(np.rint(i * scale + offset)), 0), s_rows - 1)
        for j in range(cols):
            out[i, j] = 1 if small[r, columns[j]] != 0 else 0


#: Value of a dead detector line's pixels in a field mask (the field is 1, its outside 0): ``prepare_level`` leaves
#: them out of the match with no field-edge band around them (:func:`cut_dead_lines`).
DEAD_LINE = 2


@njit(cache=True, nogil=True)
def _cut_dead_rows(small: np.ndarray, scale: float, offset: float, out: np.ndarray) -> None:  # pragma: no cover
    """Zero the rows of ``out`` that a dead row of ``small`` reaches (see :func:`cut_dead_lines`)."""
    s_rows, s_cols = small.shape
    rows, cols = out.shape
    reach = 1.5 * scale + 0.5
    for d in range(s_rows):
        dead = True
        for c in range(s_cols):
            if small[d, c] != DEAD_LINE:
                dead = False
                break
        if dead:
            for i in range(rows):
                if abs(i * scale + offset - d) < reach:
                    for j in range(cols):
                        out[i, j] = 0


@njit(cache=True, nogil=True)
def cut_dead_lines(small: np.ndarray, scale: float, offset: float, out: np.ndarray) -> None:  # pragma: no cover
    """Zero the rows and columns of ``out`` that a dead detector line of ``small`` reaches.

    A dead line is a whole row (or column) of ``small`` (the field-detection level's mask) reading ``DEAD_LINE``.
    Pixel ``i`` of ``out``'s level lies at ``i * scale + offset`` on that level and spans ``scale`` of its
    lines: it is cut when it overlaps a dead line or is next to one that does (central differences reach one
    pixel), i.e. when it lies within ``1.5 scale + 0.5`` lines of it. A dead line is not a field edge: its
    neighbours are sound pixels, and the field-edge band (``erosion_px``) is not taken around it.
    """
    _cut_dead_rows(small, scale, offset, out)
    _cut_dead_rows(small.T, scale, offset, out.T)  # the columns: the same rule on the transposed views


@njit(cache=True, nogil=True)
def prepare_level(image: np.ndarray, field_mask: np.ndarray, has_field: bool, scale: float, offset: float,
                  erosion_px: int, n_bins: int, mask: np.ndarray, scratch: np.ndarray, eroded: np.ndarray,
                  pixel_rows: np.ndarray, pixel_cols: np.ndarray, bins: np.ndarray, row_sums: np.ndarray,
                  feat_re: np.ndarray, feat_im: np.ndarray, stats: np.ndarray) -> None:  # pragma: no cover
    """Fill a level's frame buffers (mask, usable pixels, bins, features); write ``(usable, low, high, eps)`` to ``stats``.

    Parameters
    ----------
    image : float32[rows, cols]
        The frame's pyramid level.
    field_mask : uint8[r, c]
        The field on the detection level (ignored unless ``has_field``): 1 inside, 0 outside, ``DEAD_LINE`` along
        dead detector lines (:func:`cut_dead_lines`).
    has_field : bool
    scale, offset : float
        Level pixel ``i`` lies at ``i * scale + offset`` on the detection level.
    erosion_px : int
        Half-width of the field-edge band (pixels of this level).
    n_bins : int
        Intensity bins for mutual information.
    mask, scratch, eroded : uint8[rows, cols]
    pixel_rows, pixel_cols : int32[rows * cols]
    bins : int16[rows, cols]
    row_sums : float64[rows, 2]
    feat_re, feat_im : float32[rows, cols]
        Output buffers (overwritten).
    stats : float64[4]
    """
    if has_field:
        sample_nearest(field_mask, scale, offset, mask)
        erode_box(mask, erosion_px, scratch, eroded)
        cut_dead_lines(field_mask, scale, offset, eroded)
    else:
        mask[:, :] = 1
        erode_box(mask, 1, scratch, eroded)
    usable = pixel_list(eroded, pixel_rows, pixel_cols)
    tail = robust_tail(usable)
    lo, hi, _ = listed_range(image, pixel_rows, pixel_cols, usable, tail, 1.0 - tail)  # masked_range's numbers
    stats[0] = usable
    stats[1] = lo
    stats[2] = hi
    limit = gradient_limit(lo, hi)
    if hi <= lo:  # a flat level: one unit above, or one part in 10^6 where values are beyond 2^53 (lo + 1 == lo)
        hi = lo + max(1.0, abs(lo) * 1e-6)
    quantize(image, eroded, lo, hi, n_bins, bins)
    gradient_row_sums(image, eroded, limit, row_sums)
    total = 0.0
    count = 0.0
    for i in range(row_sums.shape[0]):
        total += row_sums[i, 0]
        count += row_sums[i, 1]
    eps = total / max(count, 1.0)
    stats[3] = eps
    orientation_features(image, eroded, max(eps, 1e-12), limit, feat_re, feat_im)


#: Entries of the levels tuple :func:`frame_levels` takes (padded): one compiled version for every plan.
LEVEL_SLOTS = 6


@njit(cache=True, nogil=True)
def frame_levels(levels, n: int, field_mask: np.ndarray, has_field: bool, scales: np.ndarray,  # type: ignore[no-untyped-def]
                 offsets: np.ndarray, erosions: np.ndarray, n_bins: int, noise_level: int, radius_level: int,
                 radius_geometry: np.ndarray, clean_image: np.ndarray, want_clean: bool, clean_box: np.ndarray,
                 has_box: bool, clean_scale: float, noise_samples: int, out: np.ndarray) -> None:  # pragma: no cover
    """Make the frame's levels ready and take its statistics, in one call (the CPU program's level stage).

    :func:`prepare_level` on ``levels[:n]``, then on the same buffers the statistics the engine's quality
    checks read, with the same kernels and arguments as they would call one by one:

    * the finest working level's noise: :func:`.statistics.second_difference_mad` of its image on every
      4th row of its usable pixels (``levels[noise_level]``);
    * the RMS radius of the first refinement level's usable pixels: :func:`.statistics.rms_radius`
      (``levels[radius_level]``, ``radius_geometry = (axis_col, axis_row, spacing_row, spacing_col)``, stride 2);
    * when ``want_clean``, the noise of the frame's own pixels ``clean_image``, unmasked, inside the field's
      bounding box ``clean_box`` (``(col_min, col_max, row_min, row_max)`` on the detection level, which is
      ``clean_scale`` frame pixels a pixel; the whole frame without ``has_box``), on about ``noise_samples``
      second differences: the window ``portalign.registration._quality.is_clean`` takes.

    Parameters
    ----------
    levels : tuple of LEVEL_SLOTS level tuples
        ``(image, mask, scratch, eroded, pixel_rows, pixel_cols, bins, row_sums, feat_re, feat_im, stats)`` as
        :func:`prepare_level` takes them; entries from ``n`` on are padding, never read.
    scales, offsets : float64[n]
    erosions : int64[n]
        Per level, as :func:`prepare_level`.
    out : float64[7]
        Receives ``(noise MAD, its count, RMS radius mm, its count, clean MAD, its count, centroid distance mm)`` (the
        clean pair is ``(0, 0)`` when not asked for; the last: the radius level's usable pixels' mean position's
        distance from the beam axis, :func:`.statistics.rms_radius`).
    """
    for i in range(n):
        image, mask, scratch, eroded, rows, cols, bins, sums, re, im, stats = levels[i]
        prepare_level(image, field_mask, has_field, scales[i], offsets[i], erosions[i], n_bins, mask, scratch,
                      eroded, rows, cols, bins, sums, re, im, stats)
    noise = levels[noise_level]
    _level_statistics(noise[0], noise[3], levels[radius_level][3], radius_geometry, clean_image, want_clean, clean_box,
                      has_box, clean_scale, noise_samples, out)


@njit(cache=True, nogil=True)
def _level_statistics(noise_image: np.ndarray, noise_eroded: np.ndarray, radius_eroded: np.ndarray,  # pragma: no cover
                      radius_geometry: np.ndarray, clean_image: np.ndarray, want_clean: bool, clean_box: np.ndarray,
                      has_box: bool, clean_scale: float, noise_samples: int, out: np.ndarray) -> None:
    """Write the statistics of :func:`frame_levels` (its ``out``).

    They are taken from the noise level's image and usable mask and from the radius level's usable mask.
    """
    mad, count = second_difference_mad(noise_image, noise_eroded, 0, noise_image.shape[0], 4, 0, noise_image.shape[1],
                                       True)
    out[0] = mad
    out[1] = count
    rms, count, centroid = rms_radius(radius_eroded, radius_geometry[0], radius_geometry[1], radius_geometry[2],
                                      radius_geometry[3], 2)
    out[2] = rms
    out[3] = count
    out[6] = centroid
    out[4] = 0.0
    out[5] = 0.0
    if want_clean:
        r0, r1, row_step, c0, c1 = clean_window(clean_image.shape[0], clean_image.shape[1], clean_box, has_box,
                                                clean_scale, noise_samples)
        mad, count = second_difference_mad(clean_image, clean_image, r0, r1, row_step, c0, c1, False)
        out[4] = mad
        out[5] = count


#: :func:`prepare_level` on one thread (its parallel kernels replaced by their serial twins): a task of
#: :func:`levels_and_surfaces`.
prepare_level_serial = serial_twin(
    prepare_level, "prepare_level_serial",
    erode_box=serial_twin(erode_box, "erode_box_serial"),
    quantize=serial_twin(quantize, "quantize_serial"),
    gradient_row_sums=serial_twin(gradient_row_sums, "gradient_row_sums_serial"),
    orientation_features=serial_twin(orientation_features, "orientation_features_serial"),
)


@njit(parallel=True, cache=True, nogil=True)
def levels_and_surfaces(levels, coarse_slot: int, field_mask: np.ndarray, has_field: bool,  # type: ignore[no-untyped-def]
                        scales: np.ndarray, offsets: np.ndarray, erosions: np.ndarray, n_bins: int,
                        radius_geometry: np.ndarray, clean_image: np.ndarray, want_clean: bool, clean_box: np.ndarray,
                        has_box: bool, clean_scale: float, noise_samples: int, out: np.ndarray, padded_rows: int,
                        padded_cols: int, margin: int, ref_spectra_conj: np.ndarray, ref_energy: np.ndarray,
                        window_rows: np.ndarray, window_cols: np.ndarray, window: np.ndarray,
                        normalised: np.ndarray, want_band: bool, band_image: np.ndarray, band_mask: np.ndarray,
                        band_ring: float, band_reach: float) -> None:  # pragma: no cover
    """:func:`frame_levels` of a two-level plan and the global search's surfaces, side by side.

    The coarse (search) level is made ready first; then two tasks run at once: the other level with the
    frame's statistics (``frame_levels`` with that level as both the noise and the radius level), and
    :func:`.correlation.coarse_surfaces` of every candidate rotation on the coarse level. The compiled program
    then only searches the peaks of the rotations it keeps (``search_program``'s ``surfaces_ready``). Same
    numbers as :func:`frame_levels` followed by :func:`.correlation.coarse_search`: the tasks run the same
    kernels (serial twins), on their own buffers. With one thread the tasks run one after the other.

    Parameters
    ----------
    levels : tuple of LEVEL_SLOTS level tuples
        As :func:`frame_levels`; slots 0 and 1 are the plan's two levels (the rest padding).
    coarse_slot : int
        0 or 1: the slot of the coarse level (the other is the first refinement level).
    field_mask, has_field, scales, offsets, erosions, n_bins, radius_geometry, clean_image, want_clean,
    clean_box, has_box, clean_scale, noise_samples, out
        As :func:`frame_levels`.
    padded_rows, padded_cols, margin, ref_spectra_conj, ref_energy, window_rows, window_cols
        As :func:`.correlation.coarse_search`, for every candidate rotation.
    window : float32[K, M, M]
    normalised : float64[K, M, M]
        Receive the raw and the normalised searched windows.
    want_band, band_image, band_mask, band_ring, band_reach
        With ``want_band``, the first task also measures how far a frame's penumbra reaches into its field
        (:func:`.field.penumbra_extent` of ``band_image`` and ``band_mask``, ``band_ring`` wide rings judged by their
        median, to ``band_reach``) into ``out[7]`` (``out``: float64[8]); NaN there without. That task's work is the
        smaller of the two on a 1024 x 768 frame: the extent costs the frame no time of its own.
    """
    c = levels[coarse_slot]
    prepare_level(c[0], field_mask, has_field, scales[coarse_slot], offsets[coarse_slot], erosions[coarse_slot], n_bins,
                  c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10])
    coarse_re = c[8]
    coarse_im = c[9]
    # a parallel task reads plain arrays (numba passes no tuple of arrays into one): the other level unpacked
    other = 1 - coarse_slot
    image, mask, scratch, eroded, rows, cols, bins, sums, re, im, stats = levels[other]
    scale, offset, erosion = scales[other], offsets[other], erosions[other]
    for task in prange(2):
        if task == 0:
            prepare_level_serial(image, field_mask, has_field, scale, offset, erosion, n_bins, mask, scratch, eroded,
                                 rows, cols, bins, sums, re, im, stats)
            _level_statistics(image, eroded, eroded, radius_geometry, clean_image, want_clean, clean_box, has_box,
                              clean_scale, noise_samples, out)
            out[7] = penumbra_extent(band_image, band_mask, band_ring, band_reach, True) if want_band else np.nan
        else:
            coarse_surfaces(coarse_re, coarse_im, padded_rows, padded_cols, margin, ref_spectra_conj, ref_energy,
                            window_rows, window_cols, window, normalised, FFT_WORKERS)
