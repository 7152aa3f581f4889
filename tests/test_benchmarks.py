"""pytest-benchmark: the hot kernels, a full registration, and SimpleITK on the same pair.

Skipped by the normal run (``--benchmark-skip`` in pyproject's addopts); run with::

    python -m pytest tests/test_benchmarks.py --benchmark-only

Everything works on a 1024x768 MV frame against a kV DRR rendered from the real
thorax CT (``bench.cases.drr_cases``, cached under ``$PORTALIGN_BENCH_CACHE`` or
``~/.cache/portalign/bench``). The kernels run on the pyramid levels the engine
itself builds for that frame, with the buffers it allocated, so the numbers are
those of the per-frame path.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import portalign
import pytest
from portalign.kernels import cpu
from portalign.kernels.cpu.mutual_information import PV_ONE

from bench.cases import CT_FOLDER, default_cache_dir, drr_cases
from bench.geometry import pose_errors

#: Poses per kernel call, as the optimiser's quadratic stencil evaluates them.
N_POSES = 10


@pytest.fixture(scope="module")
def pair():
    if not CT_FOLDER.is_dir():
        pytest.skip(f"thorax CT not found at {CT_FOLDER}; the benchmarks need it to render the DRR pair")
    cases = drr_cases(1, 0, default_cache_dir(), log=lambda msg: None)
    case = cases[0]
    assert case.frame.shape == (768, 1024)
    return case


@pytest.fixture(scope="module")
def prepared(pair):
    """The reference prepared on the CPU and one frame registered (plan built, kernels compiled)."""
    ref = portalign.prepare_reference(pair.reference, backend="cpu")
    ref.register(pair.frame)
    plan = ref.plan_for(pair.frame.shape, pair.frame.spacing_mm, pair.frame.beam_axis_px)
    return ref, plan


def _poses_near_truth(pair) -> np.ndarray:
    t = pair.truth
    offsets = np.linspace(-0.5, 0.5, N_POSES)
    return np.column_stack([t.dx_mm + offsets, t.dy_mm - offsets, np.full(N_POSES, math.radians(t.rotation_deg))])


def _finest(plan):
    return plan.levels[plan.refine_levels[-1]]


def _arguments(kernel, values: dict) -> list:
    """The kernel's arguments by parameter name, so that the benchmark follows the kernel's signature."""
    names = list(inspect.signature(kernel.py_func).parameters)
    missing = [n for n in names if n not in values]
    if missing:
        raise KeyError(f"{kernel.__name__} takes {missing} that this benchmark does not know; update _level_values")
    return [values[n] for n in names]


def _level_values(level, affines, out, rotations=None) -> dict:
    return {
        "rows": level.pixel_rows, "cols": level.pixel_cols, "count": level.usable,
        "frame_bins": level.bins, "ref_bins": level.ref_bins,
        "frame_re": level.feat_re, "frame_im": level.feat_im, "ref_re": level.ref_re, "ref_im": level.ref_im,
        "affines": affines, "rotations": rotations, "out": out,
    }


def test_bench_joint_histograms(benchmark, pair, prepared):
    _, plan = prepared
    level = _finest(plan)
    affines = level.affines(_poses_near_truth(pair))
    out = plan.hist
    benchmark(cpu.joint_histograms, *_arguments(cpu.joint_histograms, _level_values(level, affines, out)))
    usable = int((level.bins >= 0).sum())
    assert 0 < out[0].sum() <= usable * PV_ONE


def test_bench_gradient_correlation(benchmark, pair, prepared):
    _, plan = prepared
    level = _finest(plan)
    poses = _poses_near_truth(pair)
    affines = level.affines(poses)
    rotations = np.column_stack([np.cos(2 * poses[:, 2]), np.sin(2 * poses[:, 2])])
    out = plan.edge_out
    values = _level_values(level, affines, out, rotations)
    benchmark(cpu.gradient_correlation, *_arguments(cpu.gradient_correlation, values))
    score = out[:, 0] / np.sqrt(out[:, 1] * out[:, 2])
    assert np.all(np.abs(score) <= 1.0 + 1e-9) and score.max() > 0.1


def test_bench_downsample2(benchmark, pair):
    src = np.ascontiguousarray(pair.frame.pixels)
    out = np.empty((src.shape[0] // 2, src.shape[1] // 2), dtype=np.float32)
    cpu.downsample2(src, out)  # compile outside the timing
    benchmark(cpu.downsample2, src, out)
    np.testing.assert_allclose(out[10, 20], src[20:22, 40:42].mean(), rtol=1e-5)


def test_bench_warp_bilinear(benchmark, pair):
    src = np.ascontiguousarray(pair.frame.pixels)
    t = math.radians(2.0)
    affine = np.array([[math.cos(t), math.sin(t), 3.5], [-math.sin(t), math.cos(t), -2.25]])
    out = np.empty_like(src)
    cpu.warp_bilinear(src, affine, 0.0, out)
    benchmark(cpu.warp_bilinear, src, affine, 0.0, out)
    assert np.isfinite(out).all() and out.max() > 0


#: Noise samples a frame's noise is measured on (``portalign.registration._quality.NOISE_SAMPLES``).
MEDIAN_SAMPLES = 6000


@pytest.mark.parametrize("kind", ["counting", "numba_selection"])
def test_bench_median_of_fresh_noise(benchmark, kind):
    """The per-frame path's median (``kernels.cpu.statistics.median``) beside numba's ``np.median`` (the selection it
    replaced), each round on new values: a frame's values are new every frame, and a selection's branches, learnt on
    the same values again and again, would time it too fast."""
    from numba import njit
    from portalign.kernels.cpu.statistics import median

    selected = njit(lambda values: np.median(values))
    function = median if kind == "counting" else selected
    rng = np.random.default_rng(0)
    function(rng.normal(size=MEDIAN_SAMPLES))  # compile outside the timing
    values = rng.normal(size=MEDIAN_SAMPLES)
    assert median(values) == selected(values)
    benchmark.pedantic(function, setup=lambda: ((rng.normal(size=MEDIAN_SAMPLES),), {}), rounds=300)


def test_bench_field_detection(benchmark, pair, prepared):
    """The frame's field found on its field-detection level (``field.find_field``: dead-line screen, split, three
    levels) and its penumbra measured (``_program._frame_band_mm``'s kernel), as each frame does."""
    from portalign.field import find_field
    from portalign.kernels.cpu.field import penumbra_extent

    _, plan = prepared
    small = plan.levels[plan.field_level].image

    def field_stage():
        field = find_field(pair.frame, small)
        return field, penumbra_extent(small, field.mask, min(plan.levels[plan.field_level].spacing), 15.0, True)

    field, extent = benchmark(field_stage)
    assert field.detected and field.mask.any() and extent >= 0.0


def test_bench_register_1024x768(benchmark, pair, prepared):
    ref, _ = prepared
    result = benchmark(ref.register, pair.frame)
    err_t, err_r = pose_errors(portalign_pose(result), pair.truth)
    benchmark.extra_info.update({"translation_error_mm": err_t, "rotation_error_deg": err_r, "ok": result.ok})
    assert err_t < 2.0  # a sanity bound (the bench reports the real numbers), not the accuracy target


def test_bench_simpleitk_register_1024x768(benchmark, pair):
    pytest.importorskip("SimpleITK")
    from bench.peers import SimpleITKMethod

    method = SimpleITKMethod()
    method.start()
    assert method.available, method.reason
    state = method.prepare(pair)
    outcome = benchmark.pedantic(method.register, args=(state, pair), rounds=2, iterations=1, warmup_rounds=0)
    err_t, err_r = pose_errors(outcome.pose, pair.truth)
    benchmark.extra_info.update({"translation_error_mm": err_t, "rotation_error_deg": err_r})
    assert err_t < 2.0


def portalign_pose(result):
    from bench.geometry import Pose

    return Pose(result.dx_mm, result.dy_mm, result.rotation_deg)
