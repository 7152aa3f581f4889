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


def _periods_whole_grid(level, max_shift_mm: float) -> list:  # type: ignore[no-untyped-def]
    """``reference_periods`` as first written: every test and the maximum filter on the whole shifted grid."""
    from portalign.kernels.cpu.edge import INVALID_FEATURE
    from portalign.registration._program import DISTINCT_MM, PERIODIC_MAX_PERIODS
    from scipy import fft as sp_fft
    from scipy import ndimage

    re, im = np.asarray(level.ref_re, dtype=np.float64), np.asarray(level.ref_im, dtype=np.float64)
    z = np.where(re == INVALID_FEATURE, 0.0, re + 1j * im)
    auto = sp_fft.ifft2(np.abs(sp_fft.fft2(z)) ** 2).real
    found: list = []
    auto = np.fft.fftshift(auto / auto[0, 0])
    rows, cols = auto.shape
    sy, sx = level.spacing
    yy = (np.arange(rows) - rows // 2)[:, None] * sy
    xx = (np.arange(cols) - cols // 2)[None, :] * sx
    inside = ((np.hypot(xx, yy) >= DISTINCT_MM) & (np.abs(xx) <= max_shift_mm) & (np.abs(yy) <= max_shift_mm)
              & ((xx > 0) | ((xx == 0) & (yy > 0))))
    peaks = inside & (auto >= PERIODIC_MIN_RATIO) & (auto == ndimage.maximum_filter(auto, size=3))
    for r, c in sorted(zip(*np.nonzero(peaks), strict=True), key=lambda rc: -auto[rc]):
        x, y = float(xx[0, c]), float(yy[r, 0])
        if all(math.hypot(x - a, y - b) > DISTINCT_MM for a, b, _ in found):
            found.append((x, y, float(auto[r, c])))
        if len(found) == PERIODIC_MAX_PERIODS:
            break
    return found


@pytest.mark.parametrize("period", [12.0, 7.0, 31.0])
@pytest.mark.parametrize("max_shift_mm", [20.0, 6.0, 500.0])
def test_periods_found_on_the_search_window_are_those_of_the_whole_grid(period, max_shift_mm):
    """The window of displacements searched (and its maximum filter, widened by a pixel) finds what the whole grid
    does: stripes and a lattice, a range inside the grid and one beyond it (the window is then the grid itself)."""
    rr, cc = np.mgrid[0:96, 0:128].astype(float)
    for pixels in (np.sin(2 * np.pi * cc / period), np.sin(2 * np.pi * cc / period) * np.sin(2 * np.pi * rr / 9.0)):
        image = portalign.Image.from_array(pixels + 0.05 * anatomy(128, seed=4)[:96], pixel_spacing_mm=1.0,
                                           kind="drr")
        level = _level(portalign.prepare_reference(image, backend="cpu"))
        expected = _periods_whole_grid(level, max_shift_mm)
        level.ref_periods = None
        assert reference_periods(cpu_backend(), level, max_shift_mm) == expected
        if period != 31.0 or max_shift_mm > 6.0:
            assert expected  # something to compare where a period lies within the range


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
