"""Frame statistics on the per-frame path: noise from second differences, the rotation lever arm (numba, CPU).

``second_difference_mad``: along each sampled row the second difference
``x[j-1] - 2 x[j] + x[j+1]`` cancels smooth anatomy (any linear trend) and keeps
white noise with variance ``6 sigma^2``; the median absolute deviation of those
values gives a robust sigma (``1.4826 MAD / sqrt(6)``, computed by the caller).

``rms_radius``: root-mean-square distance (mm) of the usable pixels from the
beam axis, on every ``stride``-th row and column: how far a rotation moves them.

``median``: ``np.median`` of a 1-D array by counting, then sorting one bin: the same number, without the branches of a
selection that mispredict on a frame's fresh values.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["second_difference_mad", "rms_radius", "clean_window", "median", "bin_counts", "min_max", "insertion_sort", "bin_of"]

#: Bins :func:`median` counts the values into.
MEDIAN_BINS = 1024
#: Values of one bin sorted by insertion (more: by ``ndarray.sort``).
_INSERTION_MAX = 48
#: Values binned at a time by :func:`bin_counts` (its index buffer).
_CHUNK = 512


@njit(inline="always", cache=True, nogil=True)
def bin_of(v: float, lo: float, width: float, top: float) -> int:  # pragma: no cover
    """Return the bin of ``v``: ``(v - lo) / width`` clamped to ``0 .. top`` before the integer cast (``field._bin``)."""
    x = (v - lo) / width
    return int(min(max(x, 0.0), top))


@njit(cache=True, nogil=True)
def bin_counts(flat: np.ndarray, lo: float, width: float, bins: int) -> np.ndarray:  # pragma: no cover
    """Return the counts (int64[bins]) of ``flat``'s values in ``bins`` bins of ``width`` from ``lo`` (ends clamped).

    A chunk's bins are worked out first (a loop without stores into the histogram, which vectorises), then counted
    into four histograms in turn, summed at the end: the neighbouring pixels of an image fall in one bin, and a single
    histogram makes every increment wait for the one before it (3x slower on the 96 x 128 field-detection level of a
    1024 x 768 frame). Whole counts: the same numbers as counting one value after another.
    """
    counts = np.zeros((4, bins), dtype=np.int64)
    index = np.empty(_CHUNK, dtype=np.int64)
    top = bins - 1.0
    n = flat.size
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        for i in range(m):
            index[i] = bin_of(flat[start + i], lo, width, top)
        whole = m - m % 4
        for i in range(0, whole, 4):
            counts[0, index[i]] += 1
            counts[1, index[i + 1]] += 1
            counts[2, index[i + 2]] += 1
            counts[3, index[i + 3]] += 1
        for i in range(whole, m):
            counts[0, index[i]] += 1
    total = np.empty(bins, dtype=np.int64)
    for b in range(bins):
        total[b] = counts[0, b] + counts[1, b] + counts[2, b] + counts[3, b]
    return total


@njit(cache=True, nogil=True)
def insertion_sort(values: np.ndarray, n: int) -> None:  # pragma: no cover
    """Sort ``values[:n]`` in place by insertion: a few dozen values at most, where a general sort's set-up dominates."""
    for i in range(1, n):
        value = values[i]
        k = i - 1
        while k >= 0 and values[k] > value:
            values[k + 1] = values[k]
            k -= 1
        values[k + 1] = value


@njit(cache=True, nogil=True)
def min_max(flat: np.ndarray) -> tuple:  # pragma: no cover
    """Return ``(flat.min(), flat.max())`` in one pass (both NaN where a value is NaN, as numpy's); ``flat`` not empty."""
    lo = flat[0]
    hi = flat[0]
    for v in flat:
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
        elif v != v:
            return v, v
    return lo, hi


@njit(cache=True, nogil=True)
def _kth_of_bin(values: np.ndarray, lo: float, width: float, top: float, wanted: int, rank: int,
                buffer: np.ndarray) -> float:  # pragma: no cover
    """Return the ``rank``-th smallest (0-based) of the ``values`` that :func:`bin_counts` counts into bin ``wanted``."""
    m = 0
    for i in range(values.shape[0]):
        if bin_of(values[i], lo, width, top) == wanted:
            buffer[m] = values[i]
            m += 1
    if m > _INSERTION_MAX:
        part = buffer[:m].copy()
        part.sort()
        return part[rank]
    insertion_sort(buffer, m)
    return buffer[rank]


@njit(cache=True, nogil=True)
def median(values: np.ndarray) -> float:  # pragma: no cover
    """Return the median of ``values`` (1-D, real), the number ``np.median`` gives; NaN when empty or any value is NaN.

    The middle order statistics are found by counting, not by a selection's partitioning, whose branches depend on
    the values: on a frame's fresh values they mispredict, and a median of 6,000 noise samples took 72 us where this
    takes 19 (``tests/test_benchmarks.py``, 2 AMD EPYC cores; with the same values again and again the partitioning's
    branches are learnt and a microbenchmark shows no cost). The values are counted into ``MEDIAN_BINS`` bins over
    ``[min, max]`` (:func:`bin_counts`, whose bin never decreases as the value grows), the bin that holds each middle
    rank is found from the counts, and only its values are sorted: each order statistic is a value of the array,
    found exactly, so the median (``(a + b) / 2`` of the two middle ones for an even count, as numba's ``np.median``)
    is the same number. A span that is not finite (infinite values), or too small to divide into bins, falls back to
    ``np.median``.
    """
    n = values.shape[0]
    if n == 0:
        return np.nan
    lo, hi = min_max(values)
    if lo != lo:
        return np.nan
    span = hi - lo
    if not span > 0.0:  # every value alike
        return lo if n % 2 == 1 else (lo + lo) / 2
    width = span / MEDIAN_BINS
    if not (math.isfinite(span) and width > 0.0):  # infinite values, or a span too small to divide (subnormal)
        return np.median(values)
    counts = bin_counts(values, lo, width, MEDIAN_BINS)
    half = n >> 1
    low_rank = half - 1 if n % 2 == 0 else half
    low_bin = -1
    high_bin = 0
    low_at = 0
    high_at = 0
    seen = 0
    for b in range(MEDIAN_BINS):
        count = counts[b]
        if low_bin < 0 and seen + count > low_rank:
            low_bin = b
            low_at = low_rank - seen
        if seen + count > half:
            high_bin = b
            high_at = half - seen
            break
        seen += count
    top = MEDIAN_BINS - 1.0
    buffer = np.empty(n, dtype=values.dtype)
    high = _kth_of_bin(values, lo, width, top, high_bin, high_at, buffer)
    if n % 2 == 1:
        return high
    if low_bin == high_bin and low_at == high_at:
        return high
    return (_kth_of_bin(values, lo, width, top, low_bin, low_at, buffer) + high) / 2


@njit(cache=True, nogil=True)
def second_difference_mad(image: np.ndarray, mask: np.ndarray, r0: int, r1: int, row_step: int, c0: int, c1: int,
                          masked: bool) -> tuple:  # pragma: no cover
    """Return ``(MAD, count)`` of the horizontal second differences on rows ``r0:r1:row_step``, columns ``c0:c1``.

    With ``masked`` only differences whose three pixels are all inside ``mask`` count.
    ``MAD`` is 0 when there are none.
    """
    n_rows = max(0, (r1 - r0 + row_step - 1) // row_step)
    width = max(0, c1 - c0 - 2)
    values = np.empty(n_rows * width)
    n = 0
    for r in range(r0, r1, row_step):
        for j in range(c0 + 1, c1 - 1):
            if masked and (mask[r, j - 1] == 0 or mask[r, j] == 0 or mask[r, j + 1] == 0):
                continue
            values[n] = (np.float64(image[r, j - 1]) - 2.0 * np.float64(image[r, j])) + np.float64(image[r, j + 1])
            n += 1
    if n == 0:
        return 0.0, 0
    used = values[:n]
    centre = median(used)
    for t in range(n):
        used[t] = abs(used[t] - centre)
    return median(used), n


@njit(cache=True, nogil=True)
def rms_radius(mask: np.ndarray, axis_col: float, axis_row: float, spacing_row: float, spacing_col: float,
               stride: int) -> tuple:  # pragma: no cover
    """Return ``(rms_mm, count, centroid_mm)`` over the nonzero pixels of ``mask[::stride, ::stride]``.

    ``rms_mm``: their root-mean-square distance from the axis; ``centroid_mm``: their mean position's distance from
    it (0 and 0 when there are none).
    """
    rows, cols = mask.shape
    total = 0.0
    sum_x = 0.0
    sum_y = 0.0
    n = 0
    for i in range(0, rows, stride):
        y = (i - axis_row) * spacing_row
        for j in range(0, cols, stride):
            if mask[i, j] != 0:
                x = (j - axis_col) * spacing_col
                total += x * x + y * y
                sum_x += x
                sum_y += y
                n += 1
    if n == 0:
        return 0.0, 0, 0.0
    return math.sqrt(total / n), n, math.sqrt(sum_x * sum_x + sum_y * sum_y) / n


@njit(cache=True, nogil=True)
def clean_window(rows: int, cols: int, box: np.ndarray, has_box: bool, scale: float,
                 noise_samples: int) -> tuple:  # pragma: no cover
    """Return ``(r0, r1, row_step, c0, c1)``: where a frame's own noise is measured (is it clean?).

    The frame's pixels inside the field's bounding box ``box`` (``(col_min, col_max, row_min, row_max)`` on the
    detection level, ``scale`` frame pixels a pixel; the whole ``rows`` x ``cols`` frame without ``has_box``), on
    every ``row_step``-th row so that about ``noise_samples`` second differences are taken. Host arithmetic for
    every backend, and the window of the CPU's compiled level stage.
    """
    r0, r1, c0, c1 = 0, rows, 0, cols
    if has_box:
        c0, c1 = int(max(0.0, (box[0] + 1) * scale)), int(min(cols, box[1] * scale))
        r0, r1 = int(max(0.0, (box[2] + 1) * scale)), int(min(rows, box[3] * scale))
    row_step = max(1, (r1 - r0) * (c1 - c0) // noise_samples)
    return r0, r1, row_step, c0, c1
