"""Image pyramid: 2x2 box downsampling (numba, CPU).

A level-``k+1`` pixel ``(i, j)`` is the mean of level-``k`` pixels
``(2i..2i+1, 2j..2j+1)``; its centre sits at ``2i + 0.5`` in level-``k``
coordinates. An odd last row/column is dropped. The box filter is its own
anti-aliasing at factor 2 and costs one read of the source: the first level is
the only full-resolution pass on the per-frame path.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["downsample2", "downsample2_mask"]


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def downsample2(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the 2x2 box mean of ``src`` into ``out`` (shape ``src.shape // 2``)."""
    rows, cols = out.shape
    for i in prange(rows):
        r0 = 2 * i
        for j in range(cols):
            c0 = 2 * j
            out[i, j] = np.float32(0.25) * (src[r0, c0] + src[r0, c0 + 1] + src[r0 + 1, c0] + src[r0 + 1, c0 + 1])


@njit(parallel=True, cache=True, nogil=True)
def downsample2_mask(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write 1 where all four source pixels are 1 (a conservative mask reduction)."""
    rows, cols = out.shape
    for i in prange(rows):
        r0 = 2 * i
        for j in range(cols):
            c0 = 2 * j
            out[i, j] = src[r0, c0] & src[r0, c0 + 1] & src[r0 + 1, c0] & src[r0 + 1, c0 + 1]
