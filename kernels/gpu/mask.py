"""Masks and intensity statistics on the per-frame path (numba.cuda), twin of :mod:`portalign.kernels.cpu.mask`.

``threshold_mask`` and ``erode_box`` are bit-identical to the CPU: the erosion
is the same separable square (a row pass into ``scratch``, then a column pass),
but each thread scans its own window instead of keeping a running count, which
is O(N r) work in exchange for one thread per pixel.

``pixel_list`` is an order-preserving compaction: a thread per row counts its
pixels, one block turns the counts into row offsets (a scan), and a thread per
row writes its pixels from its offset, so the list is in the CPU's row-major
order; the count comes back to the host (the CPU kernel returns it too).

``masked_range`` runs two kernels (masked min/max/count, then a 4096-bin
histogram privatised in shared memory and merged with integer atomics) and
reads the histogram back to finish the quantile scan on the host: two small
device-to-host copies, and the same ``(low, high, count)`` as the CPU, bit for bit
(min, max and integer counts do not depend on the order of the atomics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda
from portalign.kernels.cpu.mask import BULK_FRACTION, FENCE_WIDTHS, RANGE_BINS, RANGE_PASSES, RANGE_SPAN  # the CPU's

from . import launch

__all__ = ["threshold_mask", "erode_box", "masked_range", "pixel_list"]


@cuda.jit(cache=True)
def _threshold_mask(image, threshold, above, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        v = float(image[i, j])  # the CPU compares in float64
        if above:
            out[i, j] = 1 if v > threshold else 0
        else:
            out[i, j] = 1 if v < threshold else 0


@cuda.jit(cache=True)
def _erode_rows(mask, r, scratch):  # pragma: no cover - compiled
    rows, cols = mask.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        keep = 1
        if j - r < 0 or j + r >= cols:
            keep = 0
        else:
            for jj in range(j - r, j + r + 1):
                if mask[i, jj] == 0:
                    keep = 0
                    break
        scratch[i, j] = keep


@cuda.jit(cache=True)
def _erode_cols(scratch, r, out):  # pragma: no cover - compiled
    rows, cols = scratch.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        keep = 1
        if i - r < 0 or i + r >= rows:
            keep = 0
        else:
            for ii in range(i - r, i + r + 1):
                if scratch[ii, j] == 0:
                    keep = 0
                    break
        out[i, j] = keep


@cuda.jit(cache=True)
def _range_init(extrema, hist):  # pragma: no cover - compiled
    t = cuda.grid(1)
    if t == 0:
        extrema[0] = np.inf
        extrema[1] = -np.inf
    for b in range(t, hist.shape[0], cuda.gridsize(1)):
        hist[b] = 0


@cuda.jit(cache=True)
def _range_extrema(image, mask, lo_keep, hi_keep, scale, b_low, b_high, extrema, hist):  # pragma: no cover - compiled
    # extrema[0], extrema[1]: min and max of the masked values in [lo_keep, hi_keep] (float64 of float32 values)
    # and, with b_low >= 0, whose histogram bin (RANGE_BINS of 1 / scale from lo_keep) is in [b_low, b_high];
    # hist[RANGE_BINS]: their count
    block = cuda.shared.array(2, dtype=np.float64)
    block_count = cuda.shared.array(1, dtype=np.int64)
    t = cuda.threadIdx.x
    if t == 0:
        block[0] = np.inf
        block[1] = -np.inf
        block_count[0] = 0
    cuda.syncthreads()
    rows, cols = image.shape
    lo = np.inf
    hi = -np.inf
    count = 0
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        if mask[i, j] != 0:
            v = float(image[i, j])
            if v < lo_keep or v > hi_keep:
                continue
            if b_low >= 0:
                b = min(int((v - lo_keep) * scale), RANGE_BINS - 1)
                if b < b_low or b > b_high:
                    continue
            count += 1
            lo = min(lo, v)
            hi = max(hi, v)
    if count > 0:
        cuda.atomic.min(block, 0, lo)
        cuda.atomic.max(block, 1, hi)
        cuda.atomic.add(block_count, 0, count)
    cuda.syncthreads()
    if t == 0 and block_count[0] > 0:
        cuda.atomic.min(extrema, 0, block[0])
        cuda.atomic.max(extrema, 1, block[1])
        cuda.atomic.add(hist, hist.shape[0] - 1, block_count[0])


@cuda.jit(cache=True)
def _range_histogram(image, mask, extrema, hist):  # pragma: no cover - compiled
    local = cuda.shared.array(4096, dtype=np.int32)  # RANGE_BINS; a block counts < 2**31 pixels
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_bins = hist.shape[0] - 1
    lo = extrema[0]
    hi = extrema[1]
    if hi <= lo:
        return  # uniform across the block (also with no masked pixel: inf, -inf): no thread reaches a syncthreads
    scale = n_bins / (hi - lo)
    for b in range(t, n_bins, nt):
        local[b] = 0
    cuda.syncthreads()
    rows, cols = image.shape
    for p in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
        i = p // cols
        j = p - i * cols
        if mask[i, j] != 0:
            v = float(image[i, j])
            if v < lo or v > hi:
                continue  # below or above a refinement pass's window (none in the first pass)
            b = int((v - lo) * scale)
            cuda.atomic.add(local, min(b, n_bins - 1), np.int32(1))
    cuda.syncthreads()
    for b in range(t, n_bins, nt):
        c = local[b]
        if c != 0:
            cuda.atomic.add(hist, b, np.int64(c))


@cuda.jit(cache=True)
def _row_counts(mask, offsets):  # pragma: no cover - compiled
    rows, cols = mask.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        n = 0
        for j in range(cols):
            if mask[i, j] != 0:
                n += 1
        offsets[i] = n


@cuda.jit(cache=True)
def _exclusive_scan(offsets, n):  # pragma: no cover - compiled
    # one block: offsets[0:n] (counts) -> exclusive prefix sums, offsets[n] = total (Hillis-Steele per chunk)
    buf = cuda.shared.array(256, dtype=np.int64)  # launch.REDUCE_MAX_THREADS
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    carry = 0
    for start in range(0, n, nt):
        p = start + t
        mine = offsets[p] if p < n else 0
        buf[t] = mine
        cuda.syncthreads()
        s = 1
        while s < nt:
            v = buf[t]
            if t >= s:
                v += buf[t - s]
            cuda.syncthreads()
            buf[t] = v
            cuda.syncthreads()
            s *= 2
        if p < n:
            offsets[p] = carry + buf[t] - mine
        carry += buf[nt - 1]
        cuda.syncthreads()  # buf is reloaded by the next chunk
    if t == 0:
        offsets[n] = carry


@cuda.jit(cache=True)
def _row_fill(mask, offsets, rows_out, cols_out):  # pragma: no cover - compiled
    rows, cols = mask.shape
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        at = offsets[i]
        for j in range(cols):
            if mask[i, j] != 0:
                rows_out[at] = i
                cols_out[at] = j
                at += 1


def threshold_mask(image: Any, threshold: float, above: bool, out: Any) -> None:
    """Write 1 where ``image > threshold`` (``above``) or ``image < threshold`` (not ``above``), else 0."""
    n = image.shape[0] * image.shape[1]
    if n == 0:
        return
    tpb = launch.threads_per_block()
    launch.configured(_threshold_mask, launch.blocks_for(n, tpb), tpb)(
        launch.device_arg(image), float(threshold), bool(above), launch.device_arg(out)
    )


def erode_box(mask: Any, radius: int, scratch: Any, out: Any) -> None:
    """Write into ``out`` the erosion of ``mask`` by a ``(2r+1)^2`` square; outside the image counts as 0.

    ``scratch`` (uint8, same shape) holds the row pass. ``radius`` must not be negative.
    """
    n = mask.shape[0] * mask.shape[1]
    if n == 0:
        return
    if radius < 0:
        raise ValueError(f"erode_box: radius must not be negative; got {radius}")
    tpb = launch.threads_per_block()
    blocks = launch.blocks_for(n, tpb)
    scratch_d = launch.device_arg(scratch)
    launch.configured(_erode_rows, blocks, tpb)(launch.device_arg(mask), int(radius), scratch_d)
    launch.configured(_erode_cols, blocks, tpb)(scratch_d, int(radius), launch.device_arg(out))


def pixel_list(mask: Any, rows: Any, cols: Any) -> int:
    """Write the coordinates of the pixels where ``mask != 0`` into ``rows``/``cols``; return their count.

    Row-major order, as on the CPU. ``rows`` and ``cols`` (int32) must hold at
    least the count (the mask's size always does). The count is read back to the
    host: one small device-to-host copy.
    """
    n_rows = mask.shape[0]
    if n_rows == 0 or mask.shape[1] == 0:
        return 0
    tpb = launch.threads_per_block()
    offsets = launch.scratch("pixel_offsets", (n_rows + 1,), np.int64)
    offsets_d, mask_d = launch.device_arg(offsets), launch.device_arg(mask)
    blocks = launch.blocks_for(n_rows, tpb)
    launch.configured(_row_counts, blocks, tpb)(mask_d, offsets_d)
    launch.configured(_exclusive_scan, 1, tpb)(offsets_d, n_rows)
    launch.configured(_row_fill, blocks, tpb)(mask_d, offsets_d, launch.device_arg(rows), launch.device_arg(cols))
    return int(launch.to_host(offsets[n_rows:])[0])


def masked_range(image: Any, mask: Any, low_fraction: float, high_fraction: float) -> tuple:
    """Return ``(low, high, count)``: the given quantiles of the masked pixels (host floats and int).

    Same definition as the CPU kernel (:mod:`portalign.kernels.cpu.mask`'s docstring): outliers beyond a
    squeezed bulk left out, then quantiles from a 4096-bin histogram between the minimum and maximum of the
    values kept, histogrammed again where few bins hold them; with no masked pixel ``(0.0, 0.0, 0)``.
    An ordinary image reads back two small arrays; each further pass one or two more.
    """
    n = image.shape[0] * image.shape[1]
    if n == 0:
        return 0.0, 0.0, 0
    tpb = launch.threads_per_block()
    blocks = launch.blocks_for(n, tpb)
    extrema = launch.scratch("range_extrema", (2,), np.float64)
    hist = launch.scratch("range_hist", (RANGE_BINS + 1,), np.int64)  # last entry: masked count
    image_d, mask_d = launch.device_arg(image), launch.device_arg(mask)
    extrema_d, hist_d = launch.device_arg(extrema), launch.device_arg(hist)
    init = launch.configured(_range_init, launch.blocks_for(RANGE_BINS + 1, tpb), tpb)

    def kept(lo_keep: float, hi_keep: float) -> tuple[np.ndarray, float, float, int]:
        """Extrema, count and histogram of the masked values in ``[lo_keep, hi_keep]``; two small reads."""
        init(extrema_d, hist_d)
        launch.configured(_range_extrema, blocks, tpb)(image_d, mask_d, lo_keep, hi_keep, 0.0, -1, -1, extrema_d,
                                                        hist_d)
        launch.configured(_range_histogram, blocks, tpb)(image_d, mask_d, extrema_d, hist_d)
        counts = np.array(launch.to_host(hist))  # a copy: the simulator's to_host is the buffer itself
        e_lo, e_hi = (float(v) for v in launch.to_host(extrema))
        return counts, e_lo, e_hi, int(counts[RANGE_BINS])

    def window(lo: float, hi: float, b_low: int, b_high: int) -> tuple[float, float]:
        """Smallest and largest value of the histogram's bins ``b_low..b_high`` (bin index, as counted)."""
        init(extrema_d, hist_d)
        launch.configured(_range_extrema, blocks, tpb)(image_d, mask_d, lo, hi, RANGE_BINS / (hi - lo), b_low,
                                                        b_high, extrema_d, hist_d)
        w_lo, w_hi = (float(v) for v in launch.to_host(extrema))
        return w_lo, w_hi

    counts, lo, hi, count = kept(-np.inf, np.inf)
    if count == 0:
        return 0.0, 0.0, 0
    if hi <= lo:
        return lo, hi, count
    # 1. outliers beyond a squeezed bulk leave (the CPU kernel's steps)
    n_in = count
    for attempt in range(RANGE_PASSES):
        b_low, b_high = _quantile_bins(counts[:RANGE_BINS], 0, BULK_FRACTION * n_in, (1.0 - BULK_FRACTION) * n_in)
        if b_low < 0 or b_high < 0 or b_high - b_low >= RANGE_SPAN or attempt == RANGE_PASSES - 1:
            break
        w_lo, w_hi = window(lo, hi, b_low, b_high)
        if not w_hi > w_lo:
            break
        f_lo = max(lo, w_lo - FENCE_WIDTHS * (w_hi - w_lo))
        f_hi = min(hi, w_hi + FENCE_WIDTHS * (w_hi - w_lo))
        if f_lo == lo and f_hi == hi:
            break
        counts, lo, hi, n_in = kept(f_lo, f_hi)
        if not hi > lo:
            return lo, hi, count
    # 2. the wanted quantiles of the values kept
    want_low = float(low_fraction) * n_in
    want_high = float(high_fraction) * n_in
    below = 0
    q_low, q_high = lo, hi
    for attempt in range(RANGE_PASSES):
        scale = RANGE_BINS / (hi - lo)
        hist_host = counts[:RANGE_BINS]
        b_low, b_high = _quantile_bins(hist_host, below, want_low, want_high)
        q_low = lo + b_low / scale if b_low >= 0 else lo
        q_high = lo + (b_high + 1) / scale if b_high >= 0 else hi
        if b_low < 0 or b_high < 0 or b_high - b_low >= RANGE_SPAN or attempt == RANGE_PASSES - 1:
            break
        below += int(hist_host[:b_low].sum())
        w_lo, w_hi = window(lo, hi, b_low, b_high)
        if w_hi <= w_lo:
            return w_lo, w_hi, count
        counts, lo, hi, _ = kept(w_lo, w_hi)
    return q_low, q_high, count


def _quantile_bins(hist: np.ndarray, seen: int, want_low: float, want_high: float) -> tuple[int, int]:
    """Run the CPU kernel's cumulative scan (``quantile_bins``), vectorised: first bins past the wanted counts."""
    running = seen + np.cumsum(hist)
    past_high = np.flatnonzero(running >= want_high)
    stop = int(past_high[0]) if past_high.size else RANGE_BINS - 1
    past_low = np.flatnonzero(running[: stop + 1] > want_low)
    return (int(past_low[0]) if past_low.size else -1), (stop if past_high.size else -1)
