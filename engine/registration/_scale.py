"""The anatomy's own scale check: whether the frame matches the reference better at another size.

A wrong ``RTImageSID``, ``RadiationMachineSAD`` or ``ImagePlanePixelSpacing`` in either header scales one image's
millimetres at the isocentre against the other's. A shift-and-rotation search then finds a compromise pose, and
every millimetre of it is off by a share of the distance from the beam axis to the anatomy: a frame whose header
said SID 1400 mm where it was taken at 1500 mm was matched 1.7 mm off, ok, against its DRR; a held-out set's 40 pairs
(seed 61), registered with the frame's millimetres 7 % too small and 7 % too large, were ok 42 times in 80, up to
1.8 mm off, where at the right scale the ok ones were at most 0.57 mm off (session note 30). The field sizes compare
the two scales where both images show a field, or the frame's planned jaws bound it; a DRR against a frame with no
jaws in its header has neither. The anatomy itself has a size, and this check measures it.

The edge correlation of the final pose is scored with the frame's pixel coordinates stretched by scale factors
``exp(k * SCALE_STEP)``, ``|k| <= SCALE_STEPS``, about the centroid of the usable pixels (the compromise pose
places the anatomy's centre right: stretching about it leaves that in place), on the coarsest refinement level:
one kernel call of ``2 * SCALE_STEPS + 1`` poses. Setup errors do not change the anatomy's size by as much as
the check's threshold: a patient 40 mm off the isocentre along the beam changes its magnification by 4 %
(SAD 1000 mm).

The check runs on the first frames of a frame geometry until one confirms the stated scale (the profile peaks at
1, clearly above the scales ``MIN_SCALE_STEPS`` away); then the geometry's later frames skip it (a scale is a
property of the headers, the same for every frame of a geometry).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._plan import FramePlan, Level
from ._refine import evaluate

__all__ = ["scale_profile", "scale_verdict", "scale_reason", "SCALE_STEP", "SCALE_STEPS", "MIN_SCALE_STEPS", "MIN_SCALE_GAIN",
           "MIN_SCALE_SIGNIFICANCE"]

#: Step of the scale factors scored (natural log): 2.5 %.
SCALE_STEP = 0.025
#: Steps each side of 1 (8: scales 0.82 to 1.22; a wrong scale beyond them leaves no match to check: a held-out
#: set's 20 and 25 % scale errors were all refused already).
SCALE_STEPS = 8
#: Steps from 1 (2: 5 %) where the best scale must lie for a mismatch, and the profile must fall for a confirmation.
MIN_SCALE_STEPS = 2
#: Edge correlation the best scale must gain over the stated one (a mismatch), or the stated one over every scale
#: ``MIN_SCALE_STEPS`` away (a confirmation). Held-out sets of five seeds (two CTs, four detector grids; session
#: note 30): at the right scale, 137 ok pairs, the best scale gained at most 0.022 and never 2 steps from 1; with the
#: frame's millimetres 5 % or 7 % off, 259 pairs matched (no other refusal), the best gained 0.03 to 0.26 on most.
MIN_SCALE_GAIN = 0.03
#: A profile whose best step is not 1 and gains this much over it leans: the pose is polished at that scale and the
#: profile scored again.
LEAN_GAIN = 0.01
#: Rounds of the 3 x 3 translation grid (one-pixel steps) that polish the pose at the scale the profile leans to.
POLISH_ROUNDS = 3
#: ... and that gain in chance spreads of the correlation over the level's usable pixels (``sqrt(n / 2)``): a weak
#: bound (a noise excursion of the far scales over a flat profile reaches about 3), because the check runs on matches
#: that stand well above chance already (``MIN_MATCH_SIGNIFICANCE``), whose profile at the right scale falls steeply
#: away from 1; at 3 it refused 173 of the 259, at 1.5 218, with no false refusal at any.
MIN_SCALE_SIGNIFICANCE = 1.5


def _scores(backend: Any, plan: FramePlan, level: Level, poses: np.ndarray, scales: np.ndarray,
            centre: np.ndarray) -> np.ndarray:
    """Normalised edge correlation of each ``poses[k]`` with the frame stretched by ``scales[k]`` about ``centre``."""
    return evaluate(backend, plan, level, poses, "edge", stretch=(scales, centre))


def scale_profile(backend: Any, plan: FramePlan, level: Level, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score the edge correlation of ``pose`` with the frame stretched by each scale factor.

    Where the profile leans away from the stated scale (its best step is not 1), the translation is polished at
    that scale (``POLISH_ROUNDS`` rounds of a 3 x 3 grid of one-pixel steps) and the profile scored again from
    the polished pose: the compromise pose of a wrong scale pulls the profile's peak towards 1.

    Parameters
    ----------
    backend : Backend
    plan : FramePlan
        The frame's plan; ``level`` holds this frame's features and usable-pixel list.
    level : Level
    pose : float64[3]
        ``(dx_mm, dy_mm, theta_rad)``, the final pose.

    Returns
    -------
    scales : float64[2 * SCALE_STEPS + 1]
        ``exp(k * SCALE_STEP)``: the factor by which the frame's millimetres are multiplied about the usable
        pixels' centroid (> 1: the frame's stated pixels are too small, its anatomy measures smaller than the
        reference's).
    scores : float64[2 * SCALE_STEPS + 1]
        Normalised edge correlation at each (``kernels.cpu.edge.gradient_correlation``).
    """
    steps = np.arange(-SCALE_STEPS, SCALE_STEPS + 1)
    scales = np.exp(steps * SCALE_STEP)
    n = scales.shape[0]
    usable = int(level.usable)
    rows = np.asarray(backend.to_host(level.pixel_rows[:usable]))
    cols = np.asarray(backend.to_host(level.pixel_cols[:usable]))
    centre = np.array([cols.mean(), rows.mean()])  # (col, row) pixels
    start = np.asarray(pose, dtype=np.float64)
    profile = _scores(backend, plan, level, np.repeat(start[None, :], n, axis=0), scales, centre)
    best = int(np.argmax(profile))
    if best == SCALE_STEPS or profile[best] - profile[SCALE_STEPS] < LEAN_GAIN:
        return scales, profile
    # the pose polished at the scale the profile leans to, then the profile again from it
    polished = start.copy()
    grid = np.array([(i, j) for j in (-1, 0, 1) for i in (-1, 0, 1)], dtype=np.float64)
    for _ in range(POLISH_ROUNDS):
        poses = np.repeat(polished[None, :], 9, axis=0)
        poses[:, 0] += grid[:, 0] * level.spacing[1]
        poses[:, 1] += grid[:, 1] * level.spacing[0]
        values = _scores(backend, plan, level, poses, np.full(9, scales[best]), centre)
        polished = poses[int(np.argmax(values))].copy()
    again = _scores(backend, plan, level, np.repeat(polished[None, :], n, axis=0), scales, centre)
    # each scale's best of the two poses (the final pose is the optimum at the stated scale: its score there holds)
    return scales, np.maximum(profile, again)


def scale_verdict(scales: np.ndarray, scores: np.ndarray, usable: int) -> dict[str, Any]:
    """Read a scale profile: the best scale, its gain, and whether it says mismatch or confirms the stated scale.

    Returns
    -------
    dict
        ``best_scale`` (the profile's peak, refined by a parabola through its three highest points in log scale),
        ``gain`` (edge correlation of the best grid scale over the stated one), ``margin`` (the stated scale's over
        the best ``MIN_SCALE_STEPS`` or more away; negative where one of them scores higher), ``significance`` (the
        larger of the two in chance spreads), ``mismatch`` and ``confirmed`` (bools).
    """
    middle = SCALE_STEPS
    best = int(np.argmax(scores))
    chance = math.sqrt(max(usable, 1) / 2.0)
    gain = float(scores[best] - scores[middle])
    far = np.r_[scores[:middle - MIN_SCALE_STEPS + 1], scores[middle + MIN_SCALE_STEPS:]]
    margin = float(scores[middle] - far.max())
    peak = math.log(scales[best])
    if 0 < best < len(scores) - 1:  # the parabola's vertex through the peak and its neighbours
        a, b, c = scores[best - 1], scores[best], scores[best + 1]
        curvature = a - 2.0 * b + c
        if curvature < 0:
            peak += 0.5 * (a - c) / curvature * SCALE_STEP
    # a peak, not the end of the range: a profile still rising there is no scale found (two Winston-Lutz phantoms'
    # balls of different sizes rose to the last step)
    mismatch = (abs(best - middle) >= MIN_SCALE_STEPS and 0 < best < len(scores) - 1 and gain >= MIN_SCALE_GAIN
                and gain * chance >= MIN_SCALE_SIGNIFICANCE)
    confirmed = best == middle and margin >= MIN_SCALE_GAIN and margin * chance >= MIN_SCALE_SIGNIFICANCE
    return {"best_scale": math.exp(peak), "gain": gain, "margin": margin,
            "significance": max(gain, margin) * chance, "mismatch": bool(mismatch), "confirmed": bool(confirmed)}


def scale_reason(verdict: dict[str, Any]) -> str:
    """Return the refusal of a frame whose anatomy matches the reference best at another scale."""
    s = verdict["best_scale"]
    size = f"{(1.0 - 1.0 / s) * 100:.0f} % smaller" if s > 1.0 else f"{(1.0 / s - 1.0) * 100:.0f} % larger"
    return (f"different scales: the frame's anatomy measures about {size} than the reference's at the isocentre (its "
            f"edges match best at a scale of {s:.3f}, edge correlation {verdict['gain']:+.2f} over the stated one): "
            "a wrong RTImageSID, RadiationMachineSAD or ImagePlanePixelSpacing in one header, or another imager "
            "position than its header says; check them, or set allow_view_mismatch (--allow-view-mismatch) if the "
            "scales are truly the same")
