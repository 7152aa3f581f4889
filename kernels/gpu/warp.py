"""Resampling of an image under an affine pose (numba.cuda), twin of :mod:`portalign.kernels.cpu.warp`.

One thread per output pixel. Positions are rounded exactly as on the CPU (so
the inside/outside decision and the cell are the same); the bilinear blend may
be fused into FMAs on a device, so a float32 output can differ from the CPU's
by one unit in the last place (tests: 1e-5 relative). Bit-identical under the
simulator.
"""

from __future__ import annotations

from typing import Any

from numba import cuda

from . import launch
from .device import add_rn, mul_rn

__all__ = ["warp_bilinear"]


@cuda.jit(cache=True)
def _warp_bilinear(src, a00, a01, a02, a10, a11, a12, fill, out):  # pragma: no cover - compiled
    rows, cols = out.shape
    src_rows, src_cols = src.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        x = add_rn(mul_rn(a00, float(j)), add_rn(mul_rn(a01, float(i)), a02))
        y = add_rn(mul_rn(a10, float(j)), add_rn(mul_rn(a11, float(i)), a12))
        if x < 0.0 or y < 0.0 or x > src_cols - 1 or y > src_rows - 1:
            out[i, j] = fill
            continue
        # the last row/column is inside: use the cell before it with weight 1
        c0 = min(int(x), src_cols - 2)
        r0 = min(int(y), src_rows - 2)
        wx = x - c0
        wy = y - r0
        out[i, j] = (
            (1.0 - wx) * (1.0 - wy) * float(src[r0, c0])
            + wx * (1.0 - wy) * float(src[r0, c0 + 1])
            + (1.0 - wx) * wy * float(src[r0 + 1, c0])
            + wx * wy * float(src[r0 + 1, c0 + 1])
        )


def warp_bilinear(src: Any, affine: Any, fill: float, out: Any) -> None:
    """Write ``src`` sampled bilinearly at ``affine @ (col, row, 1)`` into ``out``.

    ``affine`` (float64[2, 3]) may live on the host or the device; its six
    numbers are passed to the kernel as scalars.
    """
    n = out.shape[0] * out.shape[1]
    if n == 0:
        return
    a = launch.to_host(affine)
    coeffs = [float(a[r, c]) for r in range(2) for c in range(3)]
    tpb = launch.threads_per_block()
    launch.configured(_warp_bilinear, launch.blocks_for(n, tpb), tpb)(
        launch.device_arg(src), *coeffs, float(fill), launch.device_arg(out)
    )
