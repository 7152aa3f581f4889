"""Float64 reference for affine bilinear resampling (slow, obvious numpy).

Same arguments and output buffer as :func:`portalign.kernels.cpu.warp.warp_bilinear`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["warp_bilinear"]


def warp_bilinear(src: np.ndarray, affine: np.ndarray, fill: float, out: np.ndarray) -> None:
    """Write ``src`` sampled bilinearly at ``affine @ (col, row, 1)``; ``fill`` outside ``[0, n-1]``."""
    s = np.asarray(src, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    src_rows, src_cols = s.shape
    rr, cc = np.meshgrid(np.arange(out.shape[0], dtype=np.float64), np.arange(out.shape[1], dtype=np.float64),
                         indexing="ij")
    x = a[0, 0] * cc + a[0, 1] * rr + a[0, 2]
    y = a[1, 0] * cc + a[1, 1] * rr + a[1, 2]
    inside = (x >= 0) & (y >= 0) & (x <= src_cols - 1) & (y <= src_rows - 1)
    c0 = np.clip(np.floor(np.where(inside, x, 0.0)).astype(np.int64), 0, src_cols - 2)
    r0 = np.clip(np.floor(np.where(inside, y, 0.0)).astype(np.int64), 0, src_rows - 2)
    wx = np.where(inside, x - c0, 0.0)
    wy = np.where(inside, y - r0, 0.0)
    value = ((1 - wx) * (1 - wy) * s[r0, c0] + wx * (1 - wy) * s[r0, c0 + 1]
             + (1 - wx) * wy * s[r0 + 1, c0] + wx * wy * s[r0 + 1, c0 + 1])
    out[...] = np.where(inside, value, fill)
