"""A small level-sized pair with a known shift, laid out as the per-frame program's stage kernels take it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from portalign.kernels import cpu
from scipy import ndimage

from tests.kernel_cases import structured_image

SPACING = (1.0, 1.0)


@dataclass
class LevelCase:
    frame: np.ndarray
    ref: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    count: int
    frame_re: np.ndarray
    frame_im: np.ndarray
    ref_re: np.ndarray
    ref_im: np.ndarray
    frame_bins: np.ndarray
    ref_bins: np.ndarray
    geometry: np.ndarray
    truth: tuple[float, float]


def level_case(shape: tuple[int, int] = (40, 44), shift_px: tuple[float, float] = (1.3, -0.7), bins: int = 16,
               seed: int = 3) -> LevelCase:
    """A frame that is the reference moved by ``shift_px`` = (dx, dy) pixels (anatomy at q appears at q + d)."""
    ref = structured_image(shape, seed=seed).astype(np.float32)
    ref = ndimage.gaussian_filter(ref, 1.0).astype(np.float32)
    dx, dy = shift_px
    frame = ndimage.shift(ref, (dy, dx), order=3, mode="nearest").astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[4:-4, 4:-4] = 1
    full = np.ones(shape, dtype=np.uint8)
    rows = np.empty(frame.size, dtype=np.int32)
    cols = np.empty(frame.size, dtype=np.int32)
    count = cpu.pixel_list(mask, rows, cols)
    feats = []
    for img, m in ((frame, mask), (ref, full)):
        re = np.empty(shape, dtype=np.float32)
        im = np.empty(shape, dtype=np.float32)
        sums = np.empty((shape[0], 2))
        cpu.gradient_row_sums(img, m, np.inf, sums)
        cpu.orientation_features(img, m, float(sums[:, 0].sum() / sums[:, 1].sum()), np.inf, re, im)
        b = np.empty(shape, dtype=np.int16)
        lo, hi = np.percentile(img[m > 0], [0.5, 99.5])
        cpu.quantize(img, m, float(lo), float(hi), bins, b)
        feats.append((re, im, b))
    axis = ((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    geometry = np.array([axis[0], axis[1], SPACING[0], SPACING[1], axis[0], axis[1]])
    return LevelCase(frame, ref, rows, cols, count, feats[0][0], feats[0][1], feats[1][0], feats[1][1], feats[0][2],
                     feats[1][2], geometry, (dx * SPACING[1], dy * SPACING[0]))


def refine_args(case: LevelCase, metric: int, start: tuple[float, float, float], rotate: bool, bins: int = 16,
                iterations: int = 6, star: bool = False) -> tuple:
    """Arguments of ``refine`` for ``case`` (the output buffer last)."""
    step = np.array([SPACING[1], SPACING[0], np.radians(0.5) if rotate else 0.0])  # the engine's largest rotation step
    hist = np.zeros((10, bins, bins), dtype=np.int64)
    return (metric, case.rows, case.cols, case.count, case.frame_re, case.frame_im, case.ref_re, case.ref_im,
            case.frame_bins, case.ref_bins, case.geometry, np.array(start, dtype=np.float64), step, iterations, 0.01,
            star, np.radians(6.0), True, hist, np.zeros(5))


def peak_window(seed: int = 0, k: int = 5, m: int = 9) -> np.ndarray:
    """A (k, 2m+1, 2m+1) correlation-like window with a few bumps of different heights."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-m: m + 1, -m: m + 1].astype(np.float64)
    window = 0.005 * rng.standard_normal((k, 2 * m + 1, 2 * m + 1))
    for height, (cy, cx), kk in ((0.95, (2.3, -4.6), 2), (0.88, (-6.1, 5.2), 1), (0.4, (6.0, 6.0), 3)):
        for t in range(k):
            window[t] += height * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4.0 - (t - kk) ** 2 / 1.5)
    return window
