"""The benchmark harness: every peer's answer in the DESIGN.md contract, the truths, a smoke run.

The peers are optional dependencies: a peer that is not installed is skipped,
never failed. Images are small so that the whole file runs in well under a
minute (most of it is ITK's first import).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from portalign import Image

from bench import cli
from bench.cases import Case, field_mask, measure_bb, synthetic_case, wl_cases
from bench.geometry import Pose, affine_px_to_mm, apply_pose, pose_errors, pose_from_affine_mm
from bench.peers import PEERS, PortalignMethod

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
WL = REAL / "pylinac" / "wl_shift_truebeam"

#: Import name of each peer's library.
PEER_MODULES = {"simpleitk": "SimpleITK", "elastix": "itk", "opencv-ecc": "cv2", "skimage-pcc": "skimage"}
#: Conversion tolerances on a noise-free synthetic pair: 0.1 mm is 0.2 px at 0.5 mm spacing.
TRANSLATION_TOL_MM = 0.1
ROTATION_TOL_DEG = 0.1


def _installed(peer: str) -> bool:
    return importlib.util.find_spec(PEER_MODULES[peer]) is not None


@pytest.fixture(scope="module")
def started():
    """Each installed peer, started once (ITK's first import takes seconds)."""
    methods = {}
    for name, cls in PEERS.items():
        if _installed(name):
            m = cls()
            m.start()
            methods[name] = m
    return methods


# --- geometry: the one conversion every peer goes through ----------------------------------------


@pytest.mark.parametrize("theta_deg", [0.0, 2.5, -4.0])
def test_pose_from_affine_both_directions(theta_deg):
    truth = Pose(3.0, -1.5, theta_deg)
    t = math.radians(theta_deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    d = np.array([truth.dx_mm, truth.dy_mm])
    forward = pose_from_affine_mm(r, d, "ref_to_frame")
    # the inverse map q = R^T p - R^T d, as ITK's fixed=frame registration reports it
    backward = pose_from_affine_mm(r.T, -r.T @ d, "frame_to_ref")
    for got in (forward, backward):
        assert got.dx_mm == pytest.approx(truth.dx_mm, abs=1e-12)
        assert got.dy_mm == pytest.approx(truth.dy_mm, abs=1e-12)
        assert got.rotation_deg == pytest.approx(theta_deg, abs=1e-12)


def test_pose_from_affine_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction must be"):
        pose_from_affine_mm(np.eye(2), np.zeros(2), "fixed_to_moving")


def test_affine_px_to_mm_maps_points_like_the_images_do():
    ref = Image.from_array(np.random.default_rng(0).random((40, 60)), pixel_spacing_mm=(0.5, 0.25),
                           beam_axis_px=(31.0, 17.5))
    frame = Image.from_array(np.random.default_rng(1).random((50, 70)), pixel_spacing_mm=(0.4, 0.3),
                             beam_axis_px=(20.0, 26.0))
    a = np.array([[0.9, -0.2], [0.15, 1.1]])
    b = np.array([3.0, -4.0])
    m, t = affine_px_to_mm(a, b, ref.spacing_mm, ref.beam_axis_px, frame.spacing_mm, frame.beam_axis_px)
    for col, row in [(0.0, 0.0), (12.5, 33.0), (59.0, 2.0)]:
        dst_px = a @ np.array([col, row]) + b
        expected = np.array(frame.pixel_to_mm(dst_px[0], dst_px[1]), dtype=float)
        src_mm = np.array(ref.pixel_to_mm(col, row), dtype=float)
        np.testing.assert_allclose(m @ src_mm + t, expected, atol=1e-12)


def test_pose_errors_with_a_landmark_ignore_unobservable_rotation():
    truth = Pose(3.0, 0.0, 0.0)
    bb_ref = (0.5, 0.8)
    bb_frame = tuple(apply_pose(truth, np.array([bb_ref]))[0])
    # a rotation about the beam axis plus the translation that keeps the BB where it is: zero error at the BB
    found_rot = Pose(0.0, 0.0, 1.0)
    moved = apply_pose(found_rot, np.array([bb_ref]))[0]
    found = Pose(bb_frame[0] - moved[0], bb_frame[1] - moved[1], 1.0)
    err_t, err_r = pose_errors(found, truth, landmark_ref_mm=bb_ref, landmark_frame_mm=bb_frame)
    assert err_t == pytest.approx(0.0, abs=1e-12)
    assert err_r == pytest.approx(1.0)
    # without the landmark the same pose is off by the translation difference
    assert pose_errors(found, truth)[0] == pytest.approx(math.hypot(found.dx_mm - 3.0, found.dy_mm), rel=1e-12)


# --- synthetic truth ------------------------------------------------------------------------------


def test_synthetic_case_obeys_the_contract():
    """A structure at reference point q is found at R(theta) q + d in the frame."""
    truth = Pose(2.0, -1.0, 3.0)
    case = synthetic_case((120, 160), seed=5, pose=truth, spacing_mm=0.5, beam_axis_px=(90.0, 50.0))
    ref, frame = case.reference, case.frame
    assert case.truth == truth and case.truth_kind == "exact"
    # compare the frame with the reference sampled at R(-theta)(p - d) on interior pixels
    from scipy import ndimage

    rows, cols = frame.shape
    rr, cc = np.mgrid[10:rows - 10, 10:cols - 10].astype(float)
    x, y = frame.pixel_to_mm(cc, rr)
    t = math.radians(truth.rotation_deg)
    u, v = x - truth.dx_mm, y - truth.dy_mm
    qx, qy = math.cos(t) * u + math.sin(t) * v, -math.sin(t) * u + math.cos(t) * v
    qc, qr = ref.mm_to_pixel(qx, qy)
    inside = (qc > 1) & (qc < cols - 2) & (qr > 1) & (qr < rows - 2)
    predicted = ndimage.map_coordinates(ref.pixels, [qr[inside], qc[inside]], order=3)
    actual = frame.pixels[10:rows - 10, 10:cols - 10][inside]
    spread = float(np.ptp(ref.pixels))
    assert inside.mean() > 0.6
    assert np.abs(predicted - actual).max() < 0.02 * spread


# --- each peer recovers a known pose through its conversion ---------------------------------------


@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_recovers_known_shift_and_rotation(peer, started):
    if not _installed(peer):
        pytest.skip(f"{PEER_MODULES[peer]} is not installed")
    method = started[peer]
    assert method.available, method.reason
    rotates = peer != "skimage-pcc"
    truth = Pose(1.6, -1.1, 1.5 if rotates else 0.0)
    # an off-centre beam axis: a conversion about the wrong centre shows up as a translation error
    case = synthetic_case((160, 200), seed=7, pose=truth, spacing_mm=0.5, beam_axis_px=(120.0, 70.0))
    outcome = method.register(method.prepare(case), case)
    err_t, err_r = pose_errors(outcome.pose, truth)
    assert outcome.ok
    assert err_t < TRANSLATION_TOL_MM, outcome.pose
    if rotates:
        assert err_r < ROTATION_TOL_DEG, outcome.pose
    else:
        assert outcome.pose.rotation_deg == 0.0


def test_portalign_method_reports_the_engine_result():
    method = PortalignMethod("cpu")
    method.start()
    assert method.available
    truth = Pose(1.6, -1.1, 1.5)
    case = synthetic_case((160, 200), seed=7, pose=truth, spacing_mm=0.5, beam_axis_px=(120.0, 70.0))
    outcome = method.register(method.prepare(case), case)
    err_t, err_r = pose_errors(outcome.pose, truth)
    assert err_t < 0.25 and err_r < 0.25, outcome


def test_a_peer_whose_library_is_missing_names_the_extra(monkeypatch):
    """A new user's trial: ``portalign bench --quick`` without the bench extra said only "unavailable:
    ModuleNotFoundError: No module named 'SimpleITK'" for each peer; now which install brings it."""
    from bench.peers import SimpleITKMethod

    def missing() -> None:
        raise ModuleNotFoundError("No module named 'SimpleITK'", name="SimpleITK")

    method = SimpleITKMethod()
    monkeypatch.setattr(method, "_import", missing)
    method.start()
    assert not method.available
    assert method.reason == 'SimpleITK is not installed: pip install -e ".[bench]" (the bench extra)'


def test_unavailable_gpu_is_reported_not_raised():
    method = PortalignMethod("gpu")
    method.start()
    if method.available:
        pytest.skip("a GPU backend is available here")
    assert method.reason  # the backend's own explanation, e.g. no CUDA device


# --- truths of the real and simulated pairs --------------------------------------------------------


def _wl_like(bb_col: float, bb_row: float) -> Image:
    """A flat 20 mm field with a dark 6 mm BB, 0.25 mm pixels, Gaussian edges."""
    rows, cols = 200, 220
    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    from scipy.special import erf

    def box(lo: float, hi: float, v: np.ndarray) -> np.ndarray:
        return 0.5 * (erf((v - lo) / 3.0) - erf((v - hi) / 3.0))

    fld = box(70, 150, cc) * box(60, 140, rr)
    bb = np.clip(12.0 - np.hypot(cc - bb_col, rr - bb_row), 0, 1)
    return Image.from_array(5000.0 * fld * (1.0 - 0.5 * bb) + 10.0, pixel_spacing_mm=0.25)


def test_measure_bb_finds_a_known_centroid():
    img = _wl_like(113.3, 96.6)
    x, y = measure_bb(img)
    ex, ey = img.pixel_to_mm(113.3, 96.6)
    assert abs(x - ex) < 0.03 and abs(y - ey) < 0.03


def test_field_mask_is_the_field_minus_the_margin():
    img = _wl_like(110.0, 100.0)
    mask = field_mask(img, margin_mm=3.0)
    assert mask is not None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    # 50 % lines at columns 70 and 150, rows 60 and 140; 3 mm = 12 px inside them
    assert abs(cols[0] - 82) <= 1 and abs(cols[-1] - 138) <= 1
    assert abs(rows[0] - 72) <= 1 and abs(rows[-1] - 128) <= 1
    assert mask[100, 110]  # the BB is inside the field mask


def test_field_mask_of_an_open_image_is_none():
    case = synthetic_case((96, 96), seed=1, spacing_mm=0.5)
    assert field_mask(case.frame) is None


def test_field_mask_from_planned_jaws():
    img = Image.from_array(np.random.default_rng(0).random((100, 120)) + 1.0, pixel_spacing_mm=0.5)
    mask = field_mask(img, margin_mm=2.0, field_mm=(-10.0, 15.0, -5.0, 8.0))
    assert mask is not None
    x, y = img.pixel_to_mm(np.arange(120), np.arange(100))
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    assert x[cols[0]] > -8.0 and x[cols[-1]] < 13.0
    # image +y is -Yb: jaws y1=-5, y2=8 cover image y in (-8, 5)
    assert y[rows[0]] > -6.0 and y[rows[-1]] < 3.0


@pytest.mark.real_data
def test_wl_truth_is_the_measured_bb_shift():
    if not (WL / "cardinal").is_dir() or not (WL / "lat3mm").is_dir():
        pytest.skip(f"Winston-Lutz images not found under {WL}")
    cases = {c.name: c for c in wl_cases(["lat3mm"], [0, 90])}
    g0, g90 = cases["wl-lat3mm-g0"], cases["wl-lat3mm-g90"]
    assert isinstance(g0, Case) and g0.truth_kind == "measured" and not g0.rotation_observable
    # SOURCES.md: a 3 mm lateral couch shift moves the BB about +3 mm in x at gantry 0 and not at gantry 90
    assert 2.7 < g0.truth.dx_mm < 3.5 and abs(g0.truth.dy_mm) < 0.3
    assert abs(g90.truth.dx_mm) < 0.3 and abs(g90.truth.dy_mm) < 0.3


# --- command line ---------------------------------------------------------------------------------


def test_size_parser():
    assert cli._sizes("128") == [(128, 128)]
    assert cli._sizes("1024x768, 512") == [(768, 1024), (512, 512)]
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="use N or COLSxROWS"):
        cli._sizes("big")


def test_unknown_peer_is_refused(tmp_path, capsys):
    assert cli.main(["--smoke", "--out", str(tmp_path), "--peers", "matlab"]) == 2
    assert "unknown peer matlab" in capsys.readouterr().err


def test_smoke_run_writes_tables_json_and_plots(tmp_path, started):
    peers = [p for p in PEERS if _installed(p)]
    out = tmp_path / "bench"
    status = cli.main(["--smoke", "--out", str(out), "--sizes", "128", "--peers", *peers])
    assert status == 0
    md = (out / "results.md").read_text()
    names = ["portalign-cpu", "portalign-gpu", *peers]
    for name in names:
        assert f"| {name} |" in md, name
    for png in ("scaling.png", "accuracy.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {n for n in names if results["methods"][n]["available"]}
    assert results["config"]["seed"] == 0 and results["config"]["sizes"] == ["128x128"]
    for key in ("cpu", "usable_cores", "load_average_1_5_15"):
        assert key in results["machine"]
    assert results["versions"]["numpy"] == np.__version__
    portalign_run = next(r for r in results["runs"] if r["method"] == "portalign-cpu")
    assert len(portalign_run["times_ms"]) == 3 and math.isfinite(portalign_run["translation_error_mm"])
    assert "first_frame_ms" in portalign_run


def test_smoke_run_without_matplotlib_writes_the_tables_and_names_the_extra(tmp_path, capsys, monkeypatch):
    """A new user's trial: ``python -m bench --quick`` without the bench extra ran, then died in the plots."""
    from bench.report import NO_PLOTS

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "bench"
    assert cli.main(["--smoke", "--out", str(out), "--sizes", "128", "--peers"]) == 0
    assert NO_PLOTS in capsys.readouterr().out
    assert 'pip install -e ".[bench]"' in NO_PLOTS
    md = (out / "results.md").read_text()
    assert "| portalign-cpu |" in md and f"({NO_PLOTS})" in md and "![scaling]" not in md
    assert not (out / "scaling.png").exists() and not (out / "accuracy.png").exists()
    assert json.loads((out / "results.json").read_text())["config"]["sizes"] == ["128x128"]


def test_frame_never_comes_back_from_the_device():
    """Per frame only statistics, metric vectors and the search window are read back, never a frame-sized array."""
    from bench.device_work import device_work

    work = device_work((384, 512), n_frames=2)
    assert work["ok"] == 2 and work["max_error_mm"] <= 0.1
    assert 0 < work["largest_read_bytes"] <= work["frame_bytes"] / 8
    assert work["host_read_bytes"] <= work["frame_bytes"] / 4
    # the frame goes up once; everything else uploaded is a few poses
    assert work["frame_bytes"] <= work["upload_bytes"] <= 1.1 * work["frame_bytes"]
    assert work["kernel_calls"]["downsample2"] >= 1 and work["kernel_calls"]["coarse_search"] == 1


@pytest.mark.real_data
def test_portal_pairs_bench_registers_portal_against_portal(capsys):
    from bench import portal_pairs
    from bench.cases import CT_FOLDER

    if not CT_FOLDER.is_dir():
        pytest.skip(f"the thorax CT is not at {CT_FOLDER}")
    assert portal_pairs.main(["--pairs", "1", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("pair 0"))
    error = float(line.split("portalign ")[1].split(" mm")[0])
    # the couch shift projected on the image (parallax aside) is found within half a millimetre, and ok
    assert "ok=True" in line and error < 0.5
    assert "median translation error: portalign" in out


@pytest.mark.real_data
def test_portal_cine_bench_checks_every_frame_s_interior_and_finds_the_small_motions(capsys):
    from bench import portal_cine
    from bench.cases import CT_FOLDER

    if not CT_FOLDER.is_dir():
        pytest.skip(f"the thorax CT is not at {CT_FOLDER}")
    assert portal_cine.main(["--frames", "3", "--detector", "384x512", "--spacing", "0.784"]) == 0
    out = capsys.readouterr().out
    # every frame is matched near its fixed aperture, so the deep interior is read on each; the 0.2-0.8 mm motions
    # are found within 0.3 mm
    assert "3 of 3 frames read the deep interior (the check alone: median" in out, out
    assert "ok: 3 of 3; median error" in out, out
    assert float(out.split("max ")[1].split(" mm")[0]) < 0.3, out
    assert portal_cine.main(["--frames", "0"]) == 2


@pytest.mark.real_data
def test_frame_costs_bench_times_and_profiles_each_pair(capsys):
    from bench import frame_costs
    from bench.cases import CT_FOLDER

    if not CT_FOLDER.is_dir():
        pytest.skip(f"the thorax CT is not at {CT_FOLDER}")
    assert frame_costs.main(["--pairs", "4", "--only", "3", "--warm", "1", "--timed", "2"]) == 0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("pair  3"))
    # pair 3 of seed 11: a collimator-turned portal pair with dead detector lines, registered ok
    assert "collimator portal dead-lines" in line and "(ok=True)" in line, line
    assert float(line.split(" ms a frame")[0].split()[-1]) > 0
    calls = int(line.split(" Python-level calls")[0].split()[-1])
    assert 20 < calls < 5000, line  # a frame's Python: the front end and the checks, the search compiled
    assert "SUMMARY collimator: 1 pairs, median" in out


@pytest.mark.real_data
def test_real_windows_bench_counts_the_outcomes_and_names_the_wrong_ones(capsys, tmp_path):
    from bench import real_windows

    if not real_windows.REAL.is_dir():
        pytest.skip(f"the real images are not at {real_windows.REAL}")
    out_file = tmp_path / "windows.jsonl"
    assert real_windows.main(["--match", "wl_demo_as500/gantry0.dcm", "--jsonl", str(out_file)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert out.startswith(f"{len(records)} pairs of 1 RT Images (seed 5)")
    assert 6 <= len(records) <= 12 and {r["file"] for r in records} == {"pylinac/wl_demo_as500/gantry0.dcm"}
    counts = {}
    for r in records:
        counts[real_windows.outcome(r)] = counts.get(real_windows.outcome(r), 0) + 1
    for name, count in counts.items():  # every outcome is printed with its count
        assert f"{count:4d}  {name}" in out
    for r in records:  # a window moved by whole pixels: the truth is those pixels
        assert (r["dx"], r["dy"]) == pytest.approx((r["moved_px"][1] * 0.5226667, r["moved_px"][0] * 0.5226667),
                                                   abs=1e-5)
        if r["ok"]:
            assert r["error_mm"] == pytest.approx(math.hypot(r["dx_mm"] - r["dx"], r["dy_mm"] - r["dy"]))
            assert r["shift_uncertainty_mm"] > 0.0  # what the result stated, compared with its error below
    if any(r["ok"] for r in records):
        assert "stated shift uncertainty u (1 sd, each axis) of the ok results: " in out


def test_real_windows_calibration_counts_axis_errors_in_units_of_the_stated_uncertainty():
    from bench.real_windows import uncertainty_calibration

    def record(dx_mm, dy_mm, u, ok=True):
        return {"dx": 1.0, "dy": -2.0, "dx_mm": dx_mm, "dy_mm": dy_mm, "shift_uncertainty_mm": u, "file": "f",
                "error_mm": math.hypot(dx_mm - 1.0, dy_mm + 2.0) if ok else None}

    records = [record(1.05, -2.0, 0.1),    # axis errors 0.5 u and 0
               record(1.15, -2.25, 0.1),   # 1.5 u and 2.5 u
               record(1.0, -1.6, 0.1),     # 0 and 4 u: beyond 3 u
               record(3.0, -2.0, 0.1, ok=False),  # refused: not counted
               {**record(1.0, -2.0, 0.1), "shift_uncertainty_mm": None}]  # none stated: not counted
    within, beyond = uncertainty_calibration(records)
    assert within == [(1, pytest.approx(3 / 6)), (2, pytest.approx(4 / 6)), (3, pytest.approx(5 / 6))]
    assert [(r["dy_mm"], pytest.approx(ratio)) for r, ratio in beyond] == [(-1.6, 4.0)]
    assert uncertainty_calibration([record(3.0, -2.0, 0.1, ok=False)]) is None
