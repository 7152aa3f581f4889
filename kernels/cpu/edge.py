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

Each pose's sums run in a fixed pixel order inside one thread (parallel over
poses): the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["gradient_correlation"]


@njit(parallel=True, cache=True)
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
        Reference features (zero where not valid).
    affines : float64[K, 2, 3]
        Frame pixel -> reference pixel maps.
    rotations : float64[K, 2]
        ``(cos 2theta, sin 2theta)`` of each pose.
    out : float64[K, 3]
        Overwritten.
    """
    n_pose = affines.shape[0]
    ref_rows, ref_cols = ref_re.shape
    for k in prange(n_pose):
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
        for t in range(count):
            i = rows[t]
            j = cols[t]
            fr = frame_re[i, j]
            fi = frame_im[i, j]
            if fr == 0.0 and fi == 0.0:
                continue
            s_ff += fr * fr + fi * fi
            x = a00 * j + a01 * i + a02
            y = a10 * j + a11 * i + a12
            if x < 0.0 or y < 0.0:
                continue
            c0 = int(x)
            r0 = int(y)
            if c0 >= ref_cols - 1 or r0 >= ref_rows - 1:
                continue
            wx = x - c0
            wy = y - r0
            w00 = (1.0 - wx) * (1.0 - wy)
            w01 = wx * (1.0 - wy)
            w10 = (1.0 - wx) * wy
            w11 = wx * wy
            rr = w00 * ref_re[r0, c0] + w01 * ref_re[r0, c0 + 1] + w10 * ref_re[r0 + 1, c0] + w11 * ref_re[r0 + 1, c0 + 1]
            ri = w00 * ref_im[r0, c0] + w01 * ref_im[r0, c0 + 1] + w10 * ref_im[r0 + 1, c0] + w11 * ref_im[r0 + 1, c0 + 1]
            # turn the reference feature by 2*theta, then Re(z_f * conj(z_r))
            tr = c2 * rr - s2 * ri
            ti = s2 * rr + c2 * ri
            s_fr += fr * tr + fi * ti
            s_rr += tr * tr + ti * ti
        out[k, 0] = s_fr
        out[k, 1] = s_ff
        out[k, 2] = s_rr
