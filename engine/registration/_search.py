"""Global search: FFT cross-correlation of edge features over every candidate rotation, no initial guess.

The best few distinct optima of the doubled-angle edge cross-correlation at the
coarse level become the candidates that refinement starts from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._plan import FramePlan, Level

__all__ = ["global_search", "Candidate", "DISTINCT_MM"]

#: Candidates closer than this (mm) are the same optimum (a broad peak, not an ambiguity).
DISTINCT_MM = 3.0
#: Most global-search optima carried into refinement (near-ties beyond ``candidates``).
MAX_CANDIDATES = 8
#: A runner-up whose global-search peak reaches this fraction of the best peak is refined too.
COARSE_RECHECK_RATIO = 0.85


@dataclass
class Candidate:
    pose: np.ndarray  # dx_mm, dy_mm, theta_rad
    score: float
    coarse_ratio: float = 1.0  # global-search peak over the best global-search peak


def global_search(backend, plan: FramePlan, level: Level, n_candidates: int, rotate: bool) -> list[Candidate]:  # type: ignore[no-untyped-def]
    """Best distinct (translation, rotation) optima of the edge cross-correlation (rotation 0 only if not ``rotate``)."""
    k = backend.kernels
    cs = plan.coarse
    xp = backend.xp
    frame_energy = float((level.feat_re.astype(xp.float64) ** 2 + level.feat_im.astype(xp.float64) ** 2).sum())
    spectrum = backend.asarray(k.feature_spectrum(level.feat_re, level.feat_im, cs.padded_shape, cs.margin_px))
    # translation only: just the surface of rotation 0
    chosen = slice(None) if rotate else slice(int(np.argmin(np.abs(cs.thetas))), int(np.argmin(np.abs(cs.thetas))) + 1)
    thetas = cs.thetas[chosen]
    # only the searched window is computed and leaves the device: (K, 2m+1, 2m+1), index m = zero shift
    k.correlation_window(spectrum, cs.ref_spectra_conj[chosen], cs.window_rows, cs.window_cols, cs.window[chosen])
    window = backend.to_host(cs.window[chosen])
    norm = np.sqrt(np.maximum(frame_energy * cs.ref_energy[chosen], 1e-30))
    window = window / norm[:, None, None]
    suppress = max(2, int(math.ceil(DISTINCT_MM / min(level.spacing))))
    # the best n_candidates peaks, and beyond them any near-tie (periodic anatomy has many)
    found = k.search_peaks(window, thetas, level.spacing[0], level.spacing[1], n_candidates, COARSE_RECHECK_RATIO,
                           suppress, cs.peak_poses, cs.peak_scores)
    return [Candidate(cs.peak_poses[i].copy(), float(cs.peak_scores[i])) for i in range(found)]
