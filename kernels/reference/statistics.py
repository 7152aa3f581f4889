"""Reference for the frame statistics (numpy float64): same arguments as :mod:`portalign.kernels.cpu.statistics`."""

from __future__ import annotations

import numpy as np

__all__ = ["second_difference_mad", "rms_radius"]


def second_difference_mad(image: np.ndarray, mask: np.ndarray, r0: int, r1: int, row_step: int, c0: int, c1: int,
                          masked: bool) -> tuple[float, int]:
    """Return ``(MAD, count)`` of the horizontal second differences (see the CPU kernel)."""
    img = np.asarray(image, dtype=np.float64)[r0:r1:row_step, c0:c1]
    second = (img[:, :-2] - 2.0 * img[:, 1:-1]) + img[:, 2:]
    if masked:
        m = np.asarray(mask)[r0:r1:row_step, c0:c1] != 0
        second = second[m[:, :-2] & m[:, 1:-1] & m[:, 2:]]
    second = second.ravel()
    if second.size == 0:
        return 0.0, 0
    return float(np.median(np.abs(second - np.median(second)))), int(second.size)


def rms_radius(mask: np.ndarray, axis_col: float, axis_row: float, spacing_row: float, spacing_col: float,
               stride: int) -> tuple[float, int]:
    """Return ``(rms_mm, count, centroid_mm)`` over the nonzero pixels of ``mask[::stride, ::stride]``."""
    rows, cols = np.nonzero(np.asarray(mask)[::stride, ::stride])
    if rows.size == 0:
        return 0.0, 0, 0.0
    x = (cols * stride - axis_col) * spacing_col
    y = (rows * stride - axis_row) * spacing_row
    centroid = float(np.hypot(np.mean(x), np.mean(y)))
    return float(np.sqrt(np.mean(x * x + y * y))), int(rows.size), centroid
