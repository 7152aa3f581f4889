"""Global search: FFT cross-correlation of edge features over every candidate rotation, no initial guess.

The best few distinct optima of the doubled-angle edge cross-correlation at the
coarse level become the candidates that refinement starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._plan import CoarseSearch, FramePlan, Level

__all__ = ["coarse_peaks", "global_search", "lane_rotations", "searched_rotations", "Candidate", "DISTINCT_MM"]

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


def searched_rotations(cs: CoarseSearch, rotate: bool) -> tuple:
    """Return the reference spectra, energies, angles and window buffer searched: every rotation, or 0 only."""
    if rotate:
        return cs.ref_spectra_conj, cs.ref_energy, cs.thetas, cs.window
    zero = cs.zero_index  # translation only: just the surface of rotation 0
    return (cs.ref_spectra_conj[zero:zero + 1], cs.ref_energy[zero:zero + 1], cs.thetas[zero:zero + 1],
            cs.window[zero:zero + 1])


def lane_rotations(plan: FramePlan) -> dict[bool, tuple]:
    """Return :func:`searched_rotations` of the lane's coarse search, every rotation (True) and rotation 0 (False).

    Made once per lane (``plan.program_inputs``; each lane has its own window buffers) for the compiled calls'
    per-lane inputs (``_frame.frame_levels``, ``_search_program``), which read it without a call a frame.
    """
    if "rotations" not in plan.program_inputs:
        cs = plan.coarse
        plan.program_inputs["rotations"] = {True: searched_rotations(cs, True), False: searched_rotations(cs, False)}
    return plan.program_inputs["rotations"]  # type: ignore[no-any-return]


def global_search(backend, plan: FramePlan, level: Level, n_candidates: int, rotate: bool) -> list[Candidate]:  # type: ignore[no-untyped-def]
    """Best distinct (translation, rotation) optima of the edge cross-correlation (rotation 0 only if not ``rotate``)."""
    cs = plan.coarse
    found = coarse_peaks(backend, plan, level, level.feat_re, level.feat_im, n_candidates, rotate)
    return [Candidate(cs.peak_poses[i].copy(), float(cs.peak_scores[i])) for i in range(found)]


def coarse_peaks(backend, plan: FramePlan, level: Level, feat_re, feat_im, n_candidates: int, rotate: bool) -> int:  # type: ignore[no-untyped-def]
    """Search the coarse level's edge features ``feat_re``, ``feat_im`` (``level``'s own, or a flipped copy of them).

    One call: spectrum, each rotation's window of the surface (index m = zero shift), normalisation, peaks. Returns how
    many optima were found; their poses and scores are in ``plan.coarse.peak_poses`` and ``peak_scores``.
    """
    cs = plan.coarse
    spectra, energy, thetas, window = searched_rotations(cs, rotate)
    return int(backend.kernels.coarse_search(
        feat_re, feat_im, cs.padded_shape[0], cs.padded_shape[1], cs.margin_px, spectra, energy,
        cs.window_rows, cs.window_cols, thetas, level.spacing[0], level.spacing[1], n_candidates,
        COARSE_RECHECK_RATIO, cs.suppress_px, window, cs.peak_poses, cs.peak_scores, backend.fft_workers()))
