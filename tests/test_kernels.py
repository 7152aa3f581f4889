"""CPU kernels against the float64 numpy references (and scipy where it has the same operation)."""

from __future__ import annotations

import sys

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from portalign.kernels import cpu
from portalign.kernels.cpu.edge import INVALID_FEATURE
from portalign.kernels.reference import correlation as ref_correlation
from portalign.kernels.reference import edge as ref_edge
from portalign.kernels.reference import gradient as ref_gradient
from portalign.kernels.reference import mask as ref_mask
from portalign.kernels.reference import mutual_information as ref_mi
from portalign.kernels.reference import pyramid as ref_pyramid
from portalign.kernels.reference import warp as ref_warp
from scipy import ndimage, stats

from tests.kernel_cases import (
    POSE_BATCHES,
    REF_SHAPE,
    SHAPE,
    listed_pixels,
    pose_batch,
    random_image,
    random_mask,
    rotations_for,
    structured_image,
)

IMAGES = {"structured": structured_image, "random": random_image}


# --- pyramid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPE, (25, 21), (7, 4)])
@pytest.mark.parametrize("kind", IMAGES)
def test_downsample2_matches_reference(kind, shape):
    src = IMAGES[kind](shape)
    out = np.full((shape[0] // 2, shape[1] // 2), np.nan, dtype=np.float32)
    expected = np.empty(out.shape)
    cpu.downsample2(src, out)
    ref_pyramid.downsample2(src, expected)
    # float32 sums of four values in [0, 2000]: a few float32 ulps of the value
    assert_allclose(out, expected, rtol=3e-7 * 4, atol=0)


@pytest.mark.parametrize("shape", [(768, 1024), (25, 21), (3, 2)])
def test_reference_resampling_kernels_equal_their_numpy_reference_bit_for_bit(shape):
    """A reference's box pyramid and grid interpolation (plan preparation): the same float64 numbers as numpy's."""
    from portalign.kernels.cpu.pyramid import box_half, interpolate_grid

    rng = np.random.default_rng(sum(shape))
    src = rng.normal(1000.0, 300.0, shape)
    half = np.full((shape[0] // 2, shape[1] // 2), np.nan)
    expected = np.empty(half.shape)
    box_half(src, half)
    ref_pyramid.box_half(src, expected)
    assert_array_equal(half, expected)
    # a grid that runs past both ends (clipped to the end lines) and lands on whole lines too
    rows_at = np.clip(np.linspace(-0.7, shape[0] - 0.2, shape[0] // 2 + 3), 0.0, shape[0] - 1.0)
    cols_at = np.clip(np.linspace(-0.3, shape[1] + 0.5, shape[1] // 3 + 2), 0.0, shape[1] - 1.0)
    from portalign.registration._reference import _between

    grids = [_between(rows_at, shape[0]), _between(cols_at, shape[1])]
    out = np.full((rows_at.size, cols_at.size), np.nan)
    expected = np.empty(out.shape)
    interpolate_grid(src, *grids[0], *grids[1], out)
    ref_pyramid.interpolate_grid(src, *grids[0], *grids[1], expected)
    assert_array_equal(out, expected)
    assert np.isfinite(out).all() and out.min() >= src.min() and out.max() <= src.max()


def test_downsample2_mask_matches_reference():
    src = random_mask((25, 21), keep=0.8)
    out = np.full((12, 10), 7, dtype=np.uint8)
    expected = np.empty((12, 10), dtype=np.uint8)
    cpu.downsample2_mask(src, out)
    ref_pyramid.downsample2_mask(src, expected)
    assert_array_equal(out, expected)
    assert 0 < expected.sum() < expected.size  # the case has both outcomes


# --- gradient features ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize("eps", [1.0, 40.0])
def test_orientation_features_match_reference(kind, eps):
    image, mask = IMAGES[kind](), random_mask()
    re, im = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    ref_re, ref_im = np.empty(SHAPE), np.empty(SHAPE)
    cpu.orientation_features(image, mask, eps, np.inf, re, im)
    ref_gradient.orientation_features(image, mask, eps, np.inf, ref_re, ref_im)
    # features are in [-1, 1]; the CPU rounds the float32 pixel difference and the result to float32
    assert_allclose(re, ref_re, atol=2e-6)
    assert_allclose(im, ref_im, atol=2e-6)
    assert np.all(re[0] == 0) and np.all(im[:, -1] == 0) and np.all(re[mask == 0] == 0)
    assert np.abs(re).max() > 0.1


def test_orientation_feature_of_a_ramp_is_its_doubled_angle():
    # a ramp at 30 degrees: phi = 30 deg, feature = |g|^2/(|g|^2+eps^2) * exp(2i phi)
    yy, xx = np.mgrid[0:12, 0:12].astype(np.float64)
    image = (xx * np.cos(np.radians(30)) + yy * np.sin(np.radians(30))).astype(np.float32) * 10
    re, im = np.empty((12, 12), np.float32), np.empty((12, 12), np.float32)
    cpu.orientation_features(image, np.ones((12, 12), np.uint8), 10.0, np.inf, re, im)
    strength = 100.0 / (100.0 + 100.0)
    assert_allclose(re[1:-1, 1:-1], strength * np.cos(np.radians(60)), atol=1e-5)
    assert_allclose(im[1:-1, 1:-1], strength * np.sin(np.radians(60)), atol=1e-5)


@pytest.mark.parametrize("cap", [np.inf, 5.0])
@pytest.mark.parametrize("kind", IMAGES)
def test_gradient_row_sums_match_reference(kind, cap):
    image, mask = IMAGES[kind](), random_mask()
    out, expected = np.empty((SHAPE[0], 2)), np.empty((SHAPE[0], 2))
    cpu.gradient_row_sums(image, mask, cap, out)
    ref_gradient.gradient_row_sums(image, mask, cap, expected)
    assert_array_equal(out[:, 1], expected[:, 1])
    assert_allclose(out[:, 0], expected[:, 0], rtol=1e-6)


@pytest.mark.parametrize("kind", IMAGES)
def test_orientation_features_with_a_limit_match_reference(kind):
    image, mask = IMAGES[kind](), random_mask()
    limit = float(np.percentile(np.abs(np.diff(image, axis=1)), 90)) * 0.5  # leaves a tenth or so out
    re, im = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    ref_re, ref_im = np.empty(SHAPE), np.empty(SHAPE)
    cpu.orientation_features(image, mask, 20.0, limit, re, im)
    ref_gradient.orientation_features(image, mask, 20.0, limit, ref_re, ref_im)
    assert_allclose(re, ref_re, atol=2e-6)
    assert_allclose(im, ref_im, atol=2e-6)
    assert np.count_nonzero(re) < np.count_nonzero(mask)


def test_pixels_next_to_an_outlier_are_left_out_of_the_edges():
    # one hot pixel: its four neighbours' central differences are 0.5e6; beyond the limit they add nothing
    image = np.tile(np.arange(9, dtype=np.float32), (9, 1))  # a ramp: every interior gradient is (1, 0)
    image[4, 4] = 1e6
    mask = np.ones((9, 9), np.uint8)
    free, limited = np.empty((9, 2)), np.empty((9, 2))
    cpu.gradient_row_sums(image, mask, np.inf, free)
    cpu.gradient_row_sums(image, mask, 12.0, limited)
    assert limited[:, 1].sum() == free[:, 1].sum() - 4 == 45
    assert limited[:, 0].sum() == pytest.approx(45.0)  # the ramp's own gradients only
    re, im = np.empty((9, 9), np.float32), np.empty((9, 9), np.float32)
    cpu.orientation_features(image, mask, 1.0, 12.0, re, im)
    for at in [(3, 4), (5, 4), (4, 3), (4, 5)]:
        assert re[at] == im[at] == 0.0
    assert re[4, 4] == pytest.approx(0.5)  # the hot pixel's own differences are the ramp's: 1 / (1 + 1)


# --- masks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("above", [True, False])
def test_threshold_mask_matches_reference(above):
    image = structured_image()
    threshold = float(np.median(image)) + 0.1
    out, expected = np.empty(SHAPE, np.uint8), np.empty(SHAPE, np.uint8)
    cpu.threshold_mask(image, threshold, above, out)
    ref_mask.threshold_mask(image, threshold, above, expected)
    assert_array_equal(out, expected)
    assert abs(int(expected.sum()) - expected.size // 2) <= 1


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [2, 5])
def test_erode_box_matches_reference_and_scipy(radius, seed):
    mask = random_mask(seed=seed, keep=0.93)
    mask[8:16, 5:15] = 1  # a solid block that survives every radius used
    out, scratch, expected = np.empty(SHAPE, np.uint8), np.empty(SHAPE, np.uint8), np.empty(SHAPE, np.uint8)
    cpu.erode_box(mask, radius, scratch, out)
    ref_mask.erode_box(mask, radius, scratch, expected)
    assert_array_equal(out, expected)
    structure = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    scipy_eroded = ndimage.binary_erosion(mask.astype(bool), structure=structure, border_value=0)
    if radius == 0:
        scipy_eroded = mask.astype(bool)
    assert_array_equal(out.astype(bool), scipy_eroded)
    assert out.sum() > 0


@pytest.mark.parametrize("fractions", [(0.005, 0.995), (0.25, 0.75), (0.0, 1.0)])
@pytest.mark.parametrize("kind", IMAGES)
def test_masked_range_within_one_bin_of_order_statistics(kind, fractions):
    image, mask = IMAGES[kind](), random_mask()
    low, high, count = cpu.masked_range(image, mask, *fractions)
    r_low, r_high, r_count = ref_mask.masked_range(image, mask, *fractions)
    values = image[mask != 0].astype(np.float64)
    width = (values.max() - values.min()) / 4096
    assert count == r_count == int(mask.sum())
    # the kernel reports the lower edge of the bin holding the low statistic and the upper edge of the high one
    assert r_low - width * 1.0001 <= low <= r_low
    assert r_high <= high <= r_high + width * 1.0001


@pytest.mark.parametrize("outliers", [[65535.0], [1e38], [1e38, 1e20], [-1e30], [1e38, -1e38]])
def test_masked_range_is_not_coarsened_by_outliers(outliers):
    # a few pixels far outside the rest used to squeeze every value into one of the 4096 bins: the range came
    # out 16 where it is 1.7; the refined passes give the order statistics within 1/4096 of the robust range
    rng = np.random.default_rng(3)
    image = (rng.random(SHAPE) * 2).astype(np.float32)
    mask = np.ones(SHAPE, np.uint8)
    for k, value in enumerate(outliers):
        image[3 + k, 5] = value
    low, high, count = cpu.masked_range(image, mask, 0.005, 0.995)
    r_low, r_high, _ = ref_mask.masked_range(image, mask, 0.005, 0.995)
    width = 2.0 / 4096 * 1.0001
    assert r_low - width <= low <= r_low
    assert r_high <= high <= r_high + width
    rows, cols = np.empty(image.size, np.int32), np.empty(image.size, np.int32)
    n = cpu.pixel_list(mask, rows, cols)
    from portalign.kernels.cpu.mask import listed_range

    assert listed_range(image, rows, cols, n, 0.005, 0.995) == (low, high, count)


@pytest.mark.parametrize("share", [0.02, 0.06])
def test_masked_range_leaves_out_more_outliers_than_its_tails(share):
    # 2 % (or 6 %) of the pixels, half at 1e20, half at -1e25: more than the 0.5 % tails leave out; beyond the bulk's fence
    rng = np.random.default_rng(4)
    image = (rng.random(SHAPE) * 2).astype(np.float32)
    clean = image.copy()
    picks = rng.choice(image.size, int(share * image.size), replace=False)
    image.flat[picks[: len(picks) // 2]] = 1e20
    image.flat[picks[len(picks) // 2:]] = -1e25
    mask = np.ones(SHAPE, np.uint8)
    low, high, count = cpu.masked_range(image, mask, 0.005, 0.995)
    r_low, r_high, r_count = ref_mask.masked_range(image, mask, 0.005, 0.995)
    assert count == r_count == image.size
    assert 0.0 <= low < 0.05 and 1.95 < high <= 2.0
    width = 2.0 / 4096 * 1.0001
    assert r_low - width <= low <= r_low
    assert r_high <= high <= r_high + width
    # an ordinary image is untouched by the fence: the same numbers as before any outlier handling
    assert cpu.masked_range(clean, mask, 0.005, 0.995)[:2] == pytest.approx(ref_mask.masked_range(clean, mask, 0.005,
                                                                                                   0.995)[:2], abs=width)


def test_a_long_tail_of_content_is_not_fenced_off():
    # a bright region of 3 % (a metal implant): beyond the 5-95 % bulk, but the bulk fills most of the histogram
    image = np.tile(np.linspace(0.0, 1.0, SHAPE[1], dtype=np.float32), (SHAPE[0], 1))
    image[:2, :] = 6.0
    mask = np.ones(SHAPE, np.uint8)
    assert cpu.masked_range(image, mask, 0.0, 1.0)[1] == pytest.approx(6.0)


def test_masked_range_of_one_value_among_outliers_is_that_value():
    image = np.full(SHAPE, 7.0, np.float32)
    image[0, 0], image[1, 1] = 1e9, -1e9
    assert cpu.masked_range(image, np.ones(SHAPE, np.uint8), 0.005, 0.995) == (7.0, 7.0, SHAPE[0] * SHAPE[1])


def test_masked_range_edge_cases():
    image = structured_image()
    assert cpu.masked_range(image, np.zeros(SHAPE, np.uint8), 0.01, 0.99) == (0.0, 0.0, 0)
    flat = np.full(SHAPE, 3.5, np.float32)
    assert cpu.masked_range(flat, np.ones(SHAPE, np.uint8), 0.01, 0.99) == (3.5, 3.5, SHAPE[0] * SHAPE[1])


def test_pixel_list_matches_reference():
    mask = random_mask(keep=0.6)
    rows, cols = np.full(mask.size, -1, np.int32), np.full(mask.size, -1, np.int32)
    r_rows, r_cols = np.zeros(mask.size, np.int32), np.zeros(mask.size, np.int32)
    count = cpu.pixel_list(mask, rows, cols)
    assert count == ref_mask.pixel_list(mask, r_rows, r_cols) == int(mask.sum())
    assert_array_equal(rows[:count], r_rows[:count])
    assert_array_equal(cols[:count], r_cols[:count])


# --- mutual information ---------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [8, 32])
@pytest.mark.parametrize("kind", IMAGES)
def test_quantize_matches_reference(kind, bins):
    image, mask = IMAGES[kind](), random_mask()
    low, high = np.percentile(image, [5, 95])
    out, expected = np.empty(SHAPE, np.int16), np.empty(SHAPE, np.int16)
    cpu.quantize(image, mask, float(low), float(high), bins, out)
    ref_mi.quantize(image, mask, float(low), float(high), bins, expected)
    assert_array_equal(out, expected)
    assert set(np.unique(out)) <= set(range(-1, bins)) and out.max() == bins - 1 and out.min() == -1


def _histogram_inputs(bins: int, seed: int = 0):
    frame = structured_image(SHAPE, seed)
    reference = structured_image(REF_SHAPE, seed + 10)
    frame_mask, ref_mask_ = random_mask(SHAPE, seed=3), random_mask(REF_SHAPE, seed=4, keep=0.95)
    frame_bins, ref_bins = np.empty(SHAPE, np.int16), np.empty(REF_SHAPE, np.int16)
    cpu.quantize(frame, frame_mask, float(frame.min()), float(frame.max()), bins, frame_bins)
    cpu.quantize(reference, ref_mask_, float(reference.min()), float(reference.max()), bins, ref_bins)
    rows, cols, count = listed_pixels(frame_mask)
    return rows, cols, count, frame_bins, ref_bins


@pytest.mark.parametrize("batch", POSE_BATCHES)
@pytest.mark.parametrize("bins", [8, 32])
def test_joint_histograms_bit_identical_to_fixed_point_reference(batch, bins):
    rows, cols, count, frame_bins, ref_bins = _histogram_inputs(bins)
    affines = pose_batch(batch)
    out = np.full((len(affines), bins, bins), -5, np.int64)
    expected = np.empty_like(out)
    cpu.joint_histograms(rows, cols, count, frame_bins, ref_bins, affines, out)
    ref_mi.joint_histograms_fixed_point(rows, cols, count, frame_bins, ref_bins, affines, expected)
    assert_array_equal(out, expected)
    assert np.all(out.sum(axis=(1, 2)) % ref_mi.PV_ONE == 0)  # every counted pixel adds exactly PV_ONE
    if batch == "outside":
        assert out[2:].sum() == 0  # wholly outside: nothing counted
    else:
        assert np.all(out.sum(axis=(1, 2)) > 0)


@pytest.mark.parametrize("batch", ["subpixel_rotated", "scaled"])
def test_joint_histograms_close_to_exact_partial_volume(batch):
    rows, cols, count, frame_bins, ref_bins = _histogram_inputs(16)
    affines = pose_batch(batch)
    fixed = np.empty((len(affines), 16, 16), np.int64)
    exact = np.empty((len(affines), 16, 16))
    cpu.joint_histograms(rows, cols, count, frame_bins, ref_bins, affines, fixed)
    ref_mi.joint_histograms(rows, cols, count, frame_bins, ref_bins, affines, exact)
    # same pixels counted; each weight truncated by less than 2/256 of a pixel (4 corners per pixel)
    assert_allclose(fixed.sum(axis=(1, 2)) / ref_mi.PV_ONE, exact.sum(axis=(1, 2)), rtol=1e-12)
    pixels_per_bin = exact.sum(axis=(1, 2))[:, None, None]
    assert np.abs(fixed / ref_mi.PV_ONE - exact).max() <= 4 * 2 / 256 * pixels_per_bin.max()
    assert_allclose(fixed / ref_mi.PV_ONE, exact, atol=0.02 * pixels_per_bin.max() / 16)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba is limited to one thread here")
def test_joint_histograms_bit_identical_across_thread_counts():
    rows, cols, count, frame_bins, ref_bins = _histogram_inputs(32, seed=7)
    affines = np.concatenate([pose_batch("subpixel_rotated"), pose_batch("scaled"), pose_batch("integer")])
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2, 1):
            numba.set_num_threads(threads)
            out = np.empty((len(affines), 32, 32), np.int64)
            cpu.joint_histograms(rows, cols, count, frame_bins, ref_bins, affines, out)
            results.append(out)
    finally:
        numba.set_num_threads(previous)
    assert_array_equal(results[0], results[1])
    assert_array_equal(results[0], results[2])


def test_mutual_information_matches_scipy_entropies():
    rng = np.random.default_rng(11)
    hist = rng.integers(0, 5 * 65536, size=(3, 12, 9)).astype(np.int64)
    hist[1, :, 4:] = 0  # empty bins and rows are skipped, not log(0)
    hist[1, 3, :] = 0
    mi, nmi = np.empty(3), np.empty(3)
    cpu.mutual_information(hist, False, mi)
    cpu.mutual_information(hist, True, nmi)
    for k in range(3):
        p = hist[k] / hist[k].sum()
        h_f, h_r, h_joint = stats.entropy(p.sum(axis=1)), stats.entropy(p.sum(axis=0)), stats.entropy(p.ravel())
        assert mi[k] == pytest.approx(h_f + h_r - h_joint, rel=1e-12, abs=1e-14)
        assert nmi[k] == pytest.approx((h_f + h_r) / h_joint, rel=1e-12)
    expected = np.empty(3)
    ref_mi.mutual_information(hist, False, expected)
    assert_allclose(mi, expected, rtol=1e-12, atol=1e-14)


def test_mutual_information_known_values():
    identical = np.zeros((2, 4, 4), np.int64)
    identical[0] = np.diag([65536, 65536, 65536, 65536])  # perfectly dependent, uniform: MI = log 4, NMI = 2
    identical[1] = 65536  # independent, uniform: MI = 0, NMI = 1
    mi, nmi = np.empty(2), np.empty(2)
    cpu.mutual_information(identical, False, mi)
    cpu.mutual_information(identical, True, nmi)
    assert_allclose(mi, [np.log(4.0), 0.0], atol=1e-12)
    assert_allclose(nmi, [2.0, 1.0], atol=1e-12)
    empty = np.zeros((1, 4, 4), np.int64)
    out = np.full(1, 9.0)
    cpu.mutual_information(empty, False, out)
    assert out[0] == 0.0


@pytest.mark.parametrize("batch", POSE_BATCHES)
def test_mutual_information_of_kernel_histograms_matches_reference(batch):
    rows, cols, count, frame_bins, ref_bins = _histogram_inputs(16, seed=3)
    affines = pose_batch(batch)
    hist = np.empty((len(affines), 16, 16), np.int64)
    cpu.joint_histograms(rows, cols, count, frame_bins, ref_bins, affines, hist)
    for normalised in (False, True):
        out, expected = np.empty(len(affines)), np.empty(len(affines))
        cpu.mutual_information(hist, normalised, out)
        ref_mi.mutual_information(hist, normalised, expected)
        assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


# --- edge correlation -------------------------------------------------------------------------------


def _feature_inputs(seed: int = 0):
    frame, reference = structured_image(SHAPE, seed), structured_image(REF_SHAPE, seed + 20)
    frame_mask, ref_mask_ = random_mask(SHAPE, seed=6), np.ones(REF_SHAPE, np.uint8)
    f_re, f_im = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    r_re, r_im = np.empty(REF_SHAPE, np.float32), np.empty(REF_SHAPE, np.float32)
    cpu.orientation_features(frame, frame_mask, 50.0, np.inf, f_re, f_im)
    cpu.orientation_features(reference, ref_mask_, 50.0, np.inf, r_re, r_im)
    r_re[5:12, 20:31] = INVALID_FEATURE  # a region where the reference is not valid (outside its field)
    rows, cols, count = listed_pixels(frame_mask)
    return rows, cols, count, f_re, f_im, r_re, r_im


@pytest.mark.parametrize("batch", POSE_BATCHES)
def test_gradient_correlation_matches_reference(batch):
    rows, cols, count, f_re, f_im, r_re, r_im = _feature_inputs()
    affines, rot = pose_batch(batch), rotations_for(batch)
    out, expected = np.full((len(affines), 3), np.nan), np.empty((len(affines), 3))
    cpu.gradient_correlation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, out)
    ref_edge.gradient_correlation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, expected)
    scale = np.sqrt(expected[:, 1] * np.maximum(expected[:, 2], 1e-300))
    assert_allclose(out[:, 1:], expected[:, 1:], rtol=1e-9)
    assert np.all(np.abs(out[:, 0] - expected[:, 0]) <= 1e-9 * np.maximum(scale, 1e-300))
    if batch == "outside":
        assert np.all(out[2:, [0, 2]] == 0)  # nothing sampled in the reference


@pytest.mark.parametrize("batch", POSE_BATCHES)
def test_matched_orientation_matches_reference(batch):
    rows, cols, count, f_re, f_im, r_re, r_im = _feature_inputs()
    affines, rot = pose_batch(batch), rotations_for(batch)
    out, expected = np.full((len(affines), 5), np.nan), np.empty((len(affines), 5))
    cpu.matched_orientation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, out)
    ref_edge.matched_orientation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, expected)
    assert_allclose(out[:, :3], expected[:, :3], rtol=1e-9, atol=1e-9 * max(float(expected[:, 0].max()), 1e-300))
    assert_allclose(out[:, 3:], expected[:, 3:], rtol=1e-9)
    # |Z| <= W: the doubled-angle directions are unit vectors weighted by W's terms, which are positive; W >= S_fr
    assert np.all(np.hypot(out[:, 1], out[:, 2]) <= out[:, 0] * (1 + 1e-12))
    # S_ff is the edge correlation's; E, every usable pixel's energy, the same at every pose and never less than S_ff
    sums = np.empty((len(affines), 3))
    cpu.gradient_correlation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, sums)
    assert np.all(out[:, 0] >= sums[:, 0] - 1e-9 * np.abs(sums[:, 0]))
    assert_allclose(out[:, 3], sums[:, 1], rtol=1e-9)
    assert np.all(out[:, 4] == out[0, 4]) and np.all(out[:, 3] <= out[:, 4] * (1 + 1e-12))
    if batch == "outside":
        assert np.all(out[2:, :3] == 0)  # nothing matched off the reference...
        assert np.all(out[2:, 3] == out[2:, 4])  # ...where every edge counts wholly


@pytest.mark.parametrize(("lines", "isotropy"), [("rows", 0.0), ("columns", 0.0), ("grid", 1.0)])
def test_matched_orientation_of_lines_one_way_and_a_grid(lines, isotropy):
    """Edges all one way: |Z| = W (isotropy 0) along them; a grid's two ways alike: Z = 0 (isotropy 1)."""
    image = np.zeros((40, 40), np.float32)
    if lines in ("rows", "grid"):
        image[::8, :] = 100.0
    if lines in ("columns", "grid"):
        image[:, ::8] = 100.0
    mask = np.ones(image.shape, np.uint8)
    re, im = np.empty(image.shape, np.float32), np.empty(image.shape, np.float32)
    cpu.orientation_features(image, mask, 10.0, np.inf, re, im)
    rows, cols, count = listed_pixels(mask)
    out = np.empty((1, 5))
    cpu.matched_orientation(rows, cols, count, re, im, re, im, np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]),
                            np.array([[1.0, 0.0]]), out)
    w, z = out[0, 0], np.hypot(out[0, 1], out[0, 2])
    # (the grid's crossings add a few edges of other ways, alike in both)
    assert w > 0 and (w - z) / (w + z) == pytest.approx(isotropy, abs=1e-6 if lines != "grid" else 0.01)
    if lines != "grid":  # a horizontal line's gradient points along y: doubled angle 180 deg (Z = -W); a column's 0
        assert np.sign(out[0, 1]) == (-1 if lines == "rows" else 1)


def test_gradient_correlation_of_an_image_with_itself_is_one():
    image = structured_image(SHAPE)
    mask = np.ones(SHAPE, np.uint8)
    re, im = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    cpu.orientation_features(image, mask, 50.0, np.inf, re, im)
    rows, cols, count = listed_pixels(mask)
    identity = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = np.empty((1, 3))
    cpu.gradient_correlation(rows, cols, count, re, im, re, im, identity, np.array([[1.0, 0.0]]), out)
    # the last row/column has no cell to interpolate in, so S_rr misses the (zero) border features only;
    # S_ff adds float32 squares where S_fr adds float64 products: equal to ~1e-10
    assert out[0, 0] / np.sqrt(out[0, 1] * out[0, 2]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("kernel", [cpu.gradient_correlation, ref_edge.gradient_correlation])
def test_gradient_correlation_compares_only_where_both_images_are_valid(kernel):
    # the same image in both, valid inside the same disc: a frame pixel whose reference sample needs an
    # invalid pixel is left out of every sum, so the score is exactly symmetric in the shift (a fixed
    # frame mask against the whole reference would tilt it, by the frame pixels that leave the disc)
    image = structured_image(REF_SHAPE, 3)
    yy, xx = np.mgrid[0:REF_SHAPE[0], 0:REF_SHAPE[1]]
    disc = (np.hypot(yy - REF_SHAPE[0] / 2, xx - REF_SHAPE[1] / 2) < 0.35 * min(REF_SHAPE)).astype(np.uint8)
    re, im = np.empty(REF_SHAPE, np.float32), np.empty(REF_SHAPE, np.float32)
    cpu.orientation_features(image, disc, 50.0, np.inf, re, im)
    ref_re = re.copy()
    ref_re[disc == 0] = INVALID_FEATURE
    rows, cols, count = listed_pixels(disc)
    shifts = [(0.0, 0.0), (2.0, 0.0), (-2.0, 0.0), (0.0, 3.0), (0.0, -3.0), (1.5, 0.0), (-1.5, 0.0)]
    affines = np.array([[[1.0, 0.0, dx], [0.0, 1.0, dy]] for dx, dy in shifts])
    rot = np.tile([1.0, 0.0], (len(shifts), 1))
    out = np.empty((len(shifts), 3))
    kernel(rows, cols, count, re, im, ref_re, im, affines, rot, out)
    score = out[:, 0] / np.sqrt(out[:, 1] * out[:, 2])
    assert score[0] == pytest.approx(1.0, abs=1e-9)
    assert score[1] == pytest.approx(score[2], abs=1e-9) and score[3] == pytest.approx(score[4], abs=1e-9)
    assert np.all(score[1:] < 1.0 - 1e-4)
    # S_ff counts only the frame pixels that were compared: fewer than all of them once shifted
    assert out[1, 1] < out[0, 1] and out[1, 1] == pytest.approx(out[2, 2], rel=1e-9)


def test_metric_kernels_refuse_an_output_shorter_than_the_poses():
    # a compiled kernel writing past its output would corrupt memory: it raises instead
    rows, cols, count, f_re, f_im, r_re, r_im = _feature_inputs()
    affines = np.repeat(np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), 4, axis=0)
    rot = np.tile([1.0, 0.0], (4, 1))
    with pytest.raises(ValueError, match="a row per pose"):
        cpu.gradient_correlation(rows, cols, count, f_re, f_im, r_re, r_im, affines, rot, np.empty((2, 3)))
    bins = np.zeros(SHAPE, np.int16)
    ref_bins = np.zeros(REF_SHAPE, np.int16)
    with pytest.raises(ValueError, match="a histogram per pose"):
        cpu.joint_histograms(rows, cols, count, bins, ref_bins, affines, np.empty((3, 4, 4), np.int64))


# --- warp -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", POSE_BATCHES)
def test_warp_bilinear_matches_reference(batch):
    src = structured_image(REF_SHAPE)
    for affine in pose_batch(batch):
        out, expected = np.empty(SHAPE, np.float32), np.empty(SHAPE)
        cpu.warp_bilinear(src, affine, -7.0, out)
        ref_warp.warp_bilinear(src, affine, -7.0, expected)
        assert_allclose(out, expected, rtol=2e-7, atol=2e-4)  # float32 output of values ~1e3


def test_warp_bilinear_identity_and_half_pixel():
    src = random_image(SHAPE)
    out = np.empty(SHAPE, np.float32)
    cpu.warp_bilinear(src, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), -1.0, out)
    assert_array_equal(out, src)
    cpu.warp_bilinear(src, np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]), -1.0, out)
    assert_allclose(out[:, :-1], 0.5 * (src[:, :-1].astype(np.float64) + src[:, 1:]), rtol=1e-6)
    assert np.all(out[:, -1] == -1.0)


# --- FFT correlation --------------------------------------------------------------------------------


def test_feature_spectrum_and_surfaces_match_explicit_dft():
    rng = np.random.default_rng(4)
    re, im = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    padded = (10, 9)
    spectrum = cpu.feature_spectrum(re, im, padded, 2)
    expected = ref_correlation.feature_spectrum(re, im, padded, 2)
    # single-precision FFT (complex64): rounding of order 1e-7 of the spectrum's magnitude
    magnitude = np.abs(expected).max()
    assert_allclose(spectrum, expected, atol=1e-6 * magnitude)
    ref_conj = np.conj(np.stack([cpu.feature_spectrum(im, re, padded, 1), spectrum]))
    rows, cols = np.array([8, 9, 0, 1, 2]), np.array([7, 8, 0, 1])  # translations -2..2 and -2..1 (mod 10, 9)
    out = np.empty((2, 5, 4), np.float32)
    expected_out = np.empty((2, 5, 4))
    cpu.correlation_window(spectrum, ref_conj, rows, cols, out)
    ref_correlation.correlation_window(spectrum.astype(np.complex128), ref_conj.astype(np.complex128), rows, cols,
                                       expected_out)
    assert_allclose(out, expected_out, atol=1e-6 * np.abs(expected_out).max())


def test_correlation_surface_peaks_at_the_known_shift():
    # the frame is the reference moved by (tx, ty) = (3, -2) pixels: the surface peaks there
    feature = structured_image((16, 16))
    re = (feature - feature.mean()).astype(np.float32)
    im = np.zeros_like(re)
    shifted = np.roll(np.roll(re, -2, axis=0), 3, axis=1)
    padded = (16, 16)
    ref_conj = np.conj(cpu.feature_spectrum(re, im, padded, 0))[None]
    shifts = np.arange(-5, 6)  # the searched window: translations -5..5 on both axes
    out = np.empty((1, 11, 11), np.float32)
    cpu.correlation_window(cpu.feature_spectrum(shifted, im, padded, 0), ref_conj, shifts % 16, shifts % 16, out)
    iy, ix = np.unravel_index(int(np.argmax(out[0])), (11, 11))
    assert (shifts[ix], shifts[iy]) == (3, -2)
    assert out[0, iy, ix] == pytest.approx(float((re.astype(np.float64) ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("workers", [1, 2])
def test_coarse_search_is_the_search_steps_in_one_call_and_finds_the_shift(workers):
    # three candidate rotations; the frame is the reference (rotation index 1) moved by (tx, ty) = (4, -3) pixels
    feature = structured_image((24, 28), seed=3)
    re = (feature - feature.mean()).astype(np.float32)
    im = (np.roll(re, 1, axis=1) - re).astype(np.float32)
    margin, padded = 6, (36, 40)
    frame_re = np.roll(np.roll(re, -3, axis=0), 4, axis=1)
    frame_im = np.roll(np.roll(im, -3, axis=0), 4, axis=1)
    spectra = np.conj(np.stack([cpu.feature_spectrum(im, re, padded, margin), cpu.feature_spectrum(re, im, padded, margin),
                                cpu.feature_spectrum(re[::-1].copy(), im, padded, margin)]))
    energy = np.array([float((re.astype(np.float64) ** 2 + im.astype(np.float64) ** 2).sum())] * 3)
    thetas = np.array([-0.01, 0.0, 0.01])
    shifts = np.arange(-margin, margin + 1)
    rows, cols = shifts % padded[0], shifts % padded[1]
    outputs = []
    for module in (cpu, ref_correlation):
        window = np.empty((3, len(shifts), len(shifts)), np.float32)
        poses, scores = np.zeros((8, 3)), np.zeros(8)
        found = module.coarse_search(frame_re, frame_im, *padded, margin, spectra, energy, rows, cols, thetas, 0.5, 0.5,
                                     2, 0.85, 2, window, poses, scores, workers)
        outputs.append((found, window, poses[:found], scores[:found]))
    (found, window, poses, scores), (ref_found, ref_window, ref_poses, ref_scores) = outputs
    assert found == ref_found >= 1
    assert_allclose(window, ref_window, atol=1e-5 * np.abs(ref_window).max())
    assert_allclose(poses, ref_poses, atol=1e-6)
    assert_allclose(scores, ref_scores, rtol=1e-5)
    # the best optimum: rotation index 1 at (+4, -3) pixels of 0.5 mm (parabolic sub-pixel and sub-step fits
    # around the exact peak move it by a fraction of a pixel), normalised correlation 1 at the peak sample
    assert_allclose(poses[0], [2.0, -1.5, 0.0], atol=0.05) and scores[0] == pytest.approx(1.0, abs=0.01)
    # the same numbers as the step-by-step kernels
    spectrum = cpu.feature_spectrum(frame_re, frame_im, padded, margin)
    steps = np.empty_like(window)
    cpu.correlation_window(spectrum, spectra, rows, cols, steps)
    assert_allclose(window, steps, atol=1e-5 * np.abs(steps).max())


# --- GPU backend selection without a GPU --------------------------------------------------------------


@pytest.fixture
def fresh_gpu_detection(monkeypatch):
    from portalign.backends import _gpu as gpu

    monkeypatch.setattr(gpu, "_detected", None)
    yield gpu
    gpu._detected = None


def _no_gpu_here() -> bool:
    if numba.config.ENABLE_CUDASIM:
        return False
    from numba import cuda

    return not cuda.is_available()


@pytest.mark.skipif(not _no_gpu_here(), reason="a CUDA device (or the simulator) is present")
def test_gpu_backend_names_the_missing_device(fresh_gpu_detection):
    from portalign import BackendUnavailableError, select_backend

    with pytest.raises(BackendUnavailableError, match="no CUDA device: no NVIDIA GPU or driver is visible to numba.cuda"):
        fresh_gpu_detection.gpu_backend()
    with pytest.raises(BackendUnavailableError, match="no CUDA device") as asked:
        select_backend("gpu")
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        # asked for by name, the GPU's other missing half is named with its pip command (a valid one)
        assert "CuPy is not installed either: pip install 'portalign[gpu-cuda1" in str(asked.value)
        assert " or gpu-cuda" not in str(asked.value)
    auto = select_backend("auto")
    # auto's reason, said with every CPU result, stays short
    assert auto.name == "cpu" and auto.fallback_reason == "no CUDA device: no NVIDIA GPU or driver is visible to numba.cuda"


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="the simulator needs no CuPy")
def test_gpu_backend_names_missing_cupy(fresh_gpu_detection, monkeypatch):
    from numba import cuda
    from portalign import BackendUnavailableError

    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"CuPy is not installed: pip install 'portalign\[gpu-cuda1[23]"):
        fresh_gpu_detection.gpu_backend()
    available, detail = fresh_gpu_detection.gpu_status()
    assert not available and "CuPy" in detail


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="the simulator compiles the probe for real")
def test_gpu_backend_names_a_numpy_that_numba_cuda_cannot_compile_with(fresh_gpu_detection, monkeypatch):
    # what an H200 image with numpy 2.5 and numba-cuda 0.30.4 did at its first kernel: the backend must say so
    import types

    from numba import cuda
    from portalign import BackendUnavailableError
    from portalign.kernels.gpu import probe

    def broken() -> None:
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setattr(probe, "run_probe", broken)
    with pytest.raises(BackendUnavailableError, match=r"do not compile with numpy .*pip install 'numpy<2.5'"):
        fresh_gpu_detection.gpu_backend()
    available, detail = fresh_gpu_detection.gpu_status()
    assert not available and "row_stack" in detail


def test_configured_launch_is_made_once_and_keeps_the_low_occupancy_warning_in(monkeypatch):
    # numba-cuda warns at every kernel[grid, block] with < 128 blocks, with a class of its own
    import warnings

    from portalign.kernels.gpu import launch

    class ForeignPerformanceWarning(UserWarning):
        pass

    class FakeKernel:
        made = 0

        def __getitem__(self, config):
            FakeKernel.made += 1
            warnings.warn("Grid size 1 will likely result in GPU under-utilization due to low occupancy.",
                          ForeignPerformanceWarning, stacklevel=2)
            return ("launcher", config)

    monkeypatch.setattr(launch, "simulator_enabled", lambda: False)
    monkeypatch.setattr(launch, "_configured", {})
    kernel = FakeKernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        first = launch.configured(kernel, 1, 32)
        again = launch.configured(kernel, 1, 32)
        other = launch.configured(kernel, 2, 32)
    # the first launch of each configuration goes through a wrapper (it holds a lock: numba-cuda loads modules then)
    assert first is again and first.configuration == ("launcher", (1, 32, 0, 0))
    assert other.configuration == ("launcher", (2, 32, 0, 0))
    assert FakeKernel.made == 2
    # the caller's own filters are untouched: outside configured() the warning is raised as they say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ForeignPerformanceWarning):
            kernel[3, 32]


def test_run_captured_runs_eagerly_then_captures_then_replays(monkeypatch):
    # the CUDA-graph path of the GPU refine, with a stand-in stream (CuPy's begin/end_capture and Graph.launch)
    from portalign.kernels.gpu import launch

    class FakeGraph:
        def __init__(self, log):
            self.log = log

        def launch(self, stream):
            self.log.append("graph")

    class FakeStream:
        def __init__(self, fail=False):
            self.log, self.fail, self.capturing = [], fail, False

        def begin_capture(self):
            self.capturing = True

        def end_capture(self):
            self.capturing = False
            if self.fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            return FakeGraph(self.log)

    monkeypatch.setattr(launch, "simulator_enabled", lambda: False)
    monkeypatch.setattr(launch, "_graphs", {})
    monkeypatch.delenv("PORTALIGN_CUDA_GRAPHS", raising=False)
    stream = FakeStream()
    monkeypatch.setattr(launch._current, "stream", stream, raising=False)
    calls = []

    def enqueue():
        calls.append("captured" if launch._current.stream.capturing else "eager")

    assert [launch.run_captured("k", enqueue) for _ in range(4)] == ["eager", "captured", "replayed", "replayed"]
    assert calls == ["eager", "captured"] and stream.log == ["graph"] * 3
    # a capture that fails leaves that key eager for good, and the work is still done
    bad = FakeStream(fail=True)
    monkeypatch.setattr(launch._current, "stream", bad, raising=False)
    calls.clear()
    assert [launch.run_captured("b", enqueue) for _ in range(3)] == ["eager", "eager", "eager"]
    # the launches recorded by the failed capture never ran: the sequence ran again eagerly
    assert calls == ["eager", "captured", "eager", "eager"] and not bad.capturing
    # a launch that raises while being captured: the capture is closed and the sequence runs eagerly, for good
    refusing = FakeStream()
    monkeypatch.setattr(launch._current, "stream", refusing, raising=False)
    calls.clear()

    def refuses_capture():
        if launch._current.stream.capturing:
            raise RuntimeError("operation not permitted when stream is capturing")
        calls.append("eager")

    assert [launch.run_captured("r", refuses_capture) for _ in range(3)] == ["eager", "eager", "eager"]
    assert calls == ["eager"] * 3 and not refusing.capturing and refusing.log == []
    monkeypatch.setenv("PORTALIGN_CUDA_GRAPHS", "0")
    assert launch.run_captured("k", enqueue) == "eager"
    monkeypatch.setattr(launch._current, "stream", None, raising=False)


def test_device_views_are_made_once_per_address_shape_strides_and_dtype(monkeypatch):
    # numba's view of a CuPy array cost ~20 us of host time per argument per launch on an H200: made once
    from types import SimpleNamespace

    from portalign.kernels.gpu import launch

    made = []

    def as_cuda_array(obj, sync=True):
        made.append((obj.__cuda_array_interface__, sync))
        return ("view", len(made))

    def cupy_like(ptr, shape, strides=(8,)):
        dtype = np.dtype(np.float64)
        interface = {"shape": shape, "typestr": dtype.str, "data": (ptr, False), "strides": None, "version": 3,
                     "stream": 1}
        return SimpleNamespace(data=SimpleNamespace(ptr=ptr), shape=shape, strides=strides, dtype=dtype,
                               __cuda_array_interface__=interface)

    monkeypatch.setattr(launch, "simulator_enabled", lambda: False)
    monkeypatch.setattr(launch, "_views", {})
    monkeypatch.setattr(launch.cuda, "as_cuda_array", as_cuda_array)
    first = launch.device_arg(cupy_like(4096, (4,), (8,)))
    again = launch.device_arg(cupy_like(4096, (4,), (8,)))  # another object (a slice, say) of the same memory
    shorter = launch.device_arg(cupy_like(4096, (2,), (8,)))
    assert first is again and shorter != first and len(made) == 2
    # the view describes the memory without owning it: no stream, no reference to the CuPy array
    assert made[0] == ({"shape": (4,), "typestr": "<f8", "data": (4096, False), "strides": None, "version": 3}, False)
    # a numba device array goes as it is
    numba_array = SimpleNamespace(device_ctypes_pointer=1)
    assert launch.device_arg(numba_array) is numba_array and len(made) == 2
