"""A portal pair whose field stayed put: the aperture's own shape must not place the match (``_program._aperture_check``).

An independent trial (its own renderer of a real thorax CT) found portal pairs matched at the aperture's own position,
ok, 2.8-4.8 mm off: an MLC field with three leaf pairs closed inside it and a soft edge (sigma 2.76 mm), and a 15 mm
cone. The frame's anatomy inside the field was weak; what both images share at no shift is the aperture. Such a match
is now compared with the aperture alone (the reference's field, blurred: ``Reference.aperture_model``).

``tests/data/soft_mlc_portal_pair.npz``: that trial's MLC pair, cropped to the field, binned 2 x 2 and scaled to 16 bits
(its ``meta`` says how it was made; the CT is ITKElastix's thorax, Apache-2.0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import portalign
import pytest
from portalign.registration import _program

from tests.field_sets import REAL, read

PAIR = Path(__file__).resolve().parent / "data" / "soft_mlc_portal_pair.npz"


def _pair() -> tuple[portalign.Image, portalign.Image, tuple[float, float]]:
    data = np.load(PAIR)
    meta = json.loads(str(data["meta"]))
    images = [portalign.Image.from_array(
        data[name].astype(np.float32), pixel_spacing_mm=meta["spacing_mm"], beam_axis_px=tuple(meta["beam_axis_px"]),
        name=name, kind="portal", gantry_deg=meta["gantry_deg"], collimator_deg=meta["collimator_deg"], couch_deg=0.0,
        sid_mm=meta["sid_mm"], sad_mm=meta["sad_mm"]) for name in ("reference", "frame")]
    return images[0], images[1], tuple(meta["truth_mm"])


def test_a_match_the_aperture_alone_explains_is_refused(monkeypatch):
    reference, frame, (dx, dy) = _pair()
    result = portalign.register(reference, frame, backend="cpu")
    assert not result.ok and result.dx_mm is None and result.rotation_deg is None
    assert result.reason.startswith("no match: the radiation field's own shape matches the frame about as well as the "
                                    "reference does (edge correlation 0.7"), result.reason
    alone, own = result.details["aperture_alone_edge_score"], result.details["edge_score"]
    assert alone >= _program.APERTURE_MAX_SHARE * own
    # without the check: the shift of the aperture, ok, and more than 2 mm from the patient's
    monkeypatch.setattr(_program, "APERTURE_MAX_SHARE", 99.0)
    unchecked = portalign.register(reference, frame, backend="cpu")
    assert unchecked.ok and math.hypot(unchecked.dx_mm - dx, unchecked.dy_mm - dy) > 2.0
    assert math.hypot(unchecked.dx_mm, unchecked.dy_mm) <= _program.APERTURE_NEAR_MM  # at the aperture's position


def test_the_aperture_model_is_the_reference_s_field_alone():
    reference, _, _ = _pair()
    prepared = portalign.prepare_reference(reference, backend="cpu")
    model = prepared.aperture_model()
    assert model is prepared.aperture_model()  # made once
    assert model.field.detected and model.aperture_model() is None  # the model is checked against nothing
    pixels = model.image.pixels
    lo, hi = np.percentile(reference.pixels, (2.0, 98.0))
    assert pixels.min() >= lo - 1e-3 * (hi - lo) and pixels.max() <= hi + 1e-3 * (hi - lo)
    inside = reference.pixels > prepared.field.threshold
    assert pixels[inside].mean() > pixels[~inside].mean() + 0.5 * (hi - lo)
    drr = replace_kind(reference, "drr")
    assert portalign.prepare_reference(drr, backend="cpu").aperture_model() is None  # a DRR has no field


def replace_kind(image: portalign.Image, kind: str) -> portalign.Image:
    from dataclasses import replace

    return replace(image, info=replace(image.info, kind=kind))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present (a user's clone)")
def test_winston_lutz_pairs_at_no_shift_stay_ok():
    """TrueBeam Winston-Lutz sets, the ball bearing moved 3 mm laterally (pylinac): the field stays put and two of the
    four gantry angles see no shift. Matched at 0.99, they are not checked (``APERTURE_CHECK_BELOW``); the aperture
    alone would have matched them at under half that."""
    card = sorted((REAL / "pylinac" / "wl_shift_truebeam" / "cardinal").glob("*.dcm"))
    lat = sorted((REAL / "pylinac" / "wl_shift_truebeam" / "lat3mm").glob("*.dcm"))
    assert len(card) == len(lat) == 4
    near = 0
    for a, b in zip(card, lat, strict=True):
        reference, frame = read(a), read(b)
        prepared = portalign.prepare_reference(reference, backend="cpu")
        result = prepared.register(frame)
        assert result.ok, (a.name, result.reason)
        assert "aperture_alone_edge_score" not in result.details
        own = result.details["edge_score"]
        assert own >= _program.APERTURE_CHECK_BELOW
        if math.hypot(result.dx_mm, result.dy_mm) <= _program.APERTURE_NEAR_MM:
            near += 1
            alone = prepared.aperture_model().register(frame).details["edge_score"]
            assert alone <= 0.5 * own
    assert near == 2
