"""Edge features: doubled-angle gradient orientation (numba.cuda), twin of :mod:`portalign.kernels.cpu.gradient`.

The maths is in the CPU module's docstring. Products and sums go through the
uncontracted ``*_rn`` helpers (:mod:`.device`) in the CPU's order, so both
kernels are bit-identical to the CPU: ``orientation_features`` is one thread per
pixel, ``gradient_row_sums`` one thread per row summing in the CPU's column order.
"""

from __future__ import annotations

import math
from typing import Any

from numba import cuda

from . import launch
from .device import add_rn, mul_rn

__all__ = ["orientation_features", "gradient_row_sums"]


@cuda.jit(cache=True)
def _orientation_features(image, mask, eps2, limit, out_re, out_im):  # pragma: no cover - compiled
    rows, cols = image.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        if i == 0 or j == 0 or i == rows - 1 or j == cols - 1 or mask[i, j] == 0:
            out_re[i, j] = 0.0
            out_im[i, j] = 0.0
            continue
        # float32 difference, then float64: what the CPU kernel's typing does
        gx = 0.5 * float(image[i, j + 1] - image[i, j - 1])
        gy = 0.5 * float(image[i + 1, j] - image[i - 1, j])
        if abs(gx) > limit or abs(gy) > limit:  # next to an outlier: left out
            out_re[i, j] = 0.0
            out_im[i, j] = 0.0
            continue
        gx2 = mul_rn(gx, gx)
        gy2 = mul_rn(gy, gy)
        norm = add_rn(add_rn(gx2, gy2), eps2)
        out_re[i, j] = (gx2 - gy2) / norm
        out_im[i, j] = mul_rn(2.0 * gx, gy) / norm


@cuda.jit(cache=True)
def _gradient_row_sums(image, mask, limit, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        total = 0.0
        count = 0
        if 0 < i < rows - 1:
            for j in range(1, cols - 1):
                if mask[i, j] == 0:
                    continue
                gx = 0.5 * float(image[i, j + 1] - image[i, j - 1])
                gy = 0.5 * float(image[i + 1, j] - image[i - 1, j])
                if abs(gx) > limit or abs(gy) > limit:
                    continue
                total = add_rn(total, math.sqrt(add_rn(mul_rn(gx, gx), mul_rn(gy, gy))))
                count += 1
        out[i, 0] = total
        out[i, 1] = count


def orientation_features(image: Any, mask: Any, eps: float, limit: float, out_re: Any, out_im: Any) -> None:
    """Write the doubled-angle features of ``image`` into ``out_re``, ``out_im``.

    Parameters
    ----------
    image : float32[rows, cols]
    mask : uint8[rows, cols]
        1 where the pixel may be used.
    eps : float
        Edge-strength scale in image units per pixel.
    limit : float
        Largest central difference of a usable pixel (``inf``: no bound); the CPU twin's docstring says why.
    out_re, out_im : float32[rows, cols]
        ``(gx^2 - gy^2) / (|g|^2 + eps^2)`` and ``2 gx gy / (|g|^2 + eps^2)``.
    """
    n = image.shape[0] * image.shape[1]
    if n == 0:
        return
    eps = float(eps)
    tpb = launch.threads_per_block()
    launch.configured(_orientation_features, launch.blocks_for(n, tpb), tpb)(
        launch.device_arg(image), launch.device_arg(mask), eps * eps, float(limit), launch.device_arg(out_re),
        launch.device_arg(out_im),
    )


def gradient_row_sums(image: Any, mask: Any, limit: float, out: Any) -> None:
    """Write per row ``(sum |g|, count)`` over masked interior pixels into ``out[row, :]`` (float64).

    Pixels with a central difference beyond ``limit`` are left out (``inf``: none), as on the CPU.
    """
    rows = image.shape[0]
    if rows == 0:
        return
    tpb = launch.threads_per_block()
    launch.configured(_gradient_row_sums, launch.blocks_for(rows, tpb), tpb)(
        launch.device_arg(image), launch.device_arg(mask), float(limit), launch.device_arg(out)
    )
