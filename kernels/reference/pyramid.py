"""Float64 reference for the 2x2 box pyramid (slow, obvious numpy).

Same arguments and output buffers as :mod:`portalign.kernels.cpu.pyramid`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_half", "downsample2", "downsample2_mask", "interpolate_grid"]


def downsample2(src: np.ndarray, out: np.ndarray) -> None:
    """Write the mean of each 2x2 block of ``src`` into ``out`` (an odd last row/column is dropped)."""
    rows, cols = out.shape
    s = np.asarray(src, dtype=np.float64)[: 2 * rows, : 2 * cols]
    out[...] = (s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]) / 4.0


def downsample2_mask(src: np.ndarray, out: np.ndarray) -> None:
    """Write 1 where all four pixels of a 2x2 block of ``src`` are non-zero, else 0."""
    rows, cols = out.shape
    s = np.asarray(src)[: 2 * rows, : 2 * cols] != 0
    out[...] = s[0::2, 0::2] & s[0::2, 1::2] & s[1::2, 0::2] & s[1::2, 1::2]


def box_half(src: np.ndarray, out: np.ndarray) -> None:
    """Write the 2x2 box means of ``src`` into ``out`` in numpy's order of the four strided views (float64)."""
    r, c = 2 * out.shape[0], 2 * out.shape[1]
    out[...] = 0.25 * (src[0:r:2, 0:c:2] + src[1:r:2, 0:c:2] + src[0:r:2, 1:c:2] + src[1:r:2, 1:c:2])


def interpolate_grid(src: np.ndarray, row0: np.ndarray, row1: np.ndarray, row_w: np.ndarray, col0: np.ndarray,
                     col1: np.ndarray, col_w: np.ndarray, out: np.ndarray) -> None:
    """Linear interpolation along the rows (``numpy.take`` of the two rows), then along the columns."""
    w = row_w.reshape(-1, 1)
    rows = np.take(src, row0, axis=0) * (1.0 - w) + np.take(src, row1, axis=0) * w
    out[...] = np.take(rows, col0, axis=1) * (1.0 - col_w) + np.take(rows, col1, axis=1) * col_w
