"""Resampling of an image under an affine pose (numba, CPU).

``out[i, j] = bilinear(src, A @ (j, i, 1))``: the output grid is the frame's,
``A`` maps an output pixel ``(col, row)`` to a source pixel. Points whose four
neighbours are not all inside ``src`` get ``fill``. Used to show a registered
frame over its reference and to put the reference onto the frame's grid at
preparation time; never inside the metric loops (they interpolate on the fly).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["warp_bilinear"]


@njit(parallel=True, cache=True, nogil=True)
def warp_bilinear(src: np.ndarray, affine: np.ndarray, fill: float, out: np.ndarray) -> None:  # pragma: no cover
    """Write ``src`` sampled bilinearly at ``affine @ (col, row, 1)`` into ``out``."""
    rows, cols = out.shape
    src_rows, src_cols = src.shape
    a00 = affine[0, 0]
    a01 = affine[0, 1]
    a02 = affine[0, 2]
    a10 = affine[1, 0]
    a11 = affine[1, 1]
    a12 = affine[1, 2]
    for i in prange(rows):
        x_row = a01 * i + a02
        y_row = a11 * i + a12
        for j in range(cols):
            x = a00 * j + x_row
            y = a10 * j + y_row
            if x < 0.0 or y < 0.0 or x > src_cols - 1 or y > src_rows - 1:
                out[i, j] = fill
                continue
            # the last row/column is inside: use the cell before it with weight 1
            c0 = min(int(x), src_cols - 2)
            r0 = min(int(y), src_rows - 2)
            wx = x - c0
            wy = y - r0
            out[i, j] = (
                (1.0 - wx) * (1.0 - wy) * src[r0, c0]
                + wx * (1.0 - wy) * src[r0, c0 + 1]
                + (1.0 - wx) * wy * src[r0 + 1, c0]
                + wx * wy * src[r0 + 1, c0 + 1]
            )
