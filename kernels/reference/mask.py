"""Float64 reference for masks and intensity statistics (slow, obvious numpy).

Same arguments and output buffers as :mod:`portalign.kernels.cpu.mask`, with
one deliberate difference: ``masked_range`` returns exact order statistics
(from a sort), where the kernels read them off a 4096-bin histogram; the two
agree within one bin, ``(max - min) / 4096`` (of the values kept, where outliers
were left out: the kernels' module docstring; here the bulk counts as squeezed
when its 5-95 % width is under 1/16 of the min-max width, the kernels' 256 of
4096 bins).
"""

from __future__ import annotations

import math

import numpy as np

from ..cpu.mask import BULK_FRACTION, FENCE_WIDTHS, RANGE_BINS, RANGE_PASSES, RANGE_SPAN  # the kernels' fence

__all__ = ["threshold_mask", "erode_box", "masked_range", "pixel_list"]


def threshold_mask(image: np.ndarray, threshold: float, above: bool, out: np.ndarray) -> None:
    """Write 1 where ``image > threshold`` (``above``) or ``image < threshold`` (not ``above``), else 0."""
    img = np.asarray(image, dtype=np.float64)
    out[...] = img > threshold if above else img < threshold


def erode_box(mask: np.ndarray, radius: int, scratch: np.ndarray, out: np.ndarray) -> None:
    """Write 1 where every pixel within Chebyshev distance ``radius`` is inside the image and non-zero.

    ``scratch`` is unused (kept for the kernels' signature).
    """
    rows, cols = mask.shape
    r = int(radius)
    ones = np.asarray(mask) != 0
    for i in range(rows):
        for j in range(cols):
            if i - r < 0 or j - r < 0 or i + r >= rows or j + r >= cols:
                out[i, j] = 0
            else:
                out[i, j] = bool(ones[i - r : i + r + 1, j - r : j + r + 1].all())


def masked_range(image: np.ndarray, mask: np.ndarray, low_fraction: float, high_fraction: float) -> tuple:
    """Return ``(low, high, count)``: order statistics of the masked pixels.

    ``low`` is the smallest value with more than ``low_fraction * count`` values at
    or below it (sorted index ``floor(low_fraction * count)``); ``high`` the smallest
    value with at least ``high_fraction * count`` values at or below it (sorted
    index ``ceil(high_fraction * count) - 1``), of the values left after the outlier fence (the module
    docstring), ``count`` the masked pixels. With no masked pixel ``(0.0, 0.0, 0)``.
    """
    values = np.sort(np.asarray(image, dtype=np.float64)[np.asarray(mask) != 0])
    count = int(values.size)
    if count == 0:
        return 0.0, 0.0, 0
    values = _without_outliers(values)
    kept = int(values.size)
    k_low = min(int(math.floor(low_fraction * kept)), kept - 1)
    k_high = min(max(int(math.ceil(high_fraction * kept)) - 1, 0), kept - 1)
    return float(values[k_low]), float(values[k_high]), count


def _without_outliers(values: np.ndarray) -> np.ndarray:
    """Return the sorted ``values`` less those far beyond a squeezed bulk (5-95 %): the kernels' outlier fence."""
    for _ in range(RANGE_PASSES - 1):
        n = values.size
        w_lo = values[min(int(np.floor(BULK_FRACTION * n)), n - 1)]
        w_hi = values[min(max(int(np.ceil((1.0 - BULK_FRACTION) * n)) - 1, 0), n - 1)]
        lo, hi = values[0], values[-1]
        # squeezed: the bulk spans less than RANGE_SPAN of the kernels' RANGE_BINS min-max bins
        if not (w_hi - w_lo) * (RANGE_BINS / RANGE_SPAN) < hi - lo or not w_hi > w_lo:
            break
        keep = (values >= w_lo - FENCE_WIDTHS * (w_hi - w_lo)) & (values <= w_hi + FENCE_WIDTHS * (w_hi - w_lo))
        if keep.all():
            break
        values = values[keep]
    return values


def pixel_list(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> int:
    """Write the row-major coordinates of the non-zero pixels of ``mask`` into ``rows``/``cols``; return the count."""
    r, c = np.nonzero(np.asarray(mask))
    rows[: r.size] = r
    cols[: c.size] = c
    return int(r.size)
