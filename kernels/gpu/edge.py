"""Edge matching: gradient-orientation correlation under candidate poses (numba.cuda).

Twin of :mod:`portalign.kernels.cpu.edge`.

The score is defined in the CPU module. A grid of ``pixel blocks x poses``
over the list of usable pixels (``pixel_list``): each thread sums its
grid-stride share of one pose's pixels in float64, the
block adds its threads' partial sums by a fixed pairwise tree and writes them
to ``partials[k, block, :]``, and a second kernel adds each pose's blocks in
block order. Every sum has a fixed order, so the result is deterministic run to
run for a given launch shape; it is not bit-identical to the CPU kernel (which
adds the pixels of a pose one after the other), only equal to it within about
1e-12 relative (tests: 1e-9 of the sum of magnitudes).

Products of float32 features and the positions use the uncontracted helpers of
:mod:`.device` so that each pixel's terms are the CPU's; only the order of the
float64 additions differs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from ..cpu.edge import VALID_LIMIT
from . import launch
from .device import add_rn, mul_rn

__all__ = ["gradient_correlation", "matched_orientation"]


@cuda.jit(device=True)
def _tree_sum(buf, t, n):  # pragma: no cover - compiled
    """Sum ``buf[0:n]`` into ``buf[0]`` by a pairwise tree; every thread of the block calls it.

    The pairing depends only on ``n``, so a float64 result is the same on every
    run whatever the order in which threads finish (integer sums are exact in
    any order). The caller writes ``buf[t]`` first; barriers open and close it.
    """
    cuda.syncthreads()
    s = 1
    while s < n:
        if t % (2 * s) == 0 and t + s < n:
            buf[t] = buf[t] + buf[t + s]
        s *= 2
        cuda.syncthreads()


@cuda.jit(cache=True)
def _gradient_correlation_blocks(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines, rotations,
                                 partials):  # pragma: no cover - compiled
    red_fr = cuda.shared.array(256, dtype=np.float64)  # launch.REDUCE_MAX_THREADS
    red_ff = cuda.shared.array(256, dtype=np.float64)
    red_rr = cuda.shared.array(256, dtype=np.float64)
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    ref_rows, ref_cols = ref_re.shape
    a00 = affines[k, 0, 0]
    a01 = affines[k, 0, 1]
    a02 = affines[k, 0, 2]
    a10 = affines[k, 1, 0]
    a11 = affines[k, 1, 1]
    a12 = affines[k, 1, 2]
    c2 = rotations[k, 0]
    s2 = rotations[k, 1]
    s_fr = 0.0
    s_ff = 0.0
    s_rr = 0.0
    for p in range(cuda.blockIdx.x * nt + t, count, cuda.gridDim.x * nt):
        i = rows[p]
        j = cols[p]
        fr = frame_re[i, j]
        fi = frame_im[i, j]
        if fr == 0.0 and fi == 0.0:
            continue
        energy = add_rn(mul_rn(float(fr), float(fr)), mul_rn(float(fi), float(fi)))  # float64, as on the CPU
        x = add_rn(add_rn(mul_rn(a00, float(j)), mul_rn(a01, float(i))), a02)
        y = add_rn(add_rn(mul_rn(a10, float(j)), mul_rn(a11, float(i))), a12)
        c0 = int(x) if x >= 0.0 else -1
        r0 = int(y) if y >= 0.0 else -1
        if c0 < 0 or r0 < 0 or c0 >= ref_cols - 1 or r0 >= ref_rows - 1:
            s_ff += energy  # off the reference image: the frame's edge finds no match
            continue
        wx = x - c0
        wy = y - r0
        w00 = (1.0 - wx) * (1.0 - wy)
        w01 = wx * (1.0 - wy)
        w10 = (1.0 - wx) * wy
        w11 = wx * wy
        v00 = float(ref_re[r0, c0])
        v01 = float(ref_re[r0, c0 + 1])
        v10 = float(ref_re[r0 + 1, c0])
        v11 = float(ref_re[r0 + 1, c0 + 1])
        v = 0.0
        rr = 0.0
        ri = 0.0
        if v00 <= VALID_LIMIT:
            v += w00
            rr += w00 * v00
            ri += w00 * float(ref_im[r0, c0])
        if v01 <= VALID_LIMIT:
            v += w01
            rr += w01 * v01
            ri += w01 * float(ref_im[r0, c0 + 1])
        if v10 <= VALID_LIMIT:
            v += w10
            rr += w10 * v10
            ri += w10 * float(ref_im[r0 + 1, c0])
        if v11 <= VALID_LIMIT:
            v += w11
            rr += w11 * v11
            ri += w11 * float(ref_im[r0 + 1, c0 + 1])
        if v <= 0.0:
            continue  # wholly outside the reference's valid region: not compared, not counted
        s_ff += v * energy
        tr = c2 * rr - s2 * ri
        ti = s2 * rr + c2 * ri
        s_fr += float(fr) * tr + float(fi) * ti
        s_rr += tr * tr + ti * ti
    red_fr[t] = s_fr
    red_ff[t] = s_ff
    red_rr[t] = s_rr
    _tree_sum(red_fr, t, nt)
    _tree_sum(red_ff, t, nt)
    _tree_sum(red_rr, t, nt)
    if t == 0:
        partials[k, cuda.blockIdx.x, 0] = red_fr[0]
        partials[k, cuda.blockIdx.x, 1] = red_ff[0]
        partials[k, cuda.blockIdx.x, 2] = red_rr[0]


@cuda.jit(cache=True)
def _sum_partials(partials, out):  # pragma: no cover - compiled
    n_pose, n_blocks, n_sums = partials.shape
    for p in range(cuda.grid(1), n_pose * n_sums, cuda.gridsize(1)):
        k = p // n_sums
        s = p - k * n_sums
        total = 0.0
        for b in range(n_blocks):
            total += partials[k, b, s]
        out[k, s] = total


def _pixel_block_sums(blocks_kernel: Any, scratch_name: str, rows: Any, cols: Any, count: int, frame_re: Any,
                      frame_im: Any, ref_re: Any, ref_im: Any, affines: Any, rotations: Any, out: Any) -> None:
    """Launch ``blocks_kernel`` over ``pixel blocks x poses`` and add each pose's block sums into ``out[k, :]``.

    ``blocks_kernel`` writes ``partials[k, block, :]``, as many sums as ``out`` has columns; the blocks are added in
    block order (:func:`_sum_partials`).
    """
    n_pose, n_sums = out.shape
    if n_pose == 0:
        return
    count = max(int(count), 0)
    tpb = launch.threads_per_block()
    n_blocks = launch.blocks_for(count, tpb * int(launch.PIXELS_PER_THREAD))
    partials_d = launch.device_arg(launch.scratch(scratch_name, (n_pose, n_blocks, n_sums), np.float64))
    launch.configured(blocks_kernel, (n_blocks, n_pose), tpb)(
        launch.device_arg(rows), launch.device_arg(cols), count, launch.device_arg(frame_re),
        launch.device_arg(frame_im), launch.device_arg(ref_re), launch.device_arg(ref_im),
        launch.device_arg(affines), launch.device_arg(rotations), partials_d,
    )
    launch.configured(_sum_partials, launch.blocks_for(n_pose * n_sums, tpb), tpb)(partials_d, launch.device_arg(out))


def gradient_correlation(rows: Any, cols: Any, count: int, frame_re: Any, frame_im: Any, ref_re: Any, ref_im: Any,
                         affines: Any, rotations: Any, out: Any) -> None:
    """Write ``(S_fr, S_ff, S_rr)`` for each pose into ``out[k, :]``.

    Parameters
    ----------
    rows, cols : int32[>= count]
        The usable frame pixels (see :func:`portalign.kernels.gpu.mask.pixel_list`);
        only these are visited.
    count : int
        Entries of ``rows``/``cols`` in use.
    frame_re, frame_im : float32[rows, cols]
        Frame features (zero where masked).
    ref_re, ref_im : float32[ref_rows, ref_cols]
        Reference features; ``ref_re`` is ``INVALID_FEATURE`` (``ref_im`` 0) where the reference is not valid.
    affines : float64[K, 2, 3]
        Frame pixel -> reference pixel maps.
    rotations : float64[K, 2]
        ``(cos 2theta, sin 2theta)`` of each pose.
    out : float64[K, 3]
        Overwritten.
    """
    _pixel_block_sums(_gradient_correlation_blocks, "edge_partials", rows, cols, count, frame_re, frame_im, ref_re,
                      ref_im, affines, rotations, out)


@cuda.jit(cache=True)
def _matched_orientation_blocks(rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines, rotations,
                                partials):  # pragma: no cover - compiled
    red_w = cuda.shared.array(256, dtype=np.float64)  # launch.REDUCE_MAX_THREADS
    red_re = cuda.shared.array(256, dtype=np.float64)
    red_im = cuda.shared.array(256, dtype=np.float64)
    red_ff = cuda.shared.array(256, dtype=np.float64)
    red_all = cuda.shared.array(256, dtype=np.float64)
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    ref_rows, ref_cols = ref_re.shape
    w_sum = 0.0
    z_re = 0.0
    z_im = 0.0
    s_ff = 0.0
    e_all = 0.0
    for p in range(cuda.blockIdx.x * nt + t, count, cuda.gridDim.x * nt):
        i = rows[p]
        j = cols[p]
        fr = float(frame_re[i, j])
        fi = float(frame_im[i, j])
        energy = add_rn(mul_rn(fr, fr), mul_rn(fi, fi))
        if energy <= 0.0:
            continue
        e_all += energy
        x = add_rn(add_rn(mul_rn(affines[k, 0, 0], float(j)), mul_rn(affines[k, 0, 1], float(i))), affines[k, 0, 2])
        y = add_rn(add_rn(mul_rn(affines[k, 1, 0], float(j)), mul_rn(affines[k, 1, 1], float(i))), affines[k, 1, 2])
        if not (x >= 0.0 and y >= 0.0 and x < ref_cols - 1.0 and y < ref_rows - 1.0):
            s_ff += energy  # off the reference: nothing matched there, its energy counts wholly
            continue
        c0 = min(int(x), ref_cols - 2)
        r0 = min(int(y), ref_rows - 2)
        wx = x - c0
        wy = y - r0
        rr = 0.0
        ri = 0.0
        v = 0.0
        for dr in range(2):
            for dc in range(2):
                value = float(ref_re[r0 + dr, c0 + dc])
                if value <= VALID_LIMIT:  # an invalid reference pixel: a zero feature, no weight
                    w = (wx if dc else 1.0 - wx) * (wy if dr else 1.0 - wy)
                    v += w
                    rr += w * value
                    ri += w * float(ref_im[r0 + dr, c0 + dc])
        s_ff += v * energy
        tr = rotations[k, 0] * rr - rotations[k, 1] * ri
        ti = rotations[k, 1] * rr + rotations[k, 0] * ri
        match = fr * tr + fi * ti
        if match > 0.0:
            norm = match / math.sqrt(energy)
            w_sum += match
            z_re += norm * fr
            z_im += norm * fi
    red_w[t] = w_sum
    red_re[t] = z_re
    red_im[t] = z_im
    red_ff[t] = s_ff
    red_all[t] = e_all
    _tree_sum(red_w, t, nt)
    _tree_sum(red_re, t, nt)
    _tree_sum(red_im, t, nt)
    _tree_sum(red_ff, t, nt)
    _tree_sum(red_all, t, nt)
    if t == 0:
        partials[k, cuda.blockIdx.x, 0] = red_w[0]
        partials[k, cuda.blockIdx.x, 1] = red_re[0]
        partials[k, cuda.blockIdx.x, 2] = red_im[0]
        partials[k, cuda.blockIdx.x, 3] = red_ff[0]
        partials[k, cuda.blockIdx.x, 4] = red_all[0]


def matched_orientation(rows: Any, cols: Any, count: int, frame_re: Any, frame_im: Any, ref_re: Any, ref_im: Any,
                        affines: Any, rotations: Any, out: Any) -> None:
    """Write ``(W, Z_re, Z_im, S_ff, E)``, the orientation sums of the edges that match at each pose, into ``out[k, :]``.

    Twin of :func:`portalign.kernels.cpu.edge.matched_orientation` (arguments and sums defined there), summed in
    blocks as :func:`gradient_correlation` is: equal to the CPU within about 1e-12 relative.
    """
    _pixel_block_sums(_matched_orientation_blocks, "orientation_partials", rows, cols, count, frame_re, frame_im,
                      ref_re, ref_im, affines, rotations, out)
