"""portalign archive: index, pairing, Dask run on a LocalCluster, setups, statistics, outputs, resume, CLI.

The end-to-end tests build a small synthetic archive with :mod:`bench.archive_data` (4 patients x 4
fractions x 2 views at gantry 0 and 90, 160x120 frames of 1.07 mm at the isocentre, known systematic
and random setup errors, junk files, a two-frame cine file and a frame without a reference) and run it
on a real LocalCluster with two worker processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.distributed", reason="the archive extra (dask[distributed]) is not installed")
pd = pytest.importorskip("pandas", reason="the archive extra (pandas) is not installed")
pytest.importorskip("pyarrow", reason="the archive extra (pyarrow) is not installed")

from dicom_factory import make_rt_image, write_rt_image  # noqa: E402
from portalign.archive import (  # noqa: E402
    ArchiveError,
    axis_statistics,
    circular_mean_deg,
    combine_fractions,
    index_file,
    list_files,
    pair_frames,
    population_statistics,
    run,
    sigma_relative_se,
)
from portalign.cli import main  # noqa: E402
from portalign.couch import projection_matrix  # noqa: E402

from bench.archive_data import write_synthetic_archive  # noqa: E402

AXES = ("lateral", "longitudinal", "vertical")
# Recovered population figures against the ones computed from the true displacements (the check).
TOLERANCE_MM = 0.3


# ---------------------------------------------------------------------------
# statistics against a hand-computed example
# ---------------------------------------------------------------------------


def test_statistics_hand_computed_example():
    # Patient A: 1, 3, 2 -> m = 2, s = 1.  B: -1, -1 -> m = -1, s = 0.  C: 4, 6 -> m = 5, s = sqrt(2).
    # M = (2 - 1 + 5) / 3 = 2;  Sigma = SD(2, -1, 5) = sqrt((0 + 9 + 9) / 2) = 3;
    # sigma = sqrt((1 + 0 + 2) / 3) = 1;  van Herk 2.5*3 + 0.7*1 = 8.2;  Stroom 2*3 + 0.7 = 6.7.
    ids = ["A", "A", "A", "B", "B", "C", "C", "D"]  # D has one fraction: left out
    stats = population_statistics(ids, {"lateral": [1, 3, 2, -1, -1, 4, 6, 100.0]})["lateral"]
    assert stats["n_patients"] == 3 and stats["n_fractions"] == 7
    assert stats["M_mm"] == pytest.approx(2.0, abs=1e-12)
    assert stats["Sigma_mm"] == pytest.approx(3.0, abs=1e-12)
    assert stats["sigma_mm"] == pytest.approx(1.0, abs=1e-12)
    assert stats["margin_van_herk_mm"] == pytest.approx(8.2, abs=1e-12)
    assert stats["margin_stroom_mm"] == pytest.approx(6.7, abs=1e-12)


def test_statistics_not_measured_is_none_never_zero():
    # One patient: Sigma (SD of one mean) and the margins are not computable.
    one = axis_statistics({"A": np.array([1.0, 2.0, 3.0])})
    assert one["M_mm"] == pytest.approx(2.0) and one["sigma_mm"] == pytest.approx(1.0)
    assert one["Sigma_mm"] is None and one["margin_van_herk_mm"] is None and one["margin_stroom_mm"] is None
    # None / NaN values are not measurements: B keeps a single fraction and drops out.
    stats = population_statistics(["A", "A", "B", "B"], {"x": [1.0, 2.0, None, float("nan")]})["x"]
    assert stats["n_patients"] == 1 and stats["n_fractions"] == 2
    empty = axis_statistics({})
    assert empty["n_patients"] == 0 and all(empty[k] is None for k in ("M_mm", "Sigma_mm", "sigma_mm"))
    with pytest.raises(ValueError, match="min_fractions must be at least 2"):
        axis_statistics({}, min_fractions=1)


def test_rotation_statistics_are_in_degrees_with_no_margin():
    """Pitch, roll and yaw carry degrees in their keys, and no margin recipe (a trial found M_mm and a van Herk
    "margin" of 0.20 mm on a rotation)."""
    stats = axis_statistics({"A": np.array([1.0, 3.0]), "B": np.array([-1.0, -1.0])}, unit="deg")
    assert set(stats) == {"M_deg", "Sigma_deg", "sigma_deg", "n_patients", "n_fractions"}
    assert stats["M_deg"] == pytest.approx(0.5) and stats["Sigma_deg"] == pytest.approx(math.sqrt(4.5))
    with pytest.raises(ValueError, match="unit must be 'mm'"):
        axis_statistics({}, unit="rad")


def test_sigma_relative_standard_error():
    assert sigma_relative_se(1) is None  # no Sigma from one patient
    assert sigma_relative_se(3) == pytest.approx(0.5)  # 1 / sqrt(2 * 2)
    assert sigma_relative_se(9) == pytest.approx(0.25)


def test_combine_fractions_recovers_a_known_3d_shift():
    shift = np.array([1.5, -2.0, 0.7])
    rows = []
    for beam, gantry in ((1, 0.0), (2, 90.0), (3, 45.0)):
        dx, dy = projection_matrix(gantry) @ shift
        rows.append({"status": "registered", "ok": True, "patient_id": "P", "plan_uid": "1.2", "fraction": "fraction 1",
                     "fraction_number": 1, "date": None, "patient_position": "HFS", "beam_number": beam,
                     "gantry_deg": gantry, "couch_deg": 0.0, "receptor_angle_deg": None,
                     "dx_mm": dx, "dy_mm": dy, "rotation_deg": 0.0})
    # A not-ok frame of beam 1 is not averaged into its view.
    rows.append({**rows[0], "ok": False, "dx_mm": 50.0})
    (setup,) = combine_fractions(rows)
    assert setup["ok"] and setup["n_views"] == 3 and setup["n_frames"] == 4 and setup["n_frames_not_ok"] == 1
    assert [setup[f"{a}_mm"] for a in AXES] == pytest.approx(shift.tolist(), abs=1e-9)
    # One view only: no 3-D value (None), with the reason.
    (single,) = combine_fractions(rows[:1])
    assert single["lateral_mm"] is None and not single["ok"] and "two non-parallel views" in single["reason"]
    # Parallel views (0 and 180): the couch solver's error becomes the reason.
    parallel = [rows[0], {**rows[1], "gantry_deg": 180.0}]
    (flat,) = combine_fractions(parallel)
    assert flat["lateral_mm"] is None and "parallel" in flat["reason"]


def _view_rows(shift: np.ndarray, views: list[tuple[int, float]], **extra) -> list[dict]:
    rows = []
    for beam, gantry in views:
        dx, dy = projection_matrix(gantry) @ shift
        rows.append({"status": "registered", "ok": True, "patient_id": "P", "plan_uid": "1.2", "fraction": "fraction 1",
                     "fraction_number": 1, "date": "20261205", "patient_position": "HFS", "beam_number": beam,
                     "gantry_deg": gantry, "couch_deg": 0.0, "receptor_angle_deg": None, "dx_mm": float(dx),
                     "dy_mm": float(dy), "rotation_deg": 0.0, **extra})
    return rows


def test_a_beam_imaged_either_side_of_gantry_0_keeps_its_view():
    # A physicist's trial: one beam imaged twice at gantry read-outs 359.6 and 0.4 (both within the view tolerance of
    # its gantry-0 DRR) was averaged to gantry 180: the fraction's lateral error came out -4.34 mm for +4.50, ok.
    shift = np.array([3.0, 2.0, 1.0])
    rows = _view_rows(shift, [(1, 359.6), (1, 0.4), (2, 90.0)])
    rows[0]["sop_instance_uid"], rows[1]["sop_instance_uid"] = "1.1", "1.2"
    (setup,) = combine_fractions(rows)
    assert setup["ok"] and setup["gantry_angles_deg"] == "0,90" and setup["note"] is None
    assert [setup[f"{a}_mm"] for a in AXES] == pytest.approx(shift.tolist(), abs=0.03)
    assert circular_mean_deg([350.0, 20.0]) == pytest.approx(5.0)
    assert circular_mean_deg([90.0]) == 90.0 and circular_mean_deg([-10.0, -10.0]) == 350.0


def test_a_later_exposure_that_disagrees_is_not_averaged_into_the_setup():
    # An online correction: the first exposure of beam 1 shows the setup error, a later one (after the couch move)
    # nearly none. Their average is neither; the first is the setup error and the later one is named.
    shift = np.array([4.0, -3.0, 2.0])
    rows = _view_rows(shift, [(1, 0.0), (2, 90.0)], time="101500")
    rows[0]["sop_instance_uid"], rows[1]["sop_instance_uid"] = "1.1", "1.3"
    after = {**rows[0], "sop_instance_uid": "1.2", "time": "102000", "dx_mm": 0.2, "dy_mm": -0.1}
    (setup,) = combine_fractions([after, *rows])  # in any order: acquisition times decide
    assert [setup[f"{a}_mm"] for a in AXES] == pytest.approx(shift.tolist(), abs=1e-9)
    assert "beam 1: 1 later exposure(s) 4.9 mm from the first left out" in setup["note"]
    # Exposures that agree are one setup imaged twice: averaged.
    again = {**rows[0], "sop_instance_uid": "1.2", "time": "102000", "dx_mm": rows[0]["dx_mm"] + 0.4}
    (twice,) = combine_fractions([again, *rows])
    assert twice["note"] is None and twice["lateral_mm"] == pytest.approx(shift[0] + 0.2, abs=1e-9)


def test_what_is_left_out_of_sigma_is_said_in_the_summary_and_on_the_console(monkeypatch, capsys):
    """A physicist's trial: "2 not ok" and "(9 patients)" of 10 on the console, nothing on why; three fractions with one
    usable view and a one-fraction patient left out of Sigma and sigma unsaid; ``--json`` without the warnings."""
    from types import SimpleNamespace

    import portalign.archive
    from portalign.archive import ArchiveResult
    from portalign.archive._run import _summary

    rows = []
    for patient, fractions in (("P1", 3), ("P2", 1)):
        for k in range(fractions):
            shift = np.array([1.0 + k, -1.0, 0.5])
            rows += [{**r, "patient_id": patient, "fraction": f"fraction {k + 1}", "fraction_number": k + 1,
                      "sop_instance_uid": f"{patient}.{k}.{r['beam_number']}"}
                     for r in _view_rows(shift, [(1, 0.0), (2, 90.0)])]
    # P1's third fraction: beam 2 refused, so one view only
    rows[5].update(ok=False, reason="view mismatch: the frame's gantry angle 45 deg is not the reference's 90 deg",
                   path="P1/fx3_b2.dcm")
    # P1's first fraction: beam 1 imaged again after a couch correction
    rows.append({**rows[0], "sop_instance_uid": "P1.0.1b", "time": "235959", "dx_mm": 0.1, "dy_mm": 0.0})
    setups = combine_fractions(rows)
    pairing = SimpleNamespace(index=[], tasks=[])
    summary = _summary(pairing, rows, setups, {}, {}, {}, "cpu", 0, 0, 0, False)
    warnings = summary["warnings"]
    assert any(w.startswith("1 fraction(s) with fewer than two ok views have no 3-D setup error and are left out of "
                            "the population statistics (patient P1, fraction 3; the first's reason: 1 usable view")
               for w in warnings), warnings
    assert "1 patient(s) with one ok fraction only are left out of M, Sigma and sigma (a patient's SD needs two): P2" \
        in warnings
    assert any(w.startswith("1 fraction(s) imaged a beam again") and "patient P1, fraction 1" in w for w in warnings)
    assert summary["not_ok"] == [{"reason": rows[5]["reason"], "frames": 1, "first": "P1/fx3_b2.dcm"}]
    assert summary["population"]["lateral"]["n_patients"] == 1  # P1 alone (two ok fractions)
    # the console names the not-ok reason and the warnings; --json carries both
    result = ArchiveResult(out_dir="out", summary=summary, outputs={}, tasks_run=4, tasks_skipped=0, tasks_failed=0,
                           warnings=warnings)
    monkeypatch.setattr(portalign.archive, "run", lambda *args, **kwargs: result)
    assert main(["archive", "in", "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "not ok: 1 frame(s) (first: P1/fx3_b2.dcm): view mismatch: the frame's gantry angle 45 deg" in out
    assert out.count("warning: ") == len(warnings) >= 3
    assert main(["archive", "in", "--out", "out", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["warnings"] == warnings and said["not_ok"] == summary["not_ok"]


# ---------------------------------------------------------------------------
# index and pairing (no cluster)
# ---------------------------------------------------------------------------


def _rt_image(path: Path, *, image_type: str = "PORTAL", plan: str | None = "1.2.3", beam: int | None = 1,
              **tags) -> Path:
    from pydicom.dataset import Dataset

    ds = make_rt_image(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32), ImageType=["ORIGINAL", "PRIMARY",
                                                                                          image_type], **tags)
    if plan is not None:
        item = Dataset()
        item.ReferencedSOPInstanceUID = plan
        ds.ReferencedRTPlanSequence = [item]
    if beam is not None:
        ds.ReferencedBeamNumber = beam
    return write_rt_image(ds, path)


def test_index_reads_headers_and_classifies(tmp_path):
    drr = index_file(str(_rt_image(tmp_path / "drr.dcm", image_type="DRR")))
    assert drr["category"] == "reference" and drr["reference_kind"] == "drr" and drr["plan_uid"] == "1.2.3"
    portal = index_file(str(_rt_image(tmp_path / "p.dcm", FractionNumber=7, AcquisitionDate="20260105")))
    assert portal["category"] == "frame" and portal["beam_number"] == 1 and portal["rows"] == 24
    assert portal["fraction_number"] == 7 and portal["fraction"] == "fraction 7" and portal["date"] == "2026-01-05"
    dated = index_file(str(_rt_image(tmp_path / "d.dcm", AcquisitionDate="20260106")))
    assert dated["fraction_number"] is None and dated["fraction"] == "date 2026-01-06"
    stamped = index_file(str(_rt_image(tmp_path / "t.dcm", AcquisitionDateTime="20260107093000", ContentDate="20990101")))
    assert stamped["fraction"] == "date 2026-01-07" and stamped["time"] == "093000"
    approved = index_file(str(_rt_image(tmp_path / "ref.dcm", RTImageLabel="Reference image")))
    assert approved["category"] == "reference" and approved["reference_kind"] == "portal"

    data = (tmp_path / "p.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])
    cut = index_file(str(tmp_path / "cut.dcm"))
    assert cut["category"] == "truncated" and cut["fate"] == "skipped"
    assert cut["reason"] == f"truncated: pixel data holds {24 * 32 * 2 - 100} of {24 * 32 * 2} bytes"
    (tmp_path / "head.dcm").write_bytes(data[:300])
    assert index_file(str(tmp_path / "head.dcm"))["category"] in ("unreadable", "truncated")
    (tmp_path / "notes.txt").write_text("hello\n")
    text = index_file(str(tmp_path / "notes.txt"))
    assert text["category"] == "not_dicom" and "not a DICOM file" in text["reason"]
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    for name in ("empty.dcm", "picture.png"):
        assert index_file(str(tmp_path / name))["category"] == "not_dicom", name
    # a DICM prefix before garbage was "other: Modality (none)" (a new user's)
    (tmp_path / "garbage.dcm").write_bytes(bytes(128) + b"DICM" + np.random.default_rng(1).bytes(2000))
    garbage = index_file(str(tmp_path / "garbage.dcm"))
    assert garbage["category"] in ("unreadable", "truncated", "not_dicom"), garbage
    assert garbage["fate"] == "skipped" and garbage["category"] != "other", garbage


def test_a_reference_that_cannot_be_prepared_is_failed_in_the_index():
    """A new user's all-constant DRR was listed as used_as_reference while its 4 frames failed on it."""
    from portalign.archive._run import _index_fates

    index = [{"path": "a/drr.dcm", "category": "reference", "fate": "used_as_reference", "reason": "reference of ..."},
             {"path": "a/good_drr.dcm", "category": "reference", "fate": "used_as_reference", "reason": "reference"},
             *({"path": f"a/fx{i}.dcm", "category": "frame", "fate": None, "reason": None} for i in range(3))]
    error = "reference a/drr.dcm: drr.dcm: all pixels have the same value (7); nothing to register"
    rows = [{"path": "a/fx0.dcm", "status": "failed", "error": error, "reference_path": "a/drr.dcm"},
            {"path": "a/fx1.dcm", "status": "failed", "error": error, "reference_path": "a/drr.dcm"},
            {"path": "a/fx2.dcm", "status": "registered", "ok": True, "error": None, "reason": "",
             "reference_path": "a/good_drr.dcm"}]
    _index_fates(index, rows)
    assert index[0]["fate"] == "failed" and index[0]["reason"] == (
        "cannot be used as the reference of its beam's 2 frame(s): drr.dcm: all pixels have the same value (7); "
        "nothing to register")
    assert index[1]["fate"] == "used_as_reference"
    assert [e["fate"] for e in index[2:]] == ["failed", "failed", "registered"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_linked_folders_and_what_is_not_a_file_are_listed_and_said(tmp_path):
    """A new user's archive of linked patient folders: the linked folder's files were never read and no row said so
    (os.walk does not follow links), nor of a FIFO or a link to /dev/zero, and Σ/σ counted fewer patients than there
    were. Links to folders are followed (a loop walked once), and what is not a file gets a row saying why, never
    opened (a FIFO would wait for a writer)."""
    store = tmp_path / "store" / "PAT02"
    store.mkdir(parents=True)
    _rt_image(store / "fx1.dcm")
    source = tmp_path / "archive"
    (source / "PAT01").mkdir(parents=True)
    _rt_image(source / "PAT01" / "fx1.dcm")
    (source / "PAT02").symlink_to(store, target_is_directory=True)
    (source / "PAT01" / "loop").symlink_to(source, target_is_directory=True)  # a link back up
    os.mkfifo(source / "PAT01" / "pipe.dcm")
    (source / "PAT01" / "zero.dcm").symlink_to("/dev/zero")
    (source / "PAT01" / "gone.dcm").symlink_to(tmp_path / "nothing.dcm")
    out = source / "results"
    out.mkdir()
    _rt_image(out / "own.dcm")  # the run's own output folder, inside the source: left out
    listed = list_files([source], exclude=out)
    names = sorted(os.path.relpath(p, source) for p in listed)
    assert names == ["PAT01/fx1.dcm", "PAT01/gone.dcm", "PAT01/pipe.dcm", "PAT01/zero.dcm", "PAT02/fx1.dcm"], names
    rows = {os.path.basename(p): index_file(p) for p in listed if "PAT01" in p}
    assert rows["fx1.dcm"]["category"] == "frame"
    assert rows["pipe.dcm"]["category"] == "unreadable"
    assert rows["pipe.dcm"]["reason"] == "a FIFO (named pipe), not a file: not read"
    assert rows["zero.dcm"]["reason"] == "a device, not a file: not read"
    assert rows["gone.dcm"]["category"] == "unreadable" and "No such file or directory" in rows["gone.dcm"]["reason"]
    assert index_file(str(source / "PAT02" / "fx1.dcm"))["category"] == "frame"


def _row(path: str, category: str, *, plan="P", beam=1, uid=None, kind=None, fraction_number=None, date=None):
    return {"path": path, "category": category, "reference_kind": kind, "sop_instance_uid": uid or path,
            "plan_uid": plan, "beam_number": beam, "fraction_number": fraction_number, "date": date, "time": None,
            "patient_id": "A", "fraction": None if fraction_number is None else f"fraction {fraction_number}",
            "number_of_frames": 1, "patient_position": "HFS", "fate": None, "reason": None}


def test_pairing_by_plan_and_beam():
    index = [
        _row("a/drr_old.dcm", "reference", kind="drr", date="2025-01-01"),
        _row("a/drr_new.dcm", "reference", kind="drr", date="2025-02-01"),
        _row("a/ref_portal.dcm", "reference", kind="portal", date="2025-03-01"),
        _row("a/f1.dcm", "frame", fraction_number=1),
        _row("a/f1_copy.dcm", "frame", uid="a/f1.dcm", fraction_number=1),
        _row("a/f2.dcm", "frame", beam=2, fraction_number=2),
        _row("a/f3.dcm", "frame", beam=2, fraction_number=1),
        _row("a/nobeam.dcm", "frame", beam=None),
    ]
    pairing = pair_frames(index)
    fates = {r["path"]: (r["category"], r["fate"]) for r in pairing.index}
    assert [t.reference["path"] for t in pairing.tasks] == ["a/drr_new.dcm"]  # DRR over portal, newest DRR
    assert [f["path"] for f in pairing.tasks[0].frames] == ["a/f1.dcm"]
    assert fates["a/drr_old.dcm"] == ("reference", "unused") and fates["a/ref_portal.dcm"] == ("reference", "unused")
    assert fates["a/f1_copy.dcm"] == ("duplicate", "skipped")
    assert {r["path"] for r in pairing.unmatched} == {"a/f2.dcm", "a/f3.dcm", "a/nobeam.dcm"}
    assert "no ReferencedBeamNumber" in next(r for r in index if r["path"] == "a/nobeam.dcm")["reason"]
    assert next(r for r in index if r["path"] == "a/f2.dcm")["reason"].startswith("no reference for plan P beam 2 (")

    # Option: the beam's first portal image (fraction 1) becomes its reference.
    index = [{**r, "fate": None, "reason": None, "category": "frame" if r["path"] == "a/f1_copy.dcm" else r["category"]}
             for r in index]
    pairing = pair_frames(index, first_portal_reference=True)
    beam2 = next(t for t in pairing.tasks if t.beam_number == 2)
    assert beam2.reference == {"path": "a/f3.dcm", "sop_instance_uid": "a/f3.dcm", "kind": "first_portal"}
    assert [f["path"] for f in beam2.frames] == ["a/f2.dcm"]
    assert {r["path"] for r in pairing.unmatched} == {"a/nobeam.dcm"}
    # The task id changes with what decides the results (here the options), so resume redoes such beams.
    plain = pair_frames(index).tasks[0]
    assert pair_frames(index, options={"method": "mi"}).tasks[0].beam_id != plain.beam_id
    inverted = pair_frames(index, invert=True).tasks[0]
    assert inverted.invert is True and plain.invert is None and inverted.beam_id != plain.beam_id


def test_argument_errors(tmp_path):
    with pytest.raises(ArchiveError, match="source '.*nowhere' does not exist"):
        run([tmp_path / "nowhere"], tmp_path / "out")
    with pytest.raises(ArchiveError, match="no SOURCE given"):
        run([], tmp_path / "out")
    with pytest.raises(ArchiveError, match="--workers and --scheduler exclude each other"):
        run([tmp_path], tmp_path / "out", workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ArchiveError, match="--workers must be a positive integer"):
        run([tmp_path], tmp_path / "out", workers=0)
    (tmp_path / "run" / "parts").mkdir(parents=True)
    (tmp_path / "run" / "parts" / "abc.parquet").write_bytes(b"x")
    with pytest.raises(ArchiveError, match="already holds a run .* pass --resume"):
        run([tmp_path], tmp_path / "run")
    assert main(["archive", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2


# ---------------------------------------------------------------------------
# end to end on a LocalCluster with two worker processes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    return write_synthetic_archive(root / "src", patients=4, fractions=4, systematic_sd_mm=(2.0, 2.0, 2.0),
                                   random_sd_mm=(1.0, 1.0, 1.0), population_mean_mm=(0.5, -0.5, 1.0), seed=3,
                                   # frames clean enough that every one is precise (the split-half check passes):
                                   # this test is about the archive, tests/test_precision.py about low dose
                                   noise=0.004)


@pytest.fixture(scope="module")
def first_run(archive):
    out = archive.root.parent / "out"
    return run([archive.root], out, workers=2)


def _truth_statistics(archive):
    """M, Sigma, sigma per axis from the true displacements (numpy, independent of the code under test)."""
    out = {}
    for k, axis in enumerate(AXES):
        per_patient = [np.array([d[k] for d in ds]) for ds in archive.displacements.values()]
        means = np.array([v.mean() for v in per_patient])
        sds = np.array([v.std(ddof=1) for v in per_patient])
        out[axis] = {"M_mm": means.mean(), "Sigma_mm": means.std(ddof=1), "sigma_mm": math.sqrt(np.mean(sds ** 2))}
    return out


@pytest.mark.slow
def test_population_statistics_recover_the_truth(archive, first_run):
    summary = json.loads(Path(first_run.outputs["summary"]).read_text())
    truth = _truth_statistics(archive)
    for axis in AXES:
        got = summary["population"][axis]
        assert got["n_patients"] == 4 and got["n_fractions"] == 16
        for key in ("M_mm", "Sigma_mm", "sigma_mm"):
            assert got[key] == pytest.approx(truth[axis][key], abs=TOLERANCE_MM), (axis, key)
        assert got["margin_van_herk_mm"] == pytest.approx(2.5 * got["Sigma_mm"] + 0.7 * got["sigma_mm"], abs=1e-12)
        assert got["margin_stroom_mm"] == pytest.approx(2.0 * got["Sigma_mm"] + 0.7 * got["sigma_mm"], abs=1e-12)
    counts = summary["counts"]
    assert counts == {**counts, "patients": 4, "fractions": 16, "frames": archive.n_frames, "not_ok": 0,
                      "unmatched": 1, "unreadable": 2, "duplicates": 1, "failed": 0}
    assert summary["tasks"] == {"total": 8, "run": 8, "skipped_resume": 0, "failed": 0}
    assert summary["cluster"]["workers"] == 2 and summary["cluster"]["local"] is True
    assert summary["cluster"]["parts_written_by"] == "workers" and summary["timing"]["client_write_s"] == 0
    # the kernels were compiled once in the client before the local workers started (``_run._compile_once``)
    assert summary["timing"]["compile_s"] > 0
    # Per gantry angle in image axes: x at gantry 0 is lateral, x at gantry 90 is -vertical, y is -longitudinal.
    image = summary["image_axes"]
    assert image["gantry_0"]["x"]["Sigma_mm"] == pytest.approx(truth["lateral"]["Sigma_mm"], abs=TOLERANCE_MM)
    assert image["gantry_90"]["x"]["M_mm"] == pytest.approx(-truth["vertical"]["M_mm"], abs=TOLERANCE_MM)
    assert image["gantry_0"]["y"]["M_mm"] == pytest.approx(-truth["longitudinal"]["M_mm"], abs=TOLERANCE_MM)
    assert len(summary["beams"]) == 8
    # four patients: Sigma's own standard error (41 %) is said, and so the margins are indicative only
    (few,) = [w for w in summary["warnings"] if w.startswith("Sigma and the margins come from 4 patients")]
    assert "about 41 %" in few and "9 or more patients" in few
    # the rotations in degrees, and no margin for them
    for name, got in summary["population_rotation_deg"].items():
        assert set(got) == {"M_deg", "Sigma_deg", "sigma_deg", "n_patients", "n_fractions"}, name


@pytest.mark.slow
def test_each_fraction_setup_matches_its_true_displacement(archive, first_run):
    setups = pd.read_parquet(first_run.outputs["setups"])
    assert len(setups) == 16 and setups["ok"].all() and (setups["n_views"] == 2).all()
    for pid, displacements in archive.displacements.items():
        mine = setups[setups["patient_id"] == pid].sort_values("fraction_ordinal")
        got = mine[[f"{a}_mm" for a in AXES]].to_numpy(dtype=float)
        # Per-view 2-D errors of about 0.15 mm RMS at 1.07 mm pixels; 0.6 mm bounds every axis of every fraction.
        np.testing.assert_allclose(got, np.array(displacements), atol=0.6)
    assert setups["roll_deg"].isna().all()  # coplanar views: roll not observable, null (not 0)


@pytest.mark.slow
def test_every_file_accounted_for_and_one_row_per_frame(archive, first_run):
    index = pd.read_parquet(first_run.outputs["index"])
    assert sorted(index["path"]) == sorted(os.path.abspath(p) for p in archive.files)
    expected = {os.path.abspath(p): c for p, c in archive.files.items()}
    assert {p: c for p, c in zip(index["path"], index["category"], strict=True)} == expected
    assert index["fate"].notna().all() and index["reason"].notna().all()
    fates = dict(zip(index["path"], index["fate"], strict=True))
    assert {fates[p] for p, c in expected.items() if c == "reference"} == {"used_as_reference"}
    assert {fates[p] for p, c in expected.items() if c in ("not_dicom", "truncated", "duplicate", "other")} == {"skipped"}

    regs = pd.read_parquet(first_run.outputs["registrations"])
    assert len(regs) == archive.n_frames
    cine = regs[regs["path"] == os.path.abspath(archive.cine_path)]
    assert sorted(cine["frame_index"]) == [0, 1] and (cine["status"] == "registered").all()
    unmatched = regs[regs["status"] == "unmatched"]
    assert len(unmatched) == 1 and unmatched["path"].iloc[0].endswith("fx01_beam9_no_reference.dcm")
    assert unmatched[["dx_mm", "dy_mm", "ok"]].isna().all().all()  # not measured: null
    assert "no reference for plan" in unmatched["reason"].iloc[0]
    registered = regs[regs["status"] == "registered"]
    assert registered["ok"].all() and registered["dx_mm"].notna().all() and (registered["register_ms"] > 0).all()
    # each measured frame's standard uncertainties, beside its shift; none where nothing was measured
    assert ((registered["shift_uncertainty_mm"] > 0) & (registered["shift_uncertainty_mm"] < 1)).all()
    assert (registered["rotation_uncertainty_deg"].isna() == registered["rotation_deg"].isna()).all()
    assert unmatched["shift_uncertainty_mm"].isna().all()
    assert registered["worker"].nunique() == 2  # both worker processes did work


@pytest.mark.slow
def test_report_and_summary_files(first_run):
    out = Path(first_run.out_dir)
    summary = json.loads((out / "summary.json").read_text())
    for axis in AXES:
        assert set(summary["population"][axis]) >= {"M_mm", "Sigma_mm", "sigma_mm", "margin_van_herk_mm",
                                                    "margin_stroom_mm"}
    assert set(summary["counts"]) >= {"patients", "fractions", "frames", "not_ok", "unmatched", "unreadable"}
    report = (out / "report.md").read_text()
    if any(s["n_patients"] for s in summary["population_rotation_deg"].values()):  # the rotations' own table
        assert "## Rotations (IEC 61217 pitch, roll, yaw; degrees)" in report
    for png in ("setup_per_patient.png", "setup_histogram.png", "setup_by_fraction.png"):
        assert f"(plots/{png})" in report
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fx01_beam9_no_reference.dcm" in report
    # why frames were not registered, grouped: the beam without a reference, with what would pair it
    (entry,) = summary["not_registered"]
    assert entry["status"] == "unmatched" and entry["frames"] == 1
    assert entry["reason"].startswith("no reference for plan") and "first_portal_reference" in entry["reason"]


@pytest.mark.slow
def test_the_console_says_why_frames_were_not_registered(archive, first_run, monkeypatch, capsys):
    """The console, not only report.md, names the reason (a new user's trial saw "1 unmatched" and had to look)."""
    import portalign.archive

    monkeypatch.setattr(portalign.archive, "run", lambda *args, **kwargs: first_run)  # the run's real summary
    assert main(["archive", str(archive.root), "--out", str(first_run.out_dir)]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("unmatched: 1 frame(s): no reference for plan")]
    assert len(said) == 1, out
    assert "--first-portal-reference takes its first portal image" in said[0]  # the flag, not the keyword


@pytest.mark.slow
def test_resume_after_an_interrupted_run_does_not_repeat_work(archive, first_run, tmp_path):
    """A run killed after five of its eight beams: the part files of those five exist, no final tables.

    ``portalign archive --resume`` (on an existing scheduler, through the CLI) registers only the
    three missing beams, leaves the five part files untouched and writes the same tables.
    """
    from dask.distributed import LocalCluster

    out = tmp_path / "out"
    shutil.copytree(first_run.out_dir, out)
    for name in ("registrations.parquet", "setups.parquet", "index.parquet", "summary.json", "report.md"):
        (out / name).unlink()
    parts = sorted((out / "parts").glob("*.parquet"))
    assert len(parts) == 8
    for part in parts[5:]:
        part.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in parts[:5]}

    env = {"PORTALIGN_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env) as cluster:
        code = main(["archive", str(archive.root), "--out", str(out), "--scheduler", cluster.scheduler_address,
                     "--resume", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == {"total": 8, "run": 3, "skipped_resume": 5, "failed": 0}
    assert summary["cluster"]["parts_written_by"] == "client"  # --scheduler without --parts-on-workers
    assert "compile_s" not in summary["timing"]  # a scheduler's workers may be other machines: nothing compiled here
    assert summary["timing"]["frames_this_run"] == sum(
        len(pd.read_parquet(p)) for p in (out / "parts").glob("*.parquet") if p.name not in kept)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet") if p.name in kept} == kept
    assert len(list((out / "parts").glob("*.parquet"))) == 8
    before = pd.read_parquet(first_run.outputs["registrations"])
    after = pd.read_parquet(out / "registrations.parquet")
    assert list(after["sop_instance_uid"]) == list(before["sop_instance_uid"])
    np.testing.assert_allclose(after["dx_mm"].to_numpy(dtype=float, na_value=np.nan),
                               before["dx_mm"].to_numpy(dtype=float, na_value=np.nan), atol=1e-9)
    resumed = json.loads((out / "summary.json").read_text())["population"]
    original = json.loads(Path(first_run.outputs["summary"]).read_text())["population"]
    for axis in AXES:
        assert resumed[axis] == pytest.approx(original[axis], abs=1e-9)


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    code = main(["archive", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9",
                 "--connect-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and err.count("\n") == 1



@pytest.mark.parametrize("address", ["notaurl", "tcp://127.0.0.1", "http://127.0.0.1:1"])
def test_a_scheduler_that_is_no_address_is_a_one_line_error(tmp_path, capsys, address):
    """A new user's trial: an address without a port, or of another protocol, ended in distributed's traceback."""
    (tmp_path / "src").mkdir()
    code = main(["archive", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--scheduler", address,
                 "--connect-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"--scheduler {address!r} is not a Dask scheduler address" in err and "tcp://HOST:PORT" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_an_out_folder_that_cannot_be_made_is_a_one_line_error(tmp_path, capsys):
    """--out below a file: parts/ cannot be made; one line naming --out and the fix, no OSError traceback."""
    (tmp_path / "src").mkdir()
    (tmp_path / "taken").write_text("a file, not a folder")
    code = main(["archive", str(tmp_path / "src"), "--out", str(tmp_path / "taken" / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"portalign archive: error: --out {tmp_path / 'taken' / 'out'}: cannot create "
                                        "parts/ there") and "give a folder you can write" in err, err
    assert err.count("\n") == 1

if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.slow
def test_a_lost_worker_or_a_failing_task_costs_only_its_beam(archive, first_run, tmp_path):
    """One beam's worker dies mid-task and another beam's task raises once: both are redone, nothing else.

    The first beam's part is written by the worker (no partial file survives the kill), the second's by the
    client.
    """
    import functools

    from archive_faults import die_once_then_register, raise_once_then_register
    from dask.distributed import Client, LocalCluster
    from portalign.archive import _run

    pairing = pair_frames([index_file(p) for p in sorted(os.path.abspath(p) for p in archive.files)])
    tasks = pairing.tasks[:2]
    parts = tmp_path / "parts"
    parts.mkdir()
    (tmp_path / "x").mkdir()
    env = {"PORTALIGN_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env) as cluster, \
            Client(cluster) as client:
        died, _, _ = _run._register(client, tasks[:1], parts, 2, None, 0,
                                    functools.partial(die_once_then_register, marker_dir=str(tmp_path)),
                                    parts_on_workers=True)
        raised, _, _ = _run._register(client, tasks[1:], parts, 2, None, 0,
                                      functools.partial(raise_once_then_register, marker_dir=str(tmp_path)))
        failing, failures, _ = _run._register(client, tasks[:1], tmp_path, 0, None, 0,
                                              functools.partial(raise_once_then_register, marker_dir=str(tmp_path / "x")))
    assert died == [] and raised == []
    assert (tmp_path / f"{tasks[0].beam_id}.died").exists() and (tmp_path / f"{tasks[1].beam_id}.raised").exists()
    expected = pd.read_parquet(first_run.outputs["registrations"])
    for task in tasks:
        part = pd.read_parquet(parts / f"{task.beam_id}.parquet")
        assert len(part) == task.n_frames and (part["status"] == "registered").all()
        same = expected.set_index(["sop_instance_uid", "frame_index"]).loc[
            list(zip(part["sop_instance_uid"], part["frame_index"], strict=True)), "dx_mm"]
        np.testing.assert_allclose(part["dx_mm"].to_numpy(dtype=float), same.to_numpy(dtype=float), atol=1e-9)
    # Without retries a failing task is reported on its frames (status failed, the error), not raised.
    assert failures == [tasks[0].beam_id]
    assert len(failing) == tasks[0].n_frames and {r["status"] for r in failing} == {"failed"}
    assert failing[0]["error"].startswith("beam task failed after 0 retries: OSError: transient failure reading")


def _index_row(path: str, **values) -> dict:
    """An index row of a frame under SOP Instance UID 1.2.3 (``values`` replace its fields)."""
    from portalign.archive._index import INDEX_COLUMNS

    found = dict.fromkeys(INDEX_COLUMNS)
    found.update(path=path, category="frame", sop_instance_uid="1.2.3", modality="RTIMAGE", rows=10, cols=10,
                 gantry_deg=0.0)
    found.update(values)
    return found


def test_a_reused_uid_on_another_image_is_said_apart_from_a_copy() -> None:
    """A new user's trial: 19 different images of an export that reuses UIDs were all called "duplicate"."""
    from portalign.archive._pair import pair_frames

    index = [_index_row("a.dcm"), _index_row("copy.dcm"), _index_row("other.dcm", gantry_deg=90.0)]
    pair_frames(index)
    assert [r["category"] for r in index[1:]] == ["duplicate", "duplicate"]
    assert index[1]["reason"] == "duplicate: SOP Instance UID 1.2.3 already in a.dcm (the same header)"
    assert index[2]["reason"].startswith("duplicate UID, different image: SOP Instance UID 1.2.3 is also a.dcm, whose "
                                         "header differs (gantry_deg 0.0 / 90.0)")


def test_a_reused_uid_on_another_image_is_a_warning_of_the_run() -> None:
    """A new user's trial: a gantry-90 copy under the frame's UID kept, the real frame skipped; only index.parquet
    said why, and summary.json's warnings were empty. Which of the two is kept depends on the order of the files."""
    from portalign.archive._pair import pair_frames
    from portalign.archive._run import _summary

    pairing = pair_frames([_index_row("a.dcm"), _index_row("copy.dcm"), _index_row("other.dcm", gantry_deg=90.0)])
    summary = _summary(pairing, [], [], {}, {}, {}, "cpu", 0, 0, 0, False)
    clash = [w for w in summary["warnings"] if "share a SOP Instance UID with a different image" in w]
    assert len(clash) == 1 and clash[0].startswith("1 file(s) skipped") and "(first: other.dcm: " in clash[0]
    assert clash[0].endswith("give each image its own UID")  # the copy with the same header is no warning


_WORKER_KERNEL = """
import numba


@numba.njit(parallel=True, cache=True)
def total(n):
    s = 0.0
    for i in numba.prange(n):
        s += i
    return s
"""

_USER_SCRIPT = """
import portalign  # at the top, as a user's script: a spawned worker imports it again before Dask sets its environment
from portalign.archive._run import _client


def task():
    import numba
    import worker_kernel

    worker_kernel.total(10)  # loaded from numba's cache, not compiled: the worker's thread pool starts

    @numba.njit
    def later(x):
        return x + 1

    from portalign.archive._tasks import _worker_threads

    _worker_threads()  # what a beam's task does first: PORTALIGN_THREADS=1 (the cluster's environment)
    return later(1), numba.get_num_threads()  # a kernel compiled after the pool started; the task's threads


if __name__ == "__main__":
    import worker_kernel

    worker_kernel.total(10)  # compiled and cached here
    with _client(1, None) as (client, info):
        print("worker result", client.submit(task, pure=False).result())
"""


def test_a_local_worker_compiles_after_its_threads_started_whatever_the_script_imported(tmp_path):
    """A script that imports portalign at its top: the spawned worker imports numba before Dask sets its environment.

    With NUMBA_NUM_THREADS in the workers' environment (as before), numba's pool size and that environment disagreed
    there, and the first kernel compiled after the pool had started (a kernel not yet in a new install's cache)
    raised "Cannot set NUMBA_NUM_THREADS to a different value once the threads have been launched" in every task:
    a new user's archive run from a script failed every beam.
    """
    import subprocess

    (tmp_path / "worker_kernel.py").write_text(_WORKER_KERNEL)
    (tmp_path / "user_script.py").write_text(_USER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(tmp_path / "user_script.py")], capture_output=True, text=True,
                          env=env, timeout=240, cwd=tmp_path)
    assert "Cannot set NUMBA_NUM_THREADS" not in done.stderr
    assert done.returncode == 0 and "worker result (2, 1)" in done.stdout, done.stderr[-2000:]
