"""Edge matching: gradient-orientation correlation under candidate poses (numba, CPU).

Both images carry doubled-angle edge features (:mod:`.gradient`). For a pose
with rotation ``theta`` a reference edge at ``q`` appears in the frame at
``p = R(theta) q + d`` with its orientation turned by ``theta``, so its doubled
angle feature turns by ``2*theta``. The score of a pose is::

    sum_p Re( z_f(p) * conj( e^{2i theta} z_r(A p) ) )   (matching edges, same orientation)
    sum_p |z_f(p)|^2,  sum_p |z_r(A p)|^2                 (for normalisation)

over frame pixels with a non-zero feature, ``z_r`` sampled bilinearly. The
normalised correlation ``S_fr / sqrt(S_ff * S_rr)`` lies in ``[-1, 1]`` and does
not care whether edges are bright-to-dark or dark-to-bright.

Both masks apply. Reference pixels outside the reference's valid region (its
field less the edge band, its border) hold ``INVALID_FEATURE``; they enter the
sample as zero features with no weight, and a frame pixel's energy counts in
``S_ff`` by the valid share ``v`` of its bilinear weights (0 to 1, continuous in
the pose). A frame pixel wholly over the reference's invalid region is not
compared at all; one that maps off the reference image counts wholly (its edge
finds no match there). With one mask only (the frame's), frame pixels leaving
the reference's field count as mismatches, which tilts the score's peak toward
the larger overlap; with both, two copies of one image score symmetrically
about their true shift (ITK's fixed and moving masks work the same way).

Pixels are split into a fixed number of chunks, each summed block by block by the
same vectorised loop and the chunk sums added in order: the result does not
depend on the thread count (it may differ from the float64 reference in the last
bits: the sums within a block are reassociated).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["gradient_correlation", "matched_orientation", "orientation_summary", "sampled_edge_score", "CHUNKS",
           "INVALID_FEATURE", "VALID_LIMIT"]

#: Real part of a reference feature where the reference is not valid (outside its field, off its border;
#: the imaginary part is 0 there). Features lie in [-1, 1]. Such a pixel is a zero feature with no weight:
#: a frame pixel's energy counts in ``S_ff`` by the bilinear share of valid pixels in its sample, so a
#: frame pixel over the reference's invalid region is not compared at all (both masks apply, as for MI).
INVALID_FEATURE = 4.0
#: Reference feature values above this mark an invalid pixel.
VALID_LIMIT = 2.0
#: Fixed number of pixel chunks summed separately then added in order (deterministic for any thread count).
CHUNKS = 16
#: Listed pixels gathered into contiguous buffers at a time (4 float64 buffers: 16 KiB, in the L1 cache).
BLOCK = 512


@njit(inline="always", nogil=True)
def _gather(rows: np.ndarray, cols: np.ndarray, frame_re: np.ndarray, frame_im: np.ndarray, start: int, m: int,
            block_rows: np.ndarray, block_cols: np.ndarray, block_re: np.ndarray, block_im: np.ndarray
            ) -> None:  # pragma: no cover - compiled
    """Copy listed pixels ``start .. start + m - 1`` (their places and frame features) into the contiguous blocks.

    float64 from here on: float32 products would round differently on every backend.
    """
    for u in range(m):
        i = rows[start + u]
        j = cols[start + u]
        block_rows[u] = i
        block_cols[u] = j
        block_re[u] = frame_re[i, j]
        block_im[u] = frame_im[i, j]


@njit(inline="always", fastmath={"nnan", "ninf", "nsz", "arcp", "contract", "reassoc"}, nogil=True)
def _turned_sample(ref_re: np.ndarray, ref_im: np.ndarray, x: float, y: float, x_end: float, y_end: float,
                   last_col: int, last_row: int, turn_c: float, turn_s: float
                   ) -> tuple[bool, float, float, float]:  # pragma: no cover - compiled
    """Sample the reference feature bilinearly at reference pixel ``(x, y)`` and turn it by ``2 theta``.

    Returns ``(inside, v, tr, ti)``: whether ``(x, y)`` lies on the reference image (off it, the frame's edge finds no
    match and its energy counts wholly), the valid share ``v`` of the bilinear weights (an invalid reference pixel,
    ``INVALID_FEATURE``, is a zero feature with no weight, so a frame pixel counts in ``S_ff`` by ``v``, continuously
    in the pose), and the turned feature ``(cos 2theta + i sin 2theta) z_r`` (``turn_c``, ``turn_s``). Off the image a
    cell that exists is read (the place clamped) and then masked off by ``inside``: the loop that calls it keeps no
    branch, and numba vectorises it (inlined in both kernels of this module).
    """
    inside = x >= 0.0 and y >= 0.0 and x < x_end and y < y_end
    xc = min(max(x, 0.0), x_end)
    yc = min(max(y, 0.0), y_end)
    c0 = min(int(xc), last_col)
    r0 = min(int(yc), last_row)
    wx = xc - c0
    wy = yc - r0
    a00 = np.float64(ref_re[r0, c0])
    a01 = np.float64(ref_re[r0, c0 + 1])
    a10 = np.float64(ref_re[r0 + 1, c0])
    a11 = np.float64(ref_re[r0 + 1, c0 + 1])
    w00 = (1.0 - wx) * (1.0 - wy) if a00 <= VALID_LIMIT else 0.0
    w01 = wx * (1.0 - wy) if a01 <= VALID_LIMIT else 0.0
    w10 = (1.0 - wx) * wy if a10 <= VALID_LIMIT else 0.0
    w11 = wx * wy if a11 <= VALID_LIMIT else 0.0
    v = 1.0 if max(max(a00, a01), max(a10, a11)) <= VALID_LIMIT else w00 + w01 + w10 + w11
    rr = w00 * a00 + w01 * a01 + w10 * a10 + w11 * a11
    ri = (w00 * ref_im[r0, c0] + w01 * ref_im[r0, c0 + 1] + w10 * ref_im[r0 + 1, c0]
          + w11 * ref_im[r0 + 1, c0 + 1])
    return inside, v, turn_c * rr - turn_s * ri, turn_s * rr + turn_c * ri


@njit(inline="always", nogil=True)
def _compared(fr: float, fi: float, col: float, row: float, m00: float, m01: float, m02: float, m10: float, m11: float,
              m12: float, ref_re: np.ndarray, ref_im: np.ndarray, x_end: float, y_end: float, last_col: int,
              last_row: int, turn_c: float, turn_s: float) -> tuple[float, float, float]:  # pragma: no cover - compiled
    """Return one frame pixel's ``(S_ff, S_fr, S_rr)`` terms (the module docstring's rule).

    Its feature ``fr + i fi`` at ``(col, row)`` against the reference's, turned, at the affine map ``m`` of it
    (:func:`_turned_sample`): Re(z_f * conj(z_r)); a zero frame feature and a sample wholly outside the reference's
    valid region (v = 0) are not compared. Branch-free (inlined in :func:`gradient_correlation`'s vectorised loop and
    in :func:`sampled_edge_score`).
    """
    energy = fr * fr + fi * fi
    x = m00 * col + m01 * row + m02
    y = m10 * col + m11 * row + m12
    inside, v, tr, ti = _turned_sample(ref_re, ref_im, x, y, x_end, y_end, last_col, last_row, turn_c, turn_s)
    compared = 1.0 if inside and energy > 0.0 else 0.0
    return energy * (v if inside else 1.0), compared * (fr * tr + fi * ti), compared * (tr * tr + ti * ti)


@njit(parallel=True, cache=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract", "reassoc"}, nogil=True)
def gradient_correlation(
    rows: np.ndarray,
    cols: np.ndarray,
    count: int,
    frame_re: np.ndarray,
    frame_im: np.ndarray,
    ref_re: np.ndarray,
    ref_im: np.ndarray,
    affines: np.ndarray,
    rotations: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Write ``(S_fr, S_ff, S_rr)`` for each pose into ``out[k, :]``.

    Parameters
    ----------
    rows, cols : int32[>= count]
        The usable frame pixels, row-major (see ``mask.pixel_list``); only these are visited.
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
    n_pose = affines.shape[0]
    if out.shape[0] < n_pose or rotations.shape[0] < n_pose:
        raise ValueError("gradient_correlation: out and rotations need a row per pose of affines")
    ref_rows, ref_cols = ref_re.shape
    # pose-major in blocks: a block of listed pixels is gathered once into contiguous buffers (in cache), then
    # every pose runs one loop over it. That loop has no branches (masks instead), so numba vectorises it
    # (gathers of the reference samples); its sums are reassociated within a block, in the same way on every
    # call. Fixed chunks (not one per thread) keep the result independent of the thread count.
    n_chunks = CHUNKS
    size = (count + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, n_pose, 3))
    x_end = ref_cols - 1.0
    y_end = ref_rows - 1.0
    last_col = ref_cols - 2
    last_row = ref_rows - 2
    for c in prange(n_chunks):
        acc = partial[c]
        block_cols = np.empty(BLOCK)
        block_rows = np.empty(BLOCK)
        block_re = np.empty(BLOCK)
        block_im = np.empty(BLOCK)
        chunk_end = min(count, (c + 1) * size)
        for start in range(c * size, chunk_end, BLOCK):
            m = min(BLOCK, chunk_end - start)
            _gather(rows, cols, frame_re, frame_im, start, m, block_rows, block_cols, block_re, block_im)
            for k in range(n_pose):
                m00 = affines[k, 0, 0]
                m01 = affines[k, 0, 1]
                m02 = affines[k, 0, 2]
                m10 = affines[k, 1, 0]
                m11 = affines[k, 1, 1]
                m12 = affines[k, 1, 2]
                turn_c = rotations[k, 0]
                turn_s = rotations[k, 1]
                s_fr = 0.0
                s_ff = 0.0
                s_rr = 0.0
                for u in range(m):
                    ff, fr_, rr = _compared(block_re[u], block_im[u], block_cols[u], block_rows[u], m00, m01, m02,
                                            m10, m11, m12, ref_re, ref_im, x_end, y_end, last_col, last_row,
                                            turn_c, turn_s)
                    s_ff += ff
                    s_fr += fr_
                    s_rr += rr
                acc[k, 0] += s_fr
                acc[k, 1] += s_ff
                acc[k, 2] += s_rr
    out[:, :] = 0.0
    for c in range(n_chunks):
        for k in range(n_pose):
            for q in range(3):
                out[k, q] += partial[c, k, q]


@njit(cache=True, nogil=True)
def sampled_edge_score(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int, scale: int, limit: float,
                       ref_re: np.ndarray, ref_im: np.ndarray, affine: np.ndarray, turn_c: float,
                       turn_s: float) -> tuple:  # pragma: no cover - compiled
    """Estimate a finer level's edge correlation at one pose from one of its pixels under each listed coarser pixel.

    The normalised correlation ``S_fr / sqrt(S_ff S_rr)`` of :func:`gradient_correlation` (one pose), with the
    frame's features made here (``.gradient.orientation_features``: doubled-angle, central differences, the edge
    scale ``eps`` the mean gradient magnitude) on a sample instead of the finer level's whole usable region: pixel
    ``(r scale + scale // 2, c scale + scale // 2)`` of ``image`` for each listed pixel ``(r, c)`` of the coarser level
    (``scale = 2**levels`` between them: the pixel near the centre of the block the coarser pixel averages). A screen
    that costs one pass over the listed pixels where the full score costs the finer level's preparation (its mask,
    range, features: about ``scale**2`` times the pixels): ``_program._fine_polish`` skips a finer level whose
    estimate lies well below its threshold.

    Parameters
    ----------
    image : real[rows, cols]
        The finer level's frame image (read as float64).
    rows, cols : int32[>= count]
        The coarser level's usable pixels.
    count : int
    scale : int
        Finer-level pixels per coarser-level pixel along each axis.
    limit : float
        A pixel with a central difference beyond it is left out (next to an outlier; ``inf``: none).
    ref_re, ref_im : float32[ref_rows, ref_cols]
        The reference's features on the finer level (``INVALID_FEATURE`` where it is not valid).
    affine : float64[2, 3]
        The finer level's frame pixel -> reference pixel map of the pose.
    turn_c, turn_s : float
        ``cos 2 theta``, ``sin 2 theta`` of the pose's rotation.

    Returns
    -------
    (score, pixels) : (float, int)
        The estimate (NaN with no pixel) and the pixels it was taken on.
    """
    n_rows, n_cols = image.shape
    ref_rows, ref_cols = ref_re.shape
    half = scale // 2
    at_row = np.empty(count, dtype=np.int64)
    at_col = np.empty(count, dtype=np.int64)
    grad_x = np.empty(count)
    grad_y = np.empty(count)
    n = 0
    total = 0.0
    for t in range(count):
        i = rows[t] * scale + half
        j = cols[t] * scale + half
        if i < 1 or j < 1 or i > n_rows - 2 or j > n_cols - 2:
            continue
        gx = 0.5 * (np.float64(image[i, j + 1]) - np.float64(image[i, j - 1]))
        gy = 0.5 * (np.float64(image[i + 1, j]) - np.float64(image[i - 1, j]))
        if abs(gx) > limit or abs(gy) > limit:
            continue
        at_row[n] = i
        at_col[n] = j
        grad_x[n] = gx
        grad_y[n] = gy
        total += math.sqrt(gx * gx + gy * gy)
        n += 1
    if n == 0:
        return np.nan, 0
    eps = max(total / n, 1e-12)
    eps2 = eps * eps
    x_end = ref_cols - 1.0
    y_end = ref_rows - 1.0
    s_fr = 0.0
    s_ff = 0.0
    s_rr = 0.0
    for u in range(n):
        gx = grad_x[u]
        gy = grad_y[u]
        norm = gx * gx + gy * gy + eps2
        ff, fr_, rr = _compared((gx * gx - gy * gy) / norm, 2.0 * gx * gy / norm, at_col[u], at_row[u], affine[0, 0],
                                affine[0, 1], affine[0, 2], affine[1, 0], affine[1, 1], affine[1, 2], ref_re, ref_im,
                                x_end, y_end, ref_cols - 2, ref_rows - 2, turn_c, turn_s)
        s_ff += ff
        s_fr += fr_
        s_rr += rr
    return s_fr / math.sqrt(max(s_ff * s_rr, 1e-30)), n


@njit(parallel=True, cache=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract", "reassoc"}, nogil=True)
def matched_orientation(
    rows: np.ndarray,
    cols: np.ndarray,
    count: int,
    frame_re: np.ndarray,
    frame_im: np.ndarray,
    ref_re: np.ndarray,
    ref_im: np.ndarray,
    affines: np.ndarray,
    rotations: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Write ``(W, Z_re, Z_im, S_ff, E)``, the orientation sums of the edges that match at each pose, into ``out[k, :]``.

    Every frame pixel compared at the pose (as in :func:`gradient_correlation`) whose match term
    ``m = Re(z_f conj(e^{2i theta} z_r))`` is positive adds ``m`` to ``W`` and ``m z_f / |z_f|`` (its edge's
    doubled-angle direction, weighted) to ``Z``. These are the matched edges' structure tensor in doubled-angle form
    (the orientation tensor of Bigun and Granlund, 1987, "Optimal orientation detection of linear symmetry"): its
    eigenvalues are ``(W + |Z|) / 2`` and ``(W - |Z|) / 2``, the weight of the matched edges across the dominant
    direction and along it. ``|Z| = W`` means every matched edge runs one way, and the match fixes no shift along
    them (the aperture problem). Noise's positive terms add weight every way alike: noise makes a match look less
    one-directional, never more (signed terms, unbiased, scattered a weak noisy match's ``W - |Z|`` below 0 and
    called a right answer one-directional).

    ``S_ff`` is :func:`gradient_correlation`'s (a frame pixel's energy by the valid share of its sample; wholly off
    the reference image) and ``E`` the energy of every usable frame pixel: ``S_ff / E`` is the share of the frame's
    edges that the pose's score counts, less than 1 where some lie over the reference's invalid region.

    Summed as :func:`gradient_correlation` is (fixed chunks, a branch-free loop over gathered blocks): the result does
    not depend on the thread count.

    Parameters
    ----------
    rows, cols, count, frame_re, frame_im, ref_re, ref_im, affines, rotations
        As for :func:`gradient_correlation`.
    out : float64[K, 5]
        Overwritten.
    """
    n_pose = affines.shape[0]
    if out.shape[0] < n_pose or rotations.shape[0] < n_pose:
        raise ValueError("matched_orientation: out and rotations need a row per pose of affines")
    ref_rows, ref_cols = ref_re.shape
    n_chunks = CHUNKS
    size = (count + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, n_pose, 5))
    x_end = ref_cols - 1.0
    y_end = ref_rows - 1.0
    last_col = ref_cols - 2
    last_row = ref_rows - 2
    for c in prange(n_chunks):
        acc = partial[c]
        block_cols = np.empty(BLOCK)
        block_rows = np.empty(BLOCK)
        block_re = np.empty(BLOCK)
        block_im = np.empty(BLOCK)
        chunk_end = min(count, (c + 1) * size)
        for start in range(c * size, chunk_end, BLOCK):
            m = min(BLOCK, chunk_end - start)
            _gather(rows, cols, frame_re, frame_im, start, m, block_rows, block_cols, block_re, block_im)
            for k in range(n_pose):
                m00 = affines[k, 0, 0]
                m01 = affines[k, 0, 1]
                m02 = affines[k, 0, 2]
                m10 = affines[k, 1, 0]
                m11 = affines[k, 1, 1]
                m12 = affines[k, 1, 2]
                turn_c = rotations[k, 0]
                turn_s = rotations[k, 1]
                w_sum = 0.0
                z_re = 0.0
                z_im = 0.0
                s_ff = 0.0
                e_all = 0.0
                for u in range(m):
                    fr = block_re[u]
                    fi = block_im[u]
                    energy = fr * fr + fi * fi
                    x = m00 * block_cols[u] + m01 * block_rows[u] + m02
                    y = m10 * block_cols[u] + m11 * block_rows[u] + m12
                    inside, v, tr, ti = _turned_sample(ref_re, ref_im, x, y, x_end, y_end, last_col, last_row,
                                                       turn_c, turn_s)
                    compared = 1.0 if inside and energy > 0.0 else 0.0
                    match = compared * max(fr * tr + fi * ti, 0.0)
                    # the edge's doubled-angle direction (a unit vector) weighted by its match term
                    unit = match / np.sqrt(max(energy, 1e-300))
                    w_sum += match
                    z_re += unit * fr
                    z_im += unit * fi
                    s_ff += energy * (v if inside else 1.0)
                    e_all += energy
                acc[k, 0] += w_sum
                acc[k, 1] += z_re
                acc[k, 2] += z_im
                acc[k, 3] += s_ff
                acc[k, 4] += e_all
    out[:, :] = 0.0
    for c in range(n_chunks):
        for k in range(n_pose):
            for q in range(5):
                out[k, q] += partial[c, k, q]


@njit(cache=True, nogil=True)
def orientation_summary(sums: np.ndarray) -> tuple[float, float, float]:  # pragma: no cover - compiled
    """Read one pose's :func:`matched_orientation` sums ``(W, Z_re, Z_im, S_ff, E)``: isotropy, direction, share.

    Returns ``(isotropy, direction_deg, counted_share)``: ``max(W - |Z|, 0) / (W + |Z|)``, the smaller eigenvalue of
    the matched edges' structure tensor over the larger (0: all one way, 1: every way alike); the way the dominant
    edges run in the frame, degrees from its x axis (columns) toward its y axis (rows), 0-180 (across their mean
    gradient, whose angle is half the doubled angle); and ``S_ff / E``, the share of the frame's edge energy the edge
    correlation counts. NaN where not measured (no matched edge: the first two; no frame edge: the last).
    """
    isotropy = direction = share = np.nan
    if sums[0] > 0.0:
        along = math.hypot(sums[1], sums[2])
        isotropy = max(sums[0] - along, 0.0) / (sums[0] + along)
        direction = (math.degrees(0.5 * math.atan2(sums[2], sums[1])) + 90.0) % 180.0
    if sums[4] > 0.0:
        share = sums[3] / sums[4]
    return isotropy, direction, share
