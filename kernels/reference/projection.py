"""Float64 reference for cone-beam ray casting: slow, obvious, one ray at a time.

Same arguments, same maths and same output buffers as
:func:`portalign.kernels.cpu.projection.project_cone_beam` and
``project_cone_beam_poses`` (read the CPU module
docstring for the formulas); the tests compare the two on tiny volumes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["project_cone_beam", "project_cone_beam_poses"]


def project_cone_beam(
    volume, spacing_mm, source_mm, detector_origin_mm, detector_col_mm, detector_row_mm, step_mm, out
):
    """Line integrals of ``volume`` from a point source to every detector pixel (float64 numpy).

    Parameters
    ----------
    volume : numpy.ndarray
        ``[nz, ny, nx]`` voxel values (each axis at least 2).
    spacing_mm : array_like
        ``(dz, dy, dx)`` voxel spacing in mm.
    source_mm, detector_origin_mm : array_like
        ``(z, y, x)`` positions in the volume frame (voxel ``[k, j, i]`` at
        ``(k dz, j dy, i dx)``) of the source and of detector pixel ``[0, 0]``.
    detector_col_mm, detector_row_mm : array_like
        ``(z, y, x)`` steps to the next column and to the next row.
    step_mm : float
        Sampling step along the ray in mm; samples at ``(k + 1/2) * step_mm`` from the source.
    out : numpy.ndarray
        ``[rows, cols]`` output, overwritten with the line integrals.
    """
    vol = np.asarray(volume, dtype=np.float64)
    n = np.array(vol.shape)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    upper = (n - 1) * spacing
    source = np.asarray(source_mm, dtype=np.float64)
    origin = np.asarray(detector_origin_mm, dtype=np.float64)
    step_c = np.asarray(detector_col_mm, dtype=np.float64)
    step_r = np.asarray(detector_row_mm, dtype=np.float64)
    h = float(step_mm)
    rows, cols = out.shape
    for r in range(rows):
        for c in range(cols):
            pixel = origin + c * step_c + r * step_r
            length = np.linalg.norm(pixel - source)
            if length == 0.0:
                out[r, c] = 0.0
                continue
            u = (pixel - source) / length
            t_min, t_max = 0.0, length
            for axis in range(3):  # slab clipping to the box of voxel centres
                if u[axis] == 0.0:
                    if not 0.0 <= source[axis] <= upper[axis]:
                        t_min, t_max = 1.0, 0.0
                    continue
                t0, t1 = sorted(((0.0 - source[axis]) / u[axis], (upper[axis] - source[axis]) / u[axis]))
                t_min, t_max = max(t_min, t0), min(t_max, t1)
            if t_min > t_max:
                out[r, c] = 0.0
                continue
            k = np.arange(int(np.ceil(t_min / h - 0.5)), int(np.floor(t_max / h - 0.5)) + 1)
            points = source + ((k + 0.5) * h)[:, None] * u  # (samples, 3) in mm
            f = points / spacing  # in voxels
            lower = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
            w = f - lower
            value = np.zeros(len(k))
            for corner in np.ndindex(2, 2, 2):
                o = np.array(corner)
                weight = np.prod(np.where(o == 1, w, 1.0 - w), axis=1)
                idx = lower + o
                value += weight * vol[idx[:, 0], idx[:, 1], idx[:, 2]]
            out[r, c] = value.sum() * h


def project_cone_beam_poses(
    volume, spacing_mm, sources_mm, detector_origins_mm, detector_cols_mm, detector_rows_mm, step_mm, out
):
    """Line integrals for many geometries (float64 numpy): :func:`project_cone_beam` once per pose.

    Parameters
    ----------
    volume, spacing_mm, step_mm
        As for :func:`project_cone_beam`.
    sources_mm, detector_origins_mm, detector_cols_mm, detector_rows_mm : array_like
        ``[poses, 3]``: pose ``p``'s source, pixel ``[0, 0]`` and steps, ``(z, y, x)`` in mm.
    out : numpy.ndarray
        ``[poses, rows, cols]`` output, overwritten.
    """
    for p in range(out.shape[0]):
        plane = np.zeros(out.shape[1:])
        project_cone_beam(volume, spacing_mm, sources_mm[p], detector_origins_mm[p], detector_cols_mm[p],
                          detector_rows_mm[p], step_mm, plane)
        out[p] = plane
