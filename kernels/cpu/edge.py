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

Pixels are split into a fixed number of chunks, each summed in order and the
chunk sums added in order: the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["gradient_correlation", "CHUNKS", "INVALID_FEATURE", "VALID_LIMIT"]

#: Real part of a reference feature where the reference is not valid (outside its field, off its border;
#: the imaginary part is 0 there). Features lie in [-1, 1]. Such a pixel is a zero feature with no weight:
#: a frame pixel's energy counts in ``S_ff`` by the bilinear share of valid pixels in its sample, so a
#: frame pixel over the reference's invalid region is not compared at all (both masks apply, as for MI).
INVALID_FEATURE = 4.0
#: Reference feature values above this mark an invalid pixel.
VALID_LIMIT = 2.0
#: Fixed number of pixel chunks summed separately then added in order (deterministic for any thread count).
CHUNKS = 16


@njit(parallel=True, cache=True, fastmath={"nnan", "ninf", "nsz", "arcp", "contract"}, nogil=True)
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
    # pixel-major: each listed pixel is read once and compared under every pose; the poses of a
    # stencil sample the reference within a pixel or two of each other, so those reads hit cache.
    # Fixed chunks (not one per thread) keep the summation order, and so the result, independent
    # of the thread count.
    n_chunks = CHUNKS
    size = (count + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, n_pose, 3))
    for c in prange(n_chunks):
        acc = partial[c]
        for t in range(c * size, min(count, (c + 1) * size)):
            i = rows[t]
            j = cols[t]
            # float64 from here on: float32 products would round differently on every backend
            fr = np.float64(frame_re[i, j])
            fi = np.float64(frame_im[i, j])
            if fr == 0.0 and fi == 0.0:
                continue
            energy = fr * fr + fi * fi
            for k in range(n_pose):
                x = affines[k, 0, 0] * j + affines[k, 0, 1] * i + affines[k, 0, 2]
                y = affines[k, 1, 0] * j + affines[k, 1, 1] * i + affines[k, 1, 2]
                c0 = int(x) if x >= 0.0 else -1
                r0 = int(y) if y >= 0.0 else -1
                if c0 < 0 or r0 < 0 or c0 >= ref_cols - 1 or r0 >= ref_rows - 1:
                    acc[k, 1] += energy  # off the reference image: the frame's edge finds no match
                    continue
                wx = x - c0
                wy = y - r0
                w00 = (1.0 - wx) * (1.0 - wy)
                w01 = wx * (1.0 - wy)
                w10 = (1.0 - wx) * wy
                w11 = wx * wy
                # an invalid reference pixel (outside its field) is a zero feature and no weight: the frame
                # pixel counts in S_ff by the valid share of its sample, continuously in the pose
                a00 = np.float64(ref_re[r0, c0])
                a01 = np.float64(ref_re[r0, c0 + 1])
                a10 = np.float64(ref_re[r0 + 1, c0])
                a11 = np.float64(ref_re[r0 + 1, c0 + 1])
                if max(max(a00, a01), max(a10, a11)) <= VALID_LIMIT:
                    # the common case: a wholly valid cell
                    rr = w00 * a00 + w01 * a01 + w10 * a10 + w11 * a11
                    ri = (w00 * ref_im[r0, c0] + w01 * ref_im[r0, c0 + 1] + w10 * ref_im[r0 + 1, c0]
                          + w11 * ref_im[r0 + 1, c0 + 1])
                    acc[k, 1] += energy
                else:
                    v = 0.0
                    rr = 0.0
                    ri = 0.0
                    if a00 <= VALID_LIMIT:
                        v += w00
                        rr += w00 * a00
                        ri += w00 * np.float64(ref_im[r0, c0])
                    if a01 <= VALID_LIMIT:
                        v += w01
                        rr += w01 * a01
                        ri += w01 * np.float64(ref_im[r0, c0 + 1])
                    if a10 <= VALID_LIMIT:
                        v += w10
                        rr += w10 * a10
                        ri += w10 * np.float64(ref_im[r0 + 1, c0])
                    if a11 <= VALID_LIMIT:
                        v += w11
                        rr += w11 * a11
                        ri += w11 * np.float64(ref_im[r0 + 1, c0 + 1])
                    if v <= 0.0:
                        continue  # wholly outside the reference's valid region: not compared, not counted
                    acc[k, 1] += v * energy
                # turn the reference feature by 2*theta, then Re(z_f * conj(z_r))
                tr = rotations[k, 0] * rr - rotations[k, 1] * ri
                ti = rotations[k, 1] * rr + rotations[k, 0] * ri
                acc[k, 0] += fr * tr + fi * ti
                acc[k, 2] += tr * tr + ti * ti
    out[:, :] = 0.0
    for c in range(n_chunks):
        for k in range(n_pose):
            for q in range(3):
                out[k, q] += partial[c, k, q]
