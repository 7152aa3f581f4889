"""Frame statistics on the per-frame path: noise from second differences, the rotation lever arm (numba, CPU).

``second_difference_mad``: along each sampled row the second difference
``x[j-1] - 2 x[j] + x[j+1]`` cancels smooth anatomy (any linear trend) and keeps
white noise with variance ``6 sigma^2``; the median absolute deviation of those
values gives a robust sigma (``1.4826 MAD / sqrt(6)``, computed by the caller).

``rms_radius``: root-mean-square distance (mm) of the usable pixels from the
beam axis, on every ``stride``-th row and column: how far a rotation moves them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["second_difference_mad", "rms_radius", "clean_window"]


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
    centre = np.median(used)
    for t in range(n):
        used[t] = abs(used[t] - centre)
    return np.median(used), n


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
