"""Newton refinement on the GPU: same signature as :func:`portalign.kernels.cpu.refine.refine`.

The loop's state lives on the device: a ``state`` vector (pose, steps, the
reused mixed curvature terms, score, a converged flag, the iteration count)
that one-thread and one-block kernels read and write (and the best centre measured). Each iteration queues

1. ``_stencil``: the stencil's poses around the current pose, their affine maps
   and doubled-angle rotations (one block, a thread per pose);
2. the metric kernels (edge correlation or the partial-volume histograms and
   their mutual information), writing the metric of every pose;
3. ``_decide``: the quadratic fit, the jump, the rotation limit and the
   convergence test (one thread); after convergence it changes nothing, so a
   fixed number of iterations gives the CPU's early-stopping result.

Nothing comes back to the host until the level is done (one 29-value read), so
the sequence has no host decision in it: the same launches every frame of a
geometry, which is what a CUDA graph captures and replays. The mathematics is
the CPU twin's (:mod:`portalign.kernels.cpu.refine`), written again as CUDA
device functions (numba cannot call an ``@njit`` function from a kernel).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from . import launch
from .edge import gradient_correlation
from .mutual_information import joint_histograms, mutual_information

__all__ = ["refine"]

MAX_STENCIL = 10
EDGE = 0
MI = 1
MAX_JUMP = 1.5
#: The CPU twin's ``REJECT_SHRINK``: a jump that overshot again is taken back to this fraction of itself.
REJECT_SHRINK = 0.5
# state layout (float64[STATE_SIZE])
_POSE, _STEP, _CROSS, _SCORE, _CONVERGED, _DONE, _THETA_LIMIT, _TOLERANCE, _DIMS, _HAVE_CROSS = 0, 3, 6, 9, 10, 11, 12, 13, 14, 15
# the safeguard (the CPU twin's): the best centre's value, pose and star values, a rejection flag, the metric guarded
_BEST_VALUE, _BEST_POSE, _REJECTED, _GUARD, _BEST_VALUES = 16, 17, 20, 21, 22
STATE_SIZE = 29


@cuda.jit(device=True)
def _unit(k, dims, axis):  # pragma: no cover - compiled
    """Stencil offset of pose ``k`` on ``axis`` (the CPU twin's STENCIL_3D / STENCIL_2D)."""
    if k == 0:
        return 0.0
    if k <= 2 * dims:
        a = (k - 1) // 2
        if a != axis:
            return 0.0
        return 1.0 if (k - 1) % 2 == 0 else -1.0
    pair = k - 1 - 2 * dims  # mixed pairs (0,1), (0,2), (1,2)
    i = 0 if pair < 2 else 1
    j = 1 if pair == 0 else 2
    return 1.0 if axis == i or axis == j else 0.0


@cuda.jit(cache=True)
def _stencil(state, geometry, n, poses, affines, rot):  # pragma: no cover - compiled
    k = cuda.threadIdx.x
    if k >= n:
        return
    dims = int(state[_DIMS])
    for a in range(3):
        poses[k, a] = state[_POSE + a] + _unit(k, dims, a) * state[_STEP + a]
    fax = geometry[0]
    fay = geometry[1]
    sy = geometry[2]
    sx = geometry[3]
    rax = geometry[4]
    ray = geometry[5]
    c = math.cos(poses[k, 2])
    s = math.sin(poses[k, 2])
    ox = -fax * sx - poses[k, 0]
    oy = -fay * sy - poses[k, 1]
    affines[k, 0, 0] = c * sx / sx
    affines[k, 0, 1] = s * sy / sx
    affines[k, 0, 2] = (c * ox + s * oy) / sx + rax
    affines[k, 1, 0] = -s * sx / sy
    affines[k, 1, 1] = c * sy / sy
    affines[k, 1, 2] = (-s * ox + c * oy) / sy + ray
    rot[k, 0] = math.cos(2.0 * poses[k, 2])
    rot[k, 1] = math.sin(2.0 * poses[k, 2])


@cuda.jit(cache=True)
def _edge_values(sums, n, values):  # pragma: no cover - compiled
    k = cuda.threadIdx.x
    if k < n:
        values[k] = sums[k, 0] / math.sqrt(max(sums[k, 1] * sums[k, 2], 1e-30))


@cuda.jit(device=True)
def _det3(h):  # pragma: no cover - compiled
    return (h[0, 0] * (h[1, 1] * h[2, 2] - h[1, 2] * h[2, 1]) - h[0, 1] * (h[1, 0] * h[2, 2] - h[1, 2] * h[2, 0])
            + h[0, 2] * (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]))


@cuda.jit(device=True)
def _model(state, f, off, n, dims, jump):  # pragma: no cover - compiled
    """Fit the quadratic through ``f[off:off + n]`` (the CPU twin's ``quadratic_step``); fill ``jump``, return its value."""
    g = cuda.local.array(3, np.float64)
    plus = cuda.local.array(3, np.float64)
    h = cuda.local.array((3, 3), np.float64)
    a_mat = cuda.local.array((3, 3), np.float64)
    for r in range(3):
        g[r] = 0.0
        plus[r] = 0.0
        jump[r] = 0.0
        for c in range(3):
            h[r, c] = 0.0
    f0 = f[off]
    for i in range(dims):
        plus[i] = f[off + 1 + 2 * i]
        minus = f[off + 2 + 2 * i]
        g[i] = 0.5 * (plus[i] - minus)
        h[i, i] = plus[i] + minus - 2.0 * f0
    n_pairs = 3 if dims == 3 else 1
    for p in range(n_pairs):
        i = 0 if p < 2 else 1
        j = 1 if p == 0 else 2
        if n > 1 + 2 * dims:
            state[_CROSS + p] = f[off + 1 + 2 * dims + p] - plus[i] - plus[j] + f0
        h[i, j] = state[_CROSS + p]
        h[j, i] = state[_CROSS + p]
    m2 = h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]
    concave = -h[0, 0] > 0.0 and m2 > 0.0
    det3 = 0.0
    if dims == 3:
        det3 = _det3(h)
        concave = concave and -det3 > 0.0
    if concave:
        if dims == 2:
            jump[0] = -(h[1, 1] * g[0] - h[0, 1] * g[1]) / m2
            jump[1] = -(h[0, 0] * g[1] - h[1, 0] * g[0]) / m2
        else:
            for c in range(3):
                for r in range(3):
                    for q in range(3):
                        a_mat[r, q] = h[r, q]
                for r in range(3):
                    a_mat[r, c] = g[r]
                jump[c] = -_det3(a_mat) / det3
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
    for k in range(1, n):
        if f[off + k] > f[off + best]:
            best = k
    for a in range(dims):
        jump[a] = _unit(best, dims, a)
    return f[off + best]


@cuda.jit(cache=True)
def _decide(state, values, n):  # pragma: no cover - compiled
    """One thread: the safeguard, the quadratic fit through the stencil values, the jump, the limits, the convergence test."""
    if cuda.threadIdx.x != 0 or cuda.blockIdx.x != 0 or state[_CONVERGED] != 0.0:
        return
    dims = int(state[_DIMS])
    jump = cuda.local.array(3, np.float64)
    largest = 0.0
    if state[_GUARD] != 0.0 and values[0] < state[_BEST_VALUE]:
        # the jump overshot (the CPU twin's safeguard): from the best centre, its star's model alone, or half the jump
        state[_REJECTED] = 1.0
        if state[_CROSS] != 0.0 or state[_CROSS + 1] != 0.0 or state[_CROSS + 2] != 0.0:
            for p in range(3):
                state[_CROSS + p] = 0.0
            _model(state, state, _BEST_VALUES, 1 + 2 * dims, dims, jump)
            for a in range(dims):
                state[_POSE + a] = state[_BEST_POSE + a] + jump[a] * state[_STEP + a]
                largest = max(largest, abs(jump[a]))
        else:
            for a in range(dims):
                state[_POSE + a] = state[_BEST_POSE + a] + REJECT_SHRINK * (state[_POSE + a] - state[_BEST_POSE + a])
                largest = max(largest, abs(state[_POSE + a] - state[_BEST_POSE + a]) / state[_STEP + a])
    else:
        state[_REJECTED] = 0.0
        state[_BEST_VALUE] = values[0]
        for a in range(3):
            state[_BEST_POSE + a] = state[_POSE + a]
        for k in range(1 + 2 * dims):
            state[_BEST_VALUES + k] = values[k]
        predicted = _model(state, values, 0, n, dims, jump)
        state[_HAVE_CROSS] = 1.0
        state[_SCORE] = max(values[0], predicted)
        for a in range(dims):
            state[_POSE + a] += jump[a] * state[_STEP + a]
            largest = max(largest, abs(jump[a]))
    state[_POSE + 2] = min(max(state[_POSE + 2], -state[_THETA_LIMIT]), state[_THETA_LIMIT])
    state[_DONE] += 1.0
    if largest < state[_TOLERANCE]:
        state[_CONVERGED] = 1.0


def refine(metric: int, rows: Any, cols: Any, count: int, frame_re: Any, frame_im: Any, ref_re: Any, ref_im: Any,
           frame_bins: Any, ref_bins: Any, geometry: np.ndarray, pose: np.ndarray, step: np.ndarray, iterations: int,
           tolerance: float, star: bool, theta_limit: float, normalised: bool, hist: Any, out: np.ndarray) -> None:
    """Write ``(dx_mm, dy_mm, theta_rad, score, iterations_run)`` into the host array ``out`` (see the CPU twin)."""
    dims = 3 if step[2] > 0.0 else 2
    full = 10 if dims == 3 else 6
    start = np.zeros(STATE_SIZE)
    start[_POSE:_POSE + 3] = pose
    start[_BEST_VALUE] = -np.inf
    start[_GUARD] = 1.0 if metric == EDGE else 0.0  # not MI, not EDGE_UNGUARDED (the CPU twin's module notes)
    start[_STEP:_STEP + 3] = step
    start[_SCORE] = -np.inf
    start[_THETA_LIMIT] = theta_limit
    start[_TOLERANCE] = tolerance
    start[_DIMS] = dims
    start[_HAVE_CROSS] = 1.0 if star else 0.0
    state = launch.staged("refine_state", start)
    geometry_d = launch.staged("refine_geometry", np.ascontiguousarray(geometry, dtype=np.float64))
    poses = launch.scratch("refine_poses", (MAX_STENCIL, 3), np.float64)
    affines = launch.scratch("refine_affines", (MAX_STENCIL, 2, 3), np.float64)
    rot = launch.scratch("refine_rot", (MAX_STENCIL, 2), np.float64)
    sums = launch.scratch("refine_sums", (MAX_STENCIL, 3), np.float64)
    values = launch.scratch("refine_values", (MAX_STENCIL,), np.float64)
    state_d, values_d = launch.device_arg(state), launch.device_arg(values)

    def enqueue() -> None:
        have_cross = bool(star)
        for _ in range(int(iterations)):
            n = 1 + 2 * dims if have_cross else full
            launch.configured(_stencil, 1, MAX_STENCIL)(state_d, launch.device_arg(geometry_d), n,
                                                        launch.device_arg(poses), launch.device_arg(affines),
                                                        launch.device_arg(rot))
            if metric == MI:
                joint_histograms(rows, cols, count, frame_bins, ref_bins, affines[:n], hist[:n])
                mutual_information(hist[:n], normalised, values[:n])
            else:
                gradient_correlation(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines[:n], rot[:n],
                                     sums[:n])
                launch.configured(_edge_values, 1, MAX_STENCIL)(launch.device_arg(sums), n, values_d)
            launch.configured(_decide, 1, 1)(state_d, values_d, n)
            have_cross = True

    # the whole level's launch sequence is one CUDA graph on a device once it has been seen: the key holds
    # every buffer address and every scalar the launches take (the pose, steps and limits are in `state`)
    key = ("refine", metric, dims, bool(star), int(iterations), int(count), bool(normalised),
           launch.THREADS_PER_BLOCK, launch.MAX_BLOCKS, launch.PIXELS_PER_THREAD,
           *(_address(a) for a in (rows, cols, frame_re, frame_im, ref_re, ref_im, frame_bins, ref_bins, hist, state)))
    launch.run_captured(key, enqueue)
    final = launch.to_host(state)  # the one read of the level
    if final[_REJECTED]:  # the budget ended on a rejected jump: the best centre measured is the result
        out[:] = (final[_BEST_POSE], final[_BEST_POSE + 1], final[_BEST_POSE + 2], final[_BEST_VALUE], final[_DONE])
    else:
        out[:] = (final[_POSE], final[_POSE + 1], final[_POSE + 2], final[_SCORE], final[_DONE])


def _address(array: Any) -> Any:
    """Device address of a CuPy array (the identity of the object elsewhere): part of a graph's key."""
    data = getattr(array, "data", None)
    return getattr(data, "ptr", id(array))
