"""Newton refinement on the GPU: same signature as :func:`portalign.kernels.cpu.refine.refine`.

This is the eager form: the loop runs on the host, each iteration one metric
launch on the device (poses and affine maps up, the metric vector back), the
quadratic fit by the CPU twin's compiled helpers on the host. It gives the CPU's
numbers (the metric kernels agree within 1e-9 relative) and runs in numba's
simulator. The device-resident form of the same loop (stencil, fit and
convergence flag computed by one-thread kernels, the level's launches captured
in a CUDA graph) replaces it on a device without changing this signature.
"""

from __future__ import annotations

import numpy as np
from portalign.kernels.cpu.refine import MAX_STENCIL, MI, pose_affines_into, quadratic_step, stencil_poses

from . import launch
from .edge import gradient_correlation
from .mutual_information import joint_histograms, mutual_information

__all__ = ["refine"]


def refine(metric: int, rows, cols, count: int, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins,  # type: ignore[no-untyped-def]
           geometry: np.ndarray, pose: np.ndarray, step: np.ndarray, iterations: int, tolerance: float, star: bool,
           theta_limit: float, normalised: bool, hist, out: np.ndarray) -> None:
    """Write ``(dx_mm, dy_mm, theta_rad, score, iterations_run)`` into the host array ``out``."""
    xp = launch.array_module()
    dims = 3 if step[2] > 0.0 else 2
    full = 10 if dims == 3 else 6
    p = np.array(pose, dtype=np.float64)
    if dims == 2:
        p[2] = 0.0
    poses = np.empty((MAX_STENCIL, 3))
    affines = np.empty((MAX_STENCIL, 2, 3))
    rot = np.empty((MAX_STENCIL, 2))
    affines_d = launch.scratch("refine_affines", (MAX_STENCIL, 2, 3), np.float64)
    rot_d = launch.scratch("refine_rot", (MAX_STENCIL, 2), np.float64)
    sums_d = launch.scratch("refine_sums", (MAX_STENCIL, 3), np.float64)
    values_d = launch.scratch("refine_values", (MAX_STENCIL,), np.float64)
    cross = np.zeros(3)
    jump = np.zeros(3)
    have_cross = bool(star)
    score = -np.inf
    done = 0
    for _ in range(int(iterations)):
        n = 1 + 2 * dims if have_cross else full
        stencil_poses(p, step, dims, n, poses)
        pose_affines_into(poses, n, geometry, affines)
        affines_d[:n] = xp.asarray(affines[:n])
        if metric == MI:
            joint_histograms(rows, cols, count, frame_bins, ref_bins, affines_d[:n], hist[:n])
            mutual_information(hist[:n], normalised, values_d[:n])
            values = np.array(launch.to_host(values_d[:n]), dtype=np.float64)
        else:
            rot[:n, 0] = np.cos(2.0 * poses[:n, 2])
            rot[:n, 1] = np.sin(2.0 * poses[:n, 2])
            rot_d[:n] = xp.asarray(rot[:n])
            gradient_correlation(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines_d[:n], rot_d[:n],
                                 sums_d[:n])
            sums = launch.to_host(sums_d[:n])
            values = sums[:, 0] / np.sqrt(np.maximum(sums[:, 1] * sums[:, 2], 1e-30))
        predicted = quadratic_step(values, n, dims, cross, jump)
        have_cross = True
        score = max(float(values[0]), predicted)
        p[:dims] += jump[:dims] * step[:dims]
        p[2] = min(max(p[2], -theta_limit), theta_limit)
        done += 1
        if float(np.max(np.abs(jump[:dims]))) < tolerance:
            break
    out[:] = (p[0], p[1], p[2], score, done)
