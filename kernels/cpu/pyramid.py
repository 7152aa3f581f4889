"""Image pyramid: 2x2 box downsampling (numba, CPU).

A level-``k+1`` pixel ``(i, j)`` is the mean of level-``k`` pixels
``(2i..2i+1, 2j..2j+1)``; its centre sits at ``2i + 0.5`` in level-``k``
coordinates. An odd last row/column is dropped. The box filter is its own
anti-aliasing at factor 2 and costs one read of the source: the first level is
the only full-resolution pass on the per-frame path.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["box_half", "downsample2", "downsample2_mask", "interpolate_grid", "smooth_separable"]


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def downsample2(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the 2x2 box mean of ``src`` into ``out`` (shape ``src.shape // 2``)."""
    rows, cols = out.shape
    for i in prange(rows):
        r0 = 2 * i
        for j in range(cols):
            c0 = 2 * j
            out[i, j] = np.float32(0.25) * (src[r0, c0] + src[r0, c0 + 1] + src[r0 + 1, c0] + src[r0 + 1, c0 + 1])


@njit(parallel=True, cache=True, nogil=True)
def downsample2_mask(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write 1 where all four source pixels are 1 (a conservative mask reduction)."""
    rows, cols = out.shape
    for i in prange(rows):
        r0 = 2 * i
        for j in range(cols):
            c0 = 2 * j
            out[i, j] = src[r0, c0] & src[r0, c0 + 1] & src[r0 + 1, c0] & src[r0 + 1, c0 + 1]


@njit(parallel=True, cache=True, nogil=True)
def box_half(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the 2x2 box means of ``src`` (float64) into ``out`` (``src.shape // 2``: an odd last line dropped).

    A reference's resampling pyramid (``portalign.registration._reference``): each mean is
    ``0.25 * (((a + b) + c) + d)`` of the box's pixels (row, column) ``(0, 0), (1, 0), (0, 1), (1, 1)``, the order of
    numpy's sum of the four strided views, so the same numbers as that sum (2.8 ms of a 1024 x 768 reference's plan
    in numpy, its three levels' boxes).
    """
    rows, cols = out.shape
    for i in prange(rows):
        r0 = 2 * i
        for j in range(cols):
            c0 = 2 * j
            out[i, j] = 0.25 * (((src[r0, c0] + src[r0 + 1, c0]) + src[r0, c0 + 1]) + src[r0 + 1, c0 + 1])


@njit(parallel=True, cache=True, nogil=True)
def interpolate_grid(src: np.ndarray, row0: np.ndarray, row1: np.ndarray, row_w: np.ndarray, col0: np.ndarray,
                     col1: np.ndarray, col_w: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Bilinear samples of ``src`` (float64) on a rectilinear grid, along the rows first, then along the columns.

    Output row ``r`` is ``src[row0[r]] * (1 - row_w[r]) + src[row1[r]] * row_w[r]``, and its column ``c`` the same
    of that line at ``col0[c], col1[c], col_w[c]``: the two passes of ``numpy.take`` a reference's resampling made,
    in the same order of operations (the same numbers), without their two full-size temporaries.

    Parameters
    ----------
    src : float64[rows, cols]
    row0, row1 : int64[n_rows]; row_w : float64[n_rows]
        The source rows each output row lies between, and its weight on the second.
    col0, col1 : int64[n_cols]; col_w : float64[n_cols]
    out : float64[n_rows, n_cols]
    """
    n_rows, n_cols = out.shape
    src_cols = src.shape[1]
    for r in prange(n_rows):
        a = row0[r]
        b = row1[r]
        w = row_w[r]
        v = 1.0 - w
        line = np.empty(src_cols)
        for k in range(src_cols):
            line[k] = src[a, k] * v + src[b, k] * w
        for c in range(n_cols):
            wc = col_w[c]
            out[r, c] = line[col0[c]] * (1.0 - wc) + line[col1[c]] * wc


#: Largest pixel magnitude a frame may hold: far beyond any detector's values (a damaged file's 1e38), and small
#: enough that the box sums of the pyramid and the float64 sums of the metrics cannot overflow.
MAX_PIXEL_MAGNITUDE = 1e30

#: One more than the entries of the levels tuple :func:`frame_pyramid` takes (padded): one compiled version for
#: every plan.
PYRAMID_SLOTS = 8


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _line_sums(src, r0, part):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Return the sums of ``src``'s rows ``r0`` and ``r0 + 1`` (float64); add their columns' into ``part``.

    Reassociated (vectorised): the order of a row's additions is not its pixels' (a screen's means, not a result).
    """
    upper = 0.0
    lower = 0.0
    for c in range(src.shape[1]):
        a = np.float64(src[r0, c])
        b = np.float64(src[r0 + 1, c])
        upper += a
        lower += b
        part[c] += a + b
    return upper, lower


#: Blocks of rows whose column sums :func:`frame_pyramid` keeps apart (at most one thread each).
LINE_SUM_BLOCKS = 16


@njit(inline="always", cache=True, nogil=True)
def _reduce_row(src, out, i, cols, first, row_flags, row_means, part):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Level-1 row ``i`` of :func:`frame_pyramid`: its boxes, flags, its two source rows' means, their columns' sums."""
    r0 = 2 * i
    src_cols = src.shape[1]
    bad = 0
    differ = 0
    for j in range(cols):
        c0 = 2 * j
        a = src[r0, c0]
        b = src[r0, c0 + 1]
        c = src[r0 + 1, c0]
        d = src[r0 + 1, c0 + 1]
        s = a + b + c + d
        # a NaN, an infinity or a huge value among the four (integer counts vectorise); NaN compares false
        bad += np.int64(not (abs(s) <= MAX_PIXEL_MAGNITUDE))
        differ += np.int64(a != first) + np.int64(b != first) + np.int64(c != first) + np.int64(d != first)
        out[i, j] = np.float32(0.25) * s
    upper, lower = _line_sums(src, r0, part)
    row_means[r0] = upper / src_cols
    row_means[r0 + 1] = lower / src_cols
    row_flags[i, 0] = bad
    row_flags[i, 1] = differ


@njit(parallel=True, cache=True, nogil=True)
def frame_pyramid(frame: np.ndarray, levels, depth: int, row_flags: np.ndarray,  # type: ignore[no-untyped-def]
                  row_means: np.ndarray, col_means: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """Box-reduce ``frame`` into ``levels[0..depth-1]`` (pyramid levels 1..depth); return ``(finite, varies)``.

    The per-frame front of the CPU program in one call: whether every frame value is finite and within
    ``MAX_PIXEL_MAGNITUDE`` and whether any differs from the first (what ``portalign.image.check_frame_pixels``
    asks of a frame) are taken on the same read as the first reduction, as integer flags that vectorise with
    it. The magnitude test is on each box's sum, so it flags a superset (four values near the bound; a sum
    that overflows): a flagged frame goes to ``check_frame_pixels``, which decides. The means of the frame's
    detector rows and columns (the screen for dead and hot lines, ``portalign.field``'s ``line_candidates``) are
    taken on the same read too: the columns' summed per block of rows (``LINE_SUM_BLOCKS``), then the blocks.

    Parameters
    ----------
    frame : float32[rows, cols]
        The frame (may be read-only).
    levels : tuple of PYRAMID_SLOTS - 1 float32[rows_k, cols_k]
        The pyramid's buffers (each half the previous, floored), padded with any of them.
    depth : int
        Levels to fill (at most ``PYRAMID_SLOTS - 1``).
    row_flags : int64[>= rows_1, 2]
        Scratch: per output row of level 1, non-finite and differing counts.
    row_means, col_means : float64[rows], float64[cols]
        Overwritten: the mean of each detector row and column of ``frame`` (summed in float64; a non-finite frame's
        are not used).

    Returns
    -------
    tuple of (bool, bool)
        No box flagged (every value finite and within ``MAX_PIXEL_MAGNITUDE``); some value differs from
        ``frame[0, 0]``. The levels hold the same numbers as
        :func:`downsample2` level by level.
    """
    src = frame
    out = levels[0]
    rows, cols = out.shape
    first = src[0, 0]
    src_rows, src_cols = src.shape
    # the columns' sums in float64, one row of partial sums per block of rows (each block on one thread)
    blocks = min(rows, LINE_SUM_BLOCKS)
    col_parts = np.zeros((max(blocks, 1), src_cols))
    for block in prange(blocks):
        part = col_parts[block]
        for i in range(block * rows // blocks, (block + 1) * rows // blocks):
            _reduce_row(src, out, i, cols, first, row_flags, row_means, part)
    col_sums = col_parts[0]
    for block in range(1, blocks):
        for c in range(src_cols):
            col_sums[c] += col_parts[block, c]
    # the odd last row and column, which no box covers
    bad = 0
    differ = 0
    for r in range(2 * rows, src_rows):
        total = 0.0
        for c in range(src_cols):
            v = src[r, c]
            bad += np.int64(not (abs(v) <= MAX_PIXEL_MAGNITUDE))
            differ += np.int64(v != first)
            total += np.float64(v)
            col_sums[c] += np.float64(v)
        row_means[r] = total / src_cols
    for r in range(2 * rows):
        for c in range(2 * cols, src_cols):
            v = src[r, c]
            bad += np.int64(not (abs(v) <= MAX_PIXEL_MAGNITUDE))
            differ += np.int64(v != first)
    for c in range(src_cols):
        col_means[c] = col_sums[c] / src_rows
    for i in range(rows):
        bad += row_flags[i, 0]
        differ += row_flags[i, 1]
    for k in range(1, depth):
        downsample2(levels[k - 1], levels[k])
    return bad == 0, differ > 0


#: The smoothing's arithmetic: float32 sums (each pixel's taps in their order, so the same numbers for any thread
#: count), contracted into fused multiply-adds; no reassociation.
_SMOOTH_MATH = {"nnan", "ninf", "nsz", "contract"}


@njit(parallel=True, cache=True, nogil=True, fastmath=_SMOOTH_MATH)
def smooth_separable(src: np.ndarray, live_rows: np.ndarray, live_cols: np.ndarray, taps_rows: np.ndarray,
                     taps_cols: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Normalised separable convolution of ``src`` with ``taps_rows`` (along rows) then ``taps_cols``; into ``out``.

    Sums in float32 (within a few 1e-7 of float64 for kernels of up to 6 sigma a side: the noisy frames it smooths
    hold noise of a per cent or more), as fused multiply-adds in a fixed order: the same numbers for any thread count.
    A 1024 x 768 frame and a 1 mm Gaussian at 0.26 mm pixels (25 taps a side): 4.3 ms on two cores (7.5 ms in
    float64, 20 ms before each row of the column pass was laid out once).

    Parameters
    ----------
    src : float32[rows, cols]
    live_rows, live_cols : uint8[rows], uint8[cols]
        0 for a dead detector line: it gives no weight to its neighbours (the convolution is normalised by the
        weight that did reach each pixel) and keeps its own value in ``out``.
    taps_rows, taps_cols : float64[2 h + 1]
        Symmetric kernels (a sampled Gaussian); the image's edge is extended by its nearest pixel.
    scratch, out : float32[rows, cols]
        Overwritten (``scratch``: the pass along the rows).
    """
    rows, cols = src.shape
    hr = taps_rows.shape[0] // 2
    hc = taps_cols.shape[0] // 2
    row_taps = taps_rows.astype(np.float32)
    col_taps = taps_cols.astype(np.float32)
    # along the columns the weight that reaches a pixel depends on its column only: once per column (float64)
    col_live = np.empty(cols, dtype=np.float32)
    for j in range(cols):
        col_live[j] = 1.0 if live_cols[j] else 0.0
    col_weight = np.zeros(cols)
    for j in range(cols):
        for k in range(-hc, hc + 1):
            col_weight[j] += taps_cols[k + hc] * col_live[_clamp(j + k, cols)]
    # along the rows it depends on the row only: each source row is added whole (an inner loop that vectorises)
    for i in prange(rows):
        total = np.zeros(cols, dtype=np.float32)
        weight = 0.0
        for k in range(-hr, hr + 1):
            r = _clamp(i + k, rows)
            if live_rows[r]:
                w = row_taps[k + hr]
                weight += taps_rows[k + hr]
                for j in range(cols):
                    total[j] += w * src[r, j]
        if weight > 0.0:
            scale = np.float32(1.0 / weight)
            for j in range(cols):
                scratch[i, j] = total[j] * scale
        else:
            for j in range(cols):
                scratch[i, j] = src[i, j]
    # along the columns: each row's live values laid out once, padded by its edge pixels (the image's edge extended),
    # then each tap added to the whole row (one contiguous loop that vectorises)
    for i in prange(rows):
        if not live_rows[i]:
            for j in range(cols):
                out[i, j] = src[i, j]
            continue
        padded = np.empty(cols + 2 * hc, dtype=np.float32)
        first = col_live[0] * scratch[i, 0]
        last = col_live[cols - 1] * scratch[i, cols - 1]
        for j in range(hc):
            padded[j] = first
            padded[hc + cols + j] = last
        for j in range(cols):
            padded[hc + j] = col_live[j] * scratch[i, j]
        acc = np.zeros(cols, dtype=np.float32)
        for t in range(2 * hc + 1):
            w = col_taps[t]
            for j in range(cols):
                acc[j] += w * padded[j + t]
        for j in range(cols):
            out[i, j] = acc[j] / col_weight[j] if live_cols[j] and col_weight[j] > 0.0 else src[i, j]


@njit(inline="always", cache=True, nogil=True)
def _clamp(index: int, size: int) -> int:  # pragma: no cover - compiled
    """``index`` moved onto ``0 .. size - 1`` (the image's edge extended by its nearest pixel)."""
    return 0 if index < 0 else (size - 1 if index >= size else index)
