"""A field that moved between two portal images, and not with their content (issue 11: never a confident wrong answer).

An aperture is fixed to the beam: the patient's motion cannot move it. Where two portal images' fields lie apart
(each from its image's beam axis, as its header states it) and the match did not move by as much, one image's beam
axis or scale is wrong, or its pixels are displaced: a new user's mutated files (a frame's RTImagePosition 10 mm off,
its rows wrapped by 50) were ok 6-12 mm off. A field that moved with the content is the handed cases' convention (one
image seen through a window moved by whole pixels, both files keeping one RTImagePosition): its shift is reported.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import portalign
import pytest
from scipy import ndimage
from synthetic import anatomy, field_aperture

from tests.field_sets import FIELD_CASES

SIZE = 256  # pixels of 1 mm


def _portal(pixels: np.ndarray, *, axis_shift_px: tuple[float, float] = (0.0, 0.0), stated: bool = True
            ) -> portalign.Image:
    """A portal image of 1 mm pixels whose beam axis its header states (``RTImagePosition``), moved by a header error."""
    image = portalign.Image.from_array(pixels.astype(np.float32), pixel_spacing_mm=1.0, kind="portal")
    cx, cy = image.beam_axis_px
    extra = {**image.info.extra, **({"beam_axis_source": "RTImagePosition"} if stated else {})}
    return replace(image, beam_axis_px=(cx + axis_shift_px[0], cy + axis_shift_px[1]),
                   info=replace(image.info, extra=extra))


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A reference portal image and a frame of the anatomy moved 6 mm along y, through one fixed 120 x 90 mm field."""
    base = anatomy(SIZE, seed=5)
    base = 1.0 - 0.3 * (base - base.min()) / (base.max() - base.min())
    beam = field_aperture((SIZE, SIZE), 1.0, 60.0, 45.0, penumbra_mm=3.8)  # 120 x 90 mm, 2 % outside
    rng = np.random.default_rng(5)

    def noisy(pixels: np.ndarray) -> np.ndarray:
        return 1000.0 * (pixels + 0.003 * np.sqrt(pixels) * rng.standard_normal(pixels.shape))

    moved = ndimage.shift(base, (6.0, 0.0), order=3, mode="nearest")
    return noisy(base * beam), noisy(moved * beam)


def test_a_field_displaced_against_its_content_is_refused_naming_the_geometry(pair):
    reference, frame = pair
    sound = portalign.register(_portal(reference), _portal(frame), backend="cpu")
    assert sound.ok, sound.reason
    assert (sound.dx_mm, sound.dy_mm) == pytest.approx((0.0, 6.0), abs=0.2)
    # the frame's header places its beam axis 7 rows off: field and anatomy both appear 7 mm further along y, so the
    # field lies 7 mm from the reference's while the match says 13
    wrong = portalign.register(_portal(reference), _portal(frame, axis_shift_px=(0.0, -7.0)), backend="cpu")
    assert not wrong.ok and wrong.dx_mm is None and wrong.dy_mm is None
    assert wrong.reason.startswith("the radiation field moved between the images, and not with their content")
    assert "+7.0 mm along y" in wrong.reason and "RTImagePosition (3002,0012)" in wrong.reason
    assert "--allow-view-mismatch" in wrong.reason
    # asked to register across it anyway: the shift measured, with the finding as a warning
    allowed = portalign.register(_portal(reference), _portal(frame, axis_shift_px=(0.0, -7.0)),
                                 portalign.RegistrationOptions(allow_view_mismatch=True), backend="cpu")
    assert allowed.ok and allowed.dy_mm == pytest.approx(13.0, abs=0.3)
    assert any("not with their content" in w for w in allowed.warnings)


def test_a_field_that_moved_with_its_content_or_an_axis_no_header_states_is_not_refused(pair):
    reference, frame = pair
    # the whole frame seen through a window 7 rows off (the handed cases' convention): the field moved with the anatomy
    window = portalign.register(_portal(reference), _portal(ndimage.shift(reference, (7.0, 0.0), order=1,
                                                                          mode="nearest")), backend="cpu")
    assert window.ok, window.reason
    assert window.dy_mm == pytest.approx(7.0, abs=0.2)
    # arrays (the caller's beam axis, no header): nothing to contradict
    arrays = portalign.register(_portal(reference, stated=False),
                                _portal(frame, axis_shift_px=(0.0, -7.0), stated=False), backend="cpu")
    assert arrays.ok and arrays.dy_mm == pytest.approx(13.0, abs=0.3)
    # a displacement within what the field pixels resolve (FIELD_DISPLACED_MM and _PIXELS): not judged
    slight = portalign.register(_portal(reference), _portal(frame, axis_shift_px=(0.0, -2.0)), backend="cpu")
    assert slight.ok and slight.dy_mm == pytest.approx(8.0, abs=0.3)


@pytest.mark.real_data
def test_the_handed_small_field_window_keeps_its_answer():
    folder = FIELD_CASES / "small-field"
    if not folder.is_dir():
        pytest.skip(f"the handed cases are not at {folder}")
    result = portalign.register(portalign.read_rt_image(folder / "ref_crop.dcm"),
                                portalign.read_rt_image(folder / "frame_shift_r+9_c-13.dcm"), backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm + 2.912, result.dy_mm - 2.016) < 0.05


def test_the_cores_sides_are_placed_to_a_fraction_of_a_detector_pixel():
    """``field.core_sides_fine_mm``: a 120 x 90 mm field (1 mm pixels) moved 0.3 and -0.6 mm: the field-detection level's
    sides (4 mm pixels) place it only to a pixel, the profiles across them to 0.1 mm."""
    from portalign.field import box_reduce, core_sides_fine_mm, core_sides_mm, find_field

    def sides(dx: float, dy: float) -> tuple[list, list]:
        image = _portal(1000.0 * field_aperture((SIZE, SIZE), 1.0, 60.0, 45.0, penumbra_mm=3.8, offset_mm=(dx, dy)))
        small, factor = box_reduce(image.pixels, 64)
        field = find_field(image, small)
        assert field.detected and factor == 4
        return core_sides_mm(field, factor, image), core_sides_fine_mm(field, factor, image)

    coarse, fine = sides(0.3, -0.6)
    assert fine == pytest.approx([-59.7, 60.3, -45.6, 44.4], abs=0.1)
    assert coarse == pytest.approx([-59.7, 60.3, -45.6, 44.4], abs=4.0)
    assert max(abs(c - f) for c, f in zip(coarse, fine, strict=True)) > 0.3  # the coarse ones are a pixel's

