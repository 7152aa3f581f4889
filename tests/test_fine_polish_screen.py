"""The fine polish's screen of a finer level (``kernels.cpu.edge.sampled_edge_score``, ``_program._screened_agreement``).

A finer level is prepared for its edge agreement only when a sample of it could agree: the screen must read the
full score closely (kernel test), and a frame it turns away must get the pose the full path gives (engine test).
"""

from __future__ import annotations

import math

import numpy as np
import portalign
import pytest
from portalign.kernels.cpu.edge import gradient_correlation, sampled_edge_score
from portalign.kernels.cpu.gradient import gradient_row_sums, orientation_features
from portalign.registration import _program, pose_affines

from tests.synthetic import anatomy, moved

SHAPE = (160, 192)


def _features(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Doubled-angle features with the edge scale the level stage takes (the mean gradient magnitude)."""
    sums = np.zeros((image.shape[0], 2))
    gradient_row_sums(image, mask, np.inf, sums)
    eps = sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)
    re = np.zeros(image.shape, np.float32)
    im = np.zeros(image.shape, np.float32)
    orientation_features(image, mask, eps, np.inf, re, im)
    return re, im


def _full_and_screened(noise: float, pose: tuple[float, float, float]) -> tuple[float, float]:
    """A frame (the reference moved by ``pose``, plus noise): its full edge score on the level and the screen's."""
    base = anatomy(384, seed=4)
    reference = moved(base, 0.0, 0.0, 0.0, shape=SHAPE, spacing_mm=0.5).astype(np.float32)
    frame = moved(base, *pose, shape=SHAPE, spacing_mm=0.5)
    frame = (frame + np.random.default_rng(7).normal(0.0, noise * np.ptp(frame), SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:-4, 4:-4] = 1
    ref_re, ref_im = _features(reference, np.ones(SHAPE, np.uint8))
    frame_re, frame_im = _features(frame, mask)
    rows, cols = (a.ravel().astype(np.int32) for a in np.nonzero(mask))
    axis = ((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    truth = np.array([[pose[0], pose[1], math.radians(pose[2])]])
    affines = pose_affines(truth, axis, (0.5, 0.5), axis, (0.5, 0.5))
    turn = np.array([[math.cos(2 * truth[0, 2]), math.sin(2 * truth[0, 2])]])
    out = np.zeros((1, 3))
    gradient_correlation(rows, cols, rows.size, frame_re, frame_im, ref_re, ref_im, affines, turn, out)
    full = out[0, 0] / math.sqrt(out[0, 1] * out[0, 2])
    # the coarser level's usable pixels: every pixel of the half-resolution grid whose block lies inside the mask
    coarse_rows, coarse_cols = (a.ravel().astype(np.int32) for a in np.nonzero(mask[::2, ::2][1:-1, 1:-1]))
    screened, pixels = sampled_edge_score(frame, coarse_rows + 1, coarse_cols + 1, coarse_rows.size, 2, np.inf, ref_re,
                                          ref_im, affines[0], turn[0, 0], turn[0, 1])
    assert pixels == coarse_rows.size
    return full, screened


@pytest.mark.parametrize("noise", [0.0, 0.002, 0.01, 0.03])
def test_the_screen_reads_the_full_edge_score_within_a_few_hundredths(noise):
    full, screened = _full_and_screened(noise, (1.3, -0.8, 0.6))
    assert screened == pytest.approx(full, abs=0.03), (noise, full, screened)


def test_the_screen_tells_agreement_from_noise():
    clean, clean_screen = _full_and_screened(0.0, (1.3, -0.8, 0.6))
    noisy, noisy_screen = _full_and_screened(0.03, (1.3, -0.8, 0.6))
    assert clean > 0.9 and clean_screen > 0.9
    assert noisy < 0.6 and noisy_screen < _program.FINE_POLISH_MIN_EDGE - _program.FINE_POLISH_SCREEN_MARGIN


def test_no_pixel_gives_nan_and_a_count_of_zero():
    image = np.zeros((8, 8), np.float32)
    rows = np.array([1], np.int32)  # coarser pixel (1, 1) at 8 finer pixels a pixel: (12, 12), off the 8 x 8 level
    score, pixels = sampled_edge_score(image, rows, rows, 1, 8, np.inf, np.zeros((8, 8), np.float32),
                                       np.zeros((8, 8), np.float32), np.eye(2, 3), 1.0, 0.0)
    assert math.isnan(score) and pixels == 0


def _unknown_kind_pair(noise: float):  # type: ignore[no-untyped-def]
    """Two arrays of unknown kind (``bench/gpu_latency.py``'s pair, smaller): one image, moved, each with its noise."""
    base = anatomy(512, seed=9) * 400.0 + 1000.0
    grid = {"shape": (288, 384), "spacing_mm": 0.26, "base_spacing_mm": 0.5}
    rng = np.random.default_rng(3)
    reference, frame = (moved(base, dx, dy, theta, **grid) + rng.normal(0.0, noise, grid["shape"])
                        for dx, dy, theta in ((0, 0, 0), (1.1, -0.7, 0.4)))
    return (portalign.Image.from_array(reference.astype(np.float32), pixel_spacing_mm=0.26),
            portalign.Image.from_array(frame.astype(np.float32), pixel_spacing_mm=0.26))


def test_a_noisy_unknown_kind_pair_is_screened_out_with_the_full_paths_pose(monkeypatch):
    """Independent noise on each image's own pixels: the full level agrees at ~0.5 and was prepared every frame."""
    reference, frame = _unknown_kind_pair(noise=60.0)
    options = portalign.RegistrationOptions(field="none")
    screened = portalign.prepare_reference(reference, options, backend="cpu").register(frame)
    fine = screened.details["fine_polish"]
    assert fine is not None and fine["edge_scores"] == [] and not fine["kept"], fine
    assert fine["screened_edge_scores"][0] < _program.FINE_POLISH_MIN_EDGE - _program.FINE_POLISH_SCREEN_MARGIN
    monkeypatch.setattr(_program, "FINE_POLISH_SCREEN_MARGIN", 10.0)  # the screen always passes: the full path
    full = portalign.prepare_reference(reference, options, backend="cpu").register(frame)
    unscreened = full.details["fine_polish"]
    assert len(unscreened["edge_scores"]) == 1 and unscreened["edge_scores"][0] < _program.FINE_POLISH_MIN_EDGE
    assert unscreened["edge_scores"][0] == pytest.approx(fine["screened_edge_scores"][0], abs=0.05)
    assert (screened.dx_mm, screened.dy_mm, screened.rotation_deg, screened.ok) == \
        (full.dx_mm, full.dy_mm, full.rotation_deg, full.ok)
    assert screened.dx_mm == pytest.approx(1.1, abs=0.1) and screened.dy_mm == pytest.approx(-0.7, abs=0.1)


def test_a_clean_unknown_kind_pair_passes_the_screen_and_is_polished():
    reference, frame = _unknown_kind_pair(noise=0.5)
    result = portalign.prepare_reference(reference, portalign.RegistrationOptions(field="none"),
                                         backend="cpu").register(frame)
    fine = result.details["fine_polish"]
    assert fine["screened_edge_scores"][0] >= _program.FINE_POLISH_MIN_EDGE, fine
    assert fine["edge_scores"][0] >= _program.FINE_POLISH_MIN_EDGE and fine["kept"], fine
    assert result.dx_mm == pytest.approx(1.1, abs=0.02) and result.dy_mm == pytest.approx(-0.7, abs=0.02)
