"""Float64 reference for the 2x2 box pyramid (slow, obvious numpy).

Same arguments and output buffers as :mod:`portalign.kernels.cpu.pyramid`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["downsample2", "downsample2_mask"]


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
