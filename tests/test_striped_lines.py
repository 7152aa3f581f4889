"""Dead lines of a dosimetry image's clipped outside, and images with too many dead lines to leave out.

A portal-dosimetry image reads exactly zero outside its field (78 % of the handed small-field case's pixels).
A dead detector line there reads what its neighbours read, so it differs from them inside the field only: it was
never found, however many there were. With a fifth of that reference's rows dead, scattered, the 30 mm field was
matched 12.3 mm off, ok, with no warning. Now the clipped pixels (a line and both its neighbours at one value) are
left out of the share a line must spike over, and more than ``DEAD_LINE_MAX_SHARE`` of an image's detector lines as
separate bands (or over ``DEAD_BLOCK_MAX_SHARE`` of them in all) is a striped image: a reference is refused when it
is prepared, a frame's result is not ok, with the lines named.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import portalign
import pytest
from portalign.errors import ReferencePreparationError
from portalign.registration import Reference

from tests.field_sets import with_lines
from tests.synthetic import anatomy, field_aperture, moved, mv_portal

FIELD_CASES = Path(__file__).resolve().parents[2] / "shared" / "field-cases"
SHAPE = (256, 256)


def _dosimetry_pair(dx: float, dy: float, seed: int = 5):  # type: ignore[no-untyped-def]
    """A 120 x 120 mm field on a 256 mm panel (1 mm pixels), 0.5 % noise, and outside it exactly zero (clipped below
    3 % of the open beam, as a dosimetry image's calibration leaves it; 78 % of the pixels): a reference and the same
    scene seen through a window moved by (dx, dy) mm, the field with it (as the handed small-field case is made)."""
    scene = mv_portal(anatomy(384, seed=seed), field_aperture((384, 384), 1.0, 60.0, 60.0, transmission=0.0))

    def taken(shift_x: float, shift_y: float, noise_seed: int) -> portalign.Image:
        values = moved(scene, shift_x, shift_y, 0, shape=SHAPE)
        values = values + np.random.default_rng(noise_seed).normal(0.0, 5.0, SHAPE)
        return portalign.Image.from_array(np.maximum(values - 30.0, 0.0).astype(np.float32), pixel_spacing_mm=1.0,
                                          kind="portal")

    return taken(0.0, 0.0, seed + 100), taken(dx, dy, seed)


def _scattered(count: int, first: int, last: int, seed: int) -> list[int]:
    """``count`` separate lines (no two adjacent) from ``first`` to ``last``."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for line in rng.permutation(np.arange(first, last + 1)):
        if all(abs(int(line) - other) > 1 for other in picked):
            picked.append(int(line))
        if len(picked) == count:
            break
    return sorted(picked)


def test_the_pair_is_clipped_outside_its_field():
    ref, _ = _dosimetry_pair(0.0, 0.0)
    assert np.mean(ref.pixels == 0.0) > 0.7  # most of it exactly zero, like the handed case (78 %)


@pytest.mark.parametrize("where", ["reference", "frame"])
def test_a_dead_row_through_a_clipped_images_field_is_found(where):
    """Inside the field only (under half of its length) the dead row differs from its neighbours: found and left out."""
    dx, dy = 2.2, -1.4
    ref, frame = _dosimetry_pair(dx, dy)
    if where == "reference":
        prepared = Reference.prepare(with_lines(ref, rows=(121,), cols=(140,)), backend="cpu")
        assert prepared.field.dead_rows and prepared.field.dead_cols  # none was found before
        result = prepared.register(frame)
        lines = result.details["reference_dead_detector_lines"]
    else:
        result = portalign.register(ref, with_lines(frame, rows=(121,), cols=(140,)), backend="cpu")
        lines = result.details["dead_detector_lines"]
    assert result.ok, result.reason
    # the detector lines themselves (not the field-detection level's pair of lines they fall in), counted as such
    assert lines == {"rows": [121], "columns": [140], "hot_rows": [], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert any(w.endswith("1 dead detector row(s) and 1 column(s) left out of the match") for w in result.warnings)
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) < 0.3


@pytest.mark.parametrize("where", ["reference", "frame"])
def test_a_dead_block_through_a_clipped_images_field_is_found(where):
    """Six adjacent dead rows (a readout module) across the field: a block of more than two lines must read the
    clipped value itself wherever it stands out to leave the clipped pixels out (a hard-edged field over a constant
    outside is no block). Before, the reference was used with the block in it, with no word; the frame refused as
    "no match", the block not named."""
    dx, dy = -1.6, 2.3
    ref, frame = _dosimetry_pair(dx, dy)
    block = tuple(range(118, 124))
    if where == "reference":
        result = portalign.register(with_lines(ref, rows=block), frame, backend="cpu")
        lines = result.details["reference_dead_detector_lines"]
    else:
        result = portalign.register(ref, with_lines(frame, rows=block), backend="cpu")
        lines = result.details["dead_detector_lines"]
    assert result.ok, result.reason
    assert lines == {"rows": list(block), "columns": [], "hot_rows": [], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) < 0.3


def test_a_sound_clipped_image_shows_no_dead_line():
    """Leaving the clipped pixels out does not turn the field's own rows into dead lines (nor its edges)."""
    ref, frame = _dosimetry_pair(1.0, 1.0)
    prepared = Reference.prepare(ref, backend="cpu")
    assert not prepared.field.dead_rows and not prepared.field.dead_cols and not prepared.field.striped
    result = prepared.register(frame)
    assert result.ok, result.reason
    assert result.details["dead_detector_lines"] is None


@pytest.mark.parametrize("value", [0.0, 2000.0])
def test_a_striped_reference_is_refused_when_prepared(value):
    """Thirty separate dead (or hot) rows of 256 (over 5 %), through the field (where a dead one shows): refused, the
    rows named; not matched as it is."""
    ref, _ = _dosimetry_pair(0.0, 0.0)
    rows = _scattered(30, 75, 180, seed=2)
    with pytest.raises(ReferencePreparationError) as caught:
        Reference.prepare(with_lines(ref, rows=rows, value=value), backend="cpu")
    message = str(caught.value)
    assert "separate band(s)" in message and "detector rows" in message and "acquire the reference again" in message
    named = message.split("separate band(s) (")[1].split(" and ")[0].split(", ")
    assert len(named) == 6 and all(int(line) in rows for line in named)  # the first six, each one of the dead rows
    # field='none' looks for no field, and still for its dead lines
    with pytest.raises(ReferencePreparationError, match="separate band"):
        Reference.prepare(with_lines(ref, rows=rows, value=value), portalign.RegistrationOptions(field="none"),
                          backend="cpu")


def test_a_striped_frame_is_not_ok_whatever_field_says():
    ref, frame = _dosimetry_pair(1.5, -2.0)
    striped = with_lines(frame, cols=_scattered(30, 75, 180, seed=4))
    for options in (portalign.RegistrationOptions(), portalign.RegistrationOptions(field="detect")):
        result = portalign.register(ref, striped, options=options, backend="cpu")
        assert not result.ok
        assert "dead or hot" in result.reason and "acquire the frame again" in result.reason


@pytest.mark.slow
@pytest.mark.parametrize("side", ["reference", "frame"])
def test_handed_small_field_with_a_fifth_of_its_rows_dead_is_not_ok(side):
    """The handed 30 mm portal-dosimetry pair (``field-cases/small-field``), a fifth of one image's rows dead,
    scattered: the reference was matched 12.3 mm off, ok. Now refused (or, where the lines found are few enough to
    leave out, right)."""
    folder = FIELD_CASES / "small-field"
    if not folder.is_dir():
        pytest.skip("../shared/field-cases/small-field not present")
    ref = portalign.read_rt_image(folder / "ref_crop.dcm")
    frame = portalign.read_rt_image(folder / "frame_shift_r+9_c-13.dcm")
    rows = np.random.default_rng(3).choice(ref.shape[0], ref.shape[0] // 5, replace=False)
    try:
        if side == "reference":
            result = portalign.register(with_lines(ref, rows=rows), frame, backend="cpu")
        else:
            result = portalign.register(ref, with_lines(frame, rows=rows), backend="cpu")
    except ReferencePreparationError as exc:
        assert side == "reference" and "dead or hot" in str(exc)
        return
    if result.ok:
        assert math.hypot(result.dx_mm + 2.912, result.dy_mm - 2.016) < 0.5


def test_scattered_dead_rows_of_a_fine_panel_are_seen_on_the_detectors_own_lines():
    """Sixty dead rows scattered over a 1024 x 768 panel (0.4 mm pixels: a field-detection level of 8 x 8 detector
    pixels, in which every reduced row then holds a dead one or is next to one): the reduced lines' screen sees no
    dead line, and the reference was matched as it was. A reference is prepared once, so its detector lines are
    screened too (``find_field(thorough=True)``): refused, the rows named."""
    from portalign.field import box_reduce, find_field
    from portalign.registration._reference import FIELD_LEVEL_MAX_PIXELS

    shape = (768, 1024)
    jaws = field_aperture(shape, 0.4, 190.0, 140.0)  # the rows cross the field over 93 % of their length
    pixels = mv_portal(moved(anatomy(384, seed=2), 0, 0, 0, shape=shape, spacing_mm=0.4), jaws, noise=0.01, seed=1)
    reference = portalign.Image.from_array(pixels, pixel_spacing_mm=0.4, kind="portal")
    rows = _scattered(60, 20, 740, seed=1)
    broken = with_lines(reference, rows=rows)
    small, factor = box_reduce(broken.pixels, FIELD_LEVEL_MAX_PIXELS)
    assert factor == 8 and not find_field(broken, small).dead_rows  # the reduced lines alone: none
    with pytest.raises(ReferencePreparationError, match="detector rows read far off both neighbours") as caught:
        Reference.prepare(broken, backend="cpu")
    named = str(caught.value).split("separate band(s) (")[1].split(" and ")[0].split(", ")
    assert all(int(line) in rows for line in named)
    # the sound panel: its detector lines screened too, none found
    assert not Reference.prepare(reference, backend="cpu").field.dead_rows


def test_the_cli_names_a_striped_reference_and_a_striped_frames_pose_is_null(capsys, tmp_path):
    """``portalign register --json``: a striped reference is an error of kind ``reference_preparation`` naming the file
    (it was the generic ``error``); a striped frame's result is not ok and its pose null (its optimum measures the
    stripes: before, a shift 4.8 mm off was printed first)."""
    from portalign.cli import main

    from tests.dicom_factory import make_rt_image, write_rt_image

    ref, frame = _dosimetry_pair(1.5, -2.0)
    rows = _scattered(30, 75, 180, seed=2)
    paths = {}
    for name, image in (("ref", ref), ("frame", frame), ("striped_ref", with_lines(ref, rows=rows)),
                        ("striped_frame", with_lines(frame, rows=rows))):
        paths[name] = write_rt_image(make_rt_image(image.pixels, spacing=1.0, sid=1000.0, sad=1000.0,
                                                   position="centre"), tmp_path / f"{name}.dcm")
    status = main(["register", str(paths["striped_ref"]), str(paths["frame"]), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert status != 0 and payload["ok"] is False and payload["error"] == "reference_preparation"
    assert payload["detail"].startswith("striped_ref.dcm: ") and "detector rows read far off" in payload["detail"]
    main(["register", str(paths["ref"]), str(paths["striped_frame"]), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["dx_mm"] is None and payload["dy_mm"] is None
    assert payload["reason"].startswith("striped_frame.dcm: ") and "acquire the frame again" in payload["reason"]


def test_every_other_column_dead_is_an_interlaced_reference():
    """Every other detector column dead: each dead column's neighbours are live, each live one's dead, so no line
    stands out alone and three live columns were named dead (a trial). The line means alternate: refused."""
    from portalign.field import INTERLACE_CONTRAST, INTERLACE_SHARE
    from portalign.kernels.cpu.field import interlaced

    def _interlaced(means: np.ndarray) -> bool:
        return interlaced(np.asarray(means, dtype=np.float64), INTERLACE_CONTRAST, INTERLACE_SHARE)

    ref, _ = _dosimetry_pair(0.0, 0.0)
    with pytest.raises(ReferencePreparationError, match="its detector columns alternate"):
        Reference.prepare(with_lines(ref, cols=range(1, SHAPE[1], 2)), backend="cpu")
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0.0, 1.0, 400))  # anatomy-like means: steps of one sign for long runs
    noise = rng.normal(0.0, 1.0, 400)  # alternating by chance about half the time
    assert not _interlaced(smooth) and not _interlaced(noise) and not _interlaced(np.zeros(400))
    assert _interlaced(smooth + 20.0 * (np.arange(400) % 2))


def test_info_lists_dead_lines_and_says_when_an_image_is_striped(capsys, tmp_path):
    """``portalign info`` shows the detector lines registration leaves out, and says when there are too many."""
    from portalign.cli import main

    from tests.dicom_factory import make_rt_image, write_rt_image

    ref, _ = _dosimetry_pair(0.0, 0.0)
    paths = {}
    hot = with_lines(with_lines(ref, rows=(121,)), cols=(140,), value=2.0 * float(ref.pixels.max()))
    for name, image in (("sound", ref), ("one", with_lines(ref, rows=(121,))), ("hot", hot),
                        ("striped", with_lines(ref, rows=_scattered(30, 75, 180, seed=2)))):
        paths[name] = write_rt_image(make_rt_image(image.pixels, spacing=1.0, sid=1000.0, sad=1000.0,
                                                   position="centre"), tmp_path / f"{name}.dcm")
    infos = {}
    for name, path in paths.items():
        assert main(["info", str(path), "--json"]) == 0
        infos[name] = json.loads(capsys.readouterr().out)
    assert infos["sound"]["dead_detector_lines"] is None and infos["sound"]["detector_lines_note"] is None
    assert infos["one"]["dead_detector_lines"] == {"rows": [121], "columns": [], "hot_rows": [], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert "registration refuses this image" in infos["striped"]["detector_lines_note"]
    assert main(["info", str(paths["one"])]) == 0
    out = capsys.readouterr().out
    assert "faulty detector lines (left out of a match): dead rows [121]" in out.splitlines()
    # a hot column beside a dead row: each called what it is (the JSON key keeps both, with the hot ones named)
    assert infos["hot"]["dead_detector_lines"] == {"rows": [121], "columns": [140], "hot_rows": [], "hot_columns": [140],
        "part_rows": [], "part_columns": []}
    assert main(["info", str(paths["hot"])]) == 0
    assert "faulty detector lines (left out of a match): dead rows [121]; hot columns [140]" in \
        capsys.readouterr().out.splitlines()
    assert main(["info", str(paths["striped"])]) == 0
    out = capsys.readouterr().out
    assert "of its 256 detector rows read far off both neighbours" in out and "registration refuses this image" in out


def _open_pair():  # type: ignore[no-untyped-def]
    folder = FIELD_CASES / "open-field"
    if not folder.is_dir():
        pytest.skip("../shared/field-cases/open-field not present")
    return (portalign.read_rt_image(folder / "ref_inside.dcm"),
            portalign.read_rt_image(folder / "frame_inside_r-15_c+21.dcm"))


@pytest.mark.slow
@pytest.mark.parametrize(("share", "hot", "seed"), [(0.4, False, 0), (0.08, False, 0), (0.2, True, 4)])
def test_a_frame_whose_detector_lines_are_striped_is_refused_naming_them(share, hot, seed):
    """The handed open-field pair (680 x 920 panel, a field-detection level of 8 x 8 detector pixels), a share of the
    frame's rows dead (or hot, 1.3 x its maximum), drawn at random as ``python -m bench.dead_lines --frame`` draws
    them: the reduced screen sees none of them. Before, 40 % dead was refused for what they did to the match ("no
    match"), 8 % dead was ok and the lines unnamed, and a fifth hot (seed 4) was ok 0.78 mm off, with no word. Every
    frame's detector line means are screened now (from its pyramid's pass): the reason names the rows and the pose is
    null (the optimum measured the stripes)."""
    ref, frame = _open_pair()
    rows = np.random.default_rng(seed).choice(frame.shape[0], int(share * frame.shape[0]), replace=False)
    value = 1.3 * float(frame.pixels.max()) if hot else 0.0
    result = portalign.register(ref, with_lines(frame, rows=rows, value=value), backend="cpu")
    assert not result.ok
    assert result.reason.startswith("frame_inside_r-15_c+21.dcm: ") and "detector rows read far off both neighbours" \
        in result.reason and result.reason.endswith("acquire the frame again"), result.reason
    assert (result.dx_mm, result.dy_mm, result.rotation_deg) == (None, None, None)


@pytest.mark.slow
def test_a_few_scattered_dead_rows_of_a_frame_are_left_out_and_named():
    """3 % of the open-field frame's rows dead, scattered (fewer separate bands than a striped image's 5 %): not
    refused; left out of the match, and counted in its warning (the detector's lines themselves)."""
    ref, frame = _open_pair()
    rows = _scattered(20, 5, frame.shape[0] - 6, seed=7)
    result = portalign.register(ref, with_lines(frame, rows=rows), backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - 5.488, result.dy_mm + 3.920) < 0.2
    assert set(result.details["dead_detector_lines"]["rows"]) >= set(rows[1:-1])


def test_a_sound_frame_s_line_means_screen_nothing():
    """The screen every frame gets takes up nothing on the handed open-field images as taken; on the dosimetry images
    (outside exactly zero, so the line-mean profile has no noise) it takes up the field's columns, and none of them is
    confirmed a dead line on the pixels."""
    from portalign.field import box_reduce, find_field, line_screen
    from portalign.kernels.cpu.field import line_means
    from portalign.registration._reference import FIELD_LEVEL_MAX_PIXELS

    for image in _open_pair():
        assert line_screen(*line_means(image.pixels)) is None, image.info.source
    for path in sorted((FIELD_CASES / "small-field").glob("*.dcm")):
        image = portalign.read_rt_image(path)
        small, _ = box_reduce(image.pixels, FIELD_LEVEL_MAX_PIXELS)
        field = find_field(image, small, candidates=line_screen(*line_means(image.pixels)))
        assert not field.dead_rows and not field.dead_cols and not field.striped, path.name


def test_line_candidates_take_up_stripes_and_strong_lines_only():
    """The compiled screen: 30 separate dead rows of 200 are a striped image's (more than 5 % as bands): every line that
    spikes is taken up; 5 are not, and only the lines that spike by ``STRONG_LINE_CONTRAST`` are (the dead ones);
    weaker spikes alone (a rendering's CT slices) are not; every other column dead is interlaced."""
    from portalign.field import line_screen
    from portalign.kernels.cpu.field import line_means

    rng = np.random.default_rng(3)
    base = 1000.0 + 50.0 * np.sin(np.linspace(0, 6, 240))[None, :] + rng.normal(0.0, 5.0, (200, 240))
    many, few, faint, alternate = base.copy(), base.copy(), base.copy(), base.copy()
    dead_many, dead_few = _scattered(30, 2, 197, seed=1), _scattered(5, 2, 197, seed=1)
    many[dead_many, :] = 0.0
    few[dead_few, :] = 0.0
    faint[dead_few, :] += 3.0  # 3 over a line-mean noise of about 0.5: spikes, weakly
    alternate[:, ::2] = 0.0
    assert line_screen(*line_means(base)) is None and line_screen(*line_means(faint)) is None
    assert line_screen(*line_means(faint), 0.0) is not None  # a reference's thorough screen takes up any band
    # each dead row, and a neighbour where a band of two spiked (bands are confirmed on the pixels afterwards)
    found = line_screen(*line_means(many))
    assert found is not None and set(found.rows) >= set(dead_many) and found.cols.size == 0 and len(found.rows) < 60
    strong = line_screen(*line_means(few))
    assert strong is not None and set(strong.rows) >= set(dead_few) and len(strong.rows) <= 10
    interlaced = line_screen(*line_means(alternate))
    assert interlaced is not None and interlaced.interlaced.startswith("its detector columns alternate")


@pytest.mark.slow
def test_a_dosimetry_frame_with_many_dead_columns_names_them():
    """A dosimetry frame's dead columns differ from their neighbours inside its 30 mm field only (its outside reads
    zero). 40 % of them dead, as ``python -m bench.dead_lines --frame`` draws them with seed 3: before, the frame was
    refused as "nothing but noise"; its columns are named now, and the pose is null."""
    folder = FIELD_CASES / "small-field"
    if not folder.is_dir():
        pytest.skip("../shared/field-cases/small-field not present")
    from bench.dead_lines import variants

    ref = portalign.read_rt_image(folder / "ref_crop.dcm")
    frame = portalign.read_rt_image(folder / "frame_shift_r+9_c-13.dcm")
    pixels = dict(variants(frame.pixels, 3))["dead 40% cols"]
    result = portalign.register(ref, replace(frame, pixels=pixels), backend="cpu")
    assert not result.ok
    assert "detector columns read far off both neighbours" in result.reason, result.reason
    assert (result.dx_mm, result.dy_mm, result.rotation_deg) == (None, None, None)


def _faint_outside_pair(dx: float, dy: float):  # type: ignore[no-untyped-def]
    """An 80 mm field on a 256 x 192 mm panel of 0.5 mm pixels, 1 % transmission outside, additive noise 3 % of the open
    beam (the outside reads 10 +- 30: a dead line there is within its noise): a reference and a frame moved by (dx, dy)."""
    scene = mv_portal(anatomy(640, seed=4), field_aperture((640, 640), 0.5, 40.0, 40.0, transmission=0.01))

    def taken(shift_x: float, shift_y: float, seed: int) -> portalign.Image:
        values = moved(scene, shift_x, shift_y, 0, shape=(384, 512), spacing_mm=0.5, base_spacing_mm=0.5)
        values = values + np.random.default_rng(seed).normal(0.0, 30.0, values.shape)
        return portalign.Image.from_array(values.astype(np.float32), pixel_spacing_mm=0.5, kind="portal")

    return taken(0.0, 0.0, 1), taken(dx, dy, 2)


def test_dead_lines_across_a_field_on_a_fine_panel_are_found_from_their_means():
    """Three dead rows and a dead column across the field: a quarter of a field-detection line each, whose outside they
    match within its noise, so that level's screen sees none (before: ok, the lines unnamed; a new user's trial had
    such a frame refused as an optimum 35 mm off). Their detector line means spike far beyond the profile's noise
    (``STRONG_LINE_CONTRAST``): they are confirmed on the pixels, left out, and named."""
    from portalign.field import box_reduce, find_field
    from portalign.registration._reference import FIELD_LEVEL_MAX_PIXELS

    dx, dy = 1.3, -0.8
    ref, frame = _faint_outside_pair(dx, dy)
    bad = with_lines(frame, rows=(150, 171, 203), cols=(240,))
    small, _ = box_reduce(bad.pixels, FIELD_LEVEL_MAX_PIXELS)
    assert not find_field(bad, small).detector_rows  # the field-detection level alone does not see them
    result = portalign.register(ref, bad, backend="cpu")
    assert result.ok, result.reason
    assert result.details["dead_detector_lines"] == {"rows": [150, 171, 203], "columns": [240], "hot_rows": [], "hot_columns": [],
        "part_rows": [], "part_columns": []}
    assert "3 dead detector row(s) and 1 column(s) left out of the match" in result.warnings
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) < 0.3


def test_a_smoothed_frame_keeps_only_its_dead_detector_lines_raw():
    """``denoised_frame`` leaves the confirmed detector lines out of the smoothing, not the whole field-detection lines
    they fall in: kept raw beside smoothed lines, those read as noisy neighbours of the dead line, and the smoothed
    frame's dead lines were no longer found (a noisy frame is registered from its smoothed pixels)."""
    from portalign.field import FieldEstimate
    from portalign.registration._frame import denoised_frame

    _, frame = _faint_outside_pair(0.0, 0.0)
    bad = with_lines(frame, rows=(150,))
    field = FieldEstimate(detected=False, dead_rows=(37,), detector_rows=(150,))
    smoothed = denoised_frame(bad, field, 4, 1.0).pixels
    assert np.all(smoothed[150] == 0.0)  # the dead row keeps its value
    raw_noise = np.std(np.diff(frame.pixels[148:152, :40], axis=1))
    for row in (148, 149, 151):  # its field-detection line's other rows are smoothed like every other
        assert np.std(np.diff(smoothed[row, :40])) < 0.3 * raw_noise, row


def test_a_frame_with_pixels_ten_times_longer_one_way_is_named_as_the_cause():
    """A mutated file's ImagePlanePixelSpacing 0.336 x 3.36 mm left the reference no usable pixels at the frame's
    geometry; the error called the reference's 21.5 mm field "smaller than the 10.5 mm needed". It names the frame's
    pixels and the tag now."""
    from portalign.errors import PortalignError

    ref, frame = _faint_outside_pair(0.0, 0.0)
    stretched = portalign.Image.from_array(frame.pixels, pixel_spacing_mm=(0.5, 5.0), kind="portal")
    # 0.5 x 5 mm over 384 x 512 pixels is also 2.6 m across: refused before any allocation, the pixels' shape named
    with pytest.raises(PortalignError, match=r"2560 mm across: no beam's image is over 1000 mm wide there; its pixels "
                                             r"are 10\.0 times longer one way than the other, which no portal imager's "
                                             r"are; check its ImagePlanePixelSpacing \(3002,0011\)"):
        portalign.register(ref, stretched, backend="cpu")
    # within 1000 mm (0.5 x 1.8 mm: 922 mm) the plan's own message names them, as before
    narrow = portalign.Image.from_array(frame.pixels, pixel_spacing_mm=(0.5, 1.8), kind="portal")
    try:
        result = portalign.register(ref, narrow, backend="cpu")
    except PortalignError as exc:
        assert "times longer one way than the other" in str(exc), str(exc)
    else:
        assert result.ok is False, result
