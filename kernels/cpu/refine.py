"""Refinement as one compiled call: quadratic-model Newton ascent of a metric on one pyramid level (numba, CPU).

Each iteration evaluates the metric at the stencil's poses in one metric-kernel
call (the centre, +-1 step on each axis and the mixed pairs), fits the full
quadratic ``f(x) = f0 + g.x + x.H.x / 2`` through them and jumps to its optimum
``x* = -H^-1 g`` (at most ``MAX_JUMP`` steps). After the first fit the mixed
second derivatives are reused and only the star (centre and +-1 step per axis)
is evaluated; a model that is not concave moves to the best stencil point. Steps
are one pixel of the level, so the partial-volume ripple of MI (period one
pixel) adds the same amount to every sample of a translation axis and does not
bias the fit.

A safeguard keeps the edge metric's ascent from running away. Its peak is sharp at the stencil's scale:
bilinear sampling puts a kink at every whole-pixel offset. Mixed terms measured across such a peak can
then mislead the model. Two bands of rows left out of an open-field frame's level made each jump worse
than the last (0.3 mm and 0.4 deg off, its modelled peak above 1). So where a jump's new centre measures
worse than the best centre so far, the ascent goes back to that centre. It first jumps from the model of
that centre's star alone, the mixed terms dropped for the rest of the level. If that overshoots too, it
halves the jump (``REJECT_SHRINK``). Where the budget ends on such a jump, the best centre is the result.
MI is not guarded: its one-pixel ripple makes a centre measure a little worse on a right jump. Guarding
it too moved TotalSegmentator seed 5 from a 0.205 to a 0.218 mm median (``bench.held_out``). Nor are the
halves of the split-half precision check (``EDGE_UNGUARDED``): a half whose jumps were all taken back
returned the start pose, so two such halves agreed exactly, a spread of 0 on a match 1 mm off.

The whole loop (poses, affine maps, the metric kernels, the fit, the
convergence test) runs here: the engine makes one call per level, not one
Python round trip per iteration. ``kernels/gpu/refine.py`` has the same
signature; ``kernels/reference/refine.py`` is the float64 numpy version.

Metric ids: ``EDGE`` (normalised gradient-orientation correlation,
:mod:`.edge`), ``MI`` (partial-volume mutual information,
:mod:`.mutual_information`) and ``EDGE_UNGUARDED`` (the edge metric, no safeguard). Poses are ``(dx_mm, dy_mm, theta_rad)`` in the
image frame of DESIGN.md; ``geometry`` is ``(frame_axis_col, frame_axis_row,
spacing_row_mm, spacing_col_mm, ref_axis_col, ref_axis_row)`` of the level (the
reference is resampled onto the level's spacing).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .edge import gradient_correlation
from .mutual_information import joint_histograms, mutual_information

__all__ = ["refine", "refine_from", "metric_values", "pose_affines_into", "quadratic_step", "stencil_poses", "rotations_into",
           "rotation_lever_arm", "LEVER_ARM_UNTOLD", "EDGE", "MI", "EDGE_UNGUARDED", "MAX_JUMP", "REJECT_SHRINK",
           "STENCIL_3D", "STENCIL_2D", "MAX_STENCIL"]

EDGE = 0
MI = 1
#: The edge metric without the safeguard (module notes): the split-half check's halves.
EDGE_UNGUARDED = 2
#: Largest Newton jump, in steps, per iteration.
MAX_JUMP = 1.5
#: Quadratic-model stencil in units of one step: centre, +-each axis, the three mixed pairs.
STENCIL_3D = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
    dtype=np.float64,
)
STENCIL_2D = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [1, 1, 0]], dtype=np.float64)
#: Most poses one iteration evaluates (the full 3-D stencil): the size of the histogram scratch.
MAX_STENCIL = 10


#: The edge metric's ascent, where a jump measured worse again after its mixed terms were dropped, takes that jump
#: back to this fraction of itself from the best centre (``refine_from``; the GPU's ``_decide`` the same).
REJECT_SHRINK = 0.5


@njit(cache=True, nogil=True)
def pose_affines_into(poses: np.ndarray, n: int, geometry: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Write into ``out[:n]`` the frame-pixel -> reference-pixel maps ``(2, 3)`` of ``poses[:n]``.

    The frame point ``p`` shows reference point ``R(-theta) (p - d)``; both grids share the spacing
    ``geometry[2:4]`` (the formula of :func:`portalign.registration.pose_affines`).
    """
    fax, fay, sy, sx, rax, ray = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    for k in range(n):
        c = math.cos(poses[k, 2])
        s = math.sin(poses[k, 2])
        ox = -fax * sx - poses[k, 0]
        oy = -fay * sy - poses[k, 1]
        out[k, 0, 0] = c * sx / sx
        out[k, 0, 1] = s * sy / sx
        out[k, 0, 2] = (c * ox + s * oy) / sx + rax
        out[k, 1, 0] = -s * sx / sy
        out[k, 1, 1] = c * sy / sy
        out[k, 1, 2] = (-s * ox + c * oy) / sy + ray


@njit(cache=True, nogil=True)
def stencil_poses(pose: np.ndarray, step: np.ndarray, dims: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    """Write the first ``n`` stencil poses around ``pose`` (steps ``step``) into ``out[:n]``."""
    for k in range(n):
        for a in range(3):
            unit = STENCIL_3D[k, a] if dims == 3 else STENCIL_2D[k, a]
            out[k, a] = pose[a] + unit * step[a]


@njit(cache=True, nogil=True)
def quadratic_step(f: np.ndarray, n_values: int, dims: int, cross: np.ndarray, jump: np.ndarray) -> float:  # pragma: no cover
    """Fill ``jump`` (in steps) with the move to the quadratic model's maximum and return the model's value there.

    ``f = [f0, f+x, f-x, f+y, f-y, (f+t, f-t), mixed pairs...]``: ``g_i = (f+i - f-i)/2``,
    ``H_ii = f+i + f-i - 2 f0``, ``H_ij = f+i+j - f+i - f+j + f0``. With only the star
    (``n_values == 1 + 2 dims``) the mixed terms come from ``cross``; otherwise they are
    measured and written back into ``cross``. Concavity by Sylvester's criterion on ``-H``.
    """
    f0 = f[0]
    g = np.zeros(3)
    h = np.zeros((3, 3))
    plus = np.zeros(3)
    for i in range(dims):
        plus[i] = f[1 + 2 * i]
        minus = f[2 + 2 * i]
        g[i] = 0.5 * (plus[i] - minus)
        h[i, i] = plus[i] + minus - 2.0 * f0
    n_pairs = 3 if dims == 3 else 1
    for n in range(n_pairs):
        i = 0 if n < 2 else 1
        j = 1 if n == 0 else 2
        if n_values > 1 + 2 * dims:
            cross[n] = f[1 + 2 * dims + n] - plus[i] - plus[j] + f0
        h[i, j] = cross[n]
        h[j, i] = cross[n]
    m1 = -h[0, 0]
    m2 = h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]
    concave = m1 > 0.0 and m2 > 0.0
    det3 = 0.0
    if dims == 3:
        det3 = (h[0, 0] * (h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1]) - h[0, 1] * (h[1, 0] * h[2, 2] - h[1, 2] * h[2, 0])
                + h[0, 2] * (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]))
        concave = concave and -det3 > 0.0
    if concave:
        # x = -H^-1 g by Cramer's rule (2x2 or 3x3)
        if dims == 2:
            jump[0] = -(h[1, 1] * g[0] - h[0, 1] * g[1]) / m2
            jump[1] = -(h[0, 0] * g[1] - h[1, 0] * g[0]) / m2
            jump[2] = 0.0
        else:
            for c in range(3):
                a = h.copy()
                for r in range(3):
                    a[r, c] = g[r]
                det_c = (a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
                         - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
                         + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0]))
                jump[c] = -det_c / det3
        largest = 0.0
        for a in range(dims):
            largest = max(largest, abs(jump[a]))
        scale = largest / MAX_JUMP
        if scale > 1.0:
            for a in range(dims):
                jump[a] /= scale
        predicted = f0
        for a in range(dims):
            predicted += g[a] * jump[a]
            for b in range(dims):
                predicted += 0.5 * jump[a] * h[a, b] * jump[b]
        return predicted
    best = 0
    for k in range(1, n_values):
        if f[k] > f[best]:
            best = k
    for a in range(3):
        unit = STENCIL_3D[best, a] if dims == 3 else STENCIL_2D[best, a]
        jump[a] = unit if a < dims else 0.0
    return f[best]


@njit(cache=True, nogil=True)
def metric_values(metric: int, rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
            ref_re: np.ndarray, ref_im: np.ndarray, frame_bins: np.ndarray, ref_bins: np.ndarray, normalised: bool,
            poses: np.ndarray, affines: np.ndarray, n: int, hist: np.ndarray, sums: np.ndarray,
            values: np.ndarray) -> None:  # pragma: no cover
    """Write the value (higher is better) of ``metric`` at ``poses[:n]`` (maps ``affines[:n]``) into ``values[:n]``."""
    if metric == MI:
        joint_histograms(rows, cols, count, frame_bins, ref_bins, affines[:n], hist[:n])
        mutual_information(hist[:n], normalised, values[:n])
        return
    rot = np.empty((n, 2))
    for k in range(n):
        rot[k, 0] = math.cos(2.0 * poses[k, 2])
        rot[k, 1] = math.sin(2.0 * poses[k, 2])
    gradient_correlation(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines[:n], rot, sums[:n])
    for k in range(n):
        values[k] = sums[k, 0] / math.sqrt(max(sums[k, 1] * sums[k, 2], 1e-30))


@njit(cache=True, nogil=True)
def refine_from(metric: int, rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
           ref_re: np.ndarray, ref_im: np.ndarray, frame_bins: np.ndarray, ref_bins: np.ndarray, geometry: np.ndarray,
           pose: np.ndarray, step: np.ndarray, iterations: int, tolerance: float, star: bool, theta_limit: float,
           normalised: bool, hist: np.ndarray, out: np.ndarray, start_value: float) -> None:  # pragma: no cover
    """Run :func:`refine` knowing the metric's value at ``pose`` already (``start_value``; NaN: not known).

    The compiled program ranks the global search's optima by their edge score on the first refinement
    level and then refines the best from there: its first stencil's centre is that score, which is not
    evaluated again. Same numbers as :func:`refine` (a pose's metric value does not depend on the other
    poses evaluated with it). The other parameters are :func:`refine`'s.

    Parameters
    ----------
    start_value : float
        The metric at ``pose`` (NaN when not measured).
    """
    dims = 3 if step[2] > 0.0 else 2
    full = 10 if dims == 3 else 6
    p = pose.copy()
    poses = np.empty((MAX_STENCIL, 3))
    affines = np.empty((MAX_STENCIL, 2, 3))
    sums = np.empty((MAX_STENCIL, 3))
    values = np.empty(MAX_STENCIL)
    cross = np.zeros(3)
    jump = np.zeros(3)
    have_cross = star
    score = -np.inf
    done = 0
    best = p.copy()
    best_value = -np.inf
    best_values = np.empty(MAX_STENCIL)
    rejected = False
    for _ in range(iterations):
        n = 1 + 2 * dims if have_cross else full
        stencil_poses(p, step, dims, n, poses)
        pose_affines_into(poses, n, geometry, affines)
        # the first stencil's centre is the start pose: its value, when known, is not measured again
        first = 1 if done == 0 and start_value == start_value and p[2] == pose[2] else 0
        metric_values(metric, rows, cols, count, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins, normalised,
                      poses[first:n], affines[first:n], n - first, hist, sums, values[first:n])
        if first:
            values[0] = start_value
        # the safeguard (module notes): a jump of the edge metric's ascent that measures worse than the best centre
        rejected = metric == EDGE and values[0] < best_value
        done += 1
        largest = 0.0
        if rejected:
            if cross[0] != 0.0 or cross[1] != 0.0 or cross[2] != 0.0:
                # the mixed terms misled the jump: from the best centre, the model of its star alone
                cross[:] = 0.0
                predicted = quadratic_step(best_values, 1 + 2 * dims, dims, cross, jump)
                for a in range(dims):
                    p[a] = best[a] + jump[a] * step[a]
                    largest = max(largest, abs(jump[a]))
            else:
                for a in range(3):
                    p[a] = best[a] + REJECT_SHRINK * (p[a] - best[a])
                    largest = max(largest, abs(p[a] - best[a]) / step[a] if step[a] > 0.0 else 0.0)
        else:
            best_value = values[0]
            for a in range(3):
                best[a] = p[a]
            for k in range(1 + 2 * dims):
                best_values[k] = values[k]
            predicted = quadratic_step(values, n, dims, cross, jump)
            have_cross = True
            score = max(values[0], predicted)
            for a in range(dims):
                p[a] += jump[a] * step[a]
                largest = max(largest, abs(jump[a]))
        p[2] = min(max(p[2], -theta_limit), theta_limit)
        if largest < tolerance:
            break
    if rejected:  # the budget ended on a rejected jump: the best centre measured is the result
        for a in range(3):
            p[a] = best[a]
        score = best_value
    out[0] = p[0]
    out[1] = p[1]
    out[2] = p[2]
    out[3] = score
    out[4] = done


@njit(cache=True, nogil=True)
def refine(metric: int, rows: np.ndarray, cols: np.ndarray, count: int, frame_re: np.ndarray, frame_im: np.ndarray,
           ref_re: np.ndarray, ref_im: np.ndarray, frame_bins: np.ndarray, ref_bins: np.ndarray, geometry: np.ndarray,
           pose: np.ndarray, step: np.ndarray, iterations: int, tolerance: float, star: bool, theta_limit: float,
           normalised: bool, hist: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Newton ascent of ``metric`` from ``pose``; write ``(dx_mm, dy_mm, theta_rad, score, iterations_run)`` into ``out``.

    Parameters
    ----------
    metric : int
        ``EDGE``, ``MI`` or ``EDGE_UNGUARDED``.
    rows, cols, count : int32[>= count], int32[>= count], int
        The level's usable frame pixels.
    frame_re, frame_im, ref_re, ref_im : float32[...]
        Edge features of the frame level and of the reference on the level's grid.
    frame_bins, ref_bins : int16[...]
        Intensity bins (``-1`` where not usable), for MI.
    geometry : float64[6]
        ``(frame_axis_col, frame_axis_row, spacing_row_mm, spacing_col_mm, ref_axis_col, ref_axis_row)``.
    pose : float64[3]
        Start ``(dx_mm, dy_mm, theta_rad)``.
    step : float64[3]
        One stencil step per axis (mm, mm, rad); ``step[2] == 0`` holds the rotation at ``pose[2]``
        (2-D stencil: the engine passes 0 where rotation is not estimated).
    iterations : int
        Most stencils evaluated.
    tolerance : float
        Stop when the largest jump is below this many steps.
    star : bool
        Use the star stencil (no mixed terms) from the first iteration.
    theta_limit : float
        The rotation is kept within ``+-theta_limit`` rad.
    normalised : bool
        Normalised MI (Studholme) instead of MI.
    hist : int64[>= MAX_STENCIL, bins, bins]
        Scratch for the joint histograms.
    out : float64[5]
        Overwritten.
    """
    refine_from(metric, rows, cols, count, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins, geometry, pose, step,
                iterations, tolerance, star, theta_limit, normalised, hist, out, np.nan)


@njit(cache=True, nogil=True)
def rotations_into(poses: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover
    """Write ``(cos 2 theta, sin 2 theta)`` of ``poses[:n]`` into ``out[:n]`` (the edge metric's feature turn)."""
    for k in range(n):
        out[k, 0] = math.cos(2.0 * poses[k, 2])
        out[k, 1] = math.sin(2.0 * poses[k, 2])


#: What :func:`rotation_lever_arm` returns where the stencil is not at a maximum of the metric (untold).
LEVER_ARM_UNTOLD = -1.0


@njit(cache=True, nogil=True)
def rotation_lever_arm(f: np.ndarray, step: np.ndarray) -> float:  # pragma: no cover
    """Lever arm (mm) of the rotation in a metric sampled on the 3-D stencil (``STENCIL_3D``), 0 if none, -1 if untold.

    The Hessian ``H`` of the stencil values (``H_ii = f+i + f-i - 2 f0``, ``H_ij = f+i+j - f+i - f+j + f0``,
    divided by the steps: per mm^2, per mm rad, per rad^2) gives the curvature along rotation with the
    translation re-optimised, the Schur complement ``S = H_tt - H_tx H_xx^-1 H_xt``; over the mean
    translation curvature it is the squared distance from the beam axis at which structure pins the
    rotation as firmly as the translation: ``r = sqrt(S / mean(H_xx, H_yy))`` (signs for a maximum).
    ``-1`` (``LEVER_ARM_UNTOLD``) where the stencil is not at a maximum: the translation's curvature (``H_xx`` not
    negative definite) or the rotation's with the translation re-optimised (``S`` not negative). At a pose another
    level put at its optimum, this level's optimum lies elsewhere (its pixels blur what the other resolved), and it
    cannot tell; the caller measures it on the other level. Structure whose turn is a translation (a ball bearing)
    gives ``S`` about 0 on every level, so ``-1`` or about 0 there too.
    """
    for k in range(10):
        if not np.isfinite(f[k]):
            return 0.0
    f0 = f[0]
    h = np.zeros((3, 3))
    for i in range(3):
        h[i, i] = (f[1 + 2 * i] + f[2 + 2 * i] - 2.0 * f0) / (step[i] * step[i])
    for n in range(3):
        i = 0 if n < 2 else 1
        j = 1 if n == 0 else 2
        h[i, j] = (f[7 + n] - f[1 + 2 * i] - f[1 + 2 * j] + f0) / (step[i] * step[j])
        h[j, i] = h[i, j]
    translation = -0.5 * (h[0, 0] + h[1, 1])
    det = h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]
    if translation <= 0.0 or det <= 0.0:
        return LEVER_ARM_UNTOLD
    x0 = (h[1, 1] * h[0, 2] - h[0, 1] * h[1, 2]) / det
    x1 = (h[0, 0] * h[1, 2] - h[1, 0] * h[0, 2]) / det
    schur = -(h[2, 2] - (h[2, 0] * x0 + h[2, 1] * x1))
    return math.sqrt(schur / translation) if schur > 0.0 else LEVER_ARM_UNTOLD
