"""Frame statistics on the GPU: same names and arguments as :mod:`portalign.kernels.cpu.statistics`.

Computed where the image lives with CuPy array operations (medians by CuPy's
sort); two scalars come back. Under numba's simulator the arrays are numpy and
so is the arithmetic.
"""

from __future__ import annotations

from typing import Any

from . import launch

__all__ = ["second_difference_mad", "rms_radius"]


def second_difference_mad(image: Any, mask: Any, r0: int, r1: int, row_step: int, c0: int, c1: int,
                          masked: bool) -> tuple[float, int]:
    """Return ``(MAD, count)`` of the horizontal second differences (see the CPU twin)."""
    xp = launch.array_module()
    img = image[r0:r1:row_step, c0:c1].astype(xp.float64)
    second = (img[:, :-2] - 2.0 * img[:, 1:-1]) + img[:, 2:]
    if masked:
        m = mask[r0:r1:row_step, c0:c1] != 0
        second = second[m[:, :-2] & m[:, 1:-1] & m[:, 2:]]
    second = second.ravel()
    if second.size == 0:
        return 0.0, 0
    return float(xp.median(xp.abs(second - xp.median(second)))), int(second.size)


def rms_radius(mask: Any, axis_col: float, axis_row: float, spacing_row: float, spacing_col: float,
               stride: int) -> tuple[float, int]:
    """Return ``(rms_mm, count, centroid_mm)`` over the nonzero pixels of ``mask[::stride, ::stride]``."""
    xp = launch.array_module()
    rows, cols = xp.nonzero(mask[::stride, ::stride])
    if rows.size == 0:
        return 0.0, 0, 0.0
    x = (cols * stride - axis_col) * spacing_col
    y = (rows * stride - axis_row) * spacing_row
    centroid = float(xp.hypot(xp.mean(x), xp.mean(y)))
    return float(xp.sqrt(xp.mean(x * x + y * y))), int(rows.size), centroid
