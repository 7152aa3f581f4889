"""Inputs shared by the kernel tests (CPU vs reference, GPU vs CPU): small images, masks and pose batches."""

from __future__ import annotations

import numpy as np

SHAPE = (24, 20)
REF_SHAPE = (26, 23)


def structured_image(shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """Smooth blobs, a bright rectangle (straight edges at known places) and mild noise; float32."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = np.zeros(shape)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols
        sigma = rng.uniform(1.5, 3.5)
        img += rng.uniform(-1.0, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    img[rows // 4 : rows // 2, cols // 3 : 2 * cols // 3] += 0.8
    img += 0.02 * rng.standard_normal(shape)
    return (1000.0 * img + 200.0).astype(np.float32)


def random_image(shape: tuple[int, int] = SHAPE, seed: int = 1) -> np.ndarray:
    """Uniform noise in [0, 100); float32."""
    return (np.random.default_rng(seed).random(shape) * 100.0).astype(np.float32)


def random_mask(shape: tuple[int, int] = SHAPE, seed: int = 2, keep: float = 0.85) -> np.ndarray:
    """A uint8 mask with about ``keep`` of the pixels set."""
    return (np.random.default_rng(seed).random(shape) < keep).astype(np.uint8)


def affines(params: list[tuple[float, float, float, float]]) -> np.ndarray:
    """``(K, 2, 3)`` frame-pixel -> reference-pixel maps from ``(dx_px, dy_px, theta_deg, scale)`` per pose.

    The map rotates by ``theta`` and scales about the frame centre, then shifts;
    ``scale`` is the frame's pixel size in reference pixels.
    """
    out = np.empty((len(params), 2, 3))
    cy, cx = (SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2
    rcy, rcx = (REF_SHAPE[0] - 1) / 2, (REF_SHAPE[1] - 1) / 2
    for k, (dx, dy, theta, scale) in enumerate(params):
        c, s = np.cos(np.radians(theta)) * scale, np.sin(np.radians(theta)) * scale
        out[k, 0] = [c, s, rcx - c * cx - s * cy - dx]
        out[k, 1] = [-s, c, rcy + s * cx - c * cy - dy]
    return out


#: Pose batches: identity-like (integer positions: zero sub-pixel weights and the last-cell edge),
#: sub-pixel shifts with rotations, a changed pixel size, and poses that map partly or wholly
#: outside the reference.
POSE_BATCHES = {
    "integer": [(0.0, 0.0, 0.0, 1.0), (1.0, -2.0, 0.0, 1.0), (-1.5, 0.0, 0.0, 1.0)],
    "subpixel_rotated": [(0.3, -0.7, 2.0, 1.0), (-1.26, 0.41, -5.0, 1.0), (0.05, 0.95, 11.0, 1.0),
                         (2.5, 1.5, -0.5, 1.0)],
    "scaled": [(0.2, 0.1, 1.0, 0.5), (-0.4, 0.3, -3.0, 1.3)],
    "outside": [(8.0, 0.0, 0.0, 1.0), (0.0, -11.0, 30.0, 1.0), (400.0, 400.0, 0.0, 1.0), (-400.0, 300.0, 0.0, 1.0)],
}


def pose_batch(name: str) -> np.ndarray:
    """Return the affines of the pose batch ``name``."""
    return affines(POSE_BATCHES[name])


def rotations_for(params_name: str) -> np.ndarray:
    """``(cos 2theta, sin 2theta)`` of each pose of a batch."""
    theta = np.radians([p[2] for p in POSE_BATCHES[params_name]])
    return np.stack([np.cos(2 * theta), np.sin(2 * theta)], axis=1)


def listed_pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Row-major int32 coordinates of the non-zero pixels of ``mask`` (buffers of the mask's size) and their count."""
    rows = np.zeros(mask.size, dtype=np.int32)
    cols = np.zeros(mask.size, dtype=np.int32)
    r, c = np.nonzero(mask)
    rows[: r.size] = r
    cols[: c.size] = c
    return rows, cols, int(r.size)
