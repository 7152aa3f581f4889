"""A reference that repeats itself (MLC pickets, leaves): an optimum one period away is compared, never ignored.

A new user's trial moved a real picket-fence image (pylinac's EPID-PF-LR.dcm) by 4 rows and 6 columns and got
it back ok at 15 mm off: the global search's coarse level had blurred the pickets, no candidate lay near the
truth, and the ambiguity check compares candidates only.
"""

from __future__ import annotations

import math

import numpy as np
import portalign
import pytest
from portalign.backends import cpu_backend
from portalign.registration._program import PERIODIC_MIN_RATIO, reference_periods

from tests.field_sets import REAL, window_pair
from tests.synthetic import anatomy, moved

PICKETS = REAL / "pylinac" / "picket_fence" / "EPID-PF-LR.dcm"


def _level(reference: portalign.Reference):  # type: ignore[no-untyped-def]
    """The finest working level of the reference's plan for its own geometry, filled."""
    image = reference.image
    pool = reference.frame_pool(image)
    plan = pool.acquire(1, reference.backend)
    try:
        return plan.levels[plan.refine_levels[-1]]
    finally:
        pool.release(plan)


def test_stripes_repeat_at_their_period_and_anatomy_does_not():
    cc = np.mgrid[0:256, 0:320][1].astype(float)
    stripes = portalign.Image.from_array(np.sin(2 * np.pi * cc / 12.0) + 0.05 * anatomy(320, seed=3)[:256],
                                         pixel_spacing_mm=1.0, kind="drr")
    level = _level(portalign.prepare_reference(stripes, backend="cpu"))
    periods = reference_periods(cpu_backend(), level, 20.0)
    assert periods, periods
    px, py, ratio = periods[0]
    # half the grating's period: the doubled-angle edge features do not tell a rising edge from a falling one
    assert abs(abs(px) - 6.0) <= max(level.spacing) and abs(py) <= max(level.spacing) and ratio >= PERIODIC_MIN_RATIO
    # computed once and kept on the level
    assert level.ref_periods is periods or level.ref_periods == periods
    soft = portalign.Image.from_array(moved(anatomy(384, seed=2), 0, 0, 0, shape=(256, 256)), pixel_spacing_mm=1.0,
                                      kind="drr")
    assert reference_periods(cpu_backend(), _level(portalign.prepare_reference(soft, backend="cpu")), 20.0) == []


def test_stripes_moved_by_more_than_half_a_period_are_not_ok():
    """A sine grating moved 8 mm (period 12, its edges' 6): the optima at 2 and 14 mm are as good; never ok there."""
    cc = np.mgrid[0:256, 0:320][1].astype(float)
    base = 0.05 * anatomy(320, seed=3)[:256]
    ref = portalign.Image.from_array(np.sin(2 * np.pi * cc / 12.0) + base, pixel_spacing_mm=1.0, kind="portal")
    frame = portalign.Image.from_array(np.sin(2 * np.pi * (cc - 8.0) / 12.0) + np.roll(base, 8, axis=1),
                                       pixel_spacing_mm=1.0, kind="portal")
    result = portalign.register(ref, frame, portalign.RegistrationOptions(estimate_rotation=False), backend="cpu")
    if result.ok:  # the faint anatomy may break the tie: then the answer is the right one
        assert math.hypot(result.dx_mm - 8.0, result.dy_mm) < 0.5, (result.dx_mm, result.dy_mm)
    else:
        assert "ambiguous" in result.reason, result.reason


@pytest.mark.real_data
@pytest.mark.skipif(not PICKETS.is_file(), reason=f"the real picket-fence image is not at {PICKETS} (../shared)")
@pytest.mark.parametrize("shift", [(4, 6), (4, 5), (4, 7), (2, 3), (-3, 8)])
def test_picket_fence_moved_is_never_ok_far_off(shift):
    """Windows of a real picket fence moved by whole pixels: right, or refused as ambiguous; never ok 10-15 mm off."""
    image = portalign.read_rt_image(PICKETS)
    ref, frame, dx, dy = window_pair(image, 16, 16, image.shape[0] - 32, image.shape[1] - 32, *shift)
    result = portalign.register(ref, frame, backend="cpu")
    if result.ok:
        assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) < 0.5, (result.dx_mm, result.dy_mm, dx, dy)
    else:
        assert result.reason.startswith("ambiguous"), result.reason
    check = result.details["periodic_check"]
    assert check is not None and check["periods_mm"], check  # the pickets repeat: the check ran
    if check["ratio"] >= portalign.RegistrationOptions().ambiguity_ratio:
        assert not result.ok
    if shift == (4, 6):  # the trial's case (ok 15 mm off): a rival one period away beats it, and the reason says why
        assert check["ratio"] > 1.0 and "repeats itself every" in result.reason
