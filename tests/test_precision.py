"""Low-dose frames: a weak match whose optimum noise sets is reported not ok, never as a confident shift.

MV portal frames rendered with 2-3 % noise inside an 80 mm field against a kV-like reference: before the
split-half check, one came back 2.7 mm off with ok=true.
"""

from __future__ import annotations

import math

import numpy as np
import portalign
import pytest

from tests.synthetic import anatomy, field_aperture, moved, mv_portal

SHAPE = (256, 256)


@pytest.fixture(scope="module")
def setup():
    base = anatomy(384, seed=2)
    reference = portalign.prepare_reference(
        portalign.Image.from_array(moved(base, 0, 0, 0, shape=SHAPE), pixel_spacing_mm=1.0, kind="drr"), backend="cpu")
    return base, reference


def _frames(base, noise: float, count: int = 6, seed: int = 5):
    rng = np.random.default_rng(seed)
    aperture = field_aperture(SHAPE, 1.0, 40, 40)
    for k in range(count):
        dx, dy, theta = rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-2, 2)
        pixels = mv_portal(moved(base, dx, dy, theta, shape=SHAPE), aperture, noise=noise, seed=k)
        yield (dx, dy), portalign.Image.from_array(pixels, pixel_spacing_mm=1.0)


@pytest.mark.parametrize("noise", [0.02, 0.03])
def test_low_dose_frames_are_precise_or_not_ok(setup, noise):
    base, reference = setup
    results = []
    for (dx, dy), frame in _frames(base, noise):
        result = reference.register(frame)
        # a frame found unusable before matching, or no match: nothing measured (null), and not ok
        assert result.ok or result.reason
        error = math.nan if result.dx_mm is None else math.hypot(result.dx_mm - dx, result.dy_mm - dy)
        results.append((result, error))
        if result.ok:
            assert error < 1.0, (error, result.details["split_half_mm"])
    imprecise = [r for r, _ in results if r.reason.startswith("imprecise")]
    assert imprecise, [r.reason for r, _ in results]
    for r in imprecise:
        assert r.details["split_half_mm"] > 1.0 and "two halves of the usable pixels" in r.reason
    # a rotation the halves disagree on is not reported (None), never a noisy number
    for r, _ in results:
        if r.details["split_half_deg"] is not None and r.details["split_half_deg"] > 1.0:
            assert r.rotation_deg is None and any("rotation not estimated" in w for w in r.warnings)


def test_a_clean_strong_match_skips_the_check(setup):
    base, reference = setup
    (dx, dy), frame = next(_frames(base, 0.0))
    result = reference.register(frame)
    assert result.ok and math.hypot(result.dx_mm - dx, result.dy_mm - dy) < 0.2
    assert result.details["split_half_mm"] is None  # a strong edge match is not re-refined
