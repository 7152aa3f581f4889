"""GPU kernels and the GPU backend against the CPU kernels and the float64 references.

Runs on a CUDA device (with CuPy) or in numba's CUDA simulator, which must be
switched on before numba is imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -m gpu tests

Elsewhere every test here is skipped. The simulator runs each CUDA thread as a
Python thread, so the images are tiny (24 x 20) and the launch shape is patched
small (8 or 5 threads per block, 2-3 blocks): multi-block grids, grid-stride
loops, chunk flushes of the privatised histograms and tree reductions over
blocks that are not a power of two all run.

Tolerances (GPU vs CPU): bit-identical for every integer and mask kernel, the
features, the row sums, the joint histograms and ``masked_range``; 1e-12
relative for mutual information and 1e-9 of the sums' magnitude for the edge
correlation (fixed-order float64 reductions, bit-identical run to run); one
float32 ulp (2e-7 relative) for ``warp_bilinear``; 1e-5 of the largest value
for the float32 FFT correlation window (identical under the simulator).
"""

from __future__ import annotations

import inspect
import sys

import numba
import numpy as np
import pytest
from numba import cuda
from numpy.testing import assert_allclose, assert_array_equal
from portalign.kernels import cpu
from portalign.kernels.cpu import level as cpu_level
from portalign.kernels.cpu.edge import INVALID_FEATURE
from portalign.kernels.gpu import launch
from portalign.kernels.reference import gradient as ref_gradient
from portalign.kernels.reference import mask as ref_mask
from portalign.kernels.reference import mutual_information as ref_mi
from portalign.kernels.reference import pyramid as ref_pyramid
from portalign.kernels.reference import warp as ref_warp

from tests.kernel_cases import (
    REF_SHAPE,
    SHAPE,
    listed_pixels,
    pose_batch,
    random_image,
    random_mask,
    rotations_for,
    structured_image,
)

SIMULATED = bool(numba.config.ENABLE_CUDASIM)


def _why_no_gpu() -> str:
    if SIMULATED:
        return ""
    from numba import cuda

    if not cuda.is_available():
        return "no CUDA device; run NUMBA_ENABLE_CUDASIM=1 python -m pytest -m gpu tests to simulate one"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed: pip install 'portalign[gpu-cuda13]' (or gpu-cuda12)"
    return ""


WHY_NO_GPU = _why_no_gpu()
#: The whole-registration tests compare backends frame by frame; the mirror check (three more registrations of a
#: first frame, ``RegistrationOptions.mirror_check``) runs the same steps again and would quadruple their time here.
NO_MIRROR_CHECK = "never"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(WHY_NO_GPU), reason=WHY_NO_GPU)]

#: (threads per block, max blocks, pixels per thread): tiny shapes everywhere; a real device also runs the defaults.
LAUNCHES = [(8, 3, 2), (5, 2, 3)] + ([] if SIMULATED else [(256, 1024, 16)])
POSES = np.concatenate([pose_batch("subpixel_rotated"), pose_batch("integer")[1:], pose_batch("outside")[[0, 3]]])
POSE_ROTATIONS = np.concatenate([rotations_for("subpixel_rotated"), rotations_for("integer")[1:],
                                 rotations_for("outside")[[0, 3]]])


@pytest.fixture(scope="module")
def backend():
    from portalign.backends import gpu_backend

    return gpu_backend()


@pytest.fixture(scope="module", autouse=True)
def short_gil_switch():
    # The simulator's block manager polls its threads in a busy loop; with Python's default
    # 5 ms switch interval a thread woken from syncthreads waits up to 5 ms for the GIL.
    previous = sys.getswitchinterval()
    if SIMULATED:
        sys.setswitchinterval(2e-4)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture(autouse=True)
def tiny_launch(monkeypatch):
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 3)
    monkeypatch.setattr(launch, "PIXELS_PER_THREAD", 2)


def _launch(monkeypatch, shape):
    tpb, blocks, per_thread = shape
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", tpb)
    monkeypatch.setattr(launch, "MAX_BLOCKS", blocks)
    monkeypatch.setattr(launch, "PIXELS_PER_THREAD", per_thread)


def _run_both(backend, name, host_args, out_indices):
    """Run kernel ``name`` on the CPU and on the GPU backend; return (cpu outputs, gpu outputs) on the host."""
    cpu_args = [a.copy() if isinstance(a, np.ndarray) else a for a in host_args]
    getattr(cpu, name)(*cpu_args)
    gpu_args = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
    getattr(backend.kernels, name)(*gpu_args)
    return [cpu_args[i] for i in out_indices], [backend.to_host(gpu_args[i]) for i in out_indices]


def test_backend_is_gpu_with_twin_kernels(backend):
    assert backend.name == "gpu"
    if SIMULATED:
        assert backend.xp is np and "simulator" in backend.device
    else:
        import cupy

        assert backend.xp is cupy
    cpu_names = set(vars(cpu.KERNELS)) - set(cpu.CPU_ONLY)
    assert set(vars(backend.kernels)) == cpu_names
    # the GPU runs the compiled program's steps one kernel at a time (the same numbers: test_program_kernels)
    assert not backend.compiled_program
    for name in cpu_names:  # same arguments, in the same order
        cpu_fn = getattr(cpu.KERNELS, name)
        cpu_params = list(inspect.signature(getattr(cpu_fn, "py_func", cpu_fn)).parameters)
        assert list(inspect.signature(getattr(backend.kernels, name)).parameters) == cpu_params, name


def _elementwise_case(name):
    image, mask = structured_image(), random_mask()
    odd = structured_image((25, 21))
    f32, u8 = np.float32, np.uint8
    cases = {
        "downsample2": ([odd, np.zeros((12, 10), f32)], [1]),
        "downsample2_mask": ([random_mask((25, 21)), np.zeros((12, 10), u8)], [1]),
        "orientation_features": ([image, mask, 40.0, 30.0, np.zeros(SHAPE, f32), np.zeros(SHAPE, f32)], [4, 5]),
        "gradient_row_sums": ([image, mask, 30.0, np.zeros((SHAPE[0], 2))], [3]),
        "threshold_mask": ([image, float(np.median(image)), True, np.zeros(SHAPE, u8)], [3]),
        "erode_box": ([random_mask(keep=0.95), 2, np.zeros(SHAPE, u8), np.zeros(SHAPE, u8)], [3]),
        "quantize": ([image, mask, float(image.min()) + 50.0, float(image.max()) - 50.0, 16,
                      np.zeros(SHAPE, np.int16)], [5]),
        "warp_bilinear": ([structured_image(REF_SHAPE), pose_batch("subpixel_rotated")[2], -3.0,
                           np.zeros(SHAPE, f32)], [3]),
    }
    return cases[name]


def _reference_of(name, args, outs):
    """Float64 reference outputs for the elementwise kernels."""
    module = {"downsample2": ref_pyramid, "downsample2_mask": ref_pyramid, "orientation_features": ref_gradient,
              "gradient_row_sums": ref_gradient, "threshold_mask": ref_mask, "erode_box": ref_mask,
              "quantize": ref_mi, "warp_bilinear": ref_warp}[name]
    ref_args = [np.zeros(a.shape, np.float64) if i in outs else a for i, a in enumerate(args)]
    getattr(module, name)(*ref_args)
    return [ref_args[i] for i in outs]


@pytest.mark.parametrize("name", ["downsample2", "downsample2_mask", "orientation_features", "gradient_row_sums",
                                  "threshold_mask", "erode_box", "quantize", "warp_bilinear"])
def test_elementwise_kernels_match_cpu_and_reference(backend, name):
    args, outs = _elementwise_case(name)
    cpu_out, gpu_out = _run_both(backend, name, args, outs)
    for c, g, r in zip(cpu_out, gpu_out, _reference_of(name, args, outs), strict=True):
        if name == "warp_bilinear" and not SIMULATED:
            assert_allclose(g, c, rtol=2.4e-7, atol=0)  # the device may fuse the blend into FMAs: one ulp
        else:
            assert_array_equal(g, c)  # bit-identical
        assert_allclose(g, r, rtol=1e-6, atol=2e-6 if name == "orientation_features" else 1e-3)
    assert any(np.any(g != 0) for g in gpu_out)


@pytest.mark.parametrize("case", ["random", "structured", "empty", "constant", "hot pixel", "two hot pixels",
                                  "constant with hot pixels", "many hot pixels"])
def test_masked_range_and_pixel_list_match_cpu(backend, case):
    image = random_image() if case == "random" else structured_image()
    mask = random_mask(keep=0.7)
    if case == "empty":
        mask[...] = 0
    if case.startswith("constant"):
        image = np.full(SHAPE, 12.25, np.float32)
    if "hot" in case:  # the refinement passes (extra kernels and reads) give the CPU's numbers too
        mask[...] = 1
        image[2, 3] = 1e38
        if case != "hot pixel":
            image[5, 7] = -1e20
        if case == "many hot pixels":  # 3 % of the pixels: the outlier fence's passes
            image.flat[np.random.default_rng(5).choice(image.size, image.size * 3 // 100, replace=False)] = 1e25
    expected = cpu.masked_range(image, mask, 0.005, 0.995)
    got = backend.kernels.masked_range(backend.asarray(image), backend.asarray(mask), 0.005, 0.995)
    assert got == expected and type(got[2]) is int
    rows = backend.xp.zeros(mask.size, dtype=backend.xp.int32)
    cols = backend.xp.zeros(mask.size, dtype=backend.xp.int32)
    count = backend.kernels.pixel_list(backend.asarray(mask), rows, cols)
    e_rows, e_cols, e_count = listed_pixels(mask)
    assert count == e_count
    assert_array_equal(backend.to_host(rows)[:count], e_rows[:count])
    assert_array_equal(backend.to_host(cols)[:count], e_cols[:count])


def _histogram_inputs(bins):
    frame, reference = structured_image(SHAPE, 0), structured_image(REF_SHAPE, 10)
    frame_mask = random_mask(SHAPE, seed=3, keep=0.6)
    frame_bins, ref_bins = np.empty(SHAPE, np.int16), np.empty(REF_SHAPE, np.int16)
    cpu.quantize(frame, frame_mask, float(frame.min()), float(frame.max()), bins, frame_bins)
    cpu.quantize(reference, random_mask(REF_SHAPE, seed=4, keep=0.95), float(reference.min()),
                 float(reference.max()), bins, ref_bins)
    rows, cols, count = listed_pixels(frame_mask)
    return rows, cols, count, frame_bins, ref_bins


@pytest.mark.parametrize("shape", LAUNCHES + ["global-atomics"])
def test_joint_histograms_bit_identical_to_cpu(backend, monkeypatch, shape):
    if shape == "global-atomics":  # bins too many for shared memory: straight int64 atomics
        monkeypatch.setattr(launch, "SHARED_HISTOGRAM_MAX_BYTES", 0)
    else:
        _launch(monkeypatch, shape)
    bins = 16
    rows, cols, count, frame_bins, ref_bins = _histogram_inputs(bins)
    args = [rows, cols, count, frame_bins, ref_bins, POSES, np.full((len(POSES), bins, bins), -1, np.int64)]
    (expected,), (got,) = _run_both(backend, "joint_histograms", args, [6])
    assert_array_equal(got, expected)
    fixed = np.empty_like(expected)
    ref_mi.joint_histograms_fixed_point(rows, cols, count, frame_bins, ref_bins, POSES, fixed)
    assert_array_equal(got, fixed)
    assert expected[:-1].sum() > 0 and expected[-1].sum() == 0  # the last pose maps wholly outside


def test_mutual_information_matches_cpu(backend):
    rng = np.random.default_rng(5)
    hist = rng.integers(0, 3 * 65536, size=(4, 16, 16)).astype(np.int64)
    hist[1, :, 5:] = 0
    hist[2] = 0  # an empty histogram gives 0
    hist[3] = np.diag(np.full(16, 65536))
    for normalised in (False, True):
        (expected,), (got,) = _run_both(backend, "mutual_information", [hist, normalised, np.zeros(4)], [2])
        assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        reference = np.empty(4)
        ref_mi.mutual_information(hist, normalised, reference)
        assert_allclose(got, reference, rtol=1e-12, atol=1e-15)
    assert got[2] == 0.0 and got[3] == pytest.approx(2.0, abs=1e-12)


def _edge_args():
    """Frame and reference features (a region of the reference not valid) and the poses: an edge kernel's arguments."""
    frame, reference = structured_image(SHAPE, 0), structured_image(REF_SHAPE, 20)
    mask = random_mask(SHAPE, seed=6, keep=0.6)
    f_re, f_im = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    r_re, r_im = np.empty(REF_SHAPE, np.float32), np.empty(REF_SHAPE, np.float32)
    cpu.orientation_features(frame, mask, 50.0, np.inf, f_re, f_im)
    cpu.orientation_features(reference, np.ones(REF_SHAPE, np.uint8), 50.0, np.inf, r_re, r_im)
    r_re[5:12, 20:31] = INVALID_FEATURE  # not valid there: samples that need it are left out
    rows, cols, count = listed_pixels(mask)
    return [rows, cols, count, f_re, f_im, r_re, r_im, POSES, POSE_ROTATIONS, np.zeros((len(POSES), 3))]


@pytest.mark.parametrize("shape", LAUNCHES)
def test_gradient_correlation_matches_cpu_and_is_deterministic(backend, monkeypatch, shape):
    _launch(monkeypatch, shape)
    args = _edge_args()
    (expected,), (got,) = _run_both(backend, "gradient_correlation", args, [9])
    scale = np.sqrt(expected[:, 1] * np.maximum(expected[:, 2], 1e-300))
    assert_allclose(got[:, 1:], expected[:, 1:], rtol=1e-9)
    assert np.all(np.abs(got[:, 0] - expected[:, 0]) <= 1e-9 * np.maximum(scale, 1e-300))
    assert np.all(got[-1, [0, 2]] == 0) and np.all(got[:-1, 2] > 0)
    (_,), (again,) = _run_both(backend, "gradient_correlation", args, [9])
    assert_array_equal(again, got)  # fixed reduction order: bit-identical run to run


@pytest.mark.parametrize("shape", LAUNCHES)
def test_matched_orientation_matches_cpu_and_is_deterministic(backend, monkeypatch, shape):
    _launch(monkeypatch, shape)
    args = _edge_args()
    args[9] = np.zeros((len(POSES), 5))
    (expected,), (got,) = _run_both(backend, "matched_orientation", args, [9])
    assert np.all(expected[:-1, 0] != 0)  # edges compared at every pose but the last (off the reference)
    assert_allclose(got[:, :3], expected[:, :3], rtol=1e-9, atol=1e-9 * float(np.abs(expected[:, 0]).max()))
    assert_allclose(got[:, 3:], expected[:, 3:], rtol=1e-9)
    (_,), (again,) = _run_both(backend, "matched_orientation", args, [9])
    assert_array_equal(again, got)


def test_fft_search_kernels_match_cpu(backend):
    rng = np.random.default_rng(8)
    re, im = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    padded = (12, 10)
    spectrum_cpu = cpu.feature_spectrum(re, im, padded, 3)
    spectrum_gpu = backend.to_host(backend.kernels.feature_spectrum(backend.asarray(re), backend.asarray(im),
                                                                    padded, 3))
    assert spectrum_gpu.dtype == np.complex64
    ref_conj = np.conj(np.stack([spectrum_cpu, cpu.feature_spectrum(im, re, padded, 0)]))
    rows, cols = np.array([10, 11, 0, 1, 2]), np.array([9, 0, 1])
    out_cpu = np.empty((2, 5, 3), np.float32)
    cpu.correlation_window(spectrum_cpu, ref_conj, rows, cols, out_cpu)
    out_gpu = backend.xp.empty((2, 5, 3), dtype=backend.xp.float32)
    backend.kernels.correlation_window(backend.asarray(spectrum_gpu), backend.asarray(ref_conj), backend.asarray(rows),
                                       backend.asarray(cols), out_gpu)
    if SIMULATED:
        assert_array_equal(spectrum_gpu, spectrum_cpu)
        assert_array_equal(backend.to_host(out_gpu), out_cpu)
    else:
        assert_allclose(spectrum_gpu, spectrum_cpu, atol=1e-5 * np.abs(spectrum_cpu).max())
        assert_allclose(backend.to_host(out_gpu), out_cpu, atol=1e-5 * np.abs(out_cpu).max())


def _scene(shape, dx, dy, theta_deg):
    """Four blobs and a ramp, moved by (dx, dy) px and turned by theta about the centre; float32."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cx, cy = (cols - 1) / 2, (rows - 1) / 2
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    # frame point p shows reference point R(-theta)(p - d)
    u = c * (xx - cx - dx) + s * (yy - cy - dy) + cx
    v = -s * (xx - cx - dx) + c * (yy - cy - dy) + cy
    img = 0.3 * u / cols
    for fy, fx, sigma, amp in [(0.3, 0.35, 3.0, 1.0), (0.65, 0.6, 2.5, -0.7), (0.4, 0.75, 2.0, 0.8),
                               (0.75, 0.25, 2.2, 0.6)]:
        img = img + amp * np.exp(-((u - fx * cols) ** 2 + (v - fy * rows) ** 2) / (2 * sigma**2))
    return (100.0 * img).astype(np.float32)


def test_whole_registration_on_gpu_equals_cpu(backend):
    import portalign
    from portalign import register_batch

    # 2.5 mm pixels: the blobs lie far enough from the axis (a lever arm of 20 mm) for the rotation to be estimated
    # (``MIN_ROTATION_SUPPORT_MM``), so that the device's rotation is compared too
    shape = (32, 28)
    reference = portalign.Image.from_array(_scene(shape, 0, 0, 0), pixel_spacing_mm=2.5)
    frames = [portalign.Image.from_array(_scene(shape, 1.3, -0.8, 1.5), pixel_spacing_mm=2.5),
              portalign.Image.from_array(_scene(shape, -0.6, 1.1, -1.0), pixel_spacing_mm=2.5)]
    options = portalign.RegistrationOptions(field="none", max_shift_mm=10.0, max_rotation_deg=3.0, candidates=1,
                                            mirror_check=NO_MIRROR_CHECK)
    # (a reference each: every frame is its geometry's first on the CPU, and runs the scale check, ``_scale``)
    on_cpu = [portalign.prepare_reference(reference, options, backend="cpu").register(f) for f in frames]
    # two lanes: on a device their first frames launch new kernel configurations from two threads at once
    on_gpu = register_batch(portalign.prepare_reference(reference, options, backend="gpu"), frames, lanes=2)
    checked = 0
    for c, g in zip(on_cpu, on_gpu, strict=True):
        # a lane's first frame checks the scale (a later one skips it once confirmed): the device's profile is the CPU's
        if g.details["scale_check"] is not None:
            checked += 1
            for key in ("best_scale", "gain", "margin"):
                assert g.details["scale_check"][key] == pytest.approx(c.details["scale_check"][key], abs=1e-6), key
            # the significance is the gain or margin times sqrt(n / 2) (about 21 here): float32 sums in another order
            # (the CPU's vectorised reductions differ between machines) move it by that factor more (CI saw 1.9e-6)
            chance = (shape[0] * shape[1] / 2.0) ** 0.5
            assert g.details["scale_check"]["significance"] == pytest.approx(
                c.details["scale_check"]["significance"], abs=1e-6 * chance)
            assert [g.details["scale_check"][k] for k in ("mismatch", "confirmed")] == \
                [c.details["scale_check"][k] for k in ("mismatch", "confirmed")]
        assert g.backend == "gpu" and c.backend == "cpu", g.warnings  # a device failure says why in the warnings
        assert g.ok == c.ok
        assert abs(g.dx_mm - c.dx_mm) <= 0.01 and abs(g.dy_mm - c.dy_mm) <= 0.01
        assert c.rotation_deg is not None and abs(g.rotation_deg - c.rotation_deg) <= 0.01
        assert g.score == pytest.approx(c.score, abs=1e-6)
    assert checked >= 1
    # and the registration found the displacement it was given (loosely: tiny, coarse images)
    assert all(g.ok for g in on_gpu)
    # (the scene's shifts are in pixels of 2.5 mm)
    assert on_gpu[0].dx_mm == pytest.approx(1.3 * 2.5, abs=0.3) and on_gpu[0].dy_mm == pytest.approx(-0.8 * 2.5, abs=0.3)
    assert on_gpu[0].rotation_deg == pytest.approx(1.5, abs=0.3)


def test_host_level_stage_equals_the_device_one(backend):
    """GPU frames whose levels (and global search) are made ready on the host (the default) give the device's numbers."""
    import dataclasses

    import portalign

    shape = (128, 112)  # the smallest pyramid with a level above the frame: one the host can make
    inside = np.zeros(shape, dtype=bool)
    inside[16:112, 14:98] = True  # a radiation field: its mask is sampled onto the levels (the host's, or the device's)

    def through_field(image):
        return np.where(inside, image + 200.0, 0.03 * image + 5.0).astype(np.float32)

    reference = portalign.Image.from_array(through_field(_scene(shape, 0, 0, 0)), pixel_spacing_mm=1.0)
    frame = portalign.Image.from_array(through_field(_scene(shape, 1.7, -1.2, 1.0)), pixel_spacing_mm=1.0)
    # the edge score only (the levels' pixel lists and the search are what differ between the two paths): the
    # mutual-information histograms take the simulator ~12 s a registration
    options = portalign.RegistrationOptions(max_shift_mm=4.0, max_rotation_deg=3.0, candidates=1, mirror_check=NO_MIRROR_CHECK,
                                            method="edge")
    results, stages = [], []
    for on_host in (True, False):
        prepared = portalign.prepare_reference(reference, options,
                                               backend=dataclasses.replace(backend, host_level_stage=on_host))
        results.append(prepared.register(frame))
        plan = prepared.plan_for(shape, (1.0, 1.0), ((shape[1] - 1) / 2, (shape[0] - 1) / 2))
        stages.append((plan.host_stage, plan.host_candidates is not None))
    host, device = results
    assert stages == [(True, True), (False, False)]  # each path was taken: the host's searched on the host too
    assert host.backend == device.backend == "gpu", (host.warnings, device.warnings)
    assert (host.ok, host.reason) == (device.ok, device.reason)
    assert (host.dx_mm, host.dy_mm, host.rotation_deg) == pytest.approx((device.dx_mm, device.dy_mm,
                                                                          device.rotation_deg), abs=1e-9)
    assert host.score == pytest.approx(device.score, abs=1e-9)
    assert host.field_detected and device.field_detected and host.field_box_mm == device.field_box_mm
    assert host.details["matched_pixels"] == device.details["matched_pixels"]
    assert host.dx_mm == pytest.approx(1.7, abs=0.2) and host.dy_mm == pytest.approx(-1.2, abs=0.2)


def test_a_drrs_band_plan_on_the_gpu_equals_the_cpu(backend):
    """A frame whose own penumbra (5 mm, 20-80 %) asks for a wider band against a DRR: the band's plan, derived from
    the geometry's (``Reference._band_plan``, the device's reference arrays shared), registers it as the CPU does."""
    import math

    import portalign
    from scipy import special

    from tests.synthetic import anatomy, moved

    spacing, n = 1.0, 96
    base = anatomy(256, seed=5)
    grid = {"shape": (n, n), "spacing_mm": spacing, "base_spacing_mm": 0.5}
    drr = portalign.Image.from_array(moved(base, 0, 0, 0, **grid), pixel_spacing_mm=spacing, kind="drr")
    values = moved(base, 1.6, -1.1, 0.0, **grid)
    values = (values - values.min()) / np.ptp(values)
    yy, xx = (np.mgrid[0:n, 0:n] - (n - 1) / 2) * spacing
    edge = 3.0 * math.sqrt(2.0)
    field = 0.03 + 0.97 * 0.25 * special.erfc((np.abs(xx) - 36.0) / edge) * special.erfc((np.abs(yy) - 34.0) / edge)
    frame = portalign.Image.from_array(1000 * field * np.exp(-0.8 * values), pixel_spacing_mm=spacing, kind="portal")
    options = portalign.RegistrationOptions(max_shift_mm=4.0, max_rotation_deg=2.0, candidates=1,
                                            mirror_check=NO_MIRROR_CHECK)
    cpu_reference = portalign.prepare_reference(drr, options, backend="cpu")
    cpu_result = cpu_reference.register(frame)
    gpu_reference = portalign.prepare_reference(drr, options, backend=backend)
    gpu_result = gpu_reference.register(frame)
    assert gpu_result.backend == "gpu", gpu_result.warnings
    banded = [key for key in gpu_reference._plans if "band" in key]
    assert len(banded) == 1 and banded == [key for key in cpu_reference._plans if "band" in key], list(gpu_reference._plans)
    shared, plain = gpu_reference._plans[banded[0]].lanes[0], gpu_reference._plans[banded[0][:3]].lanes[0]
    finest = shared.refine_levels[-1]
    assert shared.levels[finest].ref_re is plain.levels[finest].ref_re
    assert shared.levels[finest].erosion_px > plain.levels[finest].erosion_px
    assert (gpu_result.ok, gpu_result.reason) == (cpu_result.ok, cpu_result.reason)
    assert (gpu_result.dx_mm, gpu_result.dy_mm, gpu_result.rotation_deg) == pytest.approx(
        (cpu_result.dx_mm, cpu_result.dy_mm, cpu_result.rotation_deg), abs=1e-6)
    assert cpu_result.ok and math.hypot(cpu_result.dx_mm - 1.6, cpu_result.dy_mm + 1.1) < 0.3, cpu_result.reason


def test_fine_polish_on_the_gpu_equals_the_cpu(backend):
    """Two portal images in near-perfect agreement: the MI optimum followed down to level 0 (``_program.FINE_POLISH``;
    the working levels end at level 1 with ``finest_spacing_mm=2``) gives the CPU's numbers on the device. The frame's
    levels are made ready on the host (the default), so level 0 is uploaded for the polish. (35 s in the simulator;
    the device-level path runs the same polish without the upload.)"""
    import dataclasses

    import portalign

    from tests.synthetic import anatomy, moved

    base = anatomy(256, seed=3)
    shape = (64, 64)
    grid = {"shape": shape, "spacing_mm": 1.0, "base_spacing_mm": 0.5}

    def image(dx, dy, theta, seed):
        values = moved(base, dx, dy, theta, **grid)
        values = values + np.random.default_rng(seed).normal(0.0, 0.002 * np.ptp(values), shape)  # not "clean"
        return portalign.Image.from_array(values.astype(np.float32), pixel_spacing_mm=1.0, kind="portal")

    reference, frame = image(0, 0, 0, 1), image(1.7, -1.2, 1.0, 2)
    options = portalign.RegistrationOptions(max_shift_mm=4.0, max_rotation_deg=3.0, candidates=1, finest_spacing_mm=2.0,
                                            mirror_check=NO_MIRROR_CHECK)
    cpu = portalign.prepare_reference(reference, options, backend="cpu").register(frame)
    assert cpu.details["fine_polish"]["levels"] == [0] and cpu.details["fine_polish"]["kept"], cpu.details["fine_polish"]
    assert cpu.dx_mm == pytest.approx(1.7, abs=0.05) and cpu.dy_mm == pytest.approx(-1.2, abs=0.05)
    gpu = portalign.prepare_reference(reference, options,
                                      backend=dataclasses.replace(backend, host_level_stage=True)).register(frame)
    assert gpu.backend == "gpu", gpu.warnings
    assert (gpu.ok, gpu.reason) == (cpu.ok, cpu.reason)
    assert gpu.details["fine_polish"]["levels"] == [0] and gpu.details["fine_polish"]["kept"]
    assert (gpu.dx_mm, gpu.dy_mm, gpu.rotation_deg) == pytest.approx((cpu.dx_mm, cpu.dy_mm, cpu.rotation_deg), abs=1e-6)


@pytest.mark.parametrize("on_host", [True, False], ids=["host-levels", "device-levels"])
def test_padded_pixel_lists_give_one_graph_per_bucket(backend, monkeypatch, on_host):
    """Frames whose fields differ by a column replay one captured refinement, with the CPU's numbers.

    The metric kernels visit each level's pixel list padded to a bucket with pixel (0, 0): the refine
    sequence's graph key (which holds every launch argument) is the same for both frames although their
    usable counts differ, and the padding changes no number.
    """
    import dataclasses

    import portalign
    from portalign.backends import cpu_backend
    from portalign.backends._gpu import listed_bucket

    shape = (128, 112)
    keys: list = []
    replay = launch.run_captured

    def recording(key, enqueue):
        keys.append(key)
        return replay(key, enqueue)

    monkeypatch.setattr(launch, "run_captured", recording)  # the refine wrapper calls it through the module

    def through_field(image, right):
        inside = np.zeros(shape, dtype=bool)
        inside[16:112, 14:right] = True
        return np.where(inside, image + 200.0, 0.03 * image + 5.0).astype(np.float32)

    reference = portalign.Image.from_array(through_field(_scene(shape, 0, 0, 0), 98), pixel_spacing_mm=1.0)
    # both metrics on the default path (host levels); the edge score only where the device makes the levels (the
    # mutual-information histograms take the simulator ~12 s a registration, and read the same padded lists)
    options = portalign.RegistrationOptions(max_shift_mm=4.0, max_rotation_deg=3.0, candidates=1, mirror_check=NO_MIRROR_CHECK,
                                            method="auto" if on_host else "edge")
    on_gpu = portalign.prepare_reference(reference, options,
                                         backend=dataclasses.replace(backend, host_level_stage=on_host))
    on_cpu = portalign.prepare_reference(reference, options, backend=cpu_backend())
    plan_key = (shape, (1.0, 1.0), ((shape[1] - 1) / 2, (shape[0] - 1) / 2))
    seen = []
    # a first frame of the geometry measures the spatial halves' check (``_program._rigidity_check``: four one-off
    # refinements of halves, their own counts); the frames compared share its record, as a stream's later frames do
    warm = on_gpu.register(portalign.Image.from_array(through_field(_scene(shape, 1.7, -1.2, 1.0), 98),
                                                      pixel_spacing_mm=1.0))
    for right in (98, 97):  # one column less of field: fewer usable pixels, the same bucket
        frame = portalign.Image.from_array(through_field(_scene(shape, 1.7, -1.2, 1.0), right), pixel_spacing_mm=1.0)
        first = len(keys)
        gpu, cpu = on_gpu.register(frame), on_cpu.register(frame)
        assert gpu.backend == "gpu", gpu.warnings
        assert (gpu.ok, gpu.reason) == (cpu.ok, cpu.reason)
        assert (gpu.dx_mm, gpu.dy_mm, gpu.rotation_deg) == pytest.approx((cpu.dx_mm, cpu.dy_mm, cpu.rotation_deg),
                                                                         abs=1e-9)
        assert gpu.details["matched_pixels"] == cpu.details["matched_pixels"]
        assert gpu.details["rigidity_check"] is None or not gpu.details["rigidity_check"]["measured_here"]
        if right == 98 and cpu.details["rigidity_check"] is not None:  # the CPU's first frame measured it: the same
            assert cpu.details["rigidity_check"]["measured_here"]
            assert cpu.details["rigidity_check"]["depth_mm"] is not None  # a field in both: its depth halves too
            for key in ("rows_mm", "cols_mm", "depth_mm", "term_mm"):
                assert warm.details["rigidity_check"][key] == pytest.approx(cpu.details["rigidity_check"][key], abs=1e-9)
        plan = on_gpu.plan_for(*plan_key)
        counts = {}
        for index in plan.refine_levels:
            level = plan.levels[index]
            capacity = level.pixel_rows.shape[0]
            assert level.listed == listed_bucket(level.usable, capacity) >= level.usable
            tail = slice(level.usable, level.listed)
            # launch.to_host: on a device the lists are CuPy arrays, which refuse an implicit np.asarray
            assert not launch.to_host(level.pixel_rows[tail]).any() and not launch.to_host(level.pixel_cols[tail]).any()
            counts[index] = (level.usable, level.listed)
        seen.append((counts, keys[first:]))
    (counts_a, keys_a), (counts_b, keys_b) = seen
    assert keys_a and keys_a == keys_b  # the same launch sequences: one graph serves both frames
    usable_changed = [i for i in counts_a if counts_a[i][0] != counts_b[i][0]]
    assert usable_changed, (counts_a, counts_b)  # the test's premise: the fields' usable counts differ
    assert all(counts_a[i][1] == counts_b[i][1] for i in counts_a), (counts_a, counts_b)
    assert any(counts_a[i][1] > counts_a[i][0] for i in counts_a)  # some list was padded


@pytest.mark.skipif(not SIMULATED, reason="only the simulator is refused for an automatic choice")
def test_simulator_refused_when_not_asked_for_explicitly():
    from portalign import BackendUnavailableError
    from portalign.backends import gpu_backend

    with pytest.raises(BackendUnavailableError, match="simulator"):
        gpu_backend(allow_simulator=False)
    assert gpu_backend().name == "gpu"


def test_on_stream_queues_this_threads_launches_on_the_stream(backend):
    """Kernels launched inside ``on_stream`` get that stream; blocks nest; outside, the default stream (0)."""
    first, second = backend.new_stream(), backend.new_stream()
    assert first is not None and second is not first
    outside = launch.scratch("stream_test", (4,), np.int64)
    assert launch.stream() == 0
    with launch.on_stream(first):
        on_first = launch.stream()
        assert on_first != 0
        # a scratch buffer belongs to one stream: another stream never reuses it while work may be queued
        inside = launch.scratch("stream_test", (4,), np.int64)
        assert inside is not outside and launch.scratch("stream_test", (4,), np.int64) is inside
        with launch.on_stream(second):
            assert launch.stream() is not on_first
        assert launch.stream() is on_first
        # a kernel queued on the stream runs and gives the CPU's answer
        image = random_image(SHAPE, seed=3)
        cpu_out = np.empty((SHAPE[0] // 2, SHAPE[1] // 2), dtype=np.float32)
        cpu.downsample2(image, cpu_out)
        gpu_out = backend.xp.empty(cpu_out.shape, dtype=backend.xp.float32)
        backend.kernels.downsample2(backend.asarray(image), gpu_out)
        backend.synchronize(first)
        assert_array_equal(backend.to_host(gpu_out), cpu_out)
    assert launch.stream() == 0 and launch.scratch("stream_test", (4,), np.int64) is outside


def test_kernels_launched_from_two_threads_at_once_give_each_its_own_answer(backend):
    """Two host threads (two lanes) launching reductions with shared memory at once: every result is right.

    Under the simulator each launch is configured and run under one lock (``launch._SimulatedLaunch``): without it
    a CI run had one lane's kernel read the other's shared memory (an out-of-bounds index from uninitialised
    memory). On a device each thread queues on its own stream.
    """
    import threading

    rng = np.random.default_rng(11)
    hists = [rng.integers(0, 3 * 65536, size=(3, 12, 12)).astype(np.int64) for _ in range(2)]
    hists[1][:, :, 6:] = 0  # the two threads' answers differ
    expected = []
    for hist in hists:
        out = np.zeros(3)
        cpu.mutual_information(hist, False, out)
        expected.append(out)
    got: list[list[np.ndarray]] = [[], []]
    failures: list[BaseException] = []

    def lane(i: int) -> None:
        try:
            with backend.on_stream(backend.new_stream()):
                hist = backend.asarray(hists[i])
                for _ in range(6):
                    out = backend.asarray(np.zeros(3))
                    backend.kernels.mutual_information(hist, False, out)
                    got[i].append(backend.to_host(out))
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for i in range(2):
        assert len(got[i]) == 6
        for out in got[i]:
            assert_allclose(out, expected[i], rtol=1e-12, atol=1e-15)


@cuda.jit
def two_sites(out):
    a = cuda.shared.array(8, dtype=np.float64)
    b = cuda.shared.array(8, dtype=np.int64)
    t = cuda.threadIdx.x
    a[t] = t
    b[t] = 10 * t
    cuda.syncthreads()
    if t == 0:
        total_a = 0.0
        total_b = 0
        for i in range(8):
            total_a += a[i]
            total_b += b[i]
        out[cuda.blockIdx.x, 0] = total_a
        out[cuda.blockIdx.x, 1] = total_b


@pytest.mark.skipif(not SIMULATED, reason="the simulator's shared-array allocation only (a device has one per block)")
def test_simulated_shared_arrays_are_one_per_call_site_and_block():
    """Every thread of a simulated block gets the same array per ``cuda.shared.array`` site, a site its own one.

    ``launch`` makes the simulator's lookup-then-store of a site's array atomic (it had no lock: two threads could
    each store their own array, and a reduction read what its partners never wrote); the key must stay the site.
    """
    from numba.cuda.simulator import kernelapi

    assert kernelapi.FakeCUDAShared.array._portalign_locked

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as Python allows while they allocate
    try:
        for _ in range(20):
            out = np.zeros((3, 2))
            launch.configured(two_sites, 3, 8)(out)
            assert_array_equal(out, [[28.0, 280.0]] * 3)
    finally:
        sys.setswitchinterval(previous)


def test_second_lane_has_its_own_buffers_and_stream_and_the_same_result(backend):
    """A frame registered while the first lane is busy runs on a new lane: new stream, new buffers, same answer."""
    import portalign

    shape = (32, 28)
    reference = portalign.Image.from_array(_scene(shape, 0, 0, 0), pixel_spacing_mm=1.0)
    frame = portalign.Image.from_array(_scene(shape, 1.3, -0.8, 1.5), pixel_spacing_mm=1.0)
    # the edge score only: a lane's buffers and stream are what is tested (the simulator takes ~12 s for MI's
    # histograms of a registration)
    options = portalign.RegistrationOptions(field="none", max_shift_mm=4.0, max_rotation_deg=3.0, candidates=1,
                                            mirror_check=NO_MIRROR_CHECK, method="edge")
    prepared = portalign.prepare_reference(reference, options, backend="gpu")
    on_first = prepared.register(frame)
    prepared.allow_lanes(2)
    geometry = (frame.shape, frame.spacing_mm, frame.beam_axis_px)
    with prepared.lane(*geometry) as first:
        on_second = prepared.register(frame)
    assert prepared.lane_count() == 2
    with prepared.lane(*geometry) as second:  # least recently used: the lane the frame ran on
        assert second is not first
        assert second.stream is not None and second.stream is not first.stream
        assert second.coarse.ref_spectra_conj is first.coarse.ref_spectra_conj  # the reference is shared
        assert second.levels[0].image is not first.levels[0].image  # the frame buffers are not
        assert second.hist is not first.hist and second.coarse.window is not first.coarse.window
    assert on_second.backend == "gpu" and on_second.ok
    assert (on_second.dx_mm, on_second.dy_mm, on_second.rotation_deg, on_second.score) == (
        on_first.dx_mm, on_first.dy_mm, on_first.rotation_deg, on_first.score)


def test_gpu_latency_script_runs_the_gpu_backend(backend, monkeypatch):
    """bench/gpu_latency.py, the table of bench/gpu_check.sh, on the GPU path (tiny images in the simulator)."""
    import portalign

    from bench import gpu_latency

    monkeypatch.setattr(gpu_latency, "SPACING_MM", 1.0)
    reference = gpu_latency.synthetic_reference((32, 36), seed=2)
    frames, poses = gpu_latency.synthetic_frames(reference, 2)
    # four registrations in all (timed, repeat, batch warm-up, batch), one candidate and no mirror check (its three
    # registrations of flipped copies): the simulator takes ~13 s for each of these 32 x 36 frames
    # the edge score only: the mutual-information histograms take the simulator ~12 s a registration (its own
    # tests above compare them with the CPU's)
    options = portalign.RegistrationOptions(field="none", candidates=1, mirror_check=NO_MIRROR_CHECK, method="edge")
    row = gpu_latency.run_backend("gpu", reference, frames, poses, n_latency=1, n_batch=1, warmup=0, lanes=[2],
                                  options=options)
    assert row["backend"] == "gpu" and row["device"] == backend.device
    assert list(row["frames_per_s_batched"]) == ["2"] and row["frames_per_s_batched"]["2"] > 0
    assert row["repeat_bit_identical"] is True
    assert len(row["poses"]) == 1 and np.isfinite(row["latency_ms_median"])
    assert set(row["host_overheads"]) == {"kernel_call_us", "read_back_us", "argument_view_us"}
    assert all(v > 0 for v in row["host_overheads"].values())


# ray geometries of tests/test_simulate.py: oblique rays (some missing), rays parallel to two axes with the
# source inside the volume, rays along x with pixels on both sides
PROJECTION_CASES = [
    ((3.0, -40.0, 4.0), (-2.0, 30.0, -3.0), (0.1, 0.05, 0.8), (0.9, 0.0, -0.1)),
    ((2.0, 3.0, 4.0), (2.0, 50.0, -6.0), (0.0, 0.0, 1.3), (0.0, 0.0, 0.0)),
    ((3.0, 2.5, -60.0), (-4.0, -3.0, 60.0), (0.0, 1.1, 0.0), (1.3, 0.0, 0.0)),
]


@pytest.mark.parametrize("source, origin, col, row", PROJECTION_CASES)
def test_projection_matches_cpu_and_reference(backend, source, origin, col, row):
    from portalign.kernels.reference import projection as ref_projection

    volume = np.random.default_rng(7).random((5, 6, 7)).astype(np.float32)
    spacing = np.array([1.5, 1.0, 1.2])
    args = [np.array(v, dtype=np.float64) for v in (source, origin, col, row)]
    on_cpu = np.full((9, 8), -1.0, dtype=np.float32)
    cpu.project_cone_beam(volume, spacing, *args, 0.37, on_cpu)
    exact = np.full((9, 8), -1.0)
    ref_projection.project_cone_beam(volume, spacing, *args, 0.37, exact)
    out = backend.xp.full((9, 8), -1.0, dtype=backend.xp.float32)
    backend.kernels.project_cone_beam(backend.asarray(volume), spacing, *args, 0.37, out)
    on_gpu = backend.to_host(out)
    assert (exact > 0).any() and (on_gpu >= 0).all()  # every pixel written, rays that miss give 0
    assert_allclose(on_gpu, exact, rtol=1e-4, atol=1e-4 * exact.max())
    assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-4 * exact.max())
    assert_array_equal(on_gpu == 0, exact == 0)


def test_drr_rendered_on_the_gpu_equals_the_cpu_render(backend):
    """render_drr(backend="gpu"): the same image as on the CPU, and it says where it was cast."""
    from portalign.ct import CTVolume
    from portalign.simulate import render_drr

    hu = np.full((8, 9, 10), -1000.0)
    hu[2:-2, 2:-2, 2:-2] = 0.0
    hu[3:5, 4:6, 3:7] = 1200.0  # a bone block, off centre
    ct = CTVolume(hu=hu, spacing_mm=(4.0, 3.0, 3.0), origin_mm=(-15.0, -12.0, 0.0), patient_position="HFS")
    beam = dict(gantry_deg=30.0, detector_shape=(10, 12), detector_spacing_mm=4.0, step_mm=1.5)
    on_cpu = render_drr(ct, **beam)
    on_gpu = render_drr(ct, backend="gpu", **beam)
    assert on_cpu.info.extra["backend"] == "cpu" and on_gpu.info.extra["backend"] == "gpu"
    assert on_cpu.pixels.max() > 0
    assert_allclose(on_gpu.pixels, on_cpu.pixels, rtol=1e-4, atol=1e-4 * on_cpu.pixels.max())


def test_multi_pose_projection_matches_cpu_and_reference(backend):
    """project_cone_beam_poses: one launch, a thread per (pose, pixel), grid-stride over 4 poses x 72 pixels."""
    from portalign.kernels.reference import projection as ref_projection

    volume = np.random.default_rng(7).random((5, 6, 7)).astype(np.float32)
    spacing = np.array([1.5, 1.0, 1.2])
    cases = [*PROJECTION_CASES, ((4.0, -38.0, 5.5), (-1.0, 31.0, -2.0), (0.1, 0.0, 0.8), (0.8, 0.1, -0.1))]
    geometry = [np.ascontiguousarray([case[i] for case in cases], dtype=np.float64) for i in range(4)]
    on_cpu = np.full((4, 9, 8), -1.0, dtype=np.float32)
    cpu.project_cone_beam_poses(volume, spacing, *geometry, 0.37, on_cpu)
    exact = np.full((4, 9, 8), -1.0)
    ref_projection.project_cone_beam_poses(volume, spacing, *geometry, 0.37, exact)
    out = backend.xp.full((4, 9, 8), -1.0, dtype=backend.xp.float32)
    backend.kernels.project_cone_beam_poses(backend.asarray(volume), spacing, *(backend.asarray(g) for g in geometry),
                                            0.37, out)
    on_gpu = backend.to_host(out)
    assert (exact > 0).any() and (on_gpu >= 0).all()
    assert_allclose(on_gpu, exact, rtol=1e-4, atol=1e-4 * exact.max())
    assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-4 * exact.max())
    assert_array_equal(on_gpu == 0, exact == 0)


def test_register3d_renders_and_scores_poses_on_the_gpu_like_the_cpu(backend):
    """The 6-DOF search's render + gradient correlation of a batch of poses, on a tiny CT, GPU against CPU."""
    from portalign.ct import CTVolume
    from portalign.register3d import _search as search
    from portalign.register3d import prepare_ct
    from portalign.register3d._geometry import ViewGeometry
    from portalign.simulate import render_drr

    hu = np.full((8, 9, 10), -1000.0)
    hu[1:-1, 1:-1, 1:-1] = 0.0
    hu[3:5, 4:6, 3:7] = 1200.0
    hu[2:4, 2:4, 6:8] = 800.0
    ct = CTVolume(hu=hu, spacing_mm=(4.0, 3.0, 3.0), origin_mm=(-15.0, -12.0, -14.0), patient_position="HFS")
    frame = render_drr(ct, gantry_deg=30.0, isocentre_mm=(0.0, 0.0, 0.0), energy="mv", detector_shape=(12, 12),
                       detector_spacing_mm=4.5, couch_shift_mm=(1.0, 0.0, -1.0), step_mm=1.5)
    options = search.Register3DOptions(levels=(search.SearchLevel("coarse", 3.0, 1.0, 1.0, 1),), field_margin_mm=0.0,
                                       min_grid_points=8, max_grid_points=8)
    poses = np.array([[0, 0, 0, 0, 0, 0], [1.0, 0, -1.0, 0, 0, 0], [0.5, -0.5, 0.2, 1.0, -2.0, 1.5]])
    scores = []
    for name in ("cpu", "gpu"):
        prepared = prepare_ct(ct, isocenter_mm=(0.0, 0.0, 0.0), backend=name)
        view = search._View(frame, ViewGeometry.of(frame), True, search._extent_box(frame))
        data = [search._view_level(prepared, view, options.levels[0], options)]
        scores.append(search._scores(prepared, prepared.levels["coarse"], data, [view], poses))
        assert prepared.backend.name == name
    assert np.isfinite(scores[0]).all() and scores[0][0, 1] > scores[0][0, 0]  # the true pose scores best
    assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-5)


def test_probe_kernel_compiles_and_runs(backend):
    # the check `portalign backends` and `auto` make before calling the GPU available
    from portalign.kernels.gpu.probe import run_probe

    run_probe()


# --- the per-frame program's stage kernels (refine, statistics, level preparation) -----------------


@pytest.mark.parametrize(("metric", "rotate", "star", "iterations"),
                         [(0, True, False, 2), (1, True, False, 2), (0, False, False, 6), (0, True, True, 5),
                          (0, True, False, 6), (2, True, False, 6)])
# (0, True, False, 6): the safeguard takes back three jumps (test_program_kernels); 2: EDGE_UNGUARDED takes them all
def test_refine_matches_cpu(backend, metric, rotate, star, iterations):
    # the loop's state stays on the device; a fixed number of iterations with a converged flag gives the
    # CPU's early-stopping result (same pose, score and iteration count)
    from tests.program_cases import level_case, refine_args

    case = level_case(shape=(20, 22), shift_px=(0.6, -0.4), bins=8)
    start = (0.2, 0.1, 0.0)
    host = refine_args(case, metric, start, rotate, bins=8, iterations=iterations, star=star)
    cpu.refine(*host)
    dev = list(refine_args(case, metric, start, rotate, bins=8, iterations=iterations, star=star))
    for i in (1, 2, 4, 5, 6, 7, 8, 9, 18):  # the level's arrays live on the device; pose, step and out on the host
        dev[i] = backend.asarray(dev[i])
    backend.kernels.refine(*dev)
    assert dev[-1][4] == host[-1][4]
    assert_allclose(dev[-1][:4], host[-1][:4], rtol=0, atol=1e-9)
    if not rotate:
        assert host[-1][4] < iterations  # converged early: the device's later iterations changed nothing


@pytest.mark.parametrize("masked", [True, False])
def test_frame_statistics_match_cpu(backend, masked):
    img = structured_image(SHAPE, 3) + np.random.default_rng(1).normal(0, 2.0, SHAPE).astype(np.float32)
    mask = random_mask(SHAPE, seed=3, keep=0.9)
    want = cpu.second_difference_mad(img, mask, 1, SHAPE[0], 2, 0, SHAPE[1], masked)
    got = backend.kernels.second_difference_mad(backend.asarray(img), backend.asarray(mask), 1, SHAPE[0], 2, 0,
                                                SHAPE[1], masked)
    assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-12)
    want_r = cpu.rms_radius(mask, 9.5, 11.5, 0.4, 0.6, 2)
    got_r = backend.kernels.rms_radius(backend.asarray(mask), 9.5, 11.5, 0.4, 0.6, 2)
    assert got_r[1] == want_r[1] and got_r[0] == pytest.approx(want_r[0], rel=1e-12)
    assert got_r[2] == pytest.approx(want_r[2], rel=1e-12)  # the usable pixels' centroid's distance from the axis


@pytest.mark.parametrize("kind", ["field", "none", "dead lines"])
def test_prepare_level_matches_cpu(backend, kind):
    image = structured_image(SHAPE, 4)
    has_field = kind != "none"
    small = np.zeros((6, 5), dtype=np.uint8)
    small[1:5, 1:4] = 1
    if kind == "dead lines":  # a dead row and a dead column (DEAD_LINE along them): cut out, no edge band
        small[3, :] = cpu_level.DEAD_LINE
        small[:, 2] = cpu_level.DEAD_LINE
    shape = SHAPE

    def buffers(xp_asarray):
        return [xp_asarray(np.zeros(shape, np.uint8)), xp_asarray(np.zeros(shape, np.uint8)),
                xp_asarray(np.zeros(shape, np.uint8)), xp_asarray(np.zeros(image.size, np.int32)),
                xp_asarray(np.zeros(image.size, np.int32)), xp_asarray(np.zeros(shape, np.int16)),
                xp_asarray(np.zeros((shape[0], 2))), xp_asarray(np.zeros(shape, np.float32)),
                xp_asarray(np.zeros(shape, np.float32))]

    host = buffers(np.asarray)
    host_stats = np.zeros(4)
    cpu.prepare_level(image, small, has_field, 0.25, -0.375, 1, 8, *host, host_stats)
    dev = buffers(backend.asarray)
    dev_stats = np.zeros(4)
    backend.kernels.prepare_level(backend.asarray(image), small, has_field, 0.25, -0.375, 1, 8, *dev, dev_stats)
    assert host_stats[0] > 0
    assert_array_equal(dev_stats[:3], host_stats[:3])
    assert dev_stats[3] == pytest.approx(host_stats[3], rel=1e-12)
    usable = int(host_stats[0])
    for index, (h, d) in enumerate(zip(host, dev, strict=True)):
        d = backend.to_host(d)
        if index in (3, 4):  # pixel lists: only the first `usable` entries are defined
            assert_array_equal(d[:usable], h[:usable])
        elif index == 6:
            assert_allclose(d, h, rtol=1e-12)
        else:
            assert_array_equal(d, h)


def test_first_launch_of_a_configuration_is_serialised_then_direct(monkeypatch):
    """Two threads' first launches of a kernel configuration run one at a time; later launches skip the lock."""
    import threading
    import time

    running = []
    overlaps = []

    def configuration(*args):
        running.append(args)
        overlaps.append(len(running) > 1)
        time.sleep(0.05)
        running.pop()
        return args

    key = ("test-kernel", 1, 1, 0, 0)
    monkeypatch.setitem(launch._configured, key, launch._FirstLaunch(key, configuration))
    first = launch._configured[key]
    threads = [threading.Thread(target=first, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [False, False]  # never two at once
    assert launch._configured[key] is configuration  # the wrapper gave way to the configuration itself
    assert launch._configured[key](7) == (7,)


def test_the_mirror_screen_reads_the_same_peaks_on_the_gpu():
    """The mirror check's screen (``_flip_peaks``: the frame's coarse features flipped, one surface each) on a device's
    arrays gives the CPU's peaks."""
    import portalign
    from portalign.registration._program import _flip_peaks

    shape = (32, 28)
    reference = portalign.Image.from_array(_scene(shape, 0, 0, 0), pixel_spacing_mm=2.5)
    frame = portalign.Image.from_array(_scene(shape, 1.3, -0.8, 1.5), pixel_spacing_mm=2.5)
    options = portalign.RegistrationOptions(field="none", max_shift_mm=10.0, max_rotation_deg=3.0, candidates=1,
                                            mirror_check=NO_MIRROR_CHECK)
    peaks = {}
    for name in ("cpu", "gpu"):
        prepared = portalign.prepare_reference(reference, options, backend=name)
        assert prepared.register(frame).ok
        (pool,) = prepared._plans.values()
        peaks[name] = _flip_peaks(prepared.backend, pool.lanes[0])  # the lane still holds the frame's levels
    assert set(peaks["cpu"]) == {"own", "flipped left-right", "flipped up-down", "turned 180 deg"}
    assert all(value is not None and value > 0 for value in peaks["cpu"].values())
    for key, value in peaks["cpu"].items():
        assert peaks["gpu"][key] == pytest.approx(value, abs=1e-5), key
