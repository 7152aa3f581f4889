"""The intensity least-squares polish (``kernels.cpu.intensity``): known shifts, gains and outliers, against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from portalign.kernels.cpu.intensity import OUT_SIZE, intensity_polish
from portalign.kernels.reference.intensity import intensity_polish as reference_polish
from scipy import ndimage

SPACING = 0.4  # mm, rows and columns
REF_SHAPE = (120, 140)
FRAME_SHAPE = (100, 120)


def _smooth_image(seed: int = 0) -> np.ndarray:
    """Band-limited structure (bilinear sampling of it is nearly exact) with a few sharp-ish blobs."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=REF_SHAPE), 2.5) * 40.0
    return (image + 100.0).astype(np.float32)


def _case(dx_mm: float, dy_mm: float, gain: float = 1.0, offset: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """A reference and a frame showing it moved by ``(dx, dy)`` mm (spline shift), times ``gain`` plus ``offset``.

    The frame's pixel (c, r) is at (c - 60, r - 50) pixels from its axis; the reference's axis is (70, 60), so at
    pose 0 frame pixel (c, r) looks at reference pixel (c + 10, r + 10).
    """
    ref = _smooth_image(seed)
    shifted = ndimage.shift(ref.astype(np.float64), (dy_mm / SPACING, dx_mm / SPACING), order=3, mode="nearest")
    frame = (gain * shifted[10:10 + FRAME_SHAPE[0], 10:10 + FRAME_SHAPE[1]] + offset).astype(np.float32)
    gy, gx = np.gradient(ref)
    rows, cols = np.mgrid[0:FRAME_SHAPE[0], 0:FRAME_SHAPE[1]]
    valid = np.ones(REF_SHAPE, np.uint8)
    geometry = np.array([60.0, 50.0, SPACING, SPACING, 70.0, 60.0])
    return (rows.ravel().astype(np.int32), cols.ravel().astype(np.int32), frame, ref, gx.astype(np.float32),
            gy.astype(np.float32), valid, geometry)


def _polish(kernel, case, start, *, stride: int = 1, iterations: int = 10, rotate: bool = False):  # type: ignore[no-untyped-def]
    rows, cols, frame, ref, gx, gy, valid, geometry = case
    out = np.full(OUT_SIZE, np.nan)
    kernel(rows, cols, rows.size, frame, ref, gx, gy, valid, geometry, np.asarray(start, dtype=np.float64), iterations,
           1e-5, stride, rotate, out)
    return out


@pytest.mark.parametrize("kernel", [intensity_polish, reference_polish], ids=["cpu", "numpy"])
@pytest.mark.parametrize(("dx", "dy", "gain", "offset"), [(0.8, -0.5, 1.0, 0.0), (-1.3, 0.9, 1.7, -40.0),
                                                           (0.1, 0.25, 0.6, 25.0)])
def test_a_known_shift_gain_and_offset_are_recovered(kernel, dx, dy, gain, offset):
    """From a start 0.3-0.4 mm (about a pixel) off: within 0.01 mm (1/40 pixel), the gain within 3 % (bilinear sampling
    of the reference between its pixels smooths it a little, and the gain makes up for that: 1.5-1.7 % here)."""
    out = _polish(kernel, _case(dx, dy, gain, offset), (dx + 0.3, dy - 0.4, 0.0))
    assert out[7] == 1.0 and out[6] <= 8, out  # converged, in a few Gauss-Newton steps
    assert out[0] == pytest.approx(dx, abs=0.01) and out[1] == pytest.approx(dy, abs=0.01), out
    assert out[2] == pytest.approx(gain, rel=0.03)
    assert out[8] > 0.999  # the intensities agree at the pose reached


def test_two_copies_of_one_image_meet_exactly_at_a_whole_pixel_shift():
    """No interpolation between them at the truth: zero residual, the shift to 1e-6 mm."""
    rows, cols, _, ref, gx, gy, valid, geometry = _case(0.0, 0.0)
    # the frame shows the reference 3 rows up, 2 columns right
    frame = np.ascontiguousarray(ref[13:13 + FRAME_SHAPE[0], 8:8 + FRAME_SHAPE[1]])
    out = _polish(intensity_polish, (rows, cols, frame, ref, gx, gy, valid, geometry), (0.5, -1.0, 0.0))
    assert out[0] == pytest.approx(2 * SPACING, abs=1e-6) and out[1] == pytest.approx(-3 * SPACING, abs=1e-6), out
    assert out[4] < 1e-3 and out[2] == pytest.approx(1.0, abs=1e-6)


def test_the_cpu_kernel_agrees_with_the_numpy_reference_step_by_step():
    case = _case(0.6, -0.7, 1.2, 10.0, seed=3)
    for iterations in (1, 2, 5):
        cpu = _polish(intensity_polish, case, (0.0, 0.0, 0.0), iterations=iterations)
        ref = _polish(reference_polish, case, (0.0, 0.0, 0.0), iterations=iterations)
        np.testing.assert_allclose(cpu, ref, rtol=1e-6, atol=1e-7)


def test_every_stride_th_pixel_gives_nearly_the_same_pose():
    case = _case(-0.45, 0.65, 1.1, 5.0)
    full = _polish(intensity_polish, case, (0.0, 0.0, 0.0))
    strided = _polish(intensity_polish, case, (0.0, 0.0, 0.0), stride=3)
    assert strided[5] == pytest.approx(full[5] / 3, rel=0.02)  # a third of the pixels visited
    assert math.hypot(strided[0] - full[0], strided[1] - full[1]) < 0.005


def test_a_dead_detector_row_is_a_bounded_error_not_a_squared_one():
    """Huber's weights: a row of zeros across the frame moves the pose by under 0.02 mm."""
    rows, cols, frame, ref, gx, gy, valid, geometry = _case(0.7, 0.3)
    dead = frame.copy()
    dead[40, :] = 0.0
    out = _polish(intensity_polish, (rows, cols, dead, ref, gx, gy, valid, geometry), (0.5, 0.5, 0.0))
    assert out[0] == pytest.approx(0.7, abs=0.02) and out[1] == pytest.approx(0.3, abs=0.02), out
    # the dead row's pixels are not inliers (1 % of the frame): the correlation is the other pixels', near 1
    assert 0.985 < out[9] < 0.995 and out[8] > 0.999, out
    ref_out = _polish(reference_polish, (rows, cols, dead, ref, gx, gy, valid, geometry), (0.5, 0.5, 0.0))
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-7)


def test_too_little_overlap_or_a_flat_reference_leaves_the_start_pose_and_counts_no_pixels():
    rows, cols, frame, ref, gx, gy, valid, geometry = _case(0.0, 0.0)
    nowhere = np.zeros_like(valid)  # nothing of the reference may be compared
    out = _polish(intensity_polish, (rows, cols, frame, ref, gx, gy, nowhere, geometry), (0.2, -0.1, 0.0))
    assert out[5] == 0 and out[7] == 0 and (out[0], out[1]) == (0.2, -0.1)
    flat = np.full_like(ref, 7.0)
    out = _polish(intensity_polish, (rows, cols, frame, flat, 0 * gx, 0 * gy, valid, geometry), (0.2, -0.1, 0.0))
    assert out[5] == 0 and (out[0], out[1]) == (0.2, -0.1)


@pytest.mark.parametrize("kernel", [intensity_polish, reference_polish], ids=["cpu", "numpy"])
def test_a_known_rotation_is_fitted_with_rotate_and_held_without(kernel):
    """A frame showing the reference turned 0.4 deg about the frame's beam axis and moved (0.6, -0.3) mm (cubic-spline
    resampled through the kernel's own pose map): from a start 0.3 deg and 0.3 mm off, the rotation within 0.005 deg
    and the shift within 0.01 mm; with ``rotate`` False the start's rotation is kept exactly."""
    from portalign.kernels.reference.intensity import _affine

    rows, cols, _, ref, gx, gy, valid, geometry = _case(0.0, 0.0)
    truth = np.array([0.6, -0.3, math.radians(0.4)])
    a = _affine(truth, geometry)
    rr, cc = np.mgrid[0:FRAME_SHAPE[0], 0:FRAME_SHAPE[1]].astype(np.float64)
    x = a[0, 0] * cc + a[0, 1] * rr + a[0, 2]
    y = a[1, 0] * cc + a[1, 1] * rr + a[1, 2]
    frame = ndimage.map_coordinates(ref.astype(np.float64), [y, x], order=3).astype(np.float32)
    case = (rows, cols, frame, ref, gx, gy, valid, geometry)
    start = (0.9, -0.1, math.radians(0.1))
    out = _polish(kernel, case, start, rotate=True)
    assert out[7] == 1.0, out
    assert math.degrees(out[10]) == pytest.approx(0.4, abs=0.005), out
    assert out[0] == pytest.approx(0.6, abs=0.01) and out[1] == pytest.approx(-0.3, abs=0.01), out
    held = _polish(kernel, case, start, rotate=False)
    assert held[10] == start[2]
