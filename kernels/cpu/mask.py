"""Masks and intensity statistics on the per-frame path (numba, CPU).

``erode_box`` removes every pixel within ``radius`` pixels (Chebyshev distance)
of a zero: with the field mask it cuts the band around the field edge that must
not drive the match. Two separable passes with running counts keep it O(N)
whatever the radius.

``masked_range`` gives robust low/high intensities (percentiles from a
fine histogram, not a sort) for the mutual-information binning.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["listed_range", "threshold_mask", "erode_box", "masked_range", "pixel_list"]


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


@njit(cache=True, nogil=True)
def _quantiles(hist: np.ndarray, lo: float, hi: float, scale: float, count: int, low_fraction: float,
               high_fraction: float) -> tuple:  # pragma: no cover
    """Return ``(low, high, count)``: quantiles of ``count`` values counted in ``hist`` (bins ``1 / scale`` from ``lo``)."""
    want_low = low_fraction * count
    want_high = high_fraction * count
    seen = 0
    q_low = lo
    q_high = hi
    found_low = False
    for b in range(hist.shape[0]):
        seen += hist[b]
        if not found_low and seen > want_low:
            q_low = lo + b / scale
            found_low = True
        if seen >= want_high:
            q_high = lo + (b + 1) / scale
            break
    return q_low, q_high, count


@njit(cache=True, nogil=True)
def masked_range(image: np.ndarray, mask: np.ndarray, low_fraction: float, high_fraction: float) -> tuple:  # pragma: no cover
    """Return ``(low, high, count)``: the given quantiles of the masked pixels.

    Quantiles come from a 4096-bin histogram between the masked minimum and
    maximum (resolution 1/4096 of the range), which is what the binning needs.
    ``count`` is the number of masked pixels; with none, ``(0, 0, 0)``.
    """
    rows, cols = image.shape
    lo = np.inf
    hi = -np.inf
    count = 0
    for i in range(rows):
        for j in range(cols):
            if mask[i, j]:
                v = image[i, j]
                count += 1
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
    if count == 0:
        return 0.0, 0.0, 0
    if hi <= lo:
        return lo, hi, count
    n_bins = 4096
    hist = np.zeros(n_bins, dtype=np.int64)
    scale = n_bins / (hi - lo)
    for i in range(rows):
        for j in range(cols):
            if mask[i, j]:
                b = int((image[i, j] - lo) * scale)
                hist[min(b, n_bins - 1)] += 1
    return _quantiles(hist, lo, hi, scale, count, low_fraction, high_fraction)


@njit(cache=True, nogil=True)
def listed_range(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, low_fraction: float,
                 high_fraction: float) -> tuple:  # pragma: no cover
    """Return :func:`masked_range` of the listed pixels ``rows[:count], cols[:count]`` (its mask's, from :func:`pixel_list`).

    The same numbers (a minimum, a maximum and histogram counts do not depend on the order), reading only the
    usable pixels instead of the whole level twice.
    """
    if count == 0:
        return 0.0, 0.0, 0
    lo = np.inf
    hi = -np.inf
    for t in range(count):
        v = image[rows[t], cols[t]]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    if hi <= lo:
        return lo, hi, count
    n_bins = 4096
    hist = np.zeros(n_bins, dtype=np.int64)
    scale = n_bins / (hi - lo)
    for t in range(count):
        b = int((image[rows[t], cols[t]] - lo) * scale)
        hist[min(b, n_bins - 1)] += 1
    return _quantiles(hist, lo, hi, scale, count, low_fraction, high_fraction)


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
