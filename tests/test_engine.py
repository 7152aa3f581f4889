"""The registration engine: known displacements recovered, field edges ignored, honest confidence."""

from __future__ import annotations

import math

import numba
import numpy as np
import portalign
import pytest
from portalign import Image, RegistrationOptions, prepare_reference

from tests.synthetic import anatomy, field_aperture, moved, mv_portal

BASE = anatomy(384, seed=1)


def _pair(dx: float, dy: float, theta: float, *, spacing: float = 1.0, shape=(256, 256)):
    ref = Image.from_array(moved(BASE, 0, 0, 0, shape=shape, spacing_mm=spacing), pixel_spacing_mm=spacing, kind="drr")
    frame = Image.from_array(moved(BASE, dx, dy, theta, shape=shape, spacing_mm=spacing), pixel_spacing_mm=spacing)
    return ref, frame


NOISE_FREE_CASES = [(3.3, -5.7, 0.0), (12.25, 7.5, 2.3), (-15.0, 4.0, -4.0), (0.4, 0.2, 0.7), (-7.6, -18.3, 1.1)]


@pytest.mark.parametrize("method", ["auto", "mi", "edge"])
@pytest.mark.parametrize("dx,dy,theta", NOISE_FREE_CASES)
def test_noise_free_shift_and_rotation_recovered(method, dx, dy, theta):
    """DESIGN.md accuracy target: <= 0.1 px translation, <= 0.05 deg on noise-free synthetic pairs."""
    ref, frame = _pair(dx, dy, theta)
    result = prepare_reference(ref, RegistrationOptions(method=method), backend="cpu").register(frame)
    assert result.ok, result.reason
    assert abs(result.dx_mm - dx) <= 0.1
    assert abs(result.dy_mm - dy) <= 0.1
    assert abs(result.rotation_deg - theta) <= 0.05
    assert result.method == method and result.backend == "cpu"


def test_translation_only_option_leaves_rotation_not_estimated():
    ref, frame = _pair(6.0, -3.5, 0.0)
    result = portalign.register(ref, frame, RegistrationOptions(estimate_rotation=False), backend="cpu")
    assert result.ok and result.rotation_deg is None  # not measured: None, never 0
    assert math.hypot(result.dx_mm - 6.0, result.dy_mm + 3.5) <= 0.1
    # the global search's optima too: their rotation was held at 0, not measured
    assert result.details["candidates"] and all(c["rotation_deg"] is None for c in result.details["candidates"])


def test_different_sizes_and_spacings():
    """A 1.0 mm reference against a finer, larger frame with an off-centre beam axis: resampled at prepare time."""
    ref = Image.from_array(moved(BASE, 0, 0, 0, shape=(300, 300), spacing_mm=1.0), pixel_spacing_mm=1.0, kind="drr")
    shape = (400, 520)
    spacing = 0.55
    raw = moved(BASE, 4.0, -6.0, 1.5, shape=shape, spacing_mm=spacing)
    frame = Image.from_array(raw, pixel_spacing_mm=spacing)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok, result.reason
    assert math.hypot(result.dx_mm - 4.0, result.dy_mm + 6.0) <= 0.1
    assert abs(result.rotation_deg - 1.5) <= 0.05


def test_beam_axis_not_at_image_centre():
    """Geometry comes from the beam axis, not the image centre: crop the frame asymmetrically."""
    ref, frame = _pair(2.0, 3.0, 0.0)
    cropped = frame.pixels[10:, 25:]
    axis = (frame.beam_axis_px[0] - 25, frame.beam_axis_px[1] - 10)
    frame2 = Image(cropped, frame.spacing_mm, axis)
    result = portalign.register(ref, frame2, backend="cpu")
    assert result.ok and math.hypot(result.dx_mm - 2.0, result.dy_mm - 3.0) <= 0.1


@pytest.mark.parametrize("method", ["auto", "mi", "edge"])
def test_mv_against_drr_with_fixed_field(method):
    """MV frame (inverted, low contrast, noisy) with a field aperture that does not move against a kV DRR."""
    shape, spacing = (256, 256), 1.0
    dx, dy, theta = 5.5, -4.0, 2.0
    ref = Image.from_array(moved(BASE, 0, 0, 0, shape=shape), pixel_spacing_mm=spacing, kind="drr")
    aperture = field_aperture(shape, spacing, 70, 60)
    frame_pixels = mv_portal(moved(BASE, dx, dy, theta, shape=shape), aperture, noise=0.005)
    frame = Image.from_array(frame_pixels, pixel_spacing_mm=spacing, kind="portal")
    result = prepare_reference(ref, RegistrationOptions(method=method), backend="cpu").register(frame)
    assert result.ok, result.reason
    assert result.field_detected
    box = result.field_box_mm
    assert box is not None and abs(box[0] + 70) < 3 and abs(box[1] - 70) < 3 and abs(box[2] + 60) < 3
    assert math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.3
    assert abs(result.rotation_deg - theta) <= 0.2


def _static_field_pair(shift_x_mm: float):
    """Reference portal image and frame sharing a strong static field; only faint anatomy moves."""
    shape, spacing = (256, 256), 1.0
    aperture = field_aperture(shape, spacing, 60, 60, penumbra_mm=1.5)
    faint = 0.15 / np.ptp(BASE)  # anatomy contrast is a small fraction of the field edge
    ref = aperture * (1 + faint * moved(BASE, 0, 0, 0, shape=shape))
    frame = aperture * (1 + faint * moved(BASE, shift_x_mm, 0, 0, shape=shape))
    return ref, frame


def test_field_edges_do_not_drive_the_match():
    """A whole-image method locks onto the field and reports ~0; portalign must report the anatomy's move."""
    ref_pixels, frame_pixels = _static_field_pair(6.0)
    ref = Image.from_array(ref_pixels, pixel_spacing_mm=1.0, kind="portal")
    frame = Image.from_array(frame_pixels, pixel_spacing_mm=1.0, kind="portal")
    result = portalign.register(ref, frame, backend="cpu")
    assert result.field_detected and result.ok, result.reason
    assert abs(result.dx_mm - 6.0) <= 0.3 and abs(result.dy_mm) <= 0.3
    # the same pair with field detection switched off is pulled towards the static field
    naive = portalign.register(ref, frame, RegistrationOptions(field="none", method="edge"), backend="cpu")
    assert abs(naive.dx_mm - 6.0) > 1.0


def test_phase_correlation_would_return_the_field():
    """Sanity check of the pair above: plain phase correlation of the whole images finds no shift."""
    a, b = _static_field_pair(6.0)
    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    surface = np.abs(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)))
    peak = np.unravel_index(np.argmax(surface), surface.shape)
    shift = [(p + s // 2) % s - s // 2 for p, s in zip(peak, surface.shape, strict=True)]
    assert shift == [0, 0]


# --- honest confidence -----------------------------------------------------------------------------


def _reference():
    ref, _ = _pair(0, 0, 0)
    return prepare_reference(ref, backend="cpu")


def test_blank_frame_is_not_ok():
    rng = np.random.default_rng(3)
    blank = Image.from_array(100 + rng.normal(0, 1.0, (256, 256)), pixel_spacing_mm=1.0)
    result = _reference().register(blank)
    assert not result.ok
    assert "blank" in result.reason or "no match" in result.reason


def test_field_without_structure_is_not_ok():
    rng = np.random.default_rng(4)
    aperture = field_aperture((256, 256), 1.0, 60, 60)
    frame = Image.from_array(1000 * aperture + rng.normal(0, 2.0, (256, 256)), pixel_spacing_mm=1.0, kind="portal")
    result = _reference().register(frame)
    assert not result.ok and result.dx_mm is None
    # white noise alone spans about 5 of its sigmas: nothing but noise, not smoothed and tried again
    assert result.reason.startswith("nothing but noise inside the field: contrast is "), result.reason
    assert result.details["denoised"] is None


def test_ambiguity_is_null_where_no_rivals_were_compared():
    """0 says the global search compared optima and found no distinct rival; with nothing compared it is null."""
    ref, frame = _pair(4.0, -2.5, 0.0)
    searched = portalign.register(ref, frame, backend="cpu")
    assert searched.ok and searched.ambiguity is not None and 0.0 <= searched.ambiguity < 0.92
    alone = portalign.register(ref, frame, RegistrationOptions(candidates=1), backend="cpu")
    assert alone.ok and alone.ambiguity is None and '"ambiguity": null' in alone.as_json()
    assert math.hypot(alone.dx_mm - 4.0, alone.dy_mm + 2.5) <= 0.1  # the same match, one optimum refined
    rng = np.random.default_rng(3)
    blank = Image.from_array(100 + rng.normal(0, 1.0, (256, 256)), pixel_spacing_mm=1.0)
    nothing = _reference().register(blank)
    assert not nothing.ok and nothing.ambiguity is None


def test_saturated_frame_is_not_ok():
    ref, frame = _pair(2.0, 1.0, 0.0)
    pixels = frame.pixels.astype(np.float64)
    scaled = (pixels - pixels.min()) / np.ptp(pixels) * 65535 * 1.6
    stored = np.clip(scaled, 0, 65535).astype(np.uint16)
    frame = Image.from_array(stored, pixel_spacing_mm=1.0, extra={"saturation_value": 65535.0})
    result = prepare_reference(ref, backend="cpu").register(frame)
    assert not result.ok and "saturated" in result.reason


def test_optimum_beyond_search_range_is_not_ok():
    ref, frame = _pair(23.0, 0.0, 0.0)
    result = prepare_reference(ref, RegistrationOptions(max_shift_mm=20.0), backend="cpu").register(frame)
    assert not result.ok and "search range" in result.reason


def test_periodic_anatomy_is_ambiguous():
    """Stripes repeating every 12 mm: shifts of one period score the same. Running one way (vertically), they also
    leave shifts along them unmeasured: where the best rival found lies along them (eight global-search optima kept),
    the reason says so (one-directional, no pose); where it lies a period across them, ambiguous."""
    rr, cc = np.mgrid[0:256, 0:256].astype(float)
    stripes = np.sin(2 * np.pi * cc / 12.0) + 0.0 * rr
    ref = Image.from_array(stripes, pixel_spacing_mm=1.0, kind="drr")
    frame = Image.from_array(np.sin(2 * np.pi * (cc - 3.0) / 12.0), pixel_spacing_mm=1.0)
    result = portalign.register(ref, frame, RegistrationOptions(estimate_rotation=False), backend="cpu")
    assert not result.ok and result.dx_mm is None
    assert result.reason.startswith(("ambiguous", "one-directional match: the edges that match all run vertically"))
    assert result.reason.startswith("one-directional") or result.ambiguity >= 0.9


def test_unrelated_images_are_not_ok():
    ref = Image.from_array(anatomy(256, seed=11), pixel_spacing_mm=1.0, kind="drr")
    frame = Image.from_array(anatomy(256, seed=12), pixel_spacing_mm=1.0)
    result = portalign.register(ref, frame, backend="cpu")
    assert not result.ok


# --- determinism, reuse, contract ------------------------------------------------------------------


def test_deterministic_across_runs_and_thread_counts():
    ref, frame = _pair(4.4, -2.2, 1.3)
    reference = prepare_reference(ref, backend="cpu")
    first = reference.register(frame)
    again = reference.register(frame)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = prepare_reference(ref, backend="cpu").register(frame)
    finally:
        numba.set_num_threads(threads)
    for other in (again, single):
        assert (other.dx_mm, other.dy_mm, other.rotation_deg, other.score) == (
            first.dx_mm, first.dy_mm, first.rotation_deg, first.score)


def test_prepare_once_register_many():
    ref, _ = _pair(0, 0, 0)
    reference = prepare_reference(ref, backend="cpu")
    truths = [(1.0, 2.0, 0.5), (-3.0, 4.5, -1.0), (8.0, -1.0, 0.0)]
    for dx, dy, theta in truths:
        frame = Image.from_array(moved(BASE, dx, dy, theta), pixel_spacing_mm=1.0)
        result = reference.register(frame)
        assert result.ok and math.hypot(result.dx_mm - dx, result.dy_mm - dy) <= 0.1
    assert len(reference._plans) == 1  # one geometry, one plan: buffers reused


def test_result_contract_and_correction():
    ref, frame = _pair(5.0, -3.0, 2.0)
    result = portalign.register(ref, frame, backend="cpu")
    cx, cy, ct = result.correction()
    # applying the displacement then the correction returns a point to itself
    t = math.radians(result.rotation_deg)
    x, y = 17.0, -9.0
    px = math.cos(t) * x - math.sin(t) * y + result.dx_mm
    py = math.sin(t) * x + math.cos(t) * y + result.dy_mm
    u = math.radians(ct)
    bx = math.cos(u) * px - math.sin(u) * py + cx
    by = math.sin(u) * px + math.cos(u) * py + cy
    assert abs(bx - x) < 1e-9 and abs(by - y) < 1e-9
    payload = result.as_dict()
    for key in ("dx_mm", "dy_mm", "rotation_deg", "ok", "reason", "score", "method", "backend", "elapsed_ms"):
        assert key in payload
    assert payload["version"] == portalign.__version__
    assert '"dx_mm"' in result.as_json()


def test_auto_backend_is_cpu_here_with_reason():
    backend = portalign.select_backend("auto")
    if backend.name == "cpu":
        assert backend.fallback_reason
    with pytest.raises(portalign.BackendUnavailableError):
        portalign.select_backend("quantum")


@pytest.mark.parametrize("dx,dy,theta", [(3.3, -5.7, 0.0), (-12.0, 6.6, -3.1)])
def test_noise_free_high_resolution_frame(dx, dy, theta):
    """A clean 1024 x 768 frame at 0.39 mm: the working levels are coarser than a pixel, a polish level is not.

    Target (DESIGN.md): <= 0.1 px and <= 0.05 deg.
    """
    base = anatomy(768, seed=3)
    shape, spacing = (768, 1024), 0.39
    ref = Image.from_array(moved(base, 0, 0, 0, shape=shape, spacing_mm=spacing, base_spacing_mm=0.5),
                           pixel_spacing_mm=spacing, kind="drr")
    frame = Image.from_array(moved(base, dx, dy, theta, shape=shape, spacing_mm=spacing, base_spacing_mm=0.5),
                             pixel_spacing_mm=spacing)
    result = portalign.register(ref, frame, backend="cpu")
    assert result.ok, result.reason
    assert any(level.get("polish") for level in result.details["levels"])
    assert abs(result.dx_mm - dx) <= 0.1 * spacing and abs(result.dy_mm - dy) <= 0.1 * spacing
    assert abs(result.rotation_deg - theta) <= 0.05


def test_device_failure_falls_back_to_the_cpu_for_that_frame():
    """A backend whose kernel fails mid-run (out of memory, driver error): the frame is registered on the CPU."""
    from types import SimpleNamespace

    from portalign.backends import Backend, cpu_backend

    cpu = cpu_backend()

    def broken(*args, **kwargs):
        raise MemoryError("out of device memory (simulated)")

    kernels = SimpleNamespace(**{**vars(cpu.kernels), "gradient_correlation": broken})
    flaky = Backend(name="gpu", xp=np, kernels=kernels, device="simulated failing device")
    ref, frame = _pair(2.5, -1.5, 0.0)
    result = prepare_reference(ref, backend=flaky).register(frame)
    assert result.ok and result.backend == "cpu"
    assert math.hypot(result.dx_mm - 2.5, result.dy_mm + 1.5) <= 0.1
    assert any("gpu backend failed (MemoryError" in w for w in result.warnings)


def test_evaluate_scores_more_poses_than_one_stencil_in_chunks():
    # the plan's result buffers hold one stencil; a longer pose list is scored chunk by chunk, never past the buffer
    from portalign.registration._refine import evaluate

    ref, frame = _pair(2.0, -1.0, 0.0)
    # (no mirror check: its flipped copies would be the last frame in the plan's buffers)
    reference = prepare_reference(ref, RegistrationOptions(mirror_check="never"), backend="cpu")
    assert reference.register(frame).ok  # fills the plan's frame-side level buffers
    plan = reference.plan_for(frame.shape, frame.spacing_mm, frame.beam_axis_px)
    level = plan.levels[plan.refine_levels[-1]]
    capacity = plan.edge_out.shape[0]
    poses = np.column_stack([np.linspace(0.0, 4.0, 3 * capacity + 2), np.full(3 * capacity + 2, -1.0),
                             np.zeros(3 * capacity + 2)])
    for metric in ("edge", "mi"):
        together = evaluate(reference.backend, plan, level, poses, metric)
        one_by_one = np.array([evaluate(reference.backend, plan, level, p[None, :], metric)[0] for p in poses])
        assert together.shape == (len(poses),)
        np.testing.assert_allclose(together, one_by_one, rtol=1e-12)
        assert abs(poses[int(np.argmax(together)), 0] - 2.0) <= 0.25  # the true shift scores best


@pytest.mark.parametrize("policy", ["auto", 1])
@pytest.mark.parametrize(("noise", "denoised", "budget"), [(0.001, False, 60), (0.005, True, 138)])
def test_a_frame_is_a_few_compiled_calls_not_a_python_conversation(policy, noise, denoised, budget, monkeypatch):
    """After warm-up a frame (MV portal with a field against a DRR) takes at most 60 Python-level calls (cProfile).

    The pyramid, field detection, level stage and search each run as one compiled call; what is left in Python
    is the lane, the thread scope, the verdicts and the result. A count, not a time: it cannot be noise. One
    thread (a busy machine, a pinned policy) changes numba's count on entry and exit of every frame: that too
    stays within the count. A noisy frame (contrast under 100x its noise, here at 0.5 % noise: the synthetic
    MV anatomy has little contrast) is registered a second time from its smoothed pixels
    (``_program.DENOISE``): one compiled smoothing call and a second pass, and the smoothed match's peak check
    (``_program.PEAK_CHECK_SMOOTHED``: one compiled evaluation of nine poses and a closed-form 2 x 2 eigenproblem, 17
    calls; numpy's ``eigh`` made it 49), at most 126 calls (100 before the field's three-level check,
    ``field.three_level_split``: one compiled call a detection; 104 before the peak check; 60 and 121 before the
    frame's own penumbra was measured against a DRR, ``_program._frame_band_mm``: one compiled call, and the lookup
    of the plan with the band it asks for, about 4 calls; 56 / 122 measured once the band's lanes were held by the
    geometry's and the intensity fit's level asked only of a frame that may be polished; 134-137 once the field's
    interior is smoothed over itself, ``_frame.denoised_frame``: three more compiled calls, the field-level mask eroded
    and grown to the detector's pixels). Both images record their gantry and couch angles, as DICOM files do: the
    angle between their beams (``details["beam_angle_deg"]``, a dozen trigonometric calls) is worked out once per pair
    of views (the bench pair's count 74 -> 59). The thread policy is read again
    every ``POLICY_REFRESH_S`` (0.25 s: the environment, CPU affinity and load), not every frame: held here, or
    how many of the five frames cross such a moment (a busy machine's slower frames) would move the count by 2-9.
    """
    import cProfile
    import pstats

    from portalign import set_thread_policy
    from portalign.backends import _cpu

    monkeypatch.setattr(_cpu, "POLICY_REFRESH_S", 1e9)
    # under auto the thread tuner's count in use is held once its exploring frames are done (its smoothed time no
    # longer moves): on a busy machine the one-thread and wide times are close, and a switch between them mid-measure
    # (numba's count set on entry and exit) moved the count by 1-6 calls in five frames (139.2 seen where 138 is
    # the rule); the tuner's own choices are tested in test_threads
    monkeypatch.setattr(_cpu.ThreadTuner, "SMOOTHING", 0.0)

    shape, spacing = (256, 256), 1.0
    # (both views recorded, as a DICOM pair's are: the beam angle between them is worked out once per pair of views)
    views = {"gantry_deg": 30.0, "couch_deg": 0.0, "collimator_deg": 0.0}
    ref = Image.from_array(moved(BASE, 0, 0, 0, shape=shape), pixel_spacing_mm=spacing, kind="drr", **views)
    aperture = field_aperture(shape, spacing, 70, 60)
    frame = Image.from_array(mv_portal(moved(BASE, 2.0, -1.0, 0.5, shape=shape), aperture, noise=noise),
                             pixel_spacing_mm=spacing, kind="portal", **views)
    prepared = prepare_reference(ref, backend="cpu")
    set_thread_policy(policy)
    try:
        # past the thread tuner's exploring frames (the first, untimed, then EXPLORE frames alternating the counts;
        # the mirror check's copies take none of them): the frames profiled are steady ones
        for _ in range(_cpu.ThreadTuner.EXPLORE + 2):
            first = prepared.register(frame)
        assert first.ok and first.field_detected, first.reason
        assert (first.details["denoised"] is not None) == denoised, first.details["contrast_to_noise"]
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(5):
            result = prepared.register(frame)
        profile.disable()
    finally:
        set_thread_policy("auto")
    calls = pstats.Stats(profile).total_calls / 5  # type: ignore[attr-defined]
    print("CALLS", policy, noise, calls)
    # (auto measures x.2 on a quiet machine too: one call in the five frames beyond the pinned policy's count)
    assert calls <= budget + (0.2 if policy == "auto" else 0.0), f"{calls:.1f} Python-level calls per frame"
    assert (result.dx_mm, result.dy_mm, result.rotation_deg) == (first.dx_mm, first.dy_mm, first.rotation_deg)



def test_the_rotation_scan_runs_for_a_large_turn_against_a_drr_only(monkeypatch):
    """``_search_program.rotation_scan`` (the searched rotations scored on the first refinement level before the
    ascent) runs where the global search claims a turn of more than one search step (2 deg) against a DRR; not for a
    small one (most frames: no cost), not for two portal images (their shared aperture is in every edge score), not
    without rotation. On the eager path (the compiled program makes the same choices: ``alike``, ``scan_wanted``)."""
    from portalign.registration import _program, _search_program

    scans = []
    scan = _search_program.rotation_scan
    monkeypatch.setattr(_program, "search_compiled", _search_program.search_eager)
    monkeypatch.setattr(_search_program, "rotation_scan", lambda *args: scans.append(args[3].copy()) or scan(*args))
    shape, spacing = (256, 256), 1.0
    aperture = field_aperture(shape, spacing, 70, 60)
    options = RegistrationOptions(mirror_check="never")

    def portal(theta: float) -> Image:
        pixels = mv_portal(moved(BASE, 2.0, -1.0, theta, shape=shape), aperture, noise=0.001)
        return Image.from_array(pixels, pixel_spacing_mm=spacing, kind="portal")

    drr = Image.from_array(moved(BASE, 0, 0, 0, shape=shape), pixel_spacing_mm=spacing, kind="drr")
    result = portalign.register(drr, portal(3.5), options, backend="cpu")
    assert result.ok and abs(result.rotation_deg - 3.5) < 0.3, (result.reason, result.rotation_deg)
    assert scans and abs(math.degrees(scans[0][2])) > 2.0, scans
    scans.clear()
    assert portalign.register(drr, portal(0.5), options, backend="cpu").ok
    assert not scans  # a small turn: the ascent's own reach
    reference = Image.from_array(mv_portal(moved(BASE, 0, 0, 0, shape=shape), aperture, noise=0.001),
                                 pixel_spacing_mm=spacing, kind="portal")
    portalign.register(reference, portal(3.5), options, backend="cpu")
    assert not scans
    portalign.register(drr, portal(3.5), RegistrationOptions(mirror_check="never", estimate_rotation=False),
                       backend="cpu")
    assert not scans


def test_options_given_with_a_prepared_reference_are_not_silently_ignored():
    """A hostile campaign: ``register(prepared, frame, RegistrationOptions(max_shift_mm=0.5))`` was ok at a 4.1 mm
    shift: the prepared reference's own options were used and the ones given dropped. Other options raise, naming
    them; the same options (or none) register as before."""
    ref, frame = _pair(2.0, 1.0, 0.0)
    prepared = prepare_reference(ref, RegistrationOptions(max_shift_mm=10.0), backend="cpu")
    with pytest.raises(portalign.PortalignError, match=r"^register: the reference was prepared with other options than "
                                                       r"those given here \(max_shift_mm=0.5\)"):
        portalign.register(prepared, frame, RegistrationOptions(max_shift_mm=0.5))
    same = portalign.register(prepared, frame, RegistrationOptions(max_shift_mm=10.0))
    assert same.ok and math.hypot(same.dx_mm - 2.0, same.dy_mm - 1.0) < 0.1
    assert portalign.register(prepared, frame).ok
