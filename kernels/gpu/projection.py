"""Cone-beam ray casting (numba.cuda), twin of :mod:`portalign.kernels.cpu.projection`.

The maths (rays from a point source to every detector pixel, midpoint rule
anchored to the source, trilinear interpolant that is zero outside the box of
voxel centres) is in the CPU module's docstring. One thread per detector pixel
(grid-stride), each summing its ray in float64 in the CPU's order. The CPU
kernel is compiled with reassociation and contraction allowed, and the device
contracts multiply-adds too, so the two agree to float rounding along the ray
(tests: 1e-4 relative, as the CPU kernel against the float64 reference), not
bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

from numba import cuda

from . import launch

__all__ = ["project_cone_beam"]


@cuda.jit(device=True)
def _box_interval(s, u, upper, t_min, t_max):  # pragma: no cover - compiled
    """Clip the ray ``s + t u`` to the slab ``0 <= coordinate <= upper``; ``t_min > t_max``: it misses."""
    if u == 0.0:
        if s < 0.0 or s > upper:
            return 1.0, 0.0
        return t_min, t_max
    t0 = (0.0 - s) / u
    t1 = (upper - s) / u
    if t0 > t1:
        t0, t1 = t1, t0
    return max(t_min, t0), min(t_max, t1)


@cuda.jit(device=True)
def _cell(f, n):  # pragma: no cover - compiled
    """Lower corner index (kept within ``0..n-2``) and weight of voxel coordinate ``f``."""
    i = min(int(f), n - 2)
    return i, f - i


@cuda.jit(device=True)
def _trilinear(volume, z, y, x):  # pragma: no cover - compiled
    """Trilinear interpolation of ``volume`` at voxel coordinates ``(z, y, x)`` (float64)."""
    nz, ny, nx = volume.shape
    k, wz = _cell(z, nz)
    j, wy = _cell(y, ny)
    i, wx = _cell(x, nx)
    c00 = float(volume[k, j, i]) * (1.0 - wx) + float(volume[k, j, i + 1]) * wx
    c01 = float(volume[k, j + 1, i]) * (1.0 - wx) + float(volume[k, j + 1, i + 1]) * wx
    c10 = float(volume[k + 1, j, i]) * (1.0 - wx) + float(volume[k + 1, j, i + 1]) * wx
    c11 = float(volume[k + 1, j + 1, i]) * (1.0 - wx) + float(volume[k + 1, j + 1, i + 1]) * wx
    c0 = c00 * (1.0 - wy) + c01 * wy
    c1 = c10 * (1.0 - wy) + c11 * wy
    return c0 * (1.0 - wz) + c1 * wz


@cuda.jit
def _project(volume, dz, dy, dx, s_z, s_y, s_x, o_z, o_y, o_x, c_z, c_y, c_x, r_z, r_y, r_x, h,
             out):  # pragma: no cover - compiled
    rows, cols = out.shape
    nz, ny, nx = volume.shape
    sz, sy, sx = s_z / dz, s_y / dy, s_x / dx
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = p // cols
        c = p - r * cols
        pz = o_z + float(c) * c_z + float(r) * r_z
        py = o_y + float(c) * c_y + float(r) * r_y
        px = o_x + float(c) * c_x + float(r) * r_x
        length = math.sqrt((pz - s_z) ** 2 + (py - s_y) ** 2 + (px - s_x) ** 2)
        if length == 0.0:
            out[r, c] = 0.0
            continue
        bz = (pz - s_z) / (length * dz)
        by = (py - s_y) / (length * dy)
        bx = (px - s_x) / (length * dx)
        t_min, t_max = _box_interval(sz, bz, nz - 1.0, 0.0, length)
        t_min, t_max = _box_interval(sy, by, ny - 1.0, t_min, t_max)
        t_min, t_max = _box_interval(sx, bx, nx - 1.0, t_min, t_max)
        total = 0.0
        if t_min <= t_max:
            k_first = int(math.ceil(t_min / h - 0.5))
            k_last = int(math.floor(t_max / h - 0.5))
            t = (k_first + 0.5) * h
            fz, fy, fx = sz + t * bz, sy + t * by, sx + t * bx
            hz, hy, hx = h * bz, h * by, h * bx
            for _ in range(k_first, k_last + 1):
                total += _trilinear(volume, fz, fy, fx)
                fz += hz
                fy += hy
                fx += hx
        out[r, c] = total * h


def project_cone_beam(volume: Any, spacing_mm: Any, source_mm: Any, detector_origin_mm: Any, detector_col_mm: Any,
                      detector_row_mm: Any, step_mm: float, out: Any) -> None:
    """Line integrals of ``volume`` from a point source to every detector pixel, into ``out``.

    Same arguments as the CPU kernel. ``volume`` (float32 ``[nz, ny, nx]``) and
    ``out`` (float32 ``[rows, cols]``) are device arrays; the five geometry
    vectors (float64, 3 each, ``(z, y, x)`` in mm) may be on the host or the
    device and are passed to the kernel as scalars.
    """
    rows, cols = out.shape
    if rows * cols == 0:
        return
    vectors = [launch.to_host(v) for v in (spacing_mm, source_mm, detector_origin_mm, detector_col_mm, detector_row_mm)]
    scalars = [float(v[i]) for v in vectors for i in range(3)]
    tpb = launch.threads_per_block()
    launch.configured(_project, launch.blocks_for(rows * cols, tpb), tpb)(
        launch.device_arg(volume), *scalars, float(step_mm), launch.device_arg(out)
    )
