"""A dead detector line through a field's faint outside: found where its neighbours stand clear of its stuck value.

A dead line reads one value (zero) along its whole length. Inside the field that is far below its neighbours;
outside it, where the beam leaves a few per cent of its dose and the noise is as large as that, the zero lies
within the noise of its neighbours and shows nothing. Before, such a line had to stand out over 80 % of its
whole length, so a column crossing a field over 40 % of its length was never named: a new user's trial (its own
renderer, a real thorax CT, 0.8 mm pixels, 1.7 % noise) matched it ok with the rotation 1.06-1.17 deg off, at
four positions of one dead column, and named it at none of 60 (session note 25).
"""

from __future__ import annotations

import math

import numpy as np
import portalign
import pytest
from portalign.kernels.cpu.field import _band_pixel_silent
from portalign.kernels.reference.field import band_silent_pixels

from tests.field_sets import with_lines
from tests.synthetic import anatomy, field_aperture, moved, mv_portal

BASE = anatomy(384, seed=3)
SHAPE = (256, 256)
#: A field of 80 x 100 mm (the dead columns cross it over 39 % of their length), 3 % of the dose outside it.
HALF_WIDTH, HALF_HEIGHT = 40.0, 50.0
TRUTH = (2.4, -1.6, 0.4)


def _pair(noise_seed: int) -> tuple[portalign.Image, portalign.Image]:
    aperture = field_aperture(SHAPE, 1.0, HALF_WIDTH, HALF_HEIGHT, transmission=0.03)
    reference = portalign.Image.from_array(moved(BASE, 0.0, 0.0, 0.0, shape=SHAPE), pixel_spacing_mm=1.0, kind="drr")
    # 0.6 % noise: the outside (13-30 of 1000) lies within five of its sigmas of zero, and dips below it
    frame = mv_portal(moved(BASE, *TRUTH, shape=SHAPE), aperture, noise=0.006, seed=noise_seed)
    return reference, portalign.Image.from_array(frame.astype(np.float32), pixel_spacing_mm=1.0, kind="portal")


@pytest.mark.parametrize(("column", "noise_seed"), [(101, 1), (118, 2), (150, 3)])
def test_a_dead_column_through_a_faint_outside_is_named_and_left_out(column, noise_seed):
    reference, frame = _pair(noise_seed)
    assert float(frame.pixels.min()) < 0.0  # noise below zero: the zero is no clipped value of this image
    result = portalign.register(reference, with_lines(frame, cols=(column,)), backend="cpu")
    assert result.ok, result.reason
    assert result.details["dead_detector_lines"] == {"rows": [], "columns": [column], "hot_rows": [], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert math.hypot(result.dx_mm - TRUTH[0], result.dy_mm - TRUTH[1]) < 0.25
    assert abs(result.rotation_deg - TRUTH[2]) < 0.25


def test_a_hot_stuck_row_through_a_faint_outside_is_named():
    reference, frame = _pair(4)
    result = portalign.register(reference, with_lines(frame, rows=(140,), value=2000.0), backend="cpu")
    assert result.ok, result.reason
    # left out, and called hot
    assert result.details["dead_detector_lines"] == {"rows": [140], "columns": [], "hot_rows": [140], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert math.hypot(result.dx_mm - TRUTH[0], result.dy_mm - TRUTH[1]) < 0.25


def test_a_sound_frame_names_no_stuck_line():
    reference, frame = _pair(5)
    result = portalign.register(reference, frame, backend="cpu")
    assert result.ok, result.reason
    assert result.details.get("dead_detector_lines") is None


def _silent_pixels(low, high, outer_1, outer_2, threshold, lowest, highest, stuck=math.nan):  # type: ignore[no-untyped-def]
    """The compiled kernel's per-pixel rule over arrays, checked against the numpy reference on every call."""
    compiled = np.array([_band_pixel_silent(float(a), float(b), float(c), float(d), float(t), lowest, highest, stuck)
                         for a, b, c, d, t in zip(low, high, outer_1, outer_2, threshold, strict=True)])
    assert compiled.tolist() == band_silent_pixels(low, high, outer_1, outer_2, threshold, lowest, highest,
                                                   stuck).tolist()
    return compiled


def test_silent_pixels_of_a_stuck_band():
    outer_1 = np.array([3.0, 40.0, -2.0, 3.0, -35.0])
    outer_2 = np.array([2.0, 45.0, 1.0, 31.0, -40.0])
    low = high = np.zeros(5)
    threshold = np.full(5, 30.0)
    # stuck at 0: silent unless both neighbours stand clear of it on one side (within the threshold, or one of them)
    assert _silent_pixels(low, high, outer_1, outer_2, threshold, -50.0, 50.0, 0.0).tolist() == [
        True, False, True, True, False]
    # not stuck (NaN): none of these, whose band is no clipped value either
    assert not _silent_pixels(low, high, outer_1, outer_2, threshold, -50.0, 50.0).any()
    # a band that is not one value at a pixel is never silent there
    assert not _silent_pixels(low, np.ones(5), outer_1, outer_2, threshold, -50.0, 50.0, 0.0).any()
