"""Mutual information from partial-volume joint histograms (numba.cuda).

Twin of :mod:`portalign.kernels.cpu.mutual_information`.

``joint_histograms`` launches a grid of ``pixel chunks x poses`` over the list
of usable frame pixels (``pixel_list``). Each block counts one chunk of them
under one pose into a private histogram in shared memory (int32 atomics: a
chunk has at most ``32767`` pixels and a pixel adds at most ``PV_ONE = 2**16``,
so a bin cannot overflow), then adds its
non-zero bins to the pose's int64 histogram in global memory (int64 atomics)
and starts on its next chunk (grid-stride). Weights are the CPU's fixed-point
integers, computed from positions rounded exactly as on the CPU (see
:mod:`.device`), and integer sums do not depend on their order: the histograms
are bit-identical to the CPU kernel's and the same on every run. Histograms
too large for shared memory (more than about 110 bins) are counted straight
into global memory with the same integer atomics.

``mutual_information`` is one block per pose: integer totals and marginals,
then float64 entropy terms summed by a fixed pairwise tree (deterministic; equal
to the CPU within about 1e-12 relative, not bit-identical: the CPU sums in a
different order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda, int32

from . import launch
from .device import add_rn, mul_rn

__all__ = ["quantize", "joint_histograms", "mutual_information", "PV_ONE", "MAX_CHUNK_PIXELS"]

#: Fixed-point scale of one pixel's weight (the CPU kernel's).
PV_ONE = 65536
#: Most frame pixels one block counts into its int32 shared histogram before flushing it.
MAX_CHUNK_PIXELS = 32767


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
def _quantize(image, mask, low, scale, bins, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        if mask[i, j] == 0:
            out[i, j] = -1
            continue
        b = int((float(image[i, j]) - low) * scale)
        if b < 0:
            b = 0
        elif b >= bins:
            b = bins - 1
        out[i, j] = b


@cuda.jit(device=True)
def _pv_weights(rows, cols, frame_bins, ref_bins, affines, k, t):  # pragma: no cover - compiled
    """Return ``(fb, b00, b01, b10, b11, qx, qy)`` of listed pixel ``t`` under pose ``k``; ``fb < 0``: skip."""
    i = rows[t]
    j = cols[t]
    fb = frame_bins[i, j]
    if fb < 0:
        return -1, 0, 0, 0, 0, 0, 0
    ref_rows, ref_cols = ref_bins.shape
    # x = (a00 j + a01 i) + a02 with the CPU's roundings (no FMA)
    x = add_rn(add_rn(mul_rn(affines[k, 0, 0], float(j)), mul_rn(affines[k, 0, 1], float(i))), affines[k, 0, 2])
    y = add_rn(add_rn(mul_rn(affines[k, 1, 0], float(j)), mul_rn(affines[k, 1, 1], float(i))), affines[k, 1, 2])
    if x < 0.0 or y < 0.0:
        return -1, 0, 0, 0, 0, 0, 0
    c0 = int(x)
    r0 = int(y)
    if c0 >= ref_cols - 1 or r0 >= ref_rows - 1:
        return -1, 0, 0, 0, 0, 0, 0
    b00 = ref_bins[r0, c0]
    b01 = ref_bins[r0, c0 + 1]
    b10 = ref_bins[r0 + 1, c0]
    b11 = ref_bins[r0 + 1, c0 + 1]
    if b00 < 0 or b01 < 0 or b10 < 0 or b11 < 0:
        return -1, 0, 0, 0, 0, 0, 0
    # x - c0 is exact and * 256 is exact: the same truncation as the CPU
    qx = int((x - c0) * 256.0)
    qy = int((y - r0) * 256.0)
    return int(fb), int(b00), int(b01), int(b10), int(b11), qx, qy


@cuda.jit(cache=True)
def _clear_histograms(out):  # pragma: no cover - compiled
    n_pose, n_f, n_r = out.shape
    for p in range(cuda.grid(1), n_pose * n_f * n_r, cuda.gridsize(1)):
        k = p // (n_f * n_r)
        rest = p - k * (n_f * n_r)
        a = rest // n_r
        out[k, a, rest - a * n_r] = 0


@cuda.jit(cache=True)
def _joint_histograms_shared(rows, cols, count, frame_bins, ref_bins, affines, chunk, out):  # pragma: no cover
    local = cuda.shared.array(0, dtype=int32)  # n_f * n_r counters, sized at launch
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_r = out.shape[2]
    n_cells = out.shape[1] * n_r
    for start in range(cuda.blockIdx.x * chunk, count, cuda.gridDim.x * chunk):
        for c in range(t, n_cells, nt):
            local[c] = 0
        cuda.syncthreads()
        for p in range(start + t, min(start + chunk, count), nt):
            fb, b00, b01, b10, b11, qx, qy = _pv_weights(rows, cols, frame_bins, ref_bins, affines, k, p)
            if fb < 0:
                continue
            row = fb * n_r
            cuda.atomic.add(local, row + b00, np.int32((256 - qx) * (256 - qy)))
            cuda.atomic.add(local, row + b01, np.int32(qx * (256 - qy)))
            cuda.atomic.add(local, row + b10, np.int32((256 - qx) * qy))
            cuda.atomic.add(local, row + b11, np.int32(qx * qy))
        cuda.syncthreads()
        for c in range(t, n_cells, nt):
            v = local[c]
            if v != 0:
                a = c // n_r
                cuda.atomic.add(out, (k, a, c - a * n_r), np.int64(v))
        cuda.syncthreads()  # the next chunk clears ``local`` only after every thread has flushed


@cuda.jit(cache=True)
def _joint_histograms_global(rows, cols, count, frame_bins, ref_bins, affines, chunk, out):  # pragma: no cover
    k = cuda.blockIdx.y
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for start in range(cuda.blockIdx.x * chunk, count, cuda.gridDim.x * chunk):
        for p in range(start + t, min(start + chunk, count), nt):
            fb, b00, b01, b10, b11, qx, qy = _pv_weights(rows, cols, frame_bins, ref_bins, affines, k, p)
            if fb < 0:
                continue
            cuda.atomic.add(out, (k, fb, b00), np.int64((256 - qx) * (256 - qy)))
            cuda.atomic.add(out, (k, fb, b01), np.int64(qx * (256 - qy)))
            cuda.atomic.add(out, (k, fb, b10), np.int64((256 - qx) * qy))
            cuda.atomic.add(out, (k, fb, b11), np.int64(qx * qy))


@cuda.jit(cache=True)
def _mutual_information(hist, normalised, out):  # pragma: no cover - compiled
    red = cuda.shared.array(256, dtype=np.float64)  # launch.REDUCE_MAX_THREADS
    red_int = cuda.shared.array(256, dtype=np.int64)
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_f = hist.shape[1]
    n_r = hist.shape[2]
    # integer total: exact, so every thread divides by the same number
    part = 0
    for c in range(t, n_f * n_r, nt):
        a = c // n_r
        part += hist[k, a, c - a * n_r]
    red_int[t] = part
    _tree_sum(red_int, t, nt)
    total_int = red_int[0]
    if total_int <= 0:
        if t == 0:
            out[k] = 0.0
        return
    total = float(total_int)
    # - sum p log p over the joint histogram, the frame marginal (rows) and the reference marginal (columns)
    h_joint = 0.0
    for c in range(t, n_f * n_r, nt):
        a = c // n_r
        h = hist[k, a, c - a * n_r]
        if h > 0:
            q = h / total
            h_joint -= q * math.log(q)
    h_f = 0.0
    for a in range(t, n_f, nt):
        m = 0
        for b in range(n_r):
            m += hist[k, a, b]
        if m > 0:
            q = m / total
            h_f -= q * math.log(q)
    h_r = 0.0
    for b in range(t, n_r, nt):
        m = 0
        for a in range(n_f):
            m += hist[k, a, b]
        if m > 0:
            q = m / total
            h_r -= q * math.log(q)
    red[t] = h_joint
    _tree_sum(red, t, nt)
    h_joint = red[0]
    cuda.syncthreads()  # everyone has read red[0] before it is reused
    red[t] = h_f
    _tree_sum(red, t, nt)
    h_f = red[0]
    cuda.syncthreads()
    red[t] = h_r
    _tree_sum(red, t, nt)
    h_r = red[0]
    if t == 0:
        if normalised:
            out[k] = (h_f + h_r) / h_joint if h_joint > 0.0 else 1.0
        else:
            out[k] = h_f + h_r - h_joint


def quantize(image: Any, mask: Any, low: float, high: float, bins: int, out: Any) -> None:
    """Write the bin of each pixel into ``out`` (int16), ``-1`` where ``mask == 0``.

    Values are clipped to ``[low, high]`` and mapped linearly onto ``0 .. bins-1``.
    """
    n = image.shape[0] * image.shape[1]
    if n == 0:
        return
    scale = int(bins) / (float(high) - float(low))  # the CPU kernel's float64 scale
    tpb = launch.threads_per_block()
    launch.configured(_quantize, launch.blocks_for(n, tpb), tpb)(
        launch.device_arg(image), launch.device_arg(mask), float(low), scale, int(bins), launch.device_arg(out)
    )


def joint_histograms(rows: Any, cols: Any, count: int, frame_bins: Any, ref_bins: Any, affines: Any,
                     out: Any) -> None:
    """Fill ``out[k, frame_bin, ref_bin]`` with partial-volume counts for each pose ``k``.

    Parameters
    ----------
    rows, cols : int32[>= count]
        The usable frame pixels (see :func:`portalign.kernels.gpu.mask.pixel_list`);
        only these are visited.
    count : int
        Number of entries of ``rows``/``cols`` in use.
    frame_bins : int16[rows, cols]
        Frame bins (``-1`` pixels are skipped even if listed).
    ref_bins : int16[ref_rows, ref_cols]
        Reference bins, ``-1`` where the reference is not valid.
    affines : float64[K, 2, 3]
        Frame pixel -> reference pixel maps (a device array on a GPU).
    out : int64[K, bins, bins]
        Overwritten; bit-identical to the CPU kernel's result.
    """
    n_pose, n_f, n_r = out.shape
    count = int(count)
    if n_pose == 0 or n_f * n_r == 0:
        return
    tpb = launch.threads_per_block()
    out_d = launch.device_arg(out)
    launch.configured(_clear_histograms, launch.blocks_for(n_pose * n_f * n_r, tpb), tpb)(out_d)
    if count <= 0:
        return
    chunk = min(tpb * int(launch.PIXELS_PER_THREAD), MAX_CHUNK_PIXELS)
    grid = (launch.blocks_for(count, chunk), n_pose)
    args = (
        launch.device_arg(rows), launch.device_arg(cols), count, launch.device_arg(frame_bins),
        launch.device_arg(ref_bins), launch.device_arg(affines), chunk, out_d,
    )
    shared_bytes = n_f * n_r * 4
    if shared_bytes <= launch.SHARED_HISTOGRAM_MAX_BYTES:
        launch.configured(_joint_histograms_shared, grid, tpb, shared_bytes)(*args)
    else:
        launch.configured(_joint_histograms_global, grid, tpb)(*args)


def mutual_information(hist: Any, normalised: bool, out: Any) -> None:
    """Write the mutual information of each joint histogram ``hist[k]`` into ``out[k]``.

    ``MI = H(F) + H(R) - H(F, R)`` in nats; with ``normalised``
    ``(H(F) + H(R)) / H(F, R)``. An empty histogram gives 0.
    """
    n_pose = hist.shape[0]
    if n_pose == 0:
        return
    tpb = launch.threads_per_block()
    launch.configured(_mutual_information, n_pose, tpb)(launch.device_arg(hist), bool(normalised), launch.device_arg(out))
