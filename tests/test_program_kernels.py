"""The per-frame program's stage kernels (refine, peaks, statistics, level preparation): CPU against float64 references.

The GPU twins are compared with these CPU kernels in tests/test_gpu.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from portalign.field import sample_mask
from portalign.kernels import cpu
from portalign.kernels import reference as ref_kernels
from portalign.kernels.cpu.refine import EDGE, EDGE_UNGUARDED, MI, STENCIL_3D, quadratic_step

from tests.kernel_cases import random_mask, structured_image
from tests.program_cases import level_case, peak_window, refine_args


@pytest.mark.parametrize("metric", [EDGE, MI])
@pytest.mark.parametrize("rotate", [False, True])
def test_refine_recovers_a_known_shift_and_matches_the_reference(metric, rotate):
    case = level_case(shape=(64, 60))
    # edges capture from a pixel or two away; MI is refined from close by (as in the engine, after edges)
    start = (0.4, 0.2, 0.0) if metric == EDGE else (case.truth[0] + 0.3, case.truth[1] - 0.25, 0.0)
    args = refine_args(case, metric, start, rotate)
    cpu.refine(*args)
    got = args[-1].copy()
    args_ref = refine_args(case, metric, start, rotate)
    ref_kernels.refine.refine(*args_ref)
    want = args_ref[-1]
    # the compiled loop and the numpy one take the same steps (same metric values to ~1e-12)
    assert_allclose(got[:4], want[:4], rtol=0, atol=1e-7)
    assert got[4] == want[4]
    # and the optimum is the known shift (sub-pixel, cubic-interpolated frame)
    # MI on ~3,000 pixels and 16 bins is rougher (partial-volume ripple, a weak rotation lever)
    tolerance = 0.08 if metric == EDGE else 0.35
    assert abs(got[0] - case.truth[0]) < tolerance and abs(got[1] - case.truth[1]) < tolerance
    if not rotate:
        assert got[2] == 0.0
    elif metric == EDGE:  # MI on so few pixels hardly constrains a rotation; the engine refines it on edges
        assert abs(np.degrees(got[2])) < 0.3


def test_refine_star_stencil_and_rotation_limit():
    case = level_case(shift_px=(0.5, 0.5))
    for kernel in (cpu.refine, ref_kernels.refine.refine):
        args = list(refine_args(case, EDGE, (0.0, 0.0, np.radians(10.0)), True, star=True, iterations=1))
        kernel(*args)
        out = args[-1]
        assert out[4] == 1  # one stencil, as asked
        assert abs(out[2]) <= np.radians(6.0) + 1e-12  # clipped to theta_limit


def test_refine_takes_back_a_jump_that_measured_worse(monkeypatch):
    """The edge metric's safeguard: a jump whose centre measures worse than the best centre so far is taken back.

    On this small case the fourth stencil's centre measures below the third's. The ascent jumps again from the
    third's star alone, and then halves (its later centres rise towards the third's and stay below it). The
    result is the best centre measured, with its measured value as the score: not the last jump, unmeasured.
    The compiled loop and the numpy reference take the same steps.
    """
    case = level_case(shape=(20, 22), shift_px=(0.6, -0.4), bins=8)
    start = (0.2, 0.1, 0.0)
    centres = []
    values = ref_kernels.refine._values
    monkeypatch.setattr(ref_kernels.refine, "_values", lambda *a: (v := values(*a), centres.append(v[0]))[0])
    args_ref = refine_args(case, EDGE, start, True, bins=8, iterations=6)
    ref_kernels.refine.refine(*args_ref)
    args = refine_args(case, EDGE, start, True, bins=8, iterations=6)
    cpu.refine(*args)
    assert_allclose(args[-1][:4], args_ref[-1][:4], rtol=0, atol=1e-9)
    assert args[-1][4] == args_ref[-1][4] == 6
    best = int(np.argmax(centres))
    assert len(centres) == 6 and best == 2 and all(c < centres[best] for c in centres[3:])  # three taken back
    assert args[-1][3] == pytest.approx(centres[best], abs=1e-12)  # the best centre's measured value
    # the pose is the third stencil's centre, where two jumps end: the same pose from six stencils as from two
    args3 = refine_args(case, EDGE, start, True, bins=8, iterations=2)
    cpu.refine(*args3)
    assert_allclose(args[-1][:3], args3[-1][:3], rtol=0, atol=1e-12)
    assert abs(args[-1][0] - case.truth[0]) < 0.08 and abs(args[-1][1] - case.truth[1]) < 0.08
    # EDGE_UNGUARDED (the split-half check's halves) takes every jump, as before the safeguard: it ends elsewhere
    free = refine_args(case, EDGE_UNGUARDED, start, True, bins=8, iterations=6)
    cpu.refine(*free)
    free_ref = refine_args(case, EDGE_UNGUARDED, start, True, bins=8, iterations=6)
    ref_kernels.refine.refine(*free_ref)
    assert_allclose(free[-1][:4], free_ref[-1][:4], rtol=0, atol=1e-9)
    assert np.abs(free[-1][:3] - args[-1][:3]).max() > 1e-3


def test_quadratic_step_jumps_to_the_maximum_of_a_concave_quadratic():
    # f(x) = 1 - (x - a)' A (x - a) sampled on the 3-D stencil: one Newton jump lands on a (within MAX_JUMP)
    a = np.array([0.4, -0.3, 0.2])
    h = np.array([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 1.0]])
    f = np.array([1.0 - (s - a) @ h @ (s - a) for s in STENCIL_3D])
    jump = np.zeros(3)
    cross = np.zeros(3)
    predicted = quadratic_step(f, 10, 3, cross, jump)
    assert_allclose(jump, a, atol=1e-12)
    assert predicted == pytest.approx(1.0, abs=1e-12)
    assert_allclose(cross, [-2 * h[0, 1], -2 * h[0, 2], -2 * h[1, 2]], atol=1e-12)


def test_the_rotation_scan_turns_about_the_usable_pixels_centroid_and_skips_rotations_within_reach():
    """``scan_start_poses``: every pose maps the usable pixels' centroid to the reference point the start maps it to;
    rotations within one and a half search steps of the start's are left to the ascent; at most ``n_scan``, spread
    over the grid with its ends."""
    from portalign.kernels.cpu.program import scan_start_poses

    rows = np.array([10, 11, 40, 41, 42], dtype=np.int32)
    cols = np.array([5, 30, 31, 60, 61], dtype=np.int32)
    geometry = np.array([32.0, 20.0, 0.8, 0.5, 0.0, 0.0])  # frame axis (col 32, row 20), 0.8 mm rows, 0.5 mm columns
    cx = (cols.mean() - 32.0) * 0.5
    cy = (rows.mean() - 20.0) * 0.8
    start = np.array([1.2, -0.7, math.radians(-5.6)])
    thetas = np.radians(np.arange(-7.0, 7.5, 2.0))  # the search's grid: -7 ... +7 deg in 2 deg steps
    out = np.zeros((10, 3))
    n = scan_start_poses(int(rows.sum()), int(cols.sum()), len(rows), geometry, start, thetas, 9, out)
    # -7 and -5 (and -3: 2.6 deg) lie within 3 deg of -5.6: left out
    assert_allclose(np.degrees(out[:n, 2]), [-1.0, 1.0, 3.0, 5.0, 7.0], atol=1e-12)

    def reference_point(pose: np.ndarray) -> np.ndarray:  # R(-theta) (c - t): where the pose maps the centroid
        c, s = math.cos(pose[2]), math.sin(pose[2])
        ux, uy = cx - pose[0], cy - pose[1]
        return np.array([c * ux + s * uy, -s * ux + c * uy])

    for pose in out[:n]:
        assert_allclose(reference_point(pose), reference_point(start), atol=1e-12)
    # more rotations than the scan takes: n_scan of them, the grid's first and last among them
    fine = np.radians(np.arange(-7.0, 7.25, 0.5))
    n = scan_start_poses(int(rows.sum()), int(cols.sum()), len(rows), geometry, np.array([0.0, 0.0, 0.0]), fine, 5, out)
    assert_allclose(np.degrees(out[:n, 2]), [-7.0, -3.5, 3.5, 7.0], atol=1e-12)  # 0 deg (the start's) left out
    assert scan_start_poses(0, 0, 0, geometry, start, thetas, 9, out) == 0  # no usable pixel: nothing to scan
    # who is scanned: a start more than one search step (2 deg) from no turn
    from portalign.kernels.cpu.program import scan_wanted

    assert scan_wanted(math.radians(-5.6), thetas) and scan_wanted(math.radians(2.1), thetas)
    assert not scan_wanted(math.radians(1.9), thetas) and not scan_wanted(0.0, thetas)
    assert not scan_wanted(math.radians(5.0), thetas[:1])  # rotation not searched: one angle


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_candidates", [1, 2])
def test_search_peaks_match_the_reference(seed, n_candidates):
    window = peak_window(seed)
    thetas = np.radians(np.arange(-2, 3) * 2.0)
    outs = []
    for kernel in (cpu.search_peaks, ref_kernels.peaks.search_peaks):
        poses, scores = np.zeros((8, 3)), np.zeros(8)
        n = kernel(window, thetas, 0.8, 1.1, n_candidates, 0.85, 3, poses, scores)
        outs.append((n, poses[:n].copy(), scores[:n].copy()))
    assert outs[0][0] == outs[1][0] >= n_candidates
    assert_allclose(outs[0][1], outs[1][1], atol=1e-12)
    assert_allclose(outs[0][2], outs[1][2], atol=0)
    # the best bump is found first, within a fraction of a pixel (x in mm = px * 1.1, y = px * 0.8)
    best = outs[0][1][0]
    assert best[0] == pytest.approx(-4.6 * 1.1, abs=0.5) and best[1] == pytest.approx(2.3 * 0.8, abs=0.4)


def test_search_peaks_keep_near_ties_beyond_the_asked_count():
    window = peak_window(0)
    thetas = np.radians(np.arange(-2, 3) * 2.0)
    poses, scores = np.zeros((8, 3)), np.zeros(8)
    n = cpu.search_peaks(window, thetas, 1.0, 1.0, 1, 0.85, 3, poses, scores)
    # the 0.88 bump is within 85 % of the 0.95 one: kept as a near-tie; the 0.4 one is not
    assert n == 2 and scores[1] >= 0.85 * scores[0]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("row_step", [1, 4])
def test_second_difference_mad_matches_the_reference(masked, row_step):
    img = structured_image((40, 36), seed=5)
    img = img + np.random.default_rng(0).normal(0, 3.0, img.shape).astype(np.float32)
    mask = random_mask((40, 36), seed=4, keep=0.9)
    got = cpu.second_difference_mad(img, mask, 2, 38, row_step, 1, 35, masked)
    want = ref_kernels.statistics.second_difference_mad(img, mask, 2, 38, row_step, 1, 35, masked)
    assert got[1] == want[1] > 0
    assert got[0] == pytest.approx(want[0], rel=1e-12)


def test_second_difference_mad_gives_the_white_noise_sigma():
    rng = np.random.default_rng(7)
    ramp = np.add.outer(np.arange(200.0), 2.0 * np.arange(220.0))  # a linear trend cancels exactly
    img = (ramp + rng.normal(0, 5.0, ramp.shape)).astype(np.float32)
    mad, n = cpu.second_difference_mad(img, img, 0, 200, 1, 0, 220, False)
    assert n == 200 * 218
    assert 1.4826 * mad / np.sqrt(6.0) == pytest.approx(5.0, rel=0.03)


def test_rms_radius_matches_the_reference_and_geometry():
    mask = random_mask((30, 26), seed=8)
    got = cpu.rms_radius(mask, 12.5, 14.5, 0.5, 0.7, 2)
    want = ref_kernels.statistics.rms_radius(mask, 12.5, 14.5, 0.5, 0.7, 2)
    assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-12)
    assert got[2] == pytest.approx(want[2], rel=1e-12)
    empty = np.zeros((4, 4), dtype=np.uint8)
    assert cpu.rms_radius(empty, 0, 0, 1, 1, 2) == (0.0, 0, 0.0)
    # the centroid's distance from the axis: one 3 x 3 block of pixels 12 columns right and 5 rows below the axis
    block = np.zeros((40, 40), dtype=np.uint8)
    block[14:17, 21:24] = 1  # centre (row 15, col 22), the axis at (col 10, row 10): 12 * 0.7 across, 5 * 0.5 down
    rms, count, centroid = cpu.rms_radius(block, 10.0, 10.0, 0.5, 0.7, 1)
    assert count == 9 and centroid == pytest.approx(math.hypot(12 * 0.7, 5 * 0.5), rel=1e-12)
    assert rms > centroid  # the pixels spread about their centre
    # pixels all round the axis: their centroid on it
    ring = np.zeros((21, 21), dtype=np.uint8)
    ring[[0, 20, 10, 10], [10, 10, 0, 20]] = 1
    assert cpu.rms_radius(ring, 10.0, 10.0, 1.0, 1.0, 1)[2] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("scale", "offset"), [(0.25, -0.375), (1.0, 0.0), (2.0, 0.5)])
def test_dead_lines_are_cut_without_a_field_edge_band(scale, offset):
    """A dead line (``DEAD_LINE`` in the field mask) leaves the level's pixels it overlaps and their neighbours.

    The field-edge band is not taken around it: the usable pixels are the field's eroded ones less exactly the
    rows and columns within ``1.5 scale + 0.5`` detection lines of a dead one (a level pixel spans ``scale`` lines;
    central differences reach one pixel).
    """
    from portalign.kernels.cpu.level import DEAD_LINE

    shape = (48, 44)
    image = structured_image(shape, seed=3)
    small = np.zeros((24, 22), dtype=np.uint8)
    small[2:22, 2:20] = 1
    dead = small.copy()
    dead[11, :] = DEAD_LINE
    dead[:, 7] = DEAD_LINE

    def usable(field_mask):
        b = [np.empty(shape, np.uint8) for _ in range(3)] + [np.empty(image.size, np.int32) for _ in range(2)]
        b += [np.empty(shape, np.int16), np.empty((shape[0], 2)), np.empty(shape, np.float32), np.empty(shape, np.float32)]
        cpu.prepare_level(image, field_mask, True, scale, offset, 3, 16, *b, np.zeros(4))
        return b[2].astype(bool)

    want = usable(np.minimum(dead, 1))  # the field as if the lines were sound
    rows = np.abs(np.arange(shape[0]) * scale + offset - 11) < 1.5 * scale + 0.5
    cols = np.abs(np.arange(shape[1]) * scale + offset - 7) < 1.5 * scale + 0.5
    want[rows, :] = False
    want[:, cols] = False
    got = usable(dead)
    assert rows.any() and cols.any() and got.any()
    assert_array_equal(got, want)


@pytest.mark.parametrize("has_field", [True, False])
def test_prepare_level_equals_its_steps_done_one_by_one(has_field):
    shape = (36, 40)
    image = structured_image(shape, seed=9)
    small = np.zeros((10, 11), dtype=bool)
    small[2:8, 3:9] = True
    scale, offset, erosion, bins = 0.25, -0.375, 2, 16
    buffers = dict(mask=np.empty(shape, np.uint8), scratch=np.empty(shape, np.uint8), eroded=np.empty(shape, np.uint8),
                   rows=np.empty(image.size, np.int32), cols=np.empty(image.size, np.int32),
                   bins=np.empty(shape, np.int16), sums=np.empty((shape[0], 2)), re=np.empty(shape, np.float32),
                   im=np.empty(shape, np.float32))
    stats = np.zeros(4)
    b = buffers
    cpu.prepare_level(image, small, has_field, scale, offset, erosion, bins, b["mask"], b["scratch"], b["eroded"],
                      b["rows"], b["cols"], b["bins"], b["sums"], b["re"], b["im"], stats)
    # the same steps with the float64 reference kernels and the engine's own mask sampler
    mask = sample_mask(small, scale, offset, shape).astype(np.uint8) if has_field else np.ones(shape, np.uint8)
    eroded = np.empty(shape, np.uint8)
    ref_kernels.mask.erode_box(mask, erosion if has_field else 1, np.empty(shape, np.uint8), eroded)
    assert_array_equal(b["mask"], mask)
    assert_array_equal(b["eroded"], eroded)
    rows, cols = np.empty(image.size, np.int32), np.empty(image.size, np.int32)
    usable = ref_kernels.mask.pixel_list(eroded, rows, cols)
    assert stats[0] == usable > 0
    assert_array_equal(b["rows"][:usable], rows[:usable])
    tail = max(0.005, 2.5 / usable)
    lo, hi, _ = cpu.masked_range(image, eroded, tail, 1.0 - tail)
    assert (stats[1], stats[2]) == (lo, hi)
    want_bins = np.empty(shape, np.int16)
    ref_kernels.mutual_information.quantize(image, eroded, lo, hi, bins, want_bins)
    assert_array_equal(b["bins"], want_bins)
    sums = np.empty((shape[0], 2))
    limit = 1.5 * (hi - lo) if hi > lo else np.inf
    ref_kernels.gradient.gradient_row_sums(image, eroded, limit, sums)
    eps = sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)
    assert stats[3] == pytest.approx(eps, rel=1e-6)  # the kernels take gradients of float32 pixels
    re, im = np.empty(shape), np.empty(shape)
    ref_kernels.gradient.orientation_features(image, eroded, eps, limit, re, im)
    assert_allclose(b["re"], re, atol=1e-5)
    assert_allclose(b["im"], im, atol=1e-5)


def test_rotation_lever_arm_is_the_schur_complement_of_the_stencil_hessian():
    from portalign.kernels.cpu.refine import rotation_lever_arm

    # f(p) = -p' H p / 2 with p in mm, mm, rad: the stencil recovers H, the lever arm is sqrt(S / mean(Hxx, Hyy))
    h = np.array([[2.0, 0.2, 30.0], [0.2, 1.6, -20.0], [30.0, -20.0, 9000.0]])
    step = np.array([0.5, 0.4, 0.01])
    f = np.array([-0.5 * (s * step) @ h @ (s * step) for s in STENCIL_3D])
    schur = h[2, 2] - h[2, :2] @ np.linalg.solve(h[:2, :2], h[:2, 2])
    assert rotation_lever_arm(f, step) == pytest.approx(np.sqrt(schur / (0.5 * (h[0, 0] + h[1, 1]))), rel=1e-9)
    # a rotation that costs nothing once the translation follows (a ball bearing): no lever arm
    flat = h.copy()
    flat[2, 2] = h[2, :2] @ np.linalg.solve(h[:2, :2], h[:2, 2])
    f_flat = np.array([-0.5 * (s * step) @ flat @ (s * step) for s in STENCIL_3D])
    assert rotation_lever_arm(f_flat, step) < 1e-3
    assert rotation_lever_arm(np.full(10, np.nan), step) == 0.0
    # not at a maximum, the level cannot tell (LEVER_ARM_UNTOLD; the search measures it on the first refinement level):
    # a rotation that gains once the translation follows (the optimum another level found lies elsewhere on this one),
    # and a translation that is a saddle (structure along one direction, its noise deciding the other's sign)
    from portalign.kernels.cpu.refine import LEVER_ARM_UNTOLD

    assert LEVER_ARM_UNTOLD < 0.0
    gaining = flat.copy()
    gaining[2, 2] -= 50.0
    f_gaining = np.array([-0.5 * (s * step) @ gaining @ (s * step) for s in STENCIL_3D])
    assert rotation_lever_arm(f_gaining, step) == LEVER_ARM_UNTOLD
    saddle = h.copy()
    saddle[1, 1] = -0.3
    f_saddle = np.array([-0.5 * (s * step) @ saddle @ (s * step) for s in STENCIL_3D])
    assert rotation_lever_arm(f_saddle, step) == LEVER_ARM_UNTOLD


# --- the whole search: compiled program against the eager steps -------------------------------------------------


def _program_cases():
    """Pairs that take every branch of stage 3: rotation, translation only, each method, a clean frame (polish),
    a small cone (rotation unsupported), periodic stripes (a close runner-up), unrelated images, a low-dose field,
    two portal images (the MI optimum reported)."""
    from dataclasses import replace

    from portalign import Image, RegistrationOptions

    from tests.field_sets import cone_image, cone_pair
    from tests.synthetic import anatomy, field_aperture, moved, mv_portal

    base = anatomy(384, seed=1)

    def pair(dx, dy, theta, spacing=1.0, shape=(256, 256)):
        return (Image.from_array(moved(base, 0, 0, 0, shape=shape, spacing_mm=spacing), pixel_spacing_mm=spacing,
                                 kind="drr"),
                Image.from_array(moved(base, dx, dy, theta, shape=shape, spacing_mm=spacing), pixel_spacing_mm=spacing))

    ref, frame = pair(4.4, -2.2, 1.3)
    yield "rotation", ref, frame, None
    yield "translation only", ref, frame, RegistrationOptions(estimate_rotation=False)
    yield "mi", ref, frame, RegistrationOptions(method="mi")
    yield "edge", ref, frame, RegistrationOptions(method="edge")
    portal_ref, portal_frame = (replace(image, info=replace(image.info, kind="portal")) for image in (ref, frame))
    yield "portal reference", portal_ref, portal_frame, None
    clean = anatomy(768, seed=3)
    grid = {"shape": (384, 512), "spacing_mm": 0.39, "base_spacing_mm": 0.5}
    yield "clean (polish)", Image.from_array(moved(clean, 0, 0, 0, **grid), pixel_spacing_mm=0.39, kind="drr"), \
        Image.from_array(moved(clean, 2.1, -1.3, 0.8, **grid), pixel_spacing_mm=0.39), None
    aperture = field_aperture((384, 512), 0.39, 80, 60)
    yield "portal pair in agreement (fine polish)", *(
        Image.from_array(mv_portal(moved(clean, dx, dy, theta, **grid), aperture, noise=0.004, seed=seed),
                         pixel_spacing_mm=0.39, kind="portal")
        for dx, dy, theta, seed in ((0, 0, 0, 1), (2.1, -1.3, 0.8, 2))), None
    cone_ref, cone_frame = cone_pair(1.5, -2.0, size=240)[:2]
    yield "cone", cone_ref, cone_frame, RegistrationOptions(field="none")
    cc = np.mgrid[0:256, 0:256][1].astype(float)
    yield "stripes", Image.from_array(np.sin(2 * np.pi * cc / 12.0), pixel_spacing_mm=1.0, kind="drr"), \
        Image.from_array(np.sin(2 * np.pi * (cc - 3.0) / 12.0), pixel_spacing_mm=1.0), \
        RegistrationOptions(estimate_rotation=False)
    yield "unrelated", Image.from_array(anatomy(256, seed=11), pixel_spacing_mm=1.0, kind="drr"), \
        Image.from_array(anatomy(256, seed=12), pixel_spacing_mm=1.0), None
    noisy = anatomy(384, seed=2)
    for name, noise in (("low dose field", 0.06), ("smoothed low dose field", 0.03)):
        portal = mv_portal(moved(noisy, 3.0, -2.0, 1.0), field_aperture((256, 256), 1.0, 40, 40), noise=noise, seed=1)
        yield name, Image.from_array(moved(noisy, 0, 0, 0), pixel_spacing_mm=1.0, kind="drr"), \
            Image.from_array(portal, pixel_spacing_mm=1.0), None
    # a weak edge match on raw pixels (the reference as noisy as the frame: neither smoothed alone); then both smoothed
    # (SMOOTH_PAIR), refused so too
    yield "weak edge match", *(
        Image.from_array(mv_portal(moved(noisy, dx, dy, theta), aperture, noise=0.06, seed=seed),
                         pixel_spacing_mm=1.0, kind=kind)
        for dx, dy, theta, aperture, seed, kind in ((0, 0, 0, np.ones((256, 256)), 102, "drr"),
                                                    (3.0, -2.0, 1.0, field_aperture((256, 256), 1.0, 40, 40), 2, ""))
    ), None
    # two portal images of a small field that moved with its content, at low dose: MI reports (SETTINGS_ALIKE_SMALL)
    yield "small field that moved", *(
        Image.from_array(cone_image((240, 240), 0.25, shift, noise=0.02, seed=seed), pixel_spacing_mm=0.25,
                         kind="portal") for shift, seed in (((0.0, 0.0), 3), ((1.5, -2.0), 4))), None


#: The branch of stage 3 each case must take (so that the comparison covers it).
_BRANCH = {
    "clean (polish)": lambda r: any(level.get("polish") for level in r.details["levels"]),
    "portal pair in agreement (fine polish)": lambda r: r.ok and r.details["fine_polish"]["levels"] == [1]
    and r.details["fine_polish"]["kept"],
    "cone": lambda r: r.rotation_deg is None and "does not constrain rotation" in " ".join(r.warnings),
    # stripes one way: a rival a period across them is ambiguous, one along them one-directional (either is found)
    "stripes": lambda r: r.reason.startswith("one-directional match") or (r.reason.startswith("ambiguous")
                                                                          and r.ambiguity >= 0.9),
    "unrelated": lambda r: not r.ok,
    # a weak edge match (smoothed, still weak; a DRR): the split-half check runs and auto reports the edges' optimum
    "low dose field": lambda r: r.details["split_half_mm"] is not None and r.details["final_metric"] == "edge"
    and r.details["denoised"] is not None and r.details["edge_score"] < 0.2,
    # ...on the pixels as taken: auto reports the MI optimum, and the pair smoothed alike is refused too
    "weak edge match": lambda r: r.details["final_metric"] == "mi" and r.details["final_metric_why"] == "weak edge match"
    and r.details["denoised"] is None and any(w.startswith("registered again with both images smoothed") for w in r.warnings),
    # a noisy frame registered again from its smoothed pixels (_program.DENOISE): its edges then report
    "smoothed low dose field": lambda r: r.ok and r.details["denoised"] is not None
    and r.details["final_metric"] == "edge" and r.details["split_half_metric"] == "edge",
    "small field that moved": lambda r: r.ok and r.details["final_metric"] == "mi" and r.details["field_moved_mm"] > 1
    and r.details["rotation_radius_mm"] < 20 and r.details["split_half_metric"] == "mi",
    "mi": lambda r: r.details["edge_mi_gap_mm"] is None and r.ok,
    # two portal images: auto reports the MI optimum refined from the edge one
    "portal reference": lambda r: r.details["final_metric_why"] == "portal reference" and r.ok,
    "rotation": lambda r: r.ok and r.details["edge_mi_gap_mm"] is not None and r.rotation_deg is not None,
}


def _same_numbers(a, b, path="details"):  # type: ignore[no-untyped-def]
    """Assert two nested results equal: floats to 1e-9 relative (a vectorised sum's order may follow the buffers'
    memory alignment, which the tests run before change: a split-half spread differed by 1e-14), the rest exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), path
        for key in a:
            _same_numbers(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b and type(a) is type(b), path


@pytest.mark.parametrize("case", list(_program_cases()), ids=lambda case: case[0])
def test_compiled_search_program_gives_the_eager_steps_numbers(case):
    # the CPU runs stage 3 as one compiled call; the eager path (the GPU's) calls the same kernels one by one
    from dataclasses import replace

    import portalign
    from portalign.backends import cpu_backend

    name, ref, frame, options = case
    compiled_backend = cpu_backend()
    assert compiled_backend.compiled_program
    eager_backend = replace(compiled_backend, compiled_program=False)
    compiled = portalign.prepare_reference(ref, options, backend=compiled_backend).register(frame)
    eager = portalign.prepare_reference(ref, options, backend=eager_backend).register(frame)
    assert (compiled.ok, compiled.reason, compiled.warnings) == (eager.ok, eager.reason, eager.warnings)
    assert compiled.dx_mm == pytest.approx(eager.dx_mm, abs=1e-9)
    assert compiled.dy_mm == pytest.approx(eager.dy_mm, abs=1e-9)
    assert (compiled.rotation_deg is None) == (eager.rotation_deg is None)
    if compiled.rotation_deg is not None:
        assert compiled.rotation_deg == pytest.approx(eager.rotation_deg, abs=1e-9)
    assert compiled.score == pytest.approx(eager.score, abs=1e-9)
    assert compiled.ambiguity == pytest.approx(eager.ambiguity, abs=1e-9)
    _same_numbers(compiled.details, eager.details)
    assert _BRANCH.get(name, lambda r: True)(compiled), (name, compiled.reason, compiled.warnings)


@pytest.mark.parametrize("rotation", [True, False])
def test_the_surfaces_beside_the_levels_give_the_same_registration(monkeypatch, rotation):
    """A two-level plan's global search computed beside its other level: the same result as one after the other.

    Without rotation estimated only rotation 0's surface is computed beside the level.
    """
    import portalign
    import portalign.registration._frame as frame_stage
    from portalign.backends import cpu_backend

    name, ref, frame, options = next(case for case in _program_cases() if case[0] == "clean (polish)")
    options = portalign.RegistrationOptions(estimate_rotation=rotation)
    backend = cpu_backend()
    # used on two threads only (where measured); any count here, whatever the thread policy chose on this machine
    monkeypatch.setattr(frame_stage, "SURFACES_BESIDE_LEVELS_THREADS", None)
    calls = []
    original = backend.kernels.levels_and_surfaces
    monkeypatch.setattr(backend.kernels, "levels_and_surfaces", lambda *a: calls.append(1) or original(*a))
    beside = portalign.prepare_reference(ref, options, backend=backend).register(frame)
    assert calls, "the two-level plan did not run levels_and_surfaces"
    monkeypatch.setattr(frame_stage, "SURFACES_BESIDE_LEVELS", False)
    calls.clear()
    after = portalign.prepare_reference(ref, options, backend=backend).register(frame)
    assert not calls
    assert beside.ok and (beside.dx_mm, beside.dy_mm, beside.rotation_deg, beside.score) == \
        (after.dx_mm, after.dy_mm, after.rotation_deg, after.score)
    assert (beside.rotation_deg is not None) == rotation
    assert str(beside.details) == str(after.details)
    # and a thread count it is not used with takes the one-after-the-other path
    monkeypatch.setattr(frame_stage, "SURFACES_BESIDE_LEVELS", True)
    monkeypatch.setattr(frame_stage, "SURFACES_BESIDE_LEVELS_THREADS", 10_000)
    other = portalign.prepare_reference(ref, options, backend=backend).register(frame)
    assert not calls and (other.dx_mm, other.dy_mm) == (after.dx_mm, after.dy_mm)


# --- the CPU program's fused front end: the same numbers as its steps one call at a time ---------------------------


@pytest.mark.parametrize("shape", [(64, 72), (37, 51)])
def test_frame_pyramid_is_downsample2_level_by_level_with_the_frame_s_range(shape):
    from portalign.kernels.cpu.pyramid import PYRAMID_SLOTS

    frame = structured_image(shape, seed=3)
    frame.setflags(write=False)  # a service's buffer: read-only, and still read
    depth = 3
    want, src = [], frame
    for _ in range(depth):
        out = np.empty((src.shape[0] // 2, src.shape[1] // 2), np.float32)
        cpu.downsample2(src, out)
        want.append(out)
        src = out
    buffers = [np.full_like(w, np.nan) for w in want]
    padded = tuple(buffers + [buffers[-1]] * (PYRAMID_SLOTS - 1 - depth))
    flags = np.empty((shape[0], 2), np.int64)
    row_means, col_means = np.full(shape[0], np.nan), np.full(shape[1], np.nan)
    assert cpu.frame_pyramid(frame, padded, depth, flags, row_means, col_means) == (True, True)
    for got, expected in zip(buffers, want, strict=True):
        assert_array_equal(got, expected)
    # the detector lines' means on the same pass (the odd last row and column included): those of the frame itself
    assert_allclose(row_means, frame.astype(np.float64).mean(axis=1), rtol=1e-12)
    assert_allclose(col_means, frame.astype(np.float64).mean(axis=0), rtol=1e-12)
    # a bad value anywhere, the odd last row and column included, is seen
    for bad, where in ((np.nan, (0, 0)), (np.inf, (5, 7)), (-np.inf, (shape[0] - 1, shape[1] - 1)),
                       (np.nan, (shape[0] - 1, 3)), (np.inf, (2, shape[1] - 1))):
        spoilt = frame.copy()
        spoilt[where] = bad
        assert cpu.frame_pyramid(spoilt, padded, depth, flags, row_means, col_means)[0] is False, (bad, where)
    # a constant frame does not vary; one differing pixel (in the odd last column too) does
    flat = np.full(shape, 3.0, np.float32)
    assert cpu.frame_pyramid(flat, padded, depth, flags, row_means, col_means) == (True, False)
    flat[1, shape[1] - 1] = 4.0
    assert cpu.frame_pyramid(flat, padded, depth, flags, row_means, col_means) == (True, True)


@pytest.mark.parametrize("kind", ["field", "open", "dead_row", "dead_col", "flat"])
def test_detect_front_is_split_field_after_the_dead_line_screen(kind):
    from portalign import field as fld
    from portalign.kernels.cpu.field import FIELD, NO_THREE_LEVELS, dead_lines, detect_front, split_field, three_level_split

    rng = np.random.default_rng(12)
    small = (100.0 + rng.normal(0.0, 1.0, (48, 56))).astype(np.float32)
    if kind == "field":
        small[10:36, 12:44] += 400.0
    elif kind == "dead_row":
        small[10:36, 12:44] += 400.0
        small[20, :] = 0.0
    elif kind == "dead_col":
        small[:, 30] = 900.0
    elif kind == "flat":
        small[:] = 7.0
    args = (fld.DEAD_LINE_CONTRAST, fld.DEAD_LINE_SHARE, fld.DEAD_BLOCK_MAX_SHARE, fld.MIN_EFFECTIVENESS, fld.MIN_BORDER_OUTSIDE,
            fld.FIELD_AREA[0], fld.FIELD_AREA[1], fld.MIN_FIELD_PIXELS, fld.MIN_LARGEST_PART)
    mask, box = np.zeros(small.shape, np.uint8), np.zeros(4)
    dead, code, threshold, effectiveness, bright, three = detect_front(small, *args, mask, box, 64)
    values = small.astype(np.float64)
    widths = (max(2, int(args[2] * small.shape[0])), max(2, int(args[2] * small.shape[1])))
    lines = (len(dead_lines(values, args[0], args[1], widths[0])),
             len(dead_lines(np.ascontiguousarray(values.T), args[0], args[1], widths[1])))
    assert dead == (lines != (0, 0)) and dead == kind.startswith("dead")
    if not dead:
        want_mask, want_box = np.zeros(small.shape, np.uint8), np.zeros(4)
        want = split_field(values, *args[3:], want_mask, want_box)
        assert (code, threshold, effectiveness, bright) == want
        assert (code == FIELD) == (kind == "field")
        if code == FIELD:
            assert_array_equal(mask, want_mask)
            assert_array_equal(box, want_box)
            # the three-level split of the same call: the field's pixels counted, the split made
            assert three == three_level_split(values, 64, mask) and three[6] == np.count_nonzero(mask)
        else:
            assert three == NO_THREE_LEVELS
    # and the engine's detect_field gives the same estimate with and without the fast path's help
    got = fld.detect_field(small)
    assert got.detected == (kind in ("field", "dead_row"))
    if kind == "dead_row":
        assert got.dead_rows == (20,)


def _level_images(seed):
    """A 96x104 frame, its two 2x2 reductions and the field on the detection level (level 2): the level-stage inputs."""
    frame = structured_image((96, 104), seed=seed)
    images = [frame]
    for _ in range(2):
        out = np.empty((images[-1].shape[0] // 2, images[-1].shape[1] // 2), np.float32)
        cpu.downsample2(images[-1], out)
        images.append(out)
    small = np.zeros((24, 26), dtype=bool)
    small[4:20, 5:22] = True
    return images, small


def _level_buffers(image):
    """A level tuple of ``frame_levels`` around ``image``: (image, mask, scratch, eroded, rows, cols, bins, row sums,
    features re/im, stats)."""
    shape = image.shape
    return (image, np.empty(shape, np.uint8), np.empty(shape, np.uint8), np.empty(shape, np.uint8),
            np.empty(image.size, np.int32), np.empty(image.size, np.int32), np.empty(shape, np.int16),
            np.empty((shape[0], 2)), np.empty(shape, np.float32), np.empty(shape, np.float32), np.zeros(4))


@pytest.mark.parametrize("has_field", [True, False])
@pytest.mark.parametrize("want_clean", [True, False])
def test_frame_levels_is_prepare_level_per_level_then_the_statistics(has_field, want_clean):
    from portalign.kernels.cpu.level import LEVEL_SLOTS
    from portalign.registration._quality import NOISE_SAMPLES

    images, small = _level_images(21)
    frame = images[0]
    field_level, used, bins = 2, [1, 2], 16
    buffers = _level_buffers

    placement = [(2.0 ** (i - field_level), ((2.0**i - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level)
                 for i in used]
    erosions = np.array([2, 1], dtype=np.int64)
    fused = [buffers(images[i]) for i in used]
    box = np.array([4.0, 21.0, 3.0, 19.0])
    out = np.zeros(7)
    cpu.frame_levels(tuple(fused + [fused[0]] * (LEVEL_SLOTS - 2)), 2, small, has_field,
                     np.array([p[0] for p in placement]), np.array([p[1] for p in placement]), erosions, bins, 0, 1,
                     np.array([10.0, 11.0, 0.8, 0.9]), frame, want_clean, box, has_field, 2.0**field_level,
                     NOISE_SAMPLES, out)
    one_by_one = [buffers(images[i]) for i in used]
    for b, (scale, offset), erosion in zip(one_by_one, placement, erosions, strict=True):
        cpu.prepare_level(b[0], small, has_field, scale, offset, int(erosion), bins, *b[1:])
    for got, want in zip(fused, one_by_one, strict=True):
        usable = int(want[10][0])
        assert usable > 0 and got[10][0] == usable
        for index, (a, b) in enumerate(zip(got[1:], want[1:], strict=True), start=1):
            if index in (4, 5):  # the usable-pixel lists: their first `usable` entries
                a, b = a[:usable], b[:usable]
            assert_array_equal(a, b)
    finest, first = one_by_one
    noise = cpu.second_difference_mad(finest[0], finest[3], 0, finest[0].shape[0], 4, 0, finest[0].shape[1], True)
    radius = cpu.rms_radius(first[3], 10.0, 11.0, 0.8, 0.9, 2)
    assert (out[0], out[1]) == noise and (out[2], out[3], out[6]) == radius
    if not want_clean:
        assert (out[4], out[5]) == (0.0, 0.0)
        return
    # the window of portalign.registration._quality.is_clean: the field's box on the frame's own pixels
    rows, cols = frame.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    if has_field:
        c0, c1 = int(max(0, (box[0] + 1) * 4)), int(min(cols, box[1] * 4))
        r0, r1 = int(max(0, (box[2] + 1) * 4)), int(min(rows, box[3] * 4))
    step = max(1, (r1 - r0) * (c1 - c0) // NOISE_SAMPLES)
    assert (out[4], out[5]) == cpu.second_difference_mad(frame, frame, r0, r1, step, c0, c1, False)


@pytest.mark.parametrize("coarse_slot", [1, 0])
@pytest.mark.parametrize("has_field", [True, False])
def test_levels_and_surfaces_is_frame_levels_beside_the_global_search(coarse_slot, has_field):
    """The two tasks give the numbers of frame_levels followed by coarse_search's surfaces, to the bit."""
    from portalign.kernels.cpu.field import penumbra_extent
    from portalign.kernels.cpu.level import LEVEL_SLOTS
    from portalign.registration._quality import NOISE_SAMPLES

    images, small = _level_images(23)
    frame = images[0]
    field_level, bins = 2, 16
    used = [1, 2] if coarse_slot == 1 else [2, 1]  # the coarse level (2) in either slot
    buffers = _level_buffers

    placement = [(2.0 ** (i - field_level), ((2.0**i - 1) / 2 - (2.0**field_level - 1) / 2) / 2.0**field_level)
                 for i in used]
    scales, offsets = np.array([p[0] for p in placement]), np.array([p[1] for p in placement])
    erosions = np.array([2 if i == 1 else 1 for i in used], dtype=np.int64)
    box, geometry = np.array([4.0, 21.0, 3.0, 19.0]), np.array([10.0, 11.0, 0.8, 0.9])
    # the coarse level's global search: 3 rotations' reference spectra on a padded grid
    coarse_shape, margin = images[2].shape, 4
    padded = (coarse_shape[0] + 2 * margin + 1, coarse_shape[1] + 2 * margin)
    rng = np.random.default_rng(5)
    spectra = (rng.normal(size=(3, *padded)) + 1j * rng.normal(size=(3, *padded))).astype(np.complex64)
    energy = rng.uniform(50.0, 80.0, size=3)
    ty = np.arange(-margin, margin + 1)
    window_rows, window_cols = ty % padded[0], ty % padded[1]

    together = [buffers(images[i]) for i in used]
    out = np.zeros(8)
    window = np.empty((3, ty.size, ty.size), np.float32)
    normalised = np.empty((3, ty.size, ty.size))
    # with a field, its penumbra measured by the first task too (a frame's band against a DRR)
    band_image, band_mask = images[field_level].astype(np.float32), small != 0
    cpu.levels_and_surfaces(tuple(together + [together[0]] * (LEVEL_SLOTS - 2)), coarse_slot, small, has_field,
                            scales, offsets, erosions, bins, geometry, frame, True, box, has_field, 2.0**field_level,
                            NOISE_SAMPLES, out, padded[0], padded[1], margin, spectra, energy, window_rows,
                            window_cols, window, normalised, has_field, band_image, band_mask, 1.5, 15.0)
    apart = [buffers(images[i]) for i in used]
    expected = np.zeros(8)
    expected[7] = penumbra_extent(band_image, band_mask, 1.5, 15.0, True) if has_field else np.nan
    other = 1 - coarse_slot
    cpu.frame_levels(tuple(apart + [apart[0]] * (LEVEL_SLOTS - 2)), 2, small, has_field, scales, offsets, erosions,
                     bins, other, other, geometry, frame, True, box, has_field, 2.0**field_level, NOISE_SAMPLES,
                     expected)
    for got, want in zip(together, apart, strict=True):
        usable = int(want[10][0])
        assert usable > 0 and got[10][0] == usable
        for index, (a, b) in enumerate(zip(got[1:], want[1:], strict=True), start=1):
            if index in (4, 5):
                a, b = a[:usable], b[:usable]
            assert_array_equal(a, b)
    assert_array_equal(out, expected)
    coarse = apart[coarse_slot]
    want_window = np.empty_like(window)
    want_normalised = np.empty_like(normalised)
    cpu.coarse_surfaces(coarse[8], coarse[9], padded[0], padded[1], margin, spectra, energy, window_rows, window_cols,
                        want_window, want_normalised, 1)
    assert_array_equal(window, want_window)
    assert_array_equal(normalised, want_normalised)
    assert np.abs(normalised).max() > 0
    # and the peaks the program searches in them are coarse_search's, which computes the same windows itself
    poses, scores = np.zeros((8, 3)), np.zeros(8)
    thetas = np.radians([-2.0, 0.0, 2.0])
    found = cpu.coarse_search(coarse[8], coarse[9], padded[0], padded[1], margin, spectra, energy, window_rows,
                              window_cols, thetas, 2.0, 2.0, 3, 0.85, 2, np.empty_like(window), poses, scores, 1)
    poses_2, scores_2 = np.zeros((8, 3)), np.zeros(8)
    assert cpu.search_peaks(normalised, thetas, 2.0, 2.0, 3, 0.85, 2, poses_2, scores_2) == found
    assert_array_equal(poses[:found], poses_2[:found])
    assert_array_equal(scores[:found], scores_2[:found])


@pytest.mark.parametrize("keep", [0.9, 0.3, 0.0])
def test_listed_range_is_masked_range_over_the_pixel_list(keep):
    from portalign.kernels.cpu.mask import listed_range

    image = structured_image((44, 52), seed=5)
    mask = random_mask(image.shape, seed=6, keep=keep) if keep else np.zeros(image.shape, np.uint8)
    rows, cols = np.empty(image.size, np.int32), np.empty(image.size, np.int32)
    count = cpu.pixel_list(mask, rows, cols)
    assert listed_range(image, rows, cols, count, 0.005, 0.995) == cpu.masked_range(image, mask, 0.005, 0.995)
    flat = np.full(image.shape, 2.5, np.float32)
    assert listed_range(flat, rows, cols, count, 0.005, 0.995) == cpu.masked_range(flat, mask, 0.005, 0.995)


def test_the_counting_median_is_numpy_s_median():
    """``statistics.median`` (counted into bins, one bin sorted) gives the number of numba's ``np.median``, which the
    kernels called before (a selection): odd and even counts,
    ties and few distinct values, heavy tails, values all alike (huge ones too: ``(a + a) / 2`` overflows as numpy's),
    a few values far out (most in one bin), infinities (numpy's selection, the span not finite); NaN when a value is
    NaN or there is none."""
    from numba import njit
    from portalign.kernels.cpu.statistics import median

    selected = njit(lambda values: np.median(values))
    rng = np.random.default_rng(11)
    for trial in range(3000):
        n = int(rng.integers(1, 4000)) if trial % 3 else int(rng.integers(1, 12))
        kind = trial % 7
        if kind == 0:
            values = rng.normal(size=n)
        elif kind == 1:
            values = np.round(rng.normal(size=n) * 3.0)
        elif kind == 2:
            values = rng.integers(0, 3, n).astype(np.float64)
        elif kind == 3:
            values = np.abs(rng.standard_cauchy(n)) * 1e3
        elif kind == 4:
            values = np.full(n, rng.normal() * (1e308 if trial % 2 else 1.0))
        elif kind == 5:
            values = rng.normal(size=n)
            values[: n // 3] = 1e300
        else:
            values = rng.normal(size=n) * 1e-300
        if trial % 50 == 0:
            values[0] = np.inf
        if trial % 77 == 0:
            values[-1] = -np.inf
        expected = selected(values)
        got = median(values)
        assert got == expected or (np.isnan(got) and np.isnan(expected)), (trial, n, kind, got, expected)
    tiny = np.array([0.0, 5e-324, 1e-323, 0.0])  # subnormal: a span too small for the bins
    assert median(tiny) == selected(tiny)
    assert np.isnan(median(np.array([1.0, np.nan, 2.0])))
    assert np.isnan(median(np.empty(0)))
    for dtype in (np.float32, np.float64):
        values = rng.normal(size=1000).astype(dtype)
        assert median(values) == selected(values) == np.median(values)
