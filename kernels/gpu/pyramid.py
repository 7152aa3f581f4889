"""Image pyramid: 2x2 box downsampling (numba.cuda), twin of :mod:`portalign.kernels.cpu.pyramid`.

One thread per output pixel (grid-stride). The sum is float32 in the CPU's
order and the final product by 0.25 is exact, so the result is bit-identical
to the CPU kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from . import launch

__all__ = ["downsample2", "downsample2_mask"]


@cuda.jit(cache=True)
def _downsample2(src, out):  # pragma: no cover - compiled
    rows, cols = out.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        r0 = 2 * i
        c0 = 2 * j
        total = src[r0, c0] + src[r0, c0 + 1] + src[r0 + 1, c0] + src[r0 + 1, c0 + 1]
        out[i, j] = np.float32(0.25) * total


@cuda.jit(cache=True)
def _downsample2_mask(src, out):  # pragma: no cover - compiled
    rows, cols = out.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        r0 = 2 * i
        c0 = 2 * j
        out[i, j] = src[r0, c0] & src[r0, c0 + 1] & src[r0 + 1, c0] & src[r0 + 1, c0 + 1]


def downsample2(src: Any, out: Any) -> None:
    """Write the 2x2 box mean of ``src`` (float32) into ``out`` (shape ``src.shape // 2``)."""
    n = out.shape[0] * out.shape[1]
    if n == 0:
        return
    tpb = launch.threads_per_block()
    launch.configured(_downsample2, launch.blocks_for(n, tpb), tpb)(launch.device_arg(src), launch.device_arg(out))


def downsample2_mask(src: Any, out: Any) -> None:
    """Write 1 where all four source pixels are 1 (uint8 masks; a conservative reduction)."""
    n = out.shape[0] * out.shape[1]
    if n == 0:
        return
    tpb = launch.threads_per_block()
    launch.configured(_downsample2_mask, launch.blocks_for(n, tpb), tpb)(launch.device_arg(src), launch.device_arg(out))
