"""Cone-beam ray casting: the line integrals behind a DRR or a simulated portal image.

For every detector pixel the kernel integrates a voxel volume of linear
attenuation coefficients along the straight ray from the x-ray source to the
pixel centre::

    P(r, c) = D0 + c * Dc + r * Dr                  (pixel centre)
    u       = (P - S) / |P - S|                     (unit ray direction)
    out[r, c] = integral_0^|P-S| mu(S + t u) dt
             ~= h * sum_k mu(S + (k + 1/2) h u)     (midpoint rule, step h)

``mu`` is the trilinear interpolant of the voxel values, defined on the box
spanned by the voxel centres, ``[0, (n - 1) * spacing]`` on each axis, and zero
outside it. Callers that need the volume to fade to zero at its faces pad it
with one voxel of zeros.

The sample points ``t_k = (k + 1/2) h`` are anchored to the source, not to where
the ray enters the volume, so cropping empty (zero) voxels off the volume does
not move a single sample: the result is the same, only faster.

All 3-vectors are in the volume frame, in array-axis order ``(z, y, x)`` and in
mm: voxel ``volume[k, j, i]`` has its centre at ``(k * dz, j * dy, i * dx)``.
The float64 twin is :func:`portalign.kernels.reference.projection.project_cone_beam`.
"""

from __future__ import annotations

import math

from numba import njit, prange

__all__ = ["project_cone_beam"]


@njit(cache=True)
def _box_interval(s, u, upper, t_min, t_max):
    """Clip the ray ``s + t u`` to the slab ``0 <= coordinate <= upper`` of one axis.

    Returns the narrowed ``(t_min, t_max)``; ``t_min > t_max`` means the ray
    misses the box. A ray parallel to the slab keeps its interval when it runs
    inside the slab and loses it otherwise.
    """
    if u == 0.0:
        if s < 0.0 or s > upper:
            return 1.0, 0.0
        return t_min, t_max
    t0 = (0.0 - s) / u
    t1 = (upper - s) / u
    if t0 > t1:
        t0, t1 = t1, t0
    return max(t_min, t0), min(t_max, t1)


@njit(cache=True)
def _cell(f, n):
    """Lower corner index and weight of coordinate ``f`` (in voxels) on an axis of ``n`` voxels.

    The index is clamped to ``[0, n - 2]`` so that both neighbours exist; at the
    box faces (and for rounding a hair outside them) the weight absorbs the
    difference, which keeps the interpolant continuous there.
    """
    i = int(math.floor(f))
    if i < 0:
        i = 0
    elif i > n - 2:
        i = n - 2
    return i, f - i


@njit(cache=True)
def _trilinear(volume, z, y, x):
    """Trilinear interpolation of ``volume`` at voxel coordinates ``(z, y, x)``."""
    nz, ny, nx = volume.shape
    k, wz = _cell(z, nz)
    j, wy = _cell(y, ny)
    i, wx = _cell(x, nx)
    c00 = volume[k, j, i] * (1.0 - wx) + volume[k, j, i + 1] * wx
    c01 = volume[k, j + 1, i] * (1.0 - wx) + volume[k, j + 1, i + 1] * wx
    c10 = volume[k + 1, j, i] * (1.0 - wx) + volume[k + 1, j, i + 1] * wx
    c11 = volume[k + 1, j + 1, i] * (1.0 - wx) + volume[k + 1, j + 1, i + 1] * wx
    c0 = c00 * (1.0 - wy) + c01 * wy
    c1 = c10 * (1.0 - wy) + c11 * wy
    return c0 * (1.0 - wz) + c1 * wz


@njit(parallel=True, cache=True)
def project_cone_beam(volume, spacing_mm, source_mm, detector_origin_mm, detector_col_mm, detector_row_mm, step_mm, out):
    """Line integrals of ``volume`` from a point source to every detector pixel.

    Parameters
    ----------
    volume : numpy.ndarray
        float32 ``[nz, ny, nx]`` (each at least 2), e.g. linear attenuation in 1/mm.
    spacing_mm : numpy.ndarray
        float64 ``(dz, dy, dx)``: voxel spacing in mm.
    source_mm : numpy.ndarray
        float64 ``(z, y, x)``: the source position in the volume frame.
    detector_origin_mm : numpy.ndarray
        float64 ``(z, y, x)``: centre of detector pixel ``[0, 0]``.
    detector_col_mm, detector_row_mm : numpy.ndarray
        float64 ``(z, y, x)``: displacement from one pixel centre to the next
        along a row (next column) and along a column (next row).
    step_mm : float
        Sampling step ``h`` along the ray, in mm (half the smallest voxel
        spacing is a good default).
    out : numpy.ndarray
        float32 ``[rows, cols]``; receives ``integral mu dt`` (units of
        ``volume`` times mm). Rays that miss the volume get 0.

    Notes
    -----
    Rows run in parallel; each pixel is computed on its own and summed in
    float64, so the result does not depend on the number of threads.
    """
    rows, cols = out.shape
    nz, ny, nx = volume.shape
    dz, dy, dx = spacing_mm[0], spacing_mm[1], spacing_mm[2]
    upper_z, upper_y, upper_x = (nz - 1) * dz, (ny - 1) * dy, (nx - 1) * dx
    sz, sy, sx = source_mm[0], source_mm[1], source_mm[2]
    h = step_mm
    for r in prange(rows):
        for c in range(cols):
            pz = detector_origin_mm[0] + c * detector_col_mm[0] + r * detector_row_mm[0]
            py = detector_origin_mm[1] + c * detector_col_mm[1] + r * detector_row_mm[1]
            px = detector_origin_mm[2] + c * detector_col_mm[2] + r * detector_row_mm[2]
            length = math.sqrt((pz - sz) ** 2 + (py - sy) ** 2 + (px - sx) ** 2)
            if length == 0.0:
                out[r, c] = 0.0
                continue
            uz, uy, ux = (pz - sz) / length, (py - sy) / length, (px - sx) / length
            t_min, t_max = _box_interval(sz, uz, upper_z, 0.0, length)
            t_min, t_max = _box_interval(sy, uy, upper_y, t_min, t_max)
            t_min, t_max = _box_interval(sx, ux, upper_x, t_min, t_max)
            total = 0.0
            if t_min <= t_max:
                k_first = int(math.ceil(t_min / h - 0.5))
                k_last = int(math.floor(t_max / h - 0.5))
                for k in range(k_first, k_last + 1):
                    t = (k + 0.5) * h
                    total += _trilinear(volume, (sz + t * uz) / dz, (sy + t * uy) / dy, (sx + t * ux) / dx)
            out[r, c] = total * h
