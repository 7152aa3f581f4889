"""The compiled field split against its numpy / scipy.ndimage reference: same code, threshold, mask and box."""

from __future__ import annotations

import numpy as np
import pytest
from portalign.field import FIELD_AREA, MIN_BORDER_OUTSIDE, MIN_EFFECTIVENESS, MIN_FIELD_PIXELS, MIN_LARGEST_PART
from portalign.kernels.cpu.field import FIELD, split_field
from portalign.kernels.reference import field as reference
from scipy import ndimage

ARGS = (MIN_EFFECTIVENESS, MIN_BORDER_OUTSIDE, FIELD_AREA[0], FIELD_AREA[1], MIN_FIELD_PIXELS, MIN_LARGEST_PART)


def _cases():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128].astype(float)
    anatomy = ndimage.gaussian_filter(rng.standard_normal((96, 128)), 4) * 0.2
    square = ((np.abs(xx - 60) < 30) & (np.abs(yy - 50) < 25)).astype(float)
    turned = (np.abs((xx - 64) + (yy - 48)) < 40) & (np.abs((xx - 64) - (yy - 48)) < 30)
    disc = ((xx - 70) ** 2 + (yy - 40) ** 2 < 15**2).astype(float)
    holed = disc.copy()
    holed[(xx - 70) ** 2 + (yy - 40) ** 2 < 4**2] = 0.0  # a ball bearing inside a cone
    two = square.copy()
    two[5:9, 5:9] = 1.0  # a stray bright patch: a second, small part
    stripes = ((xx // 8) % 2).astype(float)  # no single aperture
    yield "square", 0.05 + square + anatomy
    yield "inverted", 1.0 - square + anatomy  # dark field (inverted encoding)
    yield "turned", 0.05 + turned + anatomy
    yield "cone with a ball bearing", 0.02 + holed + 0.3 * anatomy
    yield "two parts", 0.05 + two + anatomy
    yield "stripes", stripes + anatomy
    yield "open", 1.0 + anatomy  # no field edge
    yield "flat", np.ones((20, 30))
    for value in (1e6, -1e6, 1e38):  # one extreme pixel squeezes the min-max histogram: the bounds narrow
        hot = 0.05 + square + anatomy
        hot[70, 100] = value
        yield f"hot pixel {value:g}", hot
    nested = 0.05 + square + anatomy
    nested[70, 100], nested[10, 20] = 1e38, 1e20  # two scales of outliers: two narrowing passes
    yield "two hot pixels", nested
    tiny = 0.05 + ((xx - 70) ** 2 + (yy - 40) ** 2 < 2.5**2) + 0.01 * anatomy  # 21 pixels: 0.2 % of the image
    yield "tiny cone", tiny
    tiny_hot = tiny.copy()
    tiny_hot[80, 20] = 1e6
    yield "tiny cone and a hot pixel", tiny_hot
    flat_hot = np.ones((20, 30))
    flat_hot[3, 4] = 1e9  # constant but for one pixel: the central bins hold one value, nothing to narrow to
    yield "flat with a hot pixel", flat_hot
    for seed in range(8):
        noisy = np.random.default_rng(seed)
        yield f"noisy {seed}", 0.05 + square * noisy.uniform(0.5, 1.5) + noisy.normal(0, noisy.uniform(0.01, 0.4),
                                                                                          square.shape)


@pytest.mark.parametrize(("name", "image"), list(_cases()), ids=[name for name, _ in _cases()])
def test_split_field_equals_the_reference(name, image):
    image = np.ascontiguousarray(image, dtype=np.float64)
    got_mask, want_mask = np.zeros(image.shape, np.uint8), np.zeros(image.shape, np.uint8)
    got_box, want_box = np.zeros(4), np.zeros(4)
    got = split_field(image, *ARGS, got_mask, got_box)
    want = reference.split_field(image, *ARGS, want_mask, want_box)
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-12)
    assert got[2] == pytest.approx(want[2], rel=1e-9, abs=1e-12)
    assert bool(got[3]) == bool(want[3])
    if got[0] == FIELD:
        np.testing.assert_array_equal(got_mask, want_mask)
        np.testing.assert_array_equal(got_box, want_box)


def test_the_cone_with_a_ball_bearing_is_one_filled_field():
    name, image = next(c for c in _cases() if c[0] == "cone with a ball bearing")
    mask, box = np.zeros(image.shape, np.uint8), np.zeros(4)
    code = split_field(np.ascontiguousarray(image), *ARGS, mask, box)[0]
    assert code == FIELD
    assert mask[40, 70] == 1  # the ball bearing's hole is filled
    assert tuple(box) == pytest.approx((56, 84, 26, 54), abs=1)


@pytest.mark.parametrize("kind", ["dead rows", "hot column", "none", "pickets", "field edges", "dead pair", "dead block",
                                  "part-dead rows", "dead rows through a field", "dead row, clipped outside",
                                  "field edge, clipped outside", "dead block, clipped outside", "half-dead rows",
                                  "a stretch in the middle"])
@pytest.mark.parametrize("confirmed", [False, True])
def test_dead_lines_equal_the_reference(kind, confirmed):
    from portalign.field import DEAD_LINE_CONTRAST, DEAD_LINE_SHARE
    from portalign.kernels.cpu.field import dead_lines

    rng = np.random.default_rng(4)
    # (lines of part-dead kinds as long as a small panel's: a stretch must hold SEGMENT_MIN_PIXELS)
    shape = (96, 256) if kind in ("half-dead rows", "a stretch in the middle") else (96, 128)
    image = 1000.0 + ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 50 + rng.normal(0, 2, shape)
    expected_rows: list[int] = []
    if kind == "dead rows":
        image[30] = 0.0
        image[61] = 5.0
        expected_rows = [30, 61]
    elif kind == "hot column":
        image = image.T.copy()
        image[40] = 4000.0
        expected_rows = [40]
    elif kind == "dead pair":  # two adjacent dead lines (or one that a box reduction spread over two)
        image[50:52] = 3.0
        expected_rows = [50, 51]
    elif kind == "pickets":
        image[:, ::16] -= 300.0  # columns: the rows see no spike
    elif kind == "field edges":
        image[:20] *= 0.05
        image[-20:] *= 0.05
    elif kind == "dead block":  # a failed readout module: 9 adjacent lines saturated
        image[40:49] = 16383.0
        expected_rows = list(range(40, 49))
    elif kind == "part-dead rows":  # a band a box reduction spread part-way over its edge rows
        image[60] *= 0.75
        image[61:64] = 0.0
        image[64] *= 0.5
        # its core: the part-dead edge rows are not sharp here (``portalign.field`` finds the band's own first and
        # last detector lines on the full-resolution pixels, from the row before the core)
        expected_rows = [61, 62, 63]
    elif kind == "dead rows through a field":  # the field covers 60 % of each row; outside it, faint dose (3 %)
        image[:, :26] *= 0.03
        image[:, -25:] *= 0.03
        image[70:73] = 0.0
        expected_rows = [70, 71, 72]
    elif kind == "dead row, clipped outside":
        # a portal-dosimetry image: a small field, and outside it exactly zero (78 % of the handed small-field
        # case's pixels). The dead row differs from its neighbours inside the field only (a fifth of its length)
        image[:, :50] = 0.0
        image[:, 76:] = 0.0
        image[44] = 0.0
        expected_rows = [44]
    elif kind == "dead block, clipped outside":  # a failed readout module through a dosimetry image's field
        image[:, :50] = 0.0
        image[:, 76:] = 0.0
        image[40:46] = 0.0
        expected_rows = list(range(40, 46))
    elif kind == "half-dead rows":  # dead from a break to the line's far end: half a row, and a hot 44 % of one
        image[30, :128] = 0.0
        image[61, 144:] = 4000.0
        expected_rows = [30, 61]
    elif kind == "a stretch in the middle":  # 55 % of a row in its middle (a wire): not a line
        image[50, 60:200] = 0.0
    elif kind == "field edge, clipped outside":  # the field's edge rows are steps, not spikes
        image[:, :50] = 0.0
        image[:, 76:] = 0.0
        image[:30] = 0.0
        image[70:] = 0.0
    image = np.ascontiguousarray(image)
    # confirmed: the screen for the detector's pixels to confirm (one noise sigma; a line or two leaves clipped
    # pixels out whatever it reads); the same lines here
    got = dead_lines(image, DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, 12, confirmed)
    want = reference.dead_lines(image, DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, 12, confirmed)
    np.testing.assert_array_equal(got, want)
    assert list(got) == expected_rows


def _band_images():
    """Detector-line images for the band confirmation: dead, hot, stuck and wide bands; pickets; clipped outsides."""
    rng = np.random.default_rng(11)
    base = 1000.0 + ndimage.gaussian_filter(rng.standard_normal((80, 120)), 3) * 50 + rng.normal(0, 2, (80, 120))
    cases = {}
    image = base.copy()
    image[20] = 0.0
    image[41:43] = 5.0
    image[60:69] = 16383.0  # a failed readout module
    cases["dead, pair, block"] = (image, [(20, 20), (41, 42), (60, 68)])
    image = base.copy()
    comb = ndimage.gaussian_filter1d(((np.arange(120) % 12) < 4).astype(float), 1.5)  # 4-line pickets, soft edges
    image -= 300.0 * comb[None, :]
    cases["pickets"] = (image.T.copy(), [])
    image = base.copy()
    image[:, :40] = 0.0
    image[:, 85:] = 0.0
    image[30] = 0.0
    image[50:54] = 0.0
    cases["clipped outside"] = (image, [(30, 30), (50, 53)])
    image = base.copy()
    image[:, :30] *= 0.03
    image[35] = 0.0  # a stuck zero through a field and its faint outside
    image[38] *= 1.4  # a hot line near it
    cases["stuck beside hot"] = (image, [(35, 35), (38, 38)])
    image = base.copy()
    image[25:28] = ndimage.gaussian_filter1d(np.where(np.arange(80) < 26, 1.0, 0.2), 2)[25:28, None] * image[25:28]
    cases["soft step"] = (image, [])
    # lines as long as a small panel's (a stretch must hold SEGMENT_MIN_PIXELS)
    long = 1000.0 + ndimage.gaussian_filter(rng.standard_normal((80, 256)), 3) * 50 + rng.normal(0, 2, (80, 256))
    image = long.copy()
    image[20, :128] = 0.0  # half a line dead, from its first pixel
    image[45, 149:] = 3000.0  # 42 % of one hot, to its last
    image[65, 80:190] = 0.0  # a stretch in the middle only: not a line
    image[72, :80] = 0.0  # a stretch from the first pixel, too short to tell from a small DRR's CT-slice line
    cases["part lines"] = (image, [(20, 20), (45, 45)])
    image = long.copy()
    image[30:34] = 3000.0  # a hot block of four lines
    image[44, :128] = 3000.0  # half a line hot: the sound lines between lie below both over that half (not a block)
    cases["sound lines between hot ones"] = (image, [(30, 33), (44, 44)])
    return cases


@pytest.mark.parametrize("name", ["dead, pair, block", "pickets", "clipped outside", "stuck beside hot", "soft step",
                                  "part lines", "sound lines between hot ones"])
def test_the_band_confirmation_equals_its_numpy_reference(name):
    """``kernels.cpu.field.dead_band`` (compiled 2026-12-04: thousands of Python calls a frame before, on frames with
    dead lines or MLC pickets) and the numpy code it replaced, from every start line, give the same band."""
    from portalign.field import (
        DEAD_BAND_MAX,
        DEAD_BLOCK_SHARP,
        DEAD_EDGE_STEP,
        DEAD_LINE_CONTRAST,
        DEAD_LINE_SHARE,
        FULL_OUTER_NOISE_HALF_WINDOW,
    )
    from portalign.kernels.cpu.field import LIVE_MIN_PIXELS, LIVE_MIN_SHARE, dead_band, line_noise

    image, bands = _band_images()[name]
    work = np.ascontiguousarray(image, dtype=np.float64)
    noise = line_noise(work)
    rules = (DEAD_LINE_CONTRAST, DEAD_LINE_SHARE, DEAD_BAND_MAX, FULL_OUTER_NOISE_HALF_WINDOW, DEAD_EDGE_STEP,
             DEAD_BLOCK_SHARP, max(LIVE_MIN_PIXELS, LIVE_MIN_SHARE * work.shape[1]))
    found = []
    at = 1
    while at < work.shape[0] - 1:
        got = dead_band(work, at, work.shape[0], noise, 12, *rules)
        assert tuple(got) == reference.dead_band(work, at, work.shape[0], noise, 12, *rules)
        if got[0] < 0:
            break
        found.append(tuple(got))
        at = got[1] + 1
    assert found == bands
    for start in range(1, work.shape[0] - 1, 7):  # short windows too: a band must start inside the window
        got = dead_band(work, start, start + 3, noise, 12, *rules)
        assert tuple(got) == reference.dead_band(work, start, start + 3, noise, 12, *rules)
        assert got[0] < 0 or start <= got[0] < start + 3


def test_a_stretch_from_either_end_of_a_line_is_judged_as_its_twin_judges_it():
    """``end_segment`` (a line dead from a break to its far end) equals its numpy twin on random and made-up flags."""
    from portalign.kernels.cpu import field

    end_segment = field.end_segment
    for name in ("SEGMENT_MIN_SHARE", "SEGMENT_MAX_WIDTH", "SEGMENT_MIN_PIXELS"):  # the twin's rule is the kernel's
        assert getattr(reference, name) == getattr(field, name), name
    rng = np.random.default_rng(12)
    seen = set()
    for _ in range(3000):
        n = int(rng.integers(1, 200))
        spiking = rng.random(n) < rng.random()
        judged = spiking | (rng.random(n) < rng.random())
        if rng.random() < 0.5:  # a stretch from one end dead, the rest live
            cut = int(rng.integers(0, n + 1))
            spiking[:] = False
            spiking[(slice(None, cut) if rng.random() < 0.5 else slice(cut, None))] = True
            judged |= spiking
        share, least = float(rng.uniform(0.5, 1.0)), float(rng.uniform(1, 0.6 * n + 1))
        got = end_segment(spiking, judged, share, least)
        assert got == reference.end_segment(spiking, judged, share, least)
        seen.add(got)
    assert seen == {True, False}
    # half a line from its first or its last pixel; a stretch in the middle is not
    half = np.zeros(100, dtype=bool)
    half[:50] = True
    everywhere = np.ones(100, dtype=bool)
    assert end_segment(half, everywhere, 0.8, 40.0) and end_segment(half[::-1].copy(), everywhere, 0.8, 40.0)
    middle = np.zeros(100, dtype=bool)
    middle[25:75] = True
    assert not end_segment(middle, everywhere, 0.8, 40.0)


@pytest.mark.parametrize("value", [1e6, -1e6, 1e20, 1e38])
def test_one_extreme_pixel_does_not_hide_the_field(value):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:96, 0:128].astype(float)
    square = ((np.abs(xx - 60) < 30) & (np.abs(yy - 50) < 25)).astype(float)
    image = 0.05 + square + ndimage.gaussian_filter(rng.standard_normal((96, 128)), 4) * 0.2
    clean_mask, clean_box = np.zeros(image.shape, np.uint8), np.zeros(4)
    clean = split_field(image, *ARGS, clean_mask, clean_box)
    assert clean[0] == FIELD
    for at in [(48, 60), (2, 3), (90, 120)]:  # inside the field, in the outside, near a corner
        hot = image.copy()
        hot[at] = value
        mask, box = np.zeros(image.shape, np.uint8), np.zeros(4)
        code, threshold, _, _ = split_field(hot, *ARGS, mask, box)
        assert code == FIELD, at
        assert abs(threshold - clean[1]) < 0.02  # the levels differ by 1: the threshold is the clean image's
        changed = mask != clean_mask
        changed[at] = False
        assert not changed.any()


def _masks():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:40, 0:57]
    comb = np.zeros((40, 57), np.uint8)
    comb[::2, :] = 1  # every other row, joined by a column at the left: most seeds a scanline fill can push
    comb[:, 0] = 1
    teeth = comb.T.copy()
    spiral = np.zeros((41, 41), np.uint8)  # one long corridor that turns back on itself
    for k in range(0, 20, 4):
        spiral[k, k:41 - k] = spiral[40 - k, k:41 - k] = spiral[k:41 - k, k] = spiral[k + 2:41 - k, 40 - k] = 1
    checker = ((xx + yy) % 2).astype(np.uint8)  # 4-connected: every pixel its own part
    yield "comb", comb
    yield "teeth", np.ascontiguousarray(teeth)
    yield "spiral", spiral
    yield "checker", checker
    yield "ring", (((xx - 28) ** 2 + (yy - 20) ** 2 < 15**2) & ((xx - 28) ** 2 + (yy - 20) ** 2 > 6**2)).astype(np.uint8)
    yield "full", np.ones((9, 13), np.uint8)
    yield "one row", np.ones((1, 30), np.uint8)
    for p in (0.3, 0.5, 0.6):
        yield f"random {p}", (rng.random((48, 64)) < p).astype(np.uint8)


@pytest.mark.parametrize(("name", "mask"), list(_masks()), ids=[name for name, _ in _masks()])
def test_run_labelling_equals_scipy(name, mask):
    """The runs' union-find labels 4-connected parts as scipy.ndimage.label does, numbered alike, of both values."""
    from portalign.kernels.cpu.field import _parts

    for want, of in ((1, mask), (0, 1 - mask)):
        rows_of, starts, stops, part_of, sizes = _parts(mask, want)
        labels = np.zeros(mask.shape, np.int64)
        for row, start, stop, part in zip(rows_of, starts, stops, part_of, strict=True):
            assert (labels[row, start:stop + 1] == 0).all()  # the runs do not overlap
            labels[row, start:stop + 1] = part
        expected, count = ndimage.label(of)  # 4-connected, numbered in raster order of the first pixel, as ours
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(sizes, np.bincount(expected.ravel(), minlength=count + 1)[1:])


@pytest.mark.parametrize("case", ["square", "inverted", "cone with a ball bearing", "stripes", "open", "flat", "air"])
def test_the_three_level_split_matches_its_numpy_twin(case):
    """``three_level_split`` (compiled) and ``kernels/reference``'s numpy twin: the same thresholds and tests."""
    from portalign.kernels.cpu.field import three_level_split

    images = dict(_cases())
    if case == "air":  # a field whose top level is air beyond the skin: three levels, the outside the darkest
        values = images["square"].copy()
        values[30:40, 40:80] += 2.0
    else:
        values = images[case]
    values = np.ascontiguousarray(values, dtype=np.float64)
    found = (values > np.median(values)).astype(np.uint8)
    compiled, twin = three_level_split(values, 64, found), reference.three_level_split(values, 64, found)
    assert compiled[0] == pytest.approx(twin[0], abs=1e-9)
    assert compiled[1] == pytest.approx(twin[1], rel=1e-9, abs=1e-12)
    assert compiled[2:5] == pytest.approx(twin[2:5])
    assert compiled[5] == pytest.approx(twin[5], rel=1e-6)
    assert compiled[6] == twin[6] == np.count_nonzero(found)
    if case == "air":
        effectiveness, threshold, bright, on_border, count, separation, _ = compiled
        assert bright and on_border == 1.0 and effectiveness > 0.85 and separation > 6.0
        assert count == np.count_nonzero(values >= threshold) == 59 * 49  # the square, air and tissue both


def test_the_largest_disc_is_scipy_s_distance_transform_of_the_padded_mask():
    """``kernels.cpu.field.largest_disc_diameter`` (``portalign.field.field_size_mm``, compiled 2026-12-04) against
    ``scipy.ndimage.distance_transform_edt``: random masks, discs, rectangles, anisotropic spacings, one pixel."""
    from portalign.kernels.cpu.field import largest_disc_diameter

    rng = np.random.default_rng(5)
    for trial in range(90):
        rows, cols = (int(v) for v in rng.integers(1, 60, 2))
        yy, xx = np.mgrid[0:rows, 0:cols]
        if trial % 3 == 0:
            mask = rng.random((rows, cols)) > rng.uniform(0.05, 0.6)
        elif trial % 3 == 1:
            mask = ((xx - cols * rng.random()) / cols) ** 2 + ((yy - rows * rng.random()) / rows) ** 2 < 0.2
        else:
            mask = (np.abs(xx - cols / 2) < cols / 3) & (np.abs(yy - rows / 2) < rows / 4)
        spacing = (float(rng.uniform(0.2, 5.0)), float(rng.uniform(0.2, 5.0)))
        expected = 2.0 * float(ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing).max())
        got = largest_disc_diameter(mask.astype(np.uint8), *spacing)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (trial, rows, cols)
    # a 60 x 40 field at 1 mm pixels: its shorter side; a single pixel: one pixel across (the border is outside)
    field = np.zeros((80, 100), np.uint8)
    field[20:60, 20:80] = 1
    assert largest_disc_diameter(field, 1.0, 1.0) == pytest.approx(40.0)
    assert largest_disc_diameter(np.ones((1, 1), np.uint8), 2.0, 3.0) == pytest.approx(4.0)


def test_the_penumbra_extent_equals_its_numpy_reference():
    """``kernels.cpu.field.penumbra_extent`` (``portalign.field.penumbra_extent_mm``, compiled 2026-12-04: a frame's
    band against a DRR is measured each frame) against the numpy rule it replaced (``kernels.reference.field``):
    soft-edged rectangles, discs and MLC-like steps over textured anatomy with noise, fields on the border, a field
    too small for an interior deeper than the reach, spacings 0.5-3 mm, reaches 5-15 mm."""
    from portalign.kernels.cpu.field import penumbra_extent
    from portalign.kernels.reference.field import penumbra_extent as reference

    rng = np.random.default_rng(8)
    extents = []
    for trial in range(60):
        rows, cols = (int(v) for v in rng.integers(12, 120, 2))
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
        kind = trial % 4
        if kind == 0:
            inside = (np.abs(xx - cols * rng.uniform(0.3, 0.7)) < cols * rng.uniform(0.15, 0.5)) & (
                np.abs(yy - rows * rng.uniform(0.3, 0.7)) < rows * rng.uniform(0.15, 0.5))
        elif kind == 1:
            inside = (xx - cols / 2) ** 2 + (yy - rows / 2) ** 2 < (min(rows, cols) * rng.uniform(0.1, 0.6)) ** 2
        elif kind == 2:  # leaves of different lengths
            reach = cols * rng.uniform(0.3, 0.9, size=rows // 4 + 1)
            inside = xx < reach[(yy // 4).astype(int)]
        else:  # a field that touches the border on two sides
            inside = (xx > cols * rng.uniform(0.1, 0.5)) & (yy > rows * rng.uniform(0.1, 0.5))
        if not inside.any() or inside.all():
            inside[rows // 2, cols // 2] = True
            inside[0, 0] = False
        blurred = ndimage.gaussian_filter(inside.astype(np.float64), rng.uniform(0.3, 2.5))
        anatomy = 1.0 + 0.2 * ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 3.0)
        image = (0.03 + 0.97 * blurred) * anatomy * 1000.0 + rng.normal(0.0, rng.uniform(0.5, 20.0), (rows, cols))
        image = image.astype(np.float32 if trial % 2 else np.float64)
        spacing, reach = float(rng.uniform(0.5, 3.0)), float(rng.uniform(5.0, 15.0))
        values = np.ascontiguousarray(image, dtype=np.float64)
        for ring_median in (False, True):
            expected = reference(values, inside, spacing, reach, ring_median)
            got = penumbra_extent(image, inside, spacing, reach, ring_median)  # (the image as it is: float32 too)
            assert got == expected, (trial, ring_median, got, expected)
            extents.append(got)
    assert min(extents) == 0.0 and max(extents) > 4.0  # the cases reach both ends: no ring, and wide penumbrae


def test_the_inside_depth_is_scipy_s_distance_transform_on_the_field_s_box_only():
    """``_inside_depth`` works on the mask's bounding box widened by one pixel: the same numbers as
    ``scipy.ndimage.distance_transform_edt`` over the whole image (fields touching the border, several parts, holes,
    a mask without a zero: inf everywhere, an empty mask: 0), and the box it returns is the mask's."""
    from portalign.kernels.cpu.field import _inside_depth

    rng = np.random.default_rng(48)
    for trial in range(300):
        rows, cols = (int(v) for v in rng.integers(1, 50, 2))
        kind = trial % 5
        mask = np.zeros((rows, cols), np.uint8)
        if kind == 0:
            mask = (rng.random((rows, cols)) < rng.random()).astype(np.uint8)
        elif kind == 1:
            mask[:] = 1
        elif kind == 2:  # nothing
            pass
        else:
            r0, r1 = sorted(int(v) for v in rng.integers(0, rows + 1, 2))
            c0, c1 = sorted(int(v) for v in rng.integers(0, cols + 1, 2))
            mask[r0:r1, c0:c1] = 1
            if kind == 4 and mask.any():
                mask[rng.integers(0, rows), rng.integers(0, cols)] = 0  # a hole, or a pixel off the edge
        spacing = float(rng.uniform(0.2, 3.0))
        depth, r0, r1, c0, c1 = _inside_depth(mask, spacing)
        if not mask.any():
            assert r1 == -1 and not depth.any()
            continue
        if mask.all():
            assert np.isinf(depth).all()
        else:
            np.testing.assert_array_equal(depth, ndimage.distance_transform_edt(mask) * spacing)
        where = np.nonzero(mask)
        assert (r0, r1, c0, c1) == (where[0].min(), where[0].max(), where[1].min(), where[1].max())


def test_the_histogram_counts_each_value_in_its_bin():
    """``statistics.bin_counts`` (four histograms in turn, chunked) gives the counts of the field split's ``_bin`` value
    by value, whatever the length (chunk and four-way remainders), with values beyond the range in the end bins."""
    from portalign.kernels.cpu.field import _bin
    from portalign.kernels.cpu.statistics import bin_counts

    rng = np.random.default_rng(3)
    for n in (1, 3, 4, 5, 511, 512, 513, 2049, 12288):
        values = np.round(rng.normal(0.0, 2.0, n), 1)  # ties and runs of one bin
        lo, width, bins = -3.0, 0.05, 128
        expected = np.zeros(bins, np.int64)
        for v in values:
            expected[_bin(v, lo, width, bins)] += 1
        np.testing.assert_array_equal(bin_counts(values, lo, width, bins), expected)
        assert bin_counts(values, lo, width, bins).sum() == n
