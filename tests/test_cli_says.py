"""A CLI that says what happened (issue 11): extras named, --reg, output files reported, flags in
errors, --invert everywhere, ``info`` that explains, ``--help`` with defaults, ``watch`` lines.

Inputs are small synthetic RT Images (tests/dicom_factory.py): smooth anatomy of 160 x 160
pixels at 1 mm (SID = SAD), the frame moved by a known (dx, dy).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import portalign
import pydicom
import pytest
from dicom_factory import make_rt_image, write_rt_image
from portalign import cli
from portalign.cli import build_parser, main
from scipy import ndimage
from synthetic import anatomy

SIZE = 160
DX_MM, DY_MM = 3.0, -2.0
ISO = {"spacing": 1.0, "sid": 1000.0, "sad": 1000.0, "position": "centre"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli_says")
    ref = anatomy(SIZE, seed=3)
    frame = ndimage.shift(ref, (DY_MM, DX_MM), order=3, mode="nearest")
    tags = {"PatientPosition": "HFS", "AcquisitionDate": "20260102"}
    out = {
        "ref": write_rt_image(make_rt_image(ref, gantry=0.0, **ISO, **tags), folder / "ref.dcm"),
        "frame": write_rt_image(make_rt_image(frame, gantry=0.0, **ISO, **tags), folder / "frame.dcm"),
        "frame_g90": write_rt_image(make_rt_image(frame, gantry=90.0, **ISO, **tags), folder / "frame_g90.dcm"),
        "ref_nopos": write_rt_image(make_rt_image(ref, gantry=0.0, **ISO), folder / "ref_nopos.dcm"),
        "frame_nopos": write_rt_image(make_rt_image(frame, gantry=0.0, **ISO), folder / "frame_nopos.dcm"),
        # the beam axis (RTImagePosition) 500 mm away: nothing in common with the reference
        "frame_far": write_rt_image(make_rt_image(frame, gantry=0.0, spacing=1.0, sid=1000.0, sad=1000.0,
                                                  position=(500.0, 79.5)), folder / "frame_far.dcm"),
    }
    return out


def _real_file(*parts: str) -> Path:
    """A file of ``../shared/data/real``; the test skips, saying so, where it is not here."""
    path = Path(__file__).resolve().parents[1].parent.joinpath("shared", "data", "real", *parts)
    if not path.is_file():
        pytest.skip(f"{path} is not here (../shared/data/real)")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------------
# missing extras
# ---------------------------------------------------------------------------------------------


def test_serve_without_the_service_extra_names_it_whatever_the_arguments(capsys, monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "portalign.service", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails as if not installed
    status, out, err = run(capsys, "serve", "--port", "8000")
    assert status == 2 and out == ""
    assert 'pip install "portalign[service]"' in err and "fastapi" in err
    assert "unrecognized arguments" not in err and "Traceback" not in err


def test_serve_help_without_the_service_extra_says_so(capsys, monkeypatch) -> None:
    """``serve --help`` listed only ``[-h]``, with nothing to say why its options were missing."""
    monkeypatch.delitem(sys.modules, "portalign.service", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert 'needs fastapi, which is not installed: pip install "portalign[service]"' in " ".join(out.split())
    assert "its options are listed once it is installed" in " ".join(out.split())


def test_scp_without_pynetdicom_names_the_extra_and_leaves_no_results_file(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "pynetdicom", None)
    results = tmp_path / "results.jsonl"
    status, out, err = run(capsys, "scp", "--results", results, "--port", "0")
    assert status == 2
    assert 'pip install "portalign[service]"' in err and "pynetdicom" in err and "Traceback" not in err
    assert not results.exists()


@pytest.mark.parametrize("words", [(), ("--port", "11112"), ("--ae-title", "X", "--reference", "r.dcm")])
def test_scp_without_pynetdicom_names_the_extra_before_its_arguments(capsys, monkeypatch, words) -> None:
    """A new user's trial: a bare `portalign scp` said only that --results was required, not what was missing."""
    monkeypatch.setitem(sys.modules, "pynetdicom", None)
    status, out, err = run(capsys, "scp", *words)
    assert status == 2
    assert err.strip() == ('portalign: error: portalign scp needs pynetdicom, which is not installed: '
                           'pip install "portalign[service]"'), err
    assert "required" not in err and "Traceback" not in err


def test_register_help_states_its_exit_status(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    assert "exit status: 0 when a result was printed, ok or not" in text
    assert ("2 when an input could not be used or an output (--overlay, --reg) could not be written (the error names "
            "it; the JSON says why in overlay_not_written / reg_not_written)") in text
    assert "A refused match gets no REG: said on stderr and in reg_not_written, exit 0" in text


def test_couch_help_states_its_exit_status(capsys) -> None:
    """A correction outside an action level exits 3, as fieldcheck's edges do (a new user's trial: couch exited 0
    under "OUTSIDE tolerance" and said nothing of its exit status)."""
    with pytest.raises(SystemExit) as stop:
        main(["couch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    assert "exit status: 0 when a result was printed, ok or not, within the action levels given (if any); 3 when the " \
           "measured correction is outside one" in text


def test_bench_outside_a_checkout_says_what_to_do(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cli, "SOURCE_ROOT", tmp_path)  # no bench/ there
    status, out, err = run(capsys, "bench", "--quick", "--out", tmp_path / "x")
    assert status == 2
    assert "source checkout" in err and 'pip install -e ".[bench]"' in err
    assert "unrecognized arguments" not in err


# ---------------------------------------------------------------------------------------------
# register: --reg, --overlay, timing, flags in errors, views, no common anatomy
# ---------------------------------------------------------------------------------------------


def test_register_reg_writes_a_spatial_registration_that_reads_back(capsys, files, tmp_path) -> None:
    target = tmp_path / "out_reg.dcm"
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--json", "--no-rotation",
                           "--reg", target)
    assert status == 0, err
    payload = json.loads(out)
    assert payload["ok"] is True and payload["reg"] == str(target)
    ds = pydicom.dcmread(target)
    assert ds.Modality == "REG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.1"
    referenced = {item.ReferencedImageSequence[0].ReferencedSOPInstanceUID for item in ds.RegistrationSequence}
    assert referenced == {payload["reference_uid"], payload["frame_uid"]}
    matrix = np.array(ds.RegistrationSequence[1].MatrixRegistrationSequence[0].MatrixSequence[0]
                      .FrameOfReferenceTransformationMatrix, dtype=float).reshape(4, 4)
    # rotation not estimated: none in the matrix; HFS at gantry 0: image x is patient left (+x LPS),
    # image y (rows, down) is inferior; T takes the frame back onto the reference: -(dx, 0, -dy)
    assert matrix[:3, :3] == pytest.approx(np.eye(3), abs=1e-9)
    assert matrix[:3, 3] == pytest.approx([-payload["dx_mm"], 0.0, payload["dy_mm"]], abs=1e-6)
    assert payload["dx_mm"] == pytest.approx(DX_MM, abs=0.1)
    assert any("rotation not estimated" in w for w in payload["reg_warnings"])
    comment = ds.RegistrationSequence[1].MatrixRegistrationSequence[0].FrameOfReferenceTransformationComment
    assert comment.endswith("rot not estimated") and len(comment) <= 64


def test_register_reg_without_patient_position_names_the_flag_before_registering(capsys, files, tmp_path,
                                                                                monkeypatch) -> None:
    """A REG these images cannot give is said at once, before a registration whose JSON would read ok (a new user's
    trial: "ok": true on stdout, exit 2 and the reason on stderr only)."""
    import portalign.registration

    def no_registration(*args, **kwargs):
        raise AssertionError("registered although the REG could not be written")

    monkeypatch.setattr(portalign.registration, "prepare_reference", no_registration)
    target = tmp_path / "no.dcm"
    status, out, err = run(capsys, "register", files["ref_nopos"], files["frame_nopos"], "--reg", target)
    assert status == 2 and out == ""
    assert err.startswith("portalign register: error: ") and err.count("\n") == 1
    assert "no PatientPosition in the images; pass --patient-position" in err and "patient_position" not in err
    assert not target.exists()
    status, out, err = run(capsys, "register", files["ref_nopos"], files["frame_nopos"], "--reg", target, "--json")
    assert status == 2
    assert json.loads(out) == {"ok": False, "error": "invalid_geometry", "detail": err.split("error: ", 1)[1].strip(),
                               "dx_mm": None, "dy_mm": None, "rotation_deg": None, "score": None,
                               "reason": err.split("error: ", 1)[1].strip()}


def test_register_reg_is_not_written_for_a_result_that_is_not_ok(capsys, files, tmp_path) -> None:
    target = tmp_path / "bad.dcm"
    status, out, err = run(capsys, "register", files["ref"], files["frame_g90"], "--json", "--reg", target)
    assert status == 0
    payload = json.loads(out)
    assert payload["reg"] is None and not target.exists()
    assert payload["reg_not_written"].startswith("the result is not ok (different views")
    assert err.startswith(f"portalign register: --reg {target}: not written: the result is not ok")


def test_register_overlay_says_where_and_a_bad_path_is_an_error_after_the_result(capsys, files, tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="--overlay needs matplotlib")
    target = tmp_path / "review.png"
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--overlay", target)
    assert status == 0 and err == ""
    assert f"review picture: {target}" in out and target.is_file()
    missing = tmp_path / "no_such_folder" / "review.png"
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--overlay", missing)
    assert status == 2
    assert "dx = +3." in out  # printed before the error
    assert err.startswith(f"portalign register: error: --overlay {missing}: not written")
    assert err.count("\n") == 1


def test_register_overlay_without_matplotlib_names_the_extra_before_registering(capsys, files, tmp_path,
                                                                               monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--json", "--overlay", tmp_path / "o.png")
    assert status == 2
    payload = json.loads(out)  # not a result whose "ok" is true beside an exit status of 2
    assert payload["ok"] is False and payload["error"] == "missing_dependency" and payload["dx_mm"] is None
    assert 'pip install "portalign[overlay]"' in err and "matplotlib" in err and err.count("\n") == 1


def test_register_overlay_that_cannot_be_written_says_so_in_the_json(capsys, files, tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="--overlay needs matplotlib")
    missing = tmp_path / "no_such_folder" / "review.png"
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--json", "--overlay", missing)
    assert status == 2
    payload = json.loads(out)  # the result stands; what became of the picture is in the object a script reads
    assert payload["ok"] is True and payload["overlay"] is None
    assert payload["overlay_not_written"] and payload["overlay_not_written"] in err


def test_register_text_timing_says_what_was_timed(capsys, files) -> None:
    status, out, _ = run(capsys, "register", files["ref"], files["frame"], "--repeat", "3")
    assert status == 0
    assert re.search(r"time: \d+\.\d\d ms, median of 3 frames; first frame \d+ ms \(compile / cache load", out), out
    status, out, _ = run(capsys, "register", files["ref"], files["frame"])
    assert re.search(r"time: \d+ ms for the only frame, the first of its geometry \(includes compile / cache load",
                     out), out


def test_cli_errors_name_flags_not_keywords(capsys, files) -> None:
    status, _, err = run(capsys, "register", files["ref"], files["frame"], "--field-margin-mm", "-1")
    assert status == 2
    assert "--field-margin-mm must not be negative" in err and "field_margin_mm" not in err


def test_the_agreement_a_refusal_names_is_a_flag(capsys, files) -> None:
    """A pair refused as disagreeing named ``agreement_mm=1.5``, an option the command line could not set: register
    has ``--agreement-mm``, the refusal names it, and a bad value is refused naming it."""
    status, out, _ = run(capsys, "register", files["ref"], files["frame"], "--json", "--agreement-mm", "0.0001")
    result = json.loads(out)
    assert status == 0 and result["ok"] is False
    assert re.fullmatch(r"edge and mutual-information optima disagree by \d+\.\d\d mm \(--agreement-mm=0\.0001\)",
                        result["reason"]), result["reason"]
    status, out, _ = run(capsys, "register", files["ref"], files["frame"], "--json")
    assert json.loads(out)["ok"] is True
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--agreement-mm", "-1", "--json")
    assert status == 2 and "--agreement-mm must be positive; got -1.0" in err and "agreement_mm" not in err
    # a value out of range is a usage error, as one that does not parse (it was "error": "error")
    payload = json.loads(out)
    assert payload["error"] == "usage" and payload["detail"] == "--agreement-mm must be positive; got -1.0"


@pytest.mark.parametrize("command", ["register", "couch"])
def test_an_unsupported_patient_position_is_a_usage_error_naming_the_flag(capsys, files, command) -> None:
    """A typo was taken silently (register), refused only after registering (--reg) or made a warning (couch)."""
    if command == "register":
        argv = ["register", files["ref"], files["frame"]]
    else:
        argv = ["couch", "--pair", files["ref"], files["frame"], "--pair", files["ref"], files["frame"]]
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv] + ["--patient-position", "XYZ"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    assert err.startswith(f"usage: portalign {command}")
    assert "argument --patient-position: 'XYZ' is not supported; use one of HFS, FFS, HFP, FFP" in err


def test_python_dash_m_portalign_runs_the_command() -> None:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "portalign", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("portalign "), (done.stdout, done.stderr)


def test_scp_help_without_pynetdicom_says_so(capsys, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    with pytest.raises(SystemExit):
        main(["scp", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert 'It needs pynetdicom, which is not installed: pip install "portalign[service]"' in out


def test_watch_lines_have_no_negative_zero() -> None:
    from portalign._cli_options import file_line

    line = file_line("f.dcm", [{"status": "ok", "result": {"dx_mm": -0.001, "dy_mm": 1.0, "rotation_deg": -0.004}}])
    assert line == "f.dcm: dx +0.00 mm, dy +1.00 mm, rotation +0.00 deg, ok"
    # a refused match: the verdict first, its numbers marked as no shift to apply (a new user's trial read them bare)
    refused = file_line("f.dcm", [{"status": "not_ok", "result": {"dx_mm": -2.02, "dy_mm": -10.26, "rotation_deg": None,
                                                                  "reason": "ambiguous"}}])
    assert refused == ("f.dcm: NOT OK (ambiguous); the refused match, not a shift to apply: dx -2.02 mm, dy -10.26 mm, "
                       "rotation not estimated")
    unmeasured = file_line("f.dcm", [{"status": "not_ok", "result": {"dx_mm": None, "dy_mm": None, "reason": "blank"}}])
    assert unmeasured == "f.dcm: NOT OK (blank); dx, dy not measured"


def test_shown_numbers_have_no_negative_zero() -> None:
    from portalign._cli_options import shown

    assert f"{shown(-0.001):+.2f}" == "+0.00" and f"{shown(-0.006):+.2f}" == "-0.01"
    assert f"{shown(-0.04, 1):+.1f}" == "+0.0"


def test_as_flags_maps_every_option_keyword() -> None:
    parser = build_parser()
    register = parser._subparsers._group_actions[0].choices["register"]
    text = cli.as_flags("pass patient_position= (HFS); (max_shift_mm); set allow_view_mismatch=True "
                        "(--allow-view-mismatch); rotation_deg stays", register)
    assert text == "pass --patient-position (HFS); (--max-shift-mm); set --allow-view-mismatch; rotation_deg stays"


def test_as_flags_maps_a_plain_option_keyword_with_its_quoted_value() -> None:
    """fieldcheck said "use planned='reference'" on the command line (a new user's trial): "--planned reference"; a
    plain word without a quoted value is left alone ("the planned field")."""
    parser = build_parser()
    fieldcheck = parser._subparsers._group_actions[0].choices["fieldcheck"]
    text = cli.as_flags("no planned jaw positions; use planned='reference' to compare with the planned field", fieldcheck)
    assert text == "no planned jaw positions; use --planned reference to compare with the planned field"


def test_register_mismatched_views_and_the_override(capsys, files) -> None:
    status, out, _ = run(capsys, "register", files["ref"], files["frame_g90"], "--json")
    payload = json.loads(out)
    assert status == 0 and payload["ok"] is False
    assert "gantry angle 0 deg" in payload["reason"] and "90 deg in the frame" in payload["reason"]
    assert "--allow-view-mismatch" in payload["reason"] and "allow_view_mismatch" not in payload["reason"]
    status, out, _ = run(capsys, "register", files["ref"], files["frame_g90"], "--json", "--allow-view-mismatch")
    payload = json.loads(out)
    assert payload["ok"] is True, payload["reason"]
    assert payload["dx_mm"] == pytest.approx(DX_MM, abs=0.1)


def test_register_images_that_do_not_overlap(capsys, files) -> None:
    status, out, _ = run(capsys, "register", files["ref"], files["frame_far"], "--json")
    payload = json.loads(out)
    assert status == 0 and payload["ok"] is False
    assert payload["reason"].startswith("no common anatomy"), payload["reason"]
    # an optimum over no common anatomy is not a measurement: null, and "not measured" in the text
    assert payload["dx_mm"] is None and payload["dy_mm"] is None and payload["rotation_deg"] is None
    status, out, _ = run(capsys, "register", files["ref"], files["frame_far"])
    # the verdict first, as every refused match's text output begins
    assert status == 0 and out.startswith("NOT OK: no common anatomy"), out
    assert out.splitlines()[1] == "dx, dy not measured   rotation not estimated"
    # nor is anything said about the optimum or its lever arm (a new user's trial: "optimum: mutual information
    # (weak edge match ...)" and a lever-arm warning followed the refusal)
    assert not [line for line in out.splitlines() if line.startswith("optimum:") or "lever arm" in line], out


# ---------------------------------------------------------------------------------------------
# --invert, info
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["register", "info", "couch", "watch", "scp", "fieldcheck", "serve"])
def test_every_command_that_reads_images_takes_invert(command: str) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = {o for a in sub._actions for o in a.option_strings}
    assert {"--invert", "--no-invert"} <= flags


def _field_image(inverted: bool, **tags) -> np.ndarray:
    img = np.full((120, 120), 200.0)
    img[30:90, 35:95] = 3000.0 + 300.0 * anatomy(120, seed=4)[30:90, 35:95]
    return (img.max() + img.min() - img) if inverted else img


def test_info_says_likely_inverted_and_invert_fixes_it(capsys, tmp_path) -> None:
    path = write_rt_image(make_rt_image(_field_image(inverted=True), spacing=1.0, sid=1000.0, sad=1000.0,
                                        position="centre", PixelIntensityRelationshipSign=1), tmp_path / "iview.dcm")
    status, out, _ = run(capsys, "info", path, "--json")
    info = json.loads(out)
    # the header says higher values are more radiation, so registration (and info's field) takes the dark field for
    # an attenuating object; info says the values are likely inverted and how to fix it
    assert status == 0 and info["likely_inverted"] is True and info["field_detected"] is False
    assert info["field"].startswith("no field edge in the image: the region found is darker")
    status, out, _ = run(capsys, "info", path)
    assert "likely inverted" in out and "--invert" in out
    status, out, _ = run(capsys, "info", path, "--json", "--invert")
    fixed = json.loads(out)
    assert fixed["likely_inverted"] is False and fixed["field_detected"] is True


def test_likely_inverted_is_null_where_no_field_edge_can_tell(capsys, tmp_path) -> None:
    """A new user's trial: an Elekta iView picket fence, stored inverted, was said ``likely_inverted: False`` (no field
    edge was found to judge by). Where nothing can tell, the value is null, "not judged", and the note says why."""
    open_beam = 3000.0 + 300.0 * anatomy(120, seed=4)  # an open field: anatomy everywhere, no field edge
    path = write_rt_image(make_rt_image(open_beam, spacing=1.0, sid=1000.0, sad=1000.0, position="centre",
                                        PixelIntensityRelationshipSign=1), tmp_path / "open.dcm")
    status, out, _ = run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert status == 0 and info["field_detected"] is False and info["likely_inverted"] is None
    assert info["intensity_note"] == ("likely_inverted not judged (null): no field edge in the image to compare the "
                                      "field with its surroundings")
    status, out, _ = run(capsys, "info", path)
    assert "likely_inverted: not judged\n" in out
    # the maker's habit is added where it applies
    elekta = write_rt_image(make_rt_image(open_beam, spacing=1.0, sid=1000.0, sad=1000.0, position="centre",
                                          Manufacturer="ELEKTA"), tmp_path / "iview.dcm")
    status, out, _ = run(capsys, "info", elekta, "--json")
    assert json.loads(out)["intensity_note"].endswith("iView stores its images inverted without saying so; if the "
                                                      "radiation shows dark, read it with --invert")
    # a field found either way is judged: bright (False) or dark (True, the earlier test)
    status, out, _ = run(capsys, "info", write_rt_image(make_rt_image(_field_image(inverted=False), spacing=1.0,
                                                                      sid=1000.0, sad=1000.0, position="centre"),
                                                        tmp_path / "bright.dcm"), "--json")
    assert json.loads(out)["likely_inverted"] is False


def test_the_iview_picket_fence_is_not_judged_inverted_or_not(capsys) -> None:
    """The trial's file: its pickets are darker than the leaves' transmission (stored inverted), no field edge found."""
    path = _real_file("pylinac", "picket_fence", "Elekta_iView_PF_pickets_near_edges.dcm")
    status, out, _ = run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert status == 0 and info["likely_inverted"] is None and "read it with --invert" in info["intensity_note"]


def test_info_text_rounds_explains_null_angles_shows_the_field_and_names_a_kv_image(capsys, tmp_path) -> None:
    path = write_rt_image(make_rt_image(_field_image(inverted=False), spacing=0.4, sid=1500.0, sad=1000.0,
                                        position="centre", gantry=None, KVP=120), tmp_path / "kv.dcm")
    status, out, _ = run(capsys, "info", path)
    assert status == 0
    lines = dict(line.split(": ", 1) for line in out.splitlines() if not line.startswith("note"))
    assert lines["isocentre_spacing_mm"] == "[0.267, 0.267]"  # 0.4 / 1.5 rounded
    assert lines["gantry_deg"] == "unknown"
    assert re.search(r"note: gantry_deg, collimator_deg, couch_deg unknown \(null in --json\): the file does not carry "
                     r"them \(GantryAngle, BeamLimitingDeviceAngle, PatientSupportAngle\)", out)
    assert lines["image"].startswith("kV image (120 kVp)") and "portal" not in lines["image"]
    assert lines["kind"] == "kv"
    assert re.match(r"x -\d+\.\d\.\.\d+\.\d mm, y -\d+\.\d\.\.\d+\.\d mm", lines["field"]), lines["field"]


def test_info_text_shows_a_tag_s_control_characters_escaped(capsys, tmp_path) -> None:
    """A SOP Instance UID holding a terminal escape (a new user's mutated file) was printed raw, colouring the terminal;
    it is shown escaped, as --json does."""
    ds = make_rt_image(_field_image(inverted=False), spacing=0.4, sid=1500.0, sad=1000.0, position="centre")
    import warnings

    with warnings.catch_warnings():  # pydicom warns of the invalid UID it writes, as a damaged file has it
        warnings.simplefilter("ignore", UserWarning)
        ds.SOPInstanceUID = "1.2\x1b[31m.3"
        path = write_rt_image(ds, tmp_path / "escape.dcm")
    status, out, _ = run(capsys, "info", path)
    assert status == 0 and "\x1b" not in out
    assert "sop_instance_uid: 1.2\\x1b[31m.3" in out


def test_info_names_only_the_missing_angle_rounds_angles_and_calls_2_5_mv_an_imaging_beam(capsys, tmp_path) -> None:
    """A new user's trial: the note named all three tags when one was missing, a collimator at 0.000142 deg was
    printed so (and, rounded, one at 359.9998 deg as 360), and TrueBeam's 2.5 MV imaging beam was called a treatment
    beam."""
    path = write_rt_image(make_rt_image(_field_image(inverted=False), spacing=0.4, sid=1500.0, sad=1000.0,
                                        position="centre", gantry=359.9871, BeamLimitingDeviceAngle=359.9998,
                                        KVP=2500), tmp_path / "imaging.dcm")
    status, out, _ = run(capsys, "info", path)
    assert status == 0
    lines = dict(line.split(": ", 1) for line in out.splitlines() if not line.startswith("note"))
    assert lines["gantry_deg"] == "359.99" and lines["collimator_deg"] == "0" and lines["couch_deg"] == "unknown"
    assert lines["image"] == "portal image (2.5 MV imaging beam: treatment beams are 4 MV and above)"
    (note,) = [line for line in out.splitlines() if "does not carry" in line]
    assert note == ("note: couch_deg unknown (null in --json): the file does not carry it (PatientSupportAngle); "
                    "views are then not compared on it")
    status, out, _ = run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert info["collimator_deg"] == pytest.approx(359.9998) and info["couch_deg"] is None  # --json keeps the value


# ---------------------------------------------------------------------------------------------
# --help, typos
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_info_calls_a_kv_labelled_image_without_kvp_a_kv_image(capsys) -> None:
    leeds = _real_file("pylinac", "planar_imaging", "leeds_kv.dcm")
    status, out, _ = run(capsys, "info", leeds, "--json")
    info = json.loads(out)
    assert status == 0 and info["kind"] == "kv" and info["image"].startswith("kV image (no KVP recorded")


@pytest.mark.real_data
def test_register_says_when_the_frame_is_a_kv_image(capsys, demo_pair) -> None:
    """A kV image given as the frame was registered with no word of what it is (``info`` said so): a new user's trial."""
    leeds = _real_file("pylinac", "planar_imaging", "leeds_kv.dcm")
    status, out, _ = run(capsys, "register", leeds, leeds, "--json")
    warnings = json.loads(out)["warnings"]
    assert status == 0 and ("leeds_kv.dcm: a kV image (no KVP recorded; RT Image Label 'KV'), taken through the imaging "
                            "beam, not the treatment beam; registered as a frame all the same") in warnings
    status, out, _ = run(capsys, "register", demo_pair["ref"], demo_pair["frame"], "--json")
    assert status == 0 and not any("kV image" in w for w in json.loads(out)["warnings"])


def test_every_option_has_a_description_with_its_default() -> None:
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no description"
            if not action.option_strings or action.required or isinstance(action, argparse._StoreTrueAction):
                continue
            text = formatter._get_help_string(action)
            assert "default" in text.lower(), f"{name} {action.option_strings}: no default in {text!r}"


def test_a_typo_shows_the_subcommands_usage(capsys, files) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["register", str(files["ref"]), str(files["frame"]), "--methd", "mi"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("usage: portalign register") and "unrecognized arguments: --methd mi" in err


# ---------------------------------------------------------------------------------------------
# watch
# ---------------------------------------------------------------------------------------------


def test_watch_prints_a_line_per_file_and_once_fails_when_a_file_failed(capsys, files, tmp_path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a_frame.dcm").write_bytes(files["frame"].read_bytes())
    (folder / "b_garbage.dcm").write_bytes(b"not a DICOM file at all")
    status, out, err = run(capsys, "watch", folder, "--results", tmp_path / "r.jsonl", "--reference", files["ref"],
                           "--once", "--poll", "0.05")
    assert status == 1, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    match = re.match(r"a_frame\.dcm: dx ([-+]\d+\.\d\d) ± \d\.\d\d mm, dy ([-+]\d+\.\d\d) ± \d\.\d\d mm, "
                     r"rotation [-+]\d\.\d\d ± \d\.\d\d deg, ok$", lines[0])
    assert match, lines[0]
    assert (float(match[1]), float(match[2])) == pytest.approx((DX_MM, DY_MM), abs=0.1)
    assert lines[1].startswith("b_garbage.dcm: FAILED (b_garbage.dcm: cannot be read as an RT Image")
    assert lines[1].count("b_garbage.dcm") == 2  # the line's and the message's; the reader's own naming is not repeated
    (folder / "c_frame.dcm").write_bytes(files["frame"].read_bytes())
    status, out, _ = run(capsys, "watch", folder, "--results", tmp_path / "r.jsonl", "--reference", files["ref"],
                         "--once", "--poll", "0.05")
    assert status == 0 and out.startswith("c_frame.dcm: dx +3.")


def test_watch_refuses_a_folder_that_does_not_exist_unless_told_to_create_it(capsys, files, tmp_path) -> None:
    """A typo in the path watched a new empty folder: "0 done, 0 failed", exit 0."""
    missing = tmp_path / "inbox-typo"
    status, out, err = run(capsys, "watch", missing, "--results", tmp_path / "r.jsonl", "--once")
    assert status == 2 and out == "" and not missing.exists()
    assert err.strip() == f"portalign watch: {missing} does not exist; check the path (or pass --create to make it)"
    status, out, _ = run(capsys, "watch", missing, "--results", tmp_path / "r.jsonl", "--once", "--create",
                         "--poll", "0.05")
    assert status == 0 and missing.is_dir() and (missing / "done").is_dir()


# ---------------------------------------------------------------------------------------------
# the review picture, read_rt_image's keywords
# ---------------------------------------------------------------------------------------------


def _figure_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every text drawn on the figure that write_overlay saves."""
    from matplotlib.figure import Figure

    texts: list[str] = []
    original = Figure.savefig

    def recording(fig, *args, **kwargs):  # type: ignore[no-untyped-def]
        texts.append(fig._suptitle.get_text())
        for ax in fig.axes:
            texts.append(ax.get_title())
            texts.extend(t.get_text() for t in ax.texts)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return texts


def test_overlay_names_files_angles_date_tiles_orientation_and_rotation_not_estimated(capsys, files, tmp_path,
                                                                                      monkeypatch) -> None:
    pytest.importorskip("matplotlib", reason="--overlay needs matplotlib")
    texts = _figure_texts(monkeypatch)
    target = tmp_path / "review.png"
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--no-rotation", "--overlay", target)
    assert status == 0, err
    title = texts[0]
    assert "reference: ref.dcm (portal image, gantry 0.0 deg, 2026-01-02)" in title
    assert "frame: frame.dcm (portal image, gantry 0.0 deg, 2026-01-02)" in title
    assert "rotation not estimated" in title and "rotation = +0.00" not in title
    assert "checkerboard: squares alternate moved reference (R) and frame (F)" in texts
    assert {"R", "F"} <= set(texts)  # the squares at the beam axis are lettered
    # HFS at gantry 0, seen from the source: patient left on the right, superior at the top
    assert texts.count("L") == texts.count("S") == texts.count("I") == 2  # each edge label on both panels
    assert texts.count("R") == 3  # patient right on both panels, and the reference square


def test_edge_labels_follow_gantry_and_patient_position() -> None:
    import portalign
    from portalign.overlay import edge_labels

    pixels = anatomy(32, seed=1)
    hfs90 = portalign.Image.from_array(pixels, pixel_spacing_mm=1.0, gantry_deg=90.0, patient_position="HFS")
    # gantry 90: the beam comes from the patient's left (HFS); image +x points down to the floor: posterior
    assert edge_labels(hfs90) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    iec = portalign.Image.from_array(pixels, pixel_spacing_mm=1.0, gantry_deg=0.0)
    assert edge_labels(iec) == {"left": "-X (IEC)", "right": "+X (IEC)", "top": "+Y (IEC)", "bottom": "-Y (IEC)"}
    assert edge_labels(portalign.Image.from_array(pixels, pixel_spacing_mm=1.0)) is None


def test_read_rt_image_documents_its_keyword_options() -> None:
    import inspect

    import portalign

    signature = inspect.signature(portalign.read_rt_image)
    keywords = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == ["frame", "pixel_spacing_mm", "sid_mm", "sad_mm", "invert"]
    doc = portalign.read_rt_image.__doc__
    for name in ("frame : ", "pixel_spacing_mm : ", "sid_mm, sad_mm : ", "invert : "):
        assert name in doc


def test_info_names_the_mv_energy_that_varian_stores_as_kvp(capsys, tmp_path) -> None:
    path = write_rt_image(make_rt_image(_field_image(inverted=False), spacing=0.4, sid=1500.0, sad=1000.0,
                                        position="centre", KVP=6000), tmp_path / "mv.dcm")
    status, out, _ = run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert status == 0 and info["image"] == "portal image (6 MV treatment beam)" and info["kind"] == "portal"
    assert info["patient_position"] is None  # unknown: null, as every value not recorded
    status, out, _ = run(capsys, "info", path)
    assert "patient_position: unknown" in out.splitlines()
    # the tag as stored (JSON: 6000), said in MV in the text (a new user read "kvp: 10000" as a fault)
    assert info["kvp"] == 6000
    assert "kvp: 6000 (6 MV: the KVP tag holds an MV beam's energy in kV)" in out.splitlines()


def test_the_image_kind_is_said_alike_by_info_and_the_review_picture() -> None:
    from portalign.image import ImageInfo, beam_kind
    from portalign.overlay import _describe

    mv = ImageInfo(source="mv.dcm", kind="portal", gantry_deg=90.0, extra={"kvp": 6000.0})  # Varian: 6 MV as KVP
    assert beam_kind(mv) == "portal image (6 MV)"
    assert beam_kind(ImageInfo(kind="portal", extra={"kvp": 120.0})) == "kV image (120 kVp)"
    assert beam_kind(ImageInfo(kind="drr")) == "DRR" and beam_kind(ImageInfo(kind="portal")) == "portal image"
    # no KVP: a label naming kV says a kV image (pylinac's leeds_kv.dcm: RTImageLabel "KV"), else the energy is unknown
    assert beam_kind(ImageInfo(kind="portal", extra={"rt_image_label": "KV"})).startswith("kV image (no KVP recorded")
    assert beam_kind(ImageInfo(kind="portal", extra={"rt_image_label": "MV1"})) == "portal image"
    from portalign import Image

    image = Image(np.zeros((8, 8), np.float32), (1.0, 1.0), (3.5, 3.5), mv)
    assert _describe(image) == "mv.dcm (portal image (6 MV), gantry 90.0 deg, date unknown)"
    # collimator and couch where recorded and turned (a trial's small field: collimator 90, couch 45, unsaid)
    from dataclasses import replace

    turned = replace(image, info=replace(mv, collimator_deg=90.0, couch_deg=315.0,
                                         extra={"kvp": 6000.0, "acquisition_date": "20200316"}))
    assert _describe(turned) == ("mv.dcm (portal image (6 MV), gantry 90.0 deg, collimator 90.0 deg, couch 315.0 deg, "
                                 "2020-03-16)")
    assert _describe(replace(image, info=replace(mv, collimator_deg=0.0, couch_deg=0.0))) == _describe(image)


# ---------------------------------------------------------------------------------------------
# a tenth-session new user's trial
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's DRR and field-shaped MV frame at 96 x 128 pixels, as DICOM files."""
    from portalign.demo import make_demo_pair
    from portalign.demo import write_rt_image as write_demo_image

    folder = tmp_path_factory.mktemp("demo_pair")
    reference, frame, _ = make_demo_pair(detector_shape=(96, 128), detector_spacing_mm=3.136)
    return {"ref": write_demo_image(reference, folder / "drr.dcm", label="DRR", image_type="DRR"),
            "frame": write_demo_image(frame, folder / "mv.dcm", label="MV", image_type="PORTAL")}


def test_a_frame_with_no_usable_pixels_measures_nothing(capsys, demo_pair) -> None:
    """A field-edge band wider than half the field left 0 pixels: the score (-1), the edge score (0) and a 0 mm lever
    arm were reported as if measured, and the text said which optimum was reported."""
    status, out, _ = run(capsys, "register", demo_pair["ref"], demo_pair["frame"], "--field-margin-mm", "60", "--json")
    payload = json.loads(out)
    assert status == 0 and payload["ok"] is False and payload["reason"].startswith("too little of the frame is usable")
    assert payload["dx_mm"] is None and payload["rotation_deg"] is None and payload["score"] is None
    details = payload["details"]
    for key in ("edge_score", "match_significance", "edge_score_selection", "rotation_support_mm", "final_metric",
                "final_metric_why"):
        assert details[key] is None, key
    assert not any("lever arm" in w for w in payload["warnings"])
    status, out, _ = run(capsys, "register", demo_pair["ref"], demo_pair["frame"], "--field-margin-mm", "60")
    assert status == 0 and "\nscore not measured  method auto" in out and "optimum:" not in out


def test_info_does_not_look_for_a_field_in_a_drr(capsys, demo_pair) -> None:
    """A DRR's "detected field" was the body's outline; registration never looks for one there."""
    status, out, _ = run(capsys, "info", demo_pair["ref"], "--json")
    info = json.loads(out)
    assert status == 0 and info["kind"] == "drr" and info["field_detected"] is False and info["field_box_mm"] is None
    assert info["field"].startswith("not looked for: a DRR has no radiation field")
    status, out, _ = run(capsys, "info", demo_pair["frame"], "--json")
    assert json.loads(out)["field_detected"] is True  # the MV frame's field is found as before


def test_watch_refuses_a_results_folder_that_does_not_exist_unless_told_to_create_it(capsys, files, tmp_path) -> None:
    """A typo in --results made its folder and wrote the journal there, exit 0."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    results = tmp_path / "no-such-folder" / "r.jsonl"
    status, out, err = run(capsys, "watch", inbox, "--results", results, "--once")
    assert status == 2 and out == "" and not results.parent.exists()
    assert err.strip() == (f"portalign watch: {results}: the results journal's folder {results.parent} does not "
                           "exist; check the path (or create the folder); --create makes it")
    status, _, _ = run(capsys, "watch", inbox, "--results", results, "--once", "--create", "--poll", "0.05")
    assert status == 0 and results.is_file()
    status, _, err = run(capsys, "watch", files["ref"], "--results", tmp_path / "r.jsonl", "--once")
    assert status == 2 and err.strip() == (f"portalign watch: {files['ref']} is a file, not a folder; give the folder "
                                           "the files land in")


def test_an_unknown_patient_position_is_null_in_json(capsys, files) -> None:
    status, out, _ = run(capsys, "info", files["ref_nopos"], "--json")
    assert status == 0 and json.loads(out)["patient_position"] is None


@pytest.mark.real_data
def test_info_names_the_maker_and_says_an_elekta_image_may_need_invert(capsys) -> None:
    """pylinac's Elekta iView picket fence: no field edge to judge the sign by, and no sign tag; info said nothing."""
    iview = _real_file("pylinac", "picket_fence", "Elekta_iView_PF_pickets_near_edges.dcm")
    status, out, _ = run(capsys, "info", iview, "--json")
    info = json.loads(out)
    assert status == 0 and info["manufacturer"] == "ELEKTA" and info["model"].startswith("Elekta iView")
    assert info["intensity_note"].startswith("likely_inverted not judged (null): no field edge in the image")
    assert "; an Elekta image without PixelIntensityRelationshipSign: iView stores" in info["intensity_note"]
    status, out, _ = run(capsys, "info", iview, "--invert", "--json")
    assert json.loads(out)["intensity_note"] is None  # told what to do: nothing more to say (null, never "")


def test_fieldcheck_errors_name_its_flags(capsys, demo_pair, tmp_path) -> None:
    """fieldcheck said "pass sid_mm=" and "tolerance_mm must be..." (keywords), and had no --sid-mm to pass."""
    status, _, err = run(capsys, "fieldcheck", demo_pair["ref"], demo_pair["frame"], "--tolerance-mm", "nan")
    assert status == 2 and err.strip() == ("portalign fieldcheck: error: --tolerance-mm must be a positive number of "
                                           "mm, at most 100, got nan")
    ds = pydicom.dcmread(demo_pair["frame"])
    del ds.RTImageSID
    no_sid = tmp_path / "no_sid.dcm"
    ds.save_as(no_sid)
    status, _, err = run(capsys, "fieldcheck", demo_pair["ref"], no_sid)
    assert status == 2 and err.strip().endswith("has no RTImageSID (3002,0026); pass --sid-mm")
    status, _, err = run(capsys, "fieldcheck", demo_pair["ref"], no_sid, "--sid-mm", "1500")
    assert "RTImageSID" not in err  # read with the flag's SID (the demo DRR has no planned field: that error instead)


# ---------------------------------------------------------------------------------------------
# eleventh session: a typo named before a missing flag, a flag that would do nothing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, said", [
    # --results is missing too: the typo first, and the option it is closest to
    (["watch", "--onec", "DIR"], "unrecognized arguments: --onec (did you mean --once?)"),
    (["watch", "--onc"], "unrecognized arguments: --onc (did you mean --once?)"),  # no abbreviations (allow_abbrev)
    (["watch"], "the following arguments are required: DIR, --results"),
    (["register", "--metod=mi"], "unrecognized arguments: --metod=mi (did you mean --method?)"),
    (["register", "a", "b", "--max-shift", "5"], "unrecognized arguments: --max-shift 5 (did you mean --max-shift-mm?)"),
    (["register", "a", "b", "--metod", "mi", "--jsn"],
     "unrecognized arguments: --metod mi --jsn (did you mean --method for --metod, --json for --jsn?)"),
    (["register", "a", "b", "--frobnicate"], "unrecognized arguments: --frobnicate"),  # nothing close: no guess
    (["register", "--max-shift-mm", "-5"], "the following arguments are required: reference, frame"),
])
def test_a_mistyped_option_is_named_before_a_missing_required_one(capsys, argv, said) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith(f"usage: portalign {argv[0]}") and err.strip().endswith(said)


def test_patient_position_without_reg_is_refused_before_registering(capsys, files) -> None:
    """It only labels the REG object; given alone it was taken and did nothing."""
    status, out, err = run(capsys, "register", files["ref"], files["frame"], "--patient-position", "FFS")
    assert status == 2 and out == ""
    assert err.strip() == ("portalign register: error: --patient-position FFS is used only by the REG object: pass --reg OUT.dcm "
                           "too, or leave --patient-position out (the shift itself does not depend on it)")


def test_register_refuses_two_machines_phantom_images_until_told(capsys) -> None:
    """TrueBeam and aS500 Winston-Lutz images (PatientIDs 'VMS.XI.Service' and '11dbecf578') registered ok."""
    truebeam = _real_file("pylinac", "wl_shift_truebeam", "cardinal", "wl-3-30-18_card-002.dcm")
    as500 = _real_file("pylinac", "wl_demo_as500", "gantry0.dcm")
    status, out, _ = run(capsys, "register", truebeam, as500, "--json")
    result = json.loads(out)
    assert status == 0 and result["ok"] is False
    assert result["reason"].startswith("different patients: PatientID 'VMS.XI.Service' in the reference")
    assert result["reason"].endswith("set --allow-patient-mismatch")
    status, out, _ = run(capsys, "register", truebeam, as500, "--json", "--allow-patient-mismatch")
    assert json.loads(out)["ok"] is True


def test_register_refuses_a_mirrored_frame_and_names_the_flag(capsys, demo_pair, tmp_path) -> None:
    ds = pydicom.dcmread(demo_pair["frame"])
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    mirrored = tmp_path / "mirrored.dcm"
    ds.save_as(mirrored)
    status, out, _ = run(capsys, "register", demo_pair["ref"], mirrored, "--json")
    result = json.loads(out)
    assert status == 0 and result["ok"] is False
    assert result["reason"].startswith("flipped: the frame matches the reference better flipped left-right")
    assert result["reason"].endswith("or, for anatomy that matches as well flipped, set --mirror-check never")
    status, out, _ = run(capsys, "register", demo_pair["ref"], mirrored, "--json", "--mirror-check", "never")
    assert json.loads(out)["details"]["mirror_check"] is None


def test_a_refused_frame_carries_no_made_up_shift(capsys, demo_pair, tmp_path) -> None:
    """A noise frame was "blank (beam off?)" with dx -28.3 mm (outside the search range); unrelated images gave a
    "no match" with a shift: an optimum that measures nothing is null, its score (measured) kept."""
    ds = pydicom.dcmread(demo_pair["frame"])
    noise = np.random.default_rng(5).integers(1000, 3000, ds.pixel_array.shape).astype(ds.pixel_array.dtype)
    ds.PixelData = noise.tobytes()
    noisy = tmp_path / "noise.dcm"
    ds.save_as(noisy)
    status, out, _ = run(capsys, "register", demo_pair["ref"], noisy, "--json")
    result = json.loads(out)
    assert status == 0 and result["ok"] is False and result["reason"].startswith("frame is blank")
    assert result["dx_mm"] is None and result["dy_mm"] is None and result["rotation_deg"] is None
    assert result["details"]["candidates"] == [] and result["score"] is not None
    # a match below the score floor is none: checked before the search range (a grid corner's "optimum" was
    # reported as outside the range, with its numbers)
    base = anatomy(256, seed=11)
    noisy_copy = np.roll(base, 2, axis=1) + np.random.default_rng(1).normal(0.0, 0.2 * base.std(), base.shape)
    weak = portalign.register(portalign.Image.from_array(base, pixel_spacing_mm=1.0, kind="drr"),
                              portalign.Image.from_array(noisy_copy, pixel_spacing_mm=1.0),
                              portalign.RegistrationOptions(min_score=0.99), backend="cpu")
    assert weak.ok is False and weak.reason.startswith("no match: edge correlation"), weak.reason
    # ...with its likely causes (a new user's trial met "edge correlation -0.129 is below 0.05" and nothing more)
    assert weak.reason.endswith(" is below 0.99 (min_score): nothing in the frame matches the reference; another "
                                "patient, beam or view, a wrong scale in one header (RTImageSID, RadiationMachineSAD, "
                                "ImagePlanePixelSpacing), or too little structure for the noise"), weak.reason
    assert weak.dx_mm is None and weak.details["edge_score"] is not None and weak.score is not None


def test_a_geometry_flag_that_replaces_a_files_tag_is_said(capsys) -> None:
    """--sad-mm 900 on files that record RadiationMachineSAD 1000 moved the answer 0.3 mm without a note."""
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "field-cases" / "small-field"
    if not folder.is_dir():
        pytest.skip("../shared/field-cases not present (a user's clone)")
    ref, frame = folder / "ref_crop.dcm", folder / "frame_shift_r+9_c-13.dcm"
    status, out, _ = run(capsys, "register", ref, frame, "--json", "--sad-mm", "900")
    result = json.loads(out)
    assert status == 0
    assert "ref_crop.dcm: RadiationMachineSAD (3002,0022) 1000 of the file replaced by --sad-mm=900" in result["warnings"]
    assert any(w.startswith("frame_shift_r+9_c-13.dcm: RadiationMachineSAD") for w in result["warnings"])
    status, out, _ = run(capsys, "register", ref, frame, "--json")
    assert not any("replaced by" in w for w in json.loads(out)["warnings"])


def test_reg_says_when_the_given_patient_position_is_not_the_images(capsys, demo_pair, tmp_path) -> None:
    """A new user's trial: --patient-position FFS on HFS images reversed the REG's translation without a word."""
    out_path = tmp_path / "reg.dcm"
    status, out, _ = run(capsys, "register", demo_pair["ref"], demo_pair["frame"], "--reg", out_path,
                         "--patient-position", "FFS")
    assert status == 0 and out_path.is_file()
    assert ("REG warning: patient position FFS as given (--patient-position), not the images' PatientPosition HFS"
            in out), out


# ---------------------------------------------------------------------------------------------
# a second new user's trial: advice that names switches the command has, flags in every error,
# no abbreviations, --overlay's real path, a failing stdout
# ---------------------------------------------------------------------------------------------


def test_watch_has_the_mismatch_switch_its_refusal_names(capsys, files, tmp_path) -> None:
    """A gantry-90 frame against a gantry-0 reference: NOT OK, advising --allow-view-mismatch, which watch (and scp)
    did not have ("unrecognized arguments"); with it the frame is registered, and the line says so."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "frame_g90.dcm").write_bytes(files["frame_g90"].read_bytes())
    status, out, _ = run(capsys, "watch", folder, "--results", tmp_path / "r.jsonl", "--reference", files["ref"],
                         "--once", "--poll", "0.05")
    assert status == 0 and "NOT OK (different views" in out and "--allow-view-mismatch" in out, out
    assert "allow_view_mismatch" not in out, out  # the flag, not the engine's keyword
    # ...in the results file too (a new user's trial: its reason still said "set allow_view_mismatch=True")
    journaled = (tmp_path / "r.jsonl").read_text()
    assert "--allow-view-mismatch" in journaled and "allow_view_mismatch" not in journaled, journaled
    (folder / "frame_g90_again.dcm").write_bytes(files["frame_g90"].read_bytes())
    status, out, _ = run(capsys, "watch", folder, "--results", tmp_path / "r2.jsonl", "--reference", files["ref"],
                         "--once", "--poll", "0.05", "--allow-view-mismatch")
    assert status == 0 and re.match(r"frame_g90_again\.dcm: dx \+3\.\d\d ± 0\.\d\d mm, dy -2\.\d\d ± 0\.\d\d mm, .*, ok$",
                                    out.strip()), out
    scp = build_parser("scp")._subparsers._group_actions[0].choices["scp"]
    assert {"--allow-view-mismatch", "--allow-patient-mismatch"} <= set(scp._option_string_actions)


def test_couch_json_names_the_flag_in_every_reason(capsys, files) -> None:
    """couch --json printed the engine's advice as it is ("set allow_view_mismatch=True"): in the JSON too, the
    reasons of the result and of each view name the flag, as its text report and register's JSON do."""
    status, out, _ = run(capsys, "couch", "--pair", files["ref"], files["frame_g90"], "--pair", files["ref"],
                         files["frame"], "--json")
    payload = json.loads(out)
    assert status == 0 and payload["ok"] is False
    assert payload["views"][0]["ok"] is False and payload["views"][1]["ok"] is True
    for reason in (payload["reason"], payload["views"][0]["reason"]):
        assert reason.endswith("If this is intended, set --allow-view-mismatch"), reason
    assert "allow_view_mismatch" not in out


@pytest.mark.parametrize(("argv", "expected"), [
    (["watch", "{tmp}", "--results", "{tmp}/r.jsonl", "--once", "--stable-polls", "1"],
     "portalign watch: --stable-polls must be at least 2"),
    (["watch", "{tmp}", "--results", "{tmp}/r.jsonl", "--once", "--poll", "0"],
     "portalign watch: --poll (the poll interval) must be positive seconds; got 0.0"),
    (["demo", "--out", "{tmp}/a_file"], "portalign demo: error: --out {tmp}/a_file: is a file, not a folder"),
    (["archive", "{tmp}", "--out", "{tmp}/out", "--max-residual-mm", "0"],
     "portalign archive: error: --max-residual-mm must be a positive number, got 0.0"),
    (["archive", "{tmp}", "--out", "{tmp}/out", "--connect-timeout", "-1"],
     "portalign archive: error: --connect-timeout must be a positive number, got -1.0"),
    (["archive", "{tmp}", "--out", "{tmp}/out", "--max-shift-mm", "-3"],
     "portalign archive: error: --max-shift-mm must be positive"),
])
def test_errors_of_every_command_name_its_flags(capsys, tmp_path, argv, expected) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    if argv[0] == "archive":
        pytest.importorskip("dask.distributed", reason="archive needs the archive extra")
    status, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert status == 2
    assert err.strip().startswith(expected.format(tmp=tmp_path)), err
    assert not re.search(r"\b[a-z]+(?:_[a-z]+)+ must", err), err  # a flag, not a Python keyword


@pytest.mark.parametrize(("argv", "expected"), [
    (["--workers", "-1"], "portalign serve: --workers must be at least 1"),
    (["--workers", "0"], "portalign serve: --workers must be at least 1"),
    (["--max-body-mb", "-1"], "portalign serve: --max-body-mb must be at least 0.001 MiB (1 KiB), got -1"),
    (["--cache-size", "0"], "portalign serve: --cache-size must be an integer >= 1; got 0"),
])
def test_serve_refuses_bad_numbers_naming_the_flag_before_it_listens(capsys, argv, expected) -> None:
    """--workers -1 escaped as a ValueError traceback, and 0 was taken silently for the default."""
    pytest.importorskip("uvicorn", reason="serve needs the service extra")
    status, out, err = run(capsys, "serve", "--port", "0", "--no-warm-up", *argv)
    assert status == 2 and out == ""
    assert err.strip().startswith(expected), err


def test_options_are_never_abbreviated(capsys, files) -> None:
    """``scp --ae X`` started a listener (argparse took --ae for --ae-title); an option is its whole name."""
    with pytest.raises(SystemExit) as stop:
        main(["register", str(files["ref"]), str(files["frame"]), "--jso"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    assert err.strip().endswith("portalign register: error: unrecognized arguments: --jso (did you mean --json?)")
    with pytest.raises(SystemExit):
        build_parser("scp").parse_args(["scp", "--results", "r.jsonl", "--ae", "X"])
    capsys.readouterr()
    # the option a word begins is the one named (difflib's closest spelling of "--ae" was --backend)
    with pytest.raises(SystemExit):
        main(["scp", "--results", "r.jsonl", "--ae", "X"])
    assert capsys.readouterr().err.strip().endswith("unrecognized arguments: --ae X (did you mean --ae-title?)")


def test_overlay_reports_the_file_it_wrote(capsys, files, tmp_path) -> None:
    """``--overlay review`` wrote review.png and said "review"; ``--overlay FOLDER`` wrote FOLDER.png beside it."""
    pytest.importorskip("matplotlib", reason="--overlay needs matplotlib")
    status, out, _ = run(capsys, "register", files["ref"], files["frame"], "--overlay", tmp_path / "review")
    assert status == 0 and f"review picture: {tmp_path / 'review.png'}" in out
    assert (tmp_path / "review.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "review").exists()
    folder = tmp_path / "pictures"
    folder.mkdir()
    status, out, _ = run(capsys, "register", files["ref"], files["frame"], "--overlay", folder)
    assert status == 0 and f"review picture: {folder / 'frame_review.png'}" in out
    assert (folder / "frame_review.png").stat().st_size > 1000 and not (tmp_path / "pictures.png").exists()


def test_a_json_failure_whose_stdout_fails_is_one_line_on_stderr(capsys, files, monkeypatch) -> None:
    """``register --json ... > /dev/full``: the error's own JSON line failed too, and a second traceback followed."""

    class Full:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    status = main(["register", "--json", str(files["ref"]), str(files["frame"])])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip() == "portalign register: error: [Errno 28] No space left on device", err


def test_a_usage_error_under_json_is_one_json_object_too(capsys, files) -> None:
    """A new user's trial: ``--json`` with a mistyped option left stdout empty (the usage on stderr only)."""
    with pytest.raises(SystemExit) as stop:
        main(["register", str(files["ref"]), str(files["frame"]), "--json", "--metod", "mi"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2
    payload = json.loads(out)
    assert payload["ok"] is False and payload["error"] == "usage" and payload["dx_mm"] is None
    assert payload["detail"] == "portalign register: unrecognized arguments: --metod mi (did you mean --method?)"
    assert err.strip().endswith("portalign register: error: unrecognized arguments: --metod mi (did you mean --method?)")


def test_a_refused_match_says_so_before_its_numbers(capsys, tmp_path) -> None:
    """A new user's trial: a refused result's line began with its dx and dy, NOT OK after them; a reader skimming the
    line took the numbers first. The verdict and its reason come first now, the numbers marked as no shift to apply."""
    ref = anatomy(SIZE, seed=3)
    mirrored = ndimage.shift(ref, (DY_MM, DX_MM), order=3, mode="nearest")[:, ::-1]  # an export that mirrored it
    tags = {"PatientPosition": "HFS", "AcquisitionDate": "20260102"}
    ref_path = write_rt_image(make_rt_image(ref, gantry=0.0, **ISO, **tags), tmp_path / "ref.dcm")
    frame_path = write_rt_image(make_rt_image(np.ascontiguousarray(mirrored), gantry=0.0, **ISO, **tags),
                                tmp_path / "mirrored.dcm")
    status, out, _ = run(capsys, "register", ref_path, frame_path)
    lines = out.splitlines()
    assert status == 0
    # refused as outside the search range, and named mirrored (a flip beats it in the global search: checked in full)
    assert lines[0].startswith("NOT OK: flipped: the frame matches the reference better flipped left-right"), out
    assert "(as taken: optimum at (" in lines[0], out
    assert lines[1].startswith("dx = ") and lines[1].endswith("(the refused match: not a shift to apply)"), out


def test_a_frame_whose_sid_is_wrong_is_refused_with_the_scale_named(capsys, demo_pair, tmp_path) -> None:
    """A new user's trial: RTImageSID 1000 where the frame was taken at 1500 was refused as a shift outside the
    search range ("raise --max-shift-mm"), the scale unnamed; every no-match reason now names a wrong scale."""
    ds = pydicom.dcmread(demo_pair["frame"])
    ds.RTImageSID = 1000.0
    wrong = tmp_path / "sid1000.dcm"
    ds.save_as(wrong)
    status, out, _ = run(capsys, "register", demo_pair["ref"], wrong, "--json")
    payload = json.loads(out)
    assert status == 0 and payload["ok"] is False
    assert "a wrong scale in one header (RTImageSID" in payload["reason"], payload["reason"]


def test_a_mistyped_subcommand_is_named_with_the_closest_one(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["regster", "a.dcm", "b.dcm"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "invalid choice: 'regster' (choose from 'register', " in err
    assert err.rstrip().endswith(") (did you mean register?)"), err
    with pytest.raises(SystemExit):
        main(["xyz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: nothing suggested


def test_a_mistyped_subcommand_under_json_is_a_json_object_too(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["regster", "a.dcm", "b.dcm", "--json"])
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert payload["ok"] is False and payload["error"] == "usage" and "did you mean register?" in payload["detail"]
    assert "did you mean register?" in err


def test_a_npy_without_spacing_is_a_geometry_error(capsys, tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((8, 8), np.float32))
    status, out, _ = run(capsys, "register", tmp_path / "a.npy", tmp_path / "a.npy", "--json")
    assert status == 2 and json.loads(out)["error"] == "invalid_geometry"
    assert json.loads(out)["detail"].endswith("a .npy file has no geometry; pass --pixel-spacing-mm (its spacing at "
                                              "the isocentre, mm)")
