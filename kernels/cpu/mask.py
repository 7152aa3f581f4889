"""Masks and intensity statistics on the per-frame path (numba, CPU).

``erode_box`` removes every pixel within ``radius`` pixels (Chebyshev distance)
of a zero: with the field mask it cuts the band around the field edge that must
not drive the match. Two separable passes with running counts keep it O(N)
whatever the radius.

``masked_range`` (and ``listed_range``, the same from a pixel list) gives
robust low/high intensities for the mutual-information binning and the edge
limit: quantiles of the values read off a ``RANGE_BINS`` histogram (not a sort),
with outliers (hot or damaged pixels far outside the image's values) left out.

1. Outliers. The values are histogrammed between their minimum and maximum. If
   their bulk (the bins of the 5 % and 95 % quantiles) spans fewer than
   ``RANGE_SPAN`` bins, values so far out squeezed the histogram: the bulk's own
   smallest and largest value give its width ``w``, and values more than
   ``FENCE_WIDTHS * w`` beyond it are outliers; the histogram is taken again over
   the values kept (their minimum to their maximum), up to ``RANGE_PASSES`` times
   (nested scales: 1e20 and 1e30 among values of 0-2). Five hot pixels among a
   small field's 300 are more than a quantile's tail can leave out; the fence
   leaves them out whatever their count, as long as the bulk is the image. An
   ordinary image's bulk fills most of the bins, and nothing is left out.
2. Quantiles of the values kept: the low one is the lower edge of the bin where
   the running count first exceeds ``low_fraction * n``, the high one the upper
   edge of the bin where it first reaches ``high_fraction * n``. When those bins
   span fewer than ``RANGE_SPAN`` bins, the values in them are histogrammed again
   between their own minimum and maximum, the values below counting as seen;
   if every value in them is the same, both quantiles are that value.

An ordinary image takes a min/max pass and one histogram pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["listed_range", "threshold_mask", "erode_box", "masked_range", "pixel_list", "robust_tail"]

#: Share of the pixels a level's robust range leaves out at each end (the 0.5 % and 99.5 % quantiles) ...
RANGE_TAIL = 0.005
#: ... and at least this many pixels: in a level of a few hundred usable pixels (a small field's coarse level)
#: 0.5 % is less than one pixel, and a single hot pixel would be the range's top.
RANGE_TAIL_PIXELS = 2.5


@njit(cache=True, nogil=True)
def robust_tail(count: int) -> float:  # pragma: no cover - compiled
    """Return the low quantile's fraction for a robust range of ``count`` values (the high one is ``1 -`` it).

    ``max(RANGE_TAIL, RANGE_TAIL_PIXELS / count)``, at most 0.25: 0.005 from 500 values on.
    """
    if count <= 0:
        return RANGE_TAIL
    return min(max(RANGE_TAIL, RANGE_TAIL_PIXELS / count), 0.25)


@njit(parallel=True, cache=True, nogil=True)
def threshold_mask(image: np.ndarray, threshold: float, above: bool, out: np.ndarray) -> None:  # pragma: no cover
    """Write 1 where ``image > threshold`` (``above``) or ``image < threshold`` (not ``above``), else 0."""
    rows, cols = image.shape
    for i in prange(rows):
        for j in range(cols):
            v = image[i, j]
            out[i, j] = 1 if (v > threshold if above else v < threshold) else 0


@njit(parallel=True, cache=True, nogil=True)
def erode_box(mask: np.ndarray, radius: int, scratch: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Write into ``out`` the erosion of ``mask`` by a ``(2r+1)^2`` square; outside the image counts as 0.

    ``scratch`` (uint8, same shape) holds the row pass.
    """
    rows, cols = mask.shape
    r = radius
    for i in prange(rows):
        # count zeros in the window [j-r, j+r]; positions outside count as zeros
        zeros = 0
        for jj in range(-r, r + 1):
            if jj < 0 or jj >= cols or mask[i, jj] == 0:
                zeros += 1
        for j in range(cols):
            scratch[i, j] = 1 if zeros == 0 else 0
            leaving = j - r
            entering = j + r + 1
            if leaving < 0 or mask[i, leaving] == 0:
                zeros -= 1
            if entering >= cols or mask[i, entering] == 0:
                zeros += 1
    # vertical pass in row order (cache friendly): zeros[j] counts zeros of column j in rows [i-r, i+r]
    zeros_col = np.empty(cols, dtype=np.int64)
    for j in range(cols):
        zeros_col[j] = r  # rows -r .. -1 lie outside the image
        for ii in range(0, min(r + 1, rows)):
            if scratch[ii, j] == 0:
                zeros_col[j] += 1
        if r + 1 > rows:
            zeros_col[j] += r + 1 - rows
    for i in range(rows):
        for j in range(cols):
            out[i, j] = 1 if zeros_col[j] == 0 else 0
        leaving = i - r
        entering = i + r + 1
        for j in range(cols):
            if leaving < 0 or scratch[leaving, j] == 0:
                zeros_col[j] -= 1
            if entering >= rows or scratch[entering, j] == 0:
                zeros_col[j] += 1


#: Bins of the quantile histogram.
RANGE_BINS = 4096
#: Bins a histogram pass's wanted quantiles must span; fewer (values far outside the rest stretched it: one hot
#: pixel of 65535 among values of 0-2) and the values in those bins are histogrammed again between their own
#: smallest and largest value.
RANGE_SPAN = 256
#: Histogram passes at most, per stage (nested scales of outliers: 1e20 and 1e30 among values of 0-2).
RANGE_PASSES = 4
#: The bulk of the values: the 5 % and 95 % quantiles ...
BULK_FRACTION = 0.05
#: ... and the outlier fence: values further than this many bulk widths beyond the bulk are no image content
#: (applied only where the bulk fills fewer than ``RANGE_SPAN`` bins of the min-max histogram).
FENCE_WIDTHS = 4.0


@njit(cache=True, nogil=True)
def quantile_bins(hist: np.ndarray, seen: int, want_low: float, want_high: float) -> tuple:  # pragma: no cover
    """Return the bins ``(low, high)`` where the running count (from ``seen``) first passes the wanted counts.

    ``low``: first bin where the count exceeds ``want_low``; ``high``: first bin where it reaches ``want_high``;
    ``-1`` where not reached.
    """
    b_low = -1
    b_high = -1
    for b in range(hist.shape[0]):
        seen += hist[b]
        if b_low < 0 and seen > want_low:
            b_low = b
        if seen >= want_high:
            b_high = b
            break
    return b_low, b_high


@njit(cache=True, nogil=True)
def _histogram(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, lo: float, hi: float,
               hist: np.ndarray) -> None:  # pragma: no cover
    """Count the listed values in ``[lo, hi]`` into ``hist`` (``RANGE_BINS`` bins from ``lo``)."""
    hist[:] = 0
    scale = RANGE_BINS / (hi - lo)
    for t in range(count):
        v = image[rows[t], cols[t]]
        if v < lo or v > hi:
            continue
        hist[min(int((v - lo) * scale), RANGE_BINS - 1)] += 1


@njit(cache=True, nogil=True)
def _extrema(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, lo: float,  # pragma: no cover
            hi: float) -> tuple:
    """``(min, max, n)`` of the listed values in ``[lo, hi]`` (``-inf, inf``: all of them)."""
    e_lo = np.inf
    e_hi = -np.inf
    n = 0
    for t in range(count):
        v = image[rows[t], cols[t]]
        if v < lo or v > hi:
            continue
        n += 1
        e_lo = min(e_lo, v)
        e_hi = max(e_hi, v)
    return e_lo, e_hi, n


@njit(cache=True, nogil=True)
def _window(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, lo: float, hi: float, b_low: int,
            b_high: int) -> tuple:  # pragma: no cover
    """Smallest and largest listed value in ``[lo, hi]`` whose bin (:func:`_histogram`'s) is in ``[b_low, b_high]``.

    Membership by the bin index, as the histogram counted it: value edges ``lo + b / scale`` lose the data's
    digits when ``lo`` is an outlier (-1e30 beside values of 0-2).
    """
    scale = RANGE_BINS / (hi - lo)
    w_lo = np.inf
    w_hi = -np.inf
    for t in range(count):
        v = image[rows[t], cols[t]]
        if v < lo or v > hi:
            continue
        b = min(int((v - lo) * scale), RANGE_BINS - 1)
        if b_low <= b <= b_high:
            w_lo = min(w_lo, v)
            w_hi = max(w_hi, v)
    return w_lo, w_hi


@njit(cache=True, nogil=True)
def listed_range(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, low_fraction: float,
                 high_fraction: float) -> tuple:  # pragma: no cover
    """Return ``(low, high, count)``: the given quantiles of the listed pixels ``rows[:count], cols[:count]``.

    Outliers left out, then quantiles from a ``RANGE_BINS`` histogram, refined where few bins hold them (the
    module docstring gives the definition); with no pixel, ``(0, 0, 0)``. Minima, maxima and histogram counts
    do not depend on the order: :func:`masked_range` is this over a mask's :func:`pixel_list`.
    """
    lo, hi, n = _extrema(image, rows, cols, count, -np.inf, np.inf)
    if n == 0:
        return 0.0, 0.0, 0
    if hi <= lo:
        return lo, hi, n
    hist = np.zeros(RANGE_BINS, dtype=np.int64)
    # 1. outliers: where the bulk (5-95 %) fills few bins, values far beyond it leave (up to nested scales)
    n_in = n
    for attempt in range(RANGE_PASSES):
        _histogram(image, rows, cols, count, lo, hi, hist)
        b_low, b_high = quantile_bins(hist, 0, BULK_FRACTION * n_in, (1.0 - BULK_FRACTION) * n_in)
        if b_low < 0 or b_high < 0 or b_high - b_low >= RANGE_SPAN or attempt == RANGE_PASSES - 1:
            break
        w_lo, w_hi = _window(image, rows, cols, count, lo, hi, b_low, b_high)
        if not w_hi > w_lo:
            break  # the bulk is one value: no width to fence by
        f_lo = max(lo, w_lo - FENCE_WIDTHS * (w_hi - w_lo))
        f_hi = min(hi, w_hi + FENCE_WIDTHS * (w_hi - w_lo))
        if f_lo == lo and f_hi == hi:
            break  # nothing beyond the fence: the long tail is content
        lo, hi, n_in = _extrema(image, rows, cols, count, f_lo, f_hi)
        if not hi > lo:
            return lo, hi, n
    # 2. the wanted quantiles of the values kept, refined where few bins hold them
    want_low = low_fraction * n_in
    want_high = high_fraction * n_in
    below = 0
    q_low = lo
    q_high = hi
    for attempt in range(RANGE_PASSES):
        if attempt > 0:
            _histogram(image, rows, cols, count, lo, hi, hist)
        scale = RANGE_BINS / (hi - lo)
        b_low, b_high = quantile_bins(hist, below, want_low, want_high)
        q_low = lo + b_low / scale if b_low >= 0 else lo
        q_high = lo + (b_high + 1) / scale if b_high >= 0 else hi
        if b_low < 0 or b_high < 0 or b_high - b_low >= RANGE_SPAN or attempt == RANGE_PASSES - 1:
            break
        below += hist[:b_low].sum()
        w_lo, w_hi = _window(image, rows, cols, count, lo, hi, b_low, b_high)
        if w_hi <= w_lo:
            return w_lo, w_hi, n
        lo = w_lo
        hi = w_hi
    return q_low, q_high, n


@njit(cache=True, nogil=True)
def masked_range(image: np.ndarray, mask: np.ndarray, low_fraction: float, high_fraction: float) -> tuple:  # pragma: no cover
    """Return ``(low, high, count)``: :func:`listed_range` of the pixels where ``mask != 0``; ``count`` their number."""
    rows = np.empty(mask.size, dtype=np.int32)
    cols = np.empty(mask.size, dtype=np.int32)
    count = pixel_list(mask, rows, cols)
    return listed_range(image, rows, cols, count, low_fraction, high_fraction)


@njit(cache=True, nogil=True)
def pixel_list(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> int:  # pragma: no cover - compiled
    """Write the coordinates of the pixels where ``mask != 0`` into ``rows``/``cols``; return their count.

    Row-major order, so every metric visits pixels in the same order whatever
    the thread count. The metric kernels then skip the unusable pixels (outside
    the field, in its edge band) without even reading them: a field usually
    covers a small part of the imager.
    """
    n_rows, n_cols = mask.shape
    count = 0
    for i in range(n_rows):
        for j in range(n_cols):
            if mask[i, j] != 0:
                rows[count] = i
                cols[count] = j
                count += 1
    return count
