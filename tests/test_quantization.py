"""A frame whose only variation is a step or two of its stored values is refused, not matched on rounding specks.

Real case (session note 30, ``bench.real_windows``): a 30 % window of the background of an aS500 Winston-Lutz
image (``pylinac/wl_demo_as500/gantry45.dcm``, window at row 16, column 112, its content moved -2 rows and
+11 columns) is 99 % at 16383 (14-bit data clipped there, stored with BitsStored 16, so the detector-maximum
check looks for 65535); the rest are pixels one count lower. More than half of its second differences are exactly
0, so the MAD noise measure said 0 and the contrast check passed (contrast 0.25 over a noise of 0). The match was
ok, 2.09 mm off, with a 3 deg rotation fitted on the specks. The stored values' rounding (one step / sqrt(12)) is
now the floor of the noise: that window is refused, naming the plateau; a window of the same image that holds its
field is registered as before.
"""

from __future__ import annotations

import math

import numpy as np
import portalign
import pytest
from portalign import Image, RegistrationOptions, register
from portalign.registration._quality import quantization_sigma

from tests.dicom_factory import make_rt_image, to_bytes, with_float_pixels
from tests.field_sets import REAL, window_pair
from tests.synthetic import anatomy

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present (a user's clone)")
WL_AS500 = REAL / "pylinac" / "wl_demo_as500" / "gantry45.dcm"
WL_TRUEBEAM = REAL / "pylinac" / "wl_shift_truebeam" / "cardinal" / "wl-3-30-18_card-001.dcm"


def test_the_rounding_noise_is_the_stored_values_step_over_root_12():
    plain = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) % 97
    as_int = Image.from_array(plain.astype(np.uint16), pixel_spacing_mm=1.0)
    assert as_int.info.extra["quantization_step"] == 1.0
    assert quantization_sigma(as_int) == pytest.approx(1.0 / math.sqrt(12.0))
    # a float array's values are not known to be rounded: no floor
    assert quantization_sigma(Image.from_array(plain, pixel_spacing_mm=1.0)) == 0.0
    # an extra given by the caller is kept beside the step
    tagged = Image.from_array(plain.astype(np.int32), pixel_spacing_mm=1.0, extra={"label": "x"})
    assert tagged.info.extra == {"quantization_step": 1.0, "label": "x"}
    # a DICOM file's step is its Rescale Slope (the factory stores non-integer input as 0..65535 over its range)
    dicom = portalign.read_rt_image(to_bytes(make_rt_image(plain * 0.25)))
    slope = dicom.info.extra["rescale_slope"]
    assert slope == pytest.approx(0.25 * 96 / 65535, rel=1e-6)
    assert dicom.info.extra["quantization_step"] == slope
    assert quantization_sigma(dicom) == pytest.approx(slope / math.sqrt(12.0))
    # Float Pixel Data: its values are not rounded to a step (its Rescale Slope, absent, reads 1 all the same)
    read = portalign.read_rt_image(to_bytes(with_float_pixels(make_rt_image(plain), plain * 1e-3)))
    assert read.info.extra["rescale_slope"] == 1.0 and "quantization_step" not in read.info.extra
    assert quantization_sigma(read) == 0.0


def _plateau(shape: tuple[int, int], seed: int, share: float = 0.01) -> np.ndarray:
    """uint16 pixels at 4095 (clipped) but for ``share`` of them one count lower: rounding specks."""
    rng = np.random.default_rng(seed)
    pixels = np.full(shape, 4095, dtype=np.uint16)
    pixels[rng.random(shape) < share] = 4094
    return pixels


def test_a_clipped_plateau_with_one_count_specks_is_refused_and_an_edge_on_it_is_not():
    big = _plateau((300, 300), seed=3)
    ref, frame = big[20:220, 20:220], big[26:226, 17:217]  # the content moved by -6 rows, +3 columns: dx 1.5, dy -3 mm
    for rotate in (True, False):
        result = register(ref, frame, RegistrationOptions(estimate_rotation=rotate), backend="cpu", pixel_spacing_mm=0.5)
        assert not result.ok and result.dx_mm is None and result.rotation_deg is None
        assert result.reason.startswith("frame shows no structure: 99% of its pixels hold its largest value 4095"), \
            result.reason
        assert "rounding noise of its stored values (step 1)" in result.reason
    # the same plateau with anatomy below it in part of the image (40 counts of contrast, 2 of noise): registered
    rng = np.random.default_rng(4)
    texture = anatomy(300, seed=5)
    dipped = big - np.where(np.arange(300)[:, None] > 90, 40.0 * (texture - texture.min()), 0.0)
    dipped = np.clip(np.round(dipped + rng.normal(0.0, 2.0, big.shape)), 0, 4095).astype(np.uint16)
    ref, frame = dipped[20:220, 20:220], dipped[26:226, 17:217]
    result = register(ref, frame, backend="cpu", pixel_spacing_mm=0.5)
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - 1.5, result.dy_mm + 3.0) <= 0.3, (result.dx_mm, result.dy_mm)


@needs_real
@pytest.mark.real_data
def test_the_clipped_background_of_a_real_winston_lutz_image_is_refused():
    image = portalign.read_rt_image(WL_AS500)
    assert image.info.extra["saturation_value"] == 65535.0 and image.pixels.max() == 16383.0  # what hid it
    rows, cols = image.shape
    ref, frame, dx, dy = window_pair(image, 16, 112, int(rows * 0.3), int(cols * 0.3), -2, 11)
    for rotate in (True, False):
        result = register(ref, frame, RegistrationOptions(estimate_rotation=rotate), backend="cpu")
        assert not result.ok and result.dx_mm is None, (result.dx_mm, result.dy_mm, result.rotation_deg)
        assert result.reason.startswith("frame shows no structure: 99% of its pixels hold its largest value 16383"), \
            result.reason
        assert "gantry45.dcm" in result.reason
    # a window of the same image over its field and ball bearing: registered within 0.2 mm
    ref, frame, dx, dy = window_pair(image, 100, 130, rows // 2, cols // 2, 3, -4)
    result = register(ref, frame, backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.2, (result.dx_mm, dx, result.dy_mm, dy)


@needs_real
@pytest.mark.real_data
def test_the_empty_background_of_a_real_truebeam_image_is_refused():
    # a 30 % window far from the field: 0 but for a few specks (0-89 of 5316); ok 0.06 mm off before, matched on
    # specks the frame shared with its reference, noise and all, as a second acquisition would not
    image = portalign.read_rt_image(WL_TRUEBEAM)
    rows, cols = image.shape
    ref, frame, dx, dy = window_pair(image, 867, 862, int(rows * 0.3), int(cols * 0.3), 9, 10)
    result = register(ref, frame, backend="cpu")
    assert not result.ok and result.dx_mm is None
    assert result.reason.startswith("frame shows no structure: ") and "smallest value 0" in result.reason, result.reason
