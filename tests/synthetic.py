"""Synthetic image pairs with exact truth for the engine tests.

``anatomy`` is a smooth random "patient": ellipses of several sizes and
contrasts plus a soft texture. ``moved`` samples it under the DESIGN.md
contract: the reference point ``q`` appears in the frame at ``R(theta) q + d``,
so the frame pixel at ``p`` shows ``anatomy(R(-theta) (p - d))``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

REAL_SPACING = 1.0

#: How long (s) a test lets a first registration, a server's start or a stream's drain take: a cold numba cache
#: compiles the kernels first (220 s measured on the 2-core CI machine alone, longer with both xdist workers
#: compiling at once; a CI run once failed a 60 s HTTP read this way). A time limit is not what these tests test.
FIRST_USE_S = 900.0


def anatomy(size: int = 384, seed: int = 1) -> np.ndarray:
    """A smooth structured image (float64) of ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    rr, cc = np.mgrid[0:size, 0:size].astype(float)
    for _ in range(int(40 * (size / 384) ** 2) + 10):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(5, 40, 2) * size / 384
        t = rng.uniform(0, np.pi)
        x = (cc - cx) * math.cos(t) + (rr - cy) * math.sin(t)
        y = -(cc - cx) * math.sin(t) + (rr - cy) * math.cos(t)
        img += rng.uniform(-1, 1) * ((x / a) ** 2 + (y / b) ** 2 < 1)
    img = ndimage.gaussian_filter(img, 1.5) + 0.3 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 3)
    return img


def moved(base: np.ndarray, dx_mm: float, dy_mm: float, theta_deg: float, *, shape: tuple[int, int] = (256, 256),
          spacing_mm: float = 1.0, base_spacing_mm: float = 1.0, order: int = 3) -> np.ndarray:
    """Sample ``base`` (centred on the beam axis) onto a frame grid under the pose ``(dx, dy, theta)``."""
    rows, cols = shape
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    by, bx = (base.shape[0] - 1) / 2, (base.shape[1] - 1) / 2
    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    x = (cc - cx) * spacing_mm - dx_mm
    y = (rr - cy) * spacing_mm - dy_mm
    t = math.radians(theta_deg)
    qx = math.cos(t) * x + math.sin(t) * y
    qy = -math.sin(t) * x + math.cos(t) * y
    return ndimage.map_coordinates(base, [qy / base_spacing_mm + by, qx / base_spacing_mm + bx], order=order, mode="nearest")


def field_aperture(shape: tuple[int, int], spacing_mm: float, half_width_mm: float, half_height_mm: float, *,
                   penumbra_mm: float = 2.0, transmission: float = 0.02,
                   offset_mm: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A jaw-defined field fixed to the imager: ~1 inside, ``transmission`` outside, erf penumbra."""
    from scipy.special import erf

    rows, cols = shape
    x = (np.arange(cols) - (cols - 1) / 2) * spacing_mm - offset_mm[0]
    y = (np.arange(rows) - (rows - 1) / 2) * spacing_mm - offset_mm[1]
    s = penumbra_mm / 1.8
    fx = 0.5 * (erf((half_width_mm - np.abs(x)) / s) + 1)
    fy = 0.5 * (erf((half_height_mm - np.abs(y)) / s) + 1)
    return transmission + (1 - transmission) * np.outer(fy, fx)


def mv_portal(anatomy_values: np.ndarray, aperture: np.ndarray, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """MV-like frame from a kV-like image: low contrast, inverted (attenuation -> transmission), collimated."""
    a = (anatomy_values - anatomy_values.min()) / max(np.ptp(anatomy_values), 1e-12)
    transmission = np.exp(-0.8 * a)  # bone (bright in kV) dark in MV
    frame = 1000.0 * aperture * transmission
    if noise:
        frame = frame + np.random.default_rng(seed).normal(0.0, noise * 1000.0, frame.shape)
    return frame
