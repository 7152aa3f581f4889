"""A mirrored or turned frame is refused (``RegistrationOptions.mirror_check``), a symmetric one is not.

A new user's trial registered a DRR against its own mirror image (ok, 0.31 edge correlation, 10.9 mm), the demo
frame mirrored (ok, the shift's sign reversed) and pylinac's pipspro phantom turned 180 deg (ok at 0.79).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import portalign
import pytest
from scipy import ndimage
from synthetic import anatomy

DX_MM, DY_MM = 3.2, -2.1

from portalign.registration._program import MIRROR_SCREEN_RATIO  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> tuple[portalign.Image, np.ndarray]:
    base = anatomy(256, seed=21)
    reference = portalign.Image.from_array(base, pixel_spacing_mm=1.0, name="ref.dcm")
    return reference, ndimage.shift(base, (DY_MM, DX_MM), order=3, mode="nearest")


def _frame(pixels: np.ndarray) -> portalign.Image:
    return portalign.Image.from_array(np.ascontiguousarray(pixels), pixel_spacing_mm=1.0, name="frame.dcm")


LEFT_RIGHT = (slice(None), slice(None, None, -1))
TURNED = (slice(None, None, -1), slice(None, None, -1))
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _flipped(image: portalign.Image, cut: tuple) -> portalign.Image:
    return replace(image, pixels=np.ascontiguousarray(image.pixels[cut]))


def test_an_opposed_view_leads_with_the_headers_views_not_the_flip() -> None:
    """An independent trial (trial56 refuse_01): a frame of gantry 270 against its reference of gantry 90, whose
    image is a mirrored one, was refused leading with "flipped ... set --mirror-check never", the headers' two
    views in brackets: advice that cannot make the pair ok. The headers' reason leads, with its fix, and the flip
    follows as what the pixels say; without the headers the flip still leads."""
    from portalign.demo import make_demo_pair

    reference, frame, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    mirrored = _flipped(frame, LEFT_RIGHT)
    opposed_ref = replace(reference, info=replace(reference.info, gantry_deg=90.0))
    opposed = replace(mirrored, info=replace(mirrored.info, gantry_deg=270.0))
    result = portalign.register(opposed_ref, opposed, backend="cpu")
    assert result.ok is False
    assert result.reason.startswith("different views: gantry angle 90 deg in the reference"), result.reason
    assert "set allow_view_mismatch=True" in result.reason and "mirror_check='never'" not in result.reason
    check = result.details["mirror_check"]
    flipped, own = check["flipped_edge_scores"]["flipped left-right"], check["edge_score"]
    assert result.reason.endswith("(the pixels agree: the frame matches the reference better flipped left-right "
                                  f"(edge correlation {flipped:.2f} against {own:.2f}))"), result.reason
    plain = portalign.register(reference, mirrored, backend="cpu")
    assert plain.reason.startswith("flipped: the frame matches the reference better flipped left-right")


def test_the_demo_frame_mirrored_is_not_ok_and_says_so() -> None:
    """The demo's MV frame mirrored left-right matched its DRR ok (the right match scores far higher flipped back)."""
    from portalign.demo import make_demo_pair

    reference, frame, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    mirrored = _flipped(frame, LEFT_RIGHT)
    unchecked = portalign.register(reference, mirrored, portalign.RegistrationOptions(mirror_check="never"),
                                   backend="cpu")
    assert unchecked.ok and unchecked.details["mirror_check"] is None  # what the trial saw
    result = portalign.register(reference, mirrored, backend="cpu")
    assert result.ok is False
    assert result.reason.startswith("flipped: the frame matches the reference better flipped left-right (edge "
                                    "correlation ")
    assert result.reason.endswith("set mirror_check='never' (--mirror-check never)")
    assert "or of another view than the reference's, whatever its header says" in result.reason
    assert "fixed to the beam" not in result.reason  # a DRR holds no graticule or tray
    check = result.details["mirror_check"]
    assert check["flipped_edge_scores"]["flipped left-right"] > check["edge_score"] + 0.05
    assert check["screened_out"] is False
    right = portalign.register(reference, frame, backend="cpu")
    # the right frame: no flip comes near its own global-search peak, so its copies are not registered (null scores)
    screen = right.details["mirror_check"]
    assert right.ok and screen["screened_out"] is True and screen["flipped_edge_scores"] is None
    peaks = screen["screen_peaks"]
    assert max(peaks[name] for name in peaks if name != "own") < MIRROR_SCREEN_RATIO * peaks["own"]
    # flipping twice is no flip: the mirrored frame's screen reads the right frame's peaks swapped, and passes
    mirrored_peaks = check["screen_peaks"]
    assert mirrored_peaks["flipped left-right"] == pytest.approx(peaks["own"], rel=1e-5)
    assert mirrored_peaks["own"] == pytest.approx(peaks["flipped left-right"], rel=1e-5)


@pytest.mark.parametrize(("cut", "said"), [((slice(None, None, -1), slice(None)), "flipped up-down"),
                                          (TURNED, "turned 180 deg")])
def test_a_mirrored_frame_refused_for_another_reason_is_named_mirrored_too(cut, said) -> None:
    """A new user's trial: the demo frame flipped up-down (or turned) matched its DRR 21 mm away and was refused as
    "outside the search range" with no word of a mirror (the check ran on ok results only). A refused frame that a flip
    beats in the global search is checked in full: named flipped, its own refusal kept after it."""
    from portalign.demo import make_demo_pair

    reference, frame, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    result = portalign.register(reference, _flipped(frame, cut), backend="cpu")
    assert result.ok is False
    assert result.reason.startswith(f"flipped: the frame matches the reference better {said} (edge correlation ")
    assert "(as taken: " in result.reason  # its own refusal (outside the search range; the edge and MI optima apart)
    peaks = result.details["mirror_check"]["screen_peaks"]
    assert peaks[said] > peaks["own"]  # why it was checked
    # a refused frame no flip beats keeps its refusal as it was, unchecked
    blank = portalign.Image.from_array(np.full(frame.shape, 100.0) + np.random.default_rng(1).normal(0, 1, frame.shape),
                                       pixel_spacing_mm=frame.spacing_mm[0])
    refused = portalign.register(reference, blank, backend="cpu")
    assert refused.ok is False and not refused.reason.startswith("flipped") and refused.details["mirror_check"] is None


def test_the_screen_skips_nothing_the_full_check_would_refuse(pair, monkeypatch) -> None:
    """With the screen off the copies of a right frame are registered and score far below it: the screen's verdict."""
    from portalign.registration import _program

    reference, moved = pair
    screened = portalign.register(reference, _frame(moved), backend="cpu")
    monkeypatch.setattr(_program, "MIRROR_SCREEN", False)
    full = portalign.register(reference, _frame(moved), backend="cpu")
    assert screened.ok and full.ok and screened.details["mirror_check"]["screened_out"] is True
    check = full.details["mirror_check"]
    assert check["screened_out"] is False and check["screen_peaks"] == screened.details["mirror_check"]["screen_peaks"]
    assert max(check["flipped_edge_scores"].values()) < check["edge_score"] - 0.05  # no flip came near: none refused
    assert (full.dx_mm, full.dy_mm, full.rotation_deg) == (screened.dx_mm, screened.dy_mm, screened.rotation_deg)


@pytest.mark.real_data
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present (a user's clone)")
@pytest.mark.parametrize(("path", "cut", "said"), [
    ("slicerrt/eclipse_prostate_rando/RI.1.2.246.352.71.3.2088656855.2381134.20110921150951.dcm", LEFT_RIGHT,
     "flipped left-right"),  # ok at 0.31 without the check; 1.00 flipped back
    ("pylinac/planar_imaging/pipspro.dcm", TURNED, "turned 180 deg"),  # a near-symmetric phantom: ok at 0.79; 0.95
])
def test_real_images_flipped_are_not_ok(path, cut, said) -> None:
    from portalign.dicom import read_rt_image

    image = read_rt_image(REAL / path)
    result = portalign.register(image, _flipped(image, cut), backend="cpu")
    assert result.ok is False and result.reason.startswith(f"flipped: the frame matches the reference better {said}")
    # two portal images may share a symmetric structure fixed to the beam (an independent trial: a graticule matched
    # flipped where the anatomy was too weak, 0.52 against 0.29): the reason names that cause too
    both_portal = image.info.kind == "portal"
    assert ("or both portal images hold a structure fixed to the beam (a graticule, a tray, the aperture)"
            in result.reason) is both_portal


def test_the_right_frame_is_checked_once_per_geometry_unless_always(pair) -> None:
    reference, moved = pair
    prepared = portalign.prepare_reference(reference, backend="cpu")
    first, second = prepared.register(_frame(moved)), prepared.register(_frame(moved))
    assert first.ok and second.ok, (first.reason, second.reason)
    assert first.dx_mm == pytest.approx(DX_MM, abs=0.1) and first.dy_mm == pytest.approx(DY_MM, abs=0.1)
    peaks = first.details["mirror_check"]["screen_peaks"]
    assert set(peaks) == {"own", "flipped left-right", "flipped up-down", "turned 180 deg"}
    assert max(peaks[name] for name in peaks if name != "own") < MIRROR_SCREEN_RATIO * peaks["own"]
    assert second.details["mirror_check"] is None  # a mirrored panel mirrors every frame: the first one tells
    always = portalign.prepare_reference(reference, portalign.RegistrationOptions(mirror_check="always"), backend="cpu")
    assert all(always.register(_frame(moved)).details["mirror_check"] is not None for _ in range(2))


def test_a_symmetric_object_is_not_called_mirrored() -> None:
    """A disc with a ring and a cross (symmetric under every flip) and noise: flips match as well, nothing is refused."""
    yy, xx = np.mgrid[0:200, 0:200] - 99.5
    radius = np.hypot(xx, yy)
    base = (radius < 60) * 1.0 + (np.abs(radius - 40) < 3) * 0.5 + ((np.abs(xx) < 2) | (np.abs(yy) < 2)) * 0.3
    base = ndimage.gaussian_filter(base, 1.0)
    rng = np.random.default_rng(3)
    reference = portalign.Image.from_array(base + rng.normal(0, 0.02, base.shape), pixel_spacing_mm=1.0)
    frame = _frame(ndimage.shift(base, (1.5, -2.0), order=3) + rng.normal(0, 0.02, base.shape))
    result = portalign.register(reference, frame, portalign.RegistrationOptions(estimate_rotation=False), backend="cpu")
    assert result.details["mirror_check"] is not None
    assert result.ok, result.reason
    assert result.dx_mm == pytest.approx(-2.0, abs=0.1) and result.dy_mm == pytest.approx(1.5, abs=0.1)


def test_mirror_check_must_be_a_known_policy() -> None:
    with pytest.raises(portalign.PortalignError, match=r"^mirror_check must be one of first, always, never; got 'no'$"):
        portalign.RegistrationOptions(mirror_check="no")


WL_CARDINAL = REAL / "pylinac" / "wl_shift_truebeam" / "cardinal" / "wl-3-30-18_card-002.dcm"
WL_LAT = REAL / "pylinac" / "wl_shift_truebeam" / "lat3mm" / "3mm_lat-003.dcm"


@pytest.mark.skipif(not WL_CARDINAL.is_file(), reason=f"{WL_CARDINAL} is not there (../shared/data/real)")
@pytest.mark.parametrize("path, window, moved, noise", [
    (WL_CARDINAL, (106, 380, 640, 640), (-2, -7), 0.03),
    (WL_LAT, (366, 620, 640, 640), (-10, 5), 0.08),
])
def test_a_copy_matched_smoothed_is_compared_with_the_frame_matched_smoothed(path, window, moved, noise,
                                                                            monkeypatch) -> None:
    """A noisy window of a Winston-Lutz field: a flipped copy whose raw match was too noisy was matched smoothed and
    had outscored the frame's raw match (0.67 and 0.81 against 0.48 and 0.15), refusing a right answer as 'flipped'
    (a sweep of real crops, session note 30). The frame matched smoothed alike scores above the copy."""
    from field_sets import low_dose, read, window_pair

    ref, frame, dx, dy = window_pair(read(path), *window, *moved)
    frame = low_dose(frame, noise, 1)
    screened = portalign.register(ref, frame, backend="cpu")  # the screen may skip the copies: the same answer
    from portalign.registration import _program

    monkeypatch.setattr(_program, "MIRROR_SCREEN", False)  # the full check's rule is what this case is about
    result = portalign.register(ref, frame, backend="cpu")
    assert screened.ok and (screened.dx_mm, screened.dy_mm) == (result.dx_mm, result.dy_mm)
    check = result.details["mirror_check"]
    best = max(check["flipped_edge_scores"], key=lambda k: check["flipped_edge_scores"][k] or 0.0)
    assert check["flipped_smoothed"][best] and result.details["denoised"] is None  # the copy smoothed, the frame raw
    assert check["flipped_edge_scores"][best] > check["edge_score"] + 0.15  # raw against smoothed: no comparison
    assert check["own_edge_score_as_flipped"] > check["flipped_edge_scores"][best]
    assert result.ok, result.reason
    assert result.dx_mm == pytest.approx(dx, abs=0.5) and result.dy_mm == pytest.approx(dy, abs=0.5)


WL_LAT2 = REAL / "pylinac" / "wl_shift_truebeam" / "lat3mm" / "3mm_lat-002.dcm"


@pytest.mark.skipif(not WL_LAT2.is_file(), reason=f"{WL_LAT2} is not there (../shared/data/real)")
@pytest.mark.parametrize("seed", [1, 2])
def test_a_copy_is_compared_with_all_of_the_frames_edges_counted(seed, monkeypatch) -> None:
    """A noisy half-size window of a Winston-Lutz field: the copy flipped left-right matched its symmetric ball 12 mm
    from its field, its worst-matched edges over the reference's masked-out surroundings, where they did not count,
    and outscored the frame (0.53-0.57 against 0.42-0.45), refusing the right answer as 'flipped' (``bench.
    real_windows``, session note 32). Counted over all the frame's edges (``edge_score_all_edges``), it does not."""
    from field_sets import low_dose, read, window_pair

    ref, frame, dx, dy = window_pair(read(WL_LAT2), 484, 355, 640, 640, 2, -9)
    from portalign.registration import _program

    monkeypatch.setattr(_program, "MIRROR_SCREEN", False)  # the full check's rule is what this case is about
    result = portalign.register(ref, low_dose(frame, 0.03, seed), backend="cpu")
    check = result.details["mirror_check"]
    flipped = check["flipped_edge_scores"]["flipped left-right"]
    assert result.ok, result.reason
    assert result.dx_mm == pytest.approx(dx, abs=0.3) and result.dy_mm == pytest.approx(dy, abs=0.3)
    from portalign.registration._program import MIRROR_MIN_GAIN

    # the comparison is with all of the frame's edges counted (never more than the score counted over the field)
    assert check["edge_score"] == result.details["edge_score_all_edges"] <= result.details["edge_score"]
    assert flipped < check["edge_score"] + MIRROR_MIN_GAIN


def test_edge_score_over_all_edges_is_the_edge_score_where_little_is_masked(pair) -> None:
    """A reference with no field (only its one-pixel border masked): the two scores agree within 1 %."""
    reference, moved = pair
    result = portalign.register(reference, _frame(moved), backend="cpu")
    assert result.ok
    assert result.details["edge_score_all_edges"] <= result.details["edge_score"]
    assert result.details["edge_score_all_edges"] == pytest.approx(result.details["edge_score"], rel=0.01)


def test_a_frame_mirrored_after_a_sound_one_of_its_geometry_is_checked_too() -> None:
    """``mirror_check="first"`` checked a geometry's first frame only: a hostile campaign's mirrored frame after a sound
    one of the same geometry was ok 8.3 mm off. A later frame scoring under ``MIRROR_RECHECK_SHARE`` of the checked
    frame's edge score goes through the check; a sound later frame does not."""
    from portalign.demo import make_demo_pair
    from portalign.registration._program import MIRROR_RECHECK_SHARE, _mirror_score

    reference, frame, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    prepared = portalign.prepare_reference(reference, backend="cpu")
    first = prepared.register(frame)
    assert first.ok
    mirrored = prepared.register(_flipped(frame, LEFT_RIGHT))
    assert (_mirror_score(portalign.register(reference, _flipped(frame, LEFT_RIGHT),
                                             portalign.RegistrationOptions(mirror_check="never"), backend="cpu"))
            < MIRROR_RECHECK_SHARE * _mirror_score(first))
    assert not mirrored.ok and mirrored.reason.startswith("flipped: the frame matches the reference better flipped "
                                                          "left-right")
    again = prepared.register(frame)
    assert again.ok and again.details["mirror_check"] is None  # sound: not checked again
