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

__all__ = ["project_cone_beam", "project_cone_beam_poses"]


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


@cuda.jit(device=True)
def _ray_integral(volume, s_z, s_y, s_x, pz, py, px, dz, dy, dx, h):  # pragma: no cover - compiled
    """Midpoint-rule integral from the source ``(s_z, s_y, s_x)`` (mm) to the pixel ``(pz, py, px)`` (mm)."""
    nz, ny, nx = volume.shape
    sz, sy, sx = s_z / dz, s_y / dy, s_x / dx
    length = math.sqrt((pz - s_z) ** 2 + (py - s_y) ** 2 + (px - s_x) ** 2)
    if length == 0.0:
        return 0.0
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
    return total * h


@cuda.jit(cache=True)
def _project(volume, dz, dy, dx, s_z, s_y, s_x, o_z, o_y, o_x, c_z, c_y, c_x, r_z, r_y, r_x, h,
             out):  # pragma: no cover - compiled
    rows, cols = out.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        r = p // cols
        c = p - r * cols
        pz = o_z + float(c) * c_z + float(r) * r_z
        py = o_y + float(c) * c_y + float(r) * r_y
        px = o_x + float(c) * c_x + float(r) * r_x
        out[r, c] = _ray_integral(volume, s_z, s_y, s_x, pz, py, px, dz, dy, dx, h)


@cuda.jit(cache=True)
def _project_poses(volume, dz, dy, dx, sources, origins, col_steps, row_steps, h, out):  # pragma: no cover - compiled
    poses, rows, cols = out.shape
    per_pose = rows * cols
    for item in range(cuda.grid(1), poses * per_pose, cuda.gridsize(1)):
        p = item // per_pose
        rest = item - p * per_pose
        r = rest // cols
        c = rest - r * cols
        pz = origins[p, 0] + float(c) * col_steps[p, 0] + float(r) * row_steps[p, 0]
        py = origins[p, 1] + float(c) * col_steps[p, 1] + float(r) * row_steps[p, 1]
        px = origins[p, 2] + float(c) * col_steps[p, 2] + float(r) * row_steps[p, 2]
        out[p, r, c] = _ray_integral(volume, sources[p, 0], sources[p, 1], sources[p, 2], pz, py, px, dz, dy, dx, h)


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


def project_cone_beam_poses(volume: Any, spacing_mm: Any, sources_mm: Any, detector_origins_mm: Any,
                            detector_cols_mm: Any, detector_rows_mm: Any, step_mm: float, out: Any) -> None:
    """Line integrals of one volume for many poses in one launch, into ``out`` ``[poses, rows, cols]``.

    Same arguments as the CPU kernel. ``volume``, the four ``[poses, 3]``
    float64 geometry arrays and ``out`` are device arrays (numpy under the
    simulator); one thread per (pose, pixel), grid-stride.
    """
    poses, rows, cols = out.shape
    if poses * rows * cols == 0:
        return
    dz, dy, dx = (float(v) for v in launch.to_host(spacing_mm))
    tpb = launch.threads_per_block()
    launch.configured(_project_poses, launch.blocks_for(poses * rows * cols, tpb), tpb)(
        launch.device_arg(volume), dz, dy, dx, launch.device_arg(sources_mm), launch.device_arg(detector_origins_mm),
        launch.device_arg(detector_cols_mm), launch.device_arg(detector_rows_mm), float(step_mm),
        launch.device_arg(out)
    )
