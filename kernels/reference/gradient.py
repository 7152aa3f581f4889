"""Float64 reference for the doubled-angle edge features (slow, obvious numpy).

Same arguments and output buffers as :mod:`portalign.kernels.cpu.gradient`
(the maths is in its docstring); central differences in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["orientation_features", "gradient_row_sums"]


def _central_gradients(image: np.ndarray, mask: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``gx``, ``gy`` (float64, zero off the interior) and the usable interior pixels (within ``limit``)."""
    img = np.asarray(image, dtype=np.float64)
    gx = np.zeros_like(img)
    gy = np.zeros_like(img)
    gx[1:-1, 1:-1] = 0.5 * (img[1:-1, 2:] - img[1:-1, :-2])
    gy[1:-1, 1:-1] = 0.5 * (img[2:, 1:-1] - img[:-2, 1:-1])
    usable = np.zeros(img.shape, dtype=bool)
    usable[1:-1, 1:-1] = np.asarray(mask)[1:-1, 1:-1] != 0
    usable &= (np.abs(gx) <= limit) & (np.abs(gy) <= limit)
    return gx, gy, usable


def orientation_features(image: np.ndarray, mask: np.ndarray, eps: float, limit: float, out_re: np.ndarray,
                         out_im: np.ndarray) -> None:
    """Write ``(gx^2 - gy^2, 2 gx gy) / (|g|^2 + eps^2)`` on usable interior pixels, 0 elsewhere."""
    gx, gy, usable = _central_gradients(image, mask, limit)
    norm = gx * gx + gy * gy + float(eps) ** 2
    out_re[...] = np.where(usable, (gx * gx - gy * gy) / norm, 0.0)
    out_im[...] = np.where(usable, 2.0 * gx * gy / norm, 0.0)


def gradient_row_sums(image: np.ndarray, mask: np.ndarray, limit: float, out: np.ndarray) -> None:
    """Write per row ``(sum |g|, count)`` over usable interior pixels (within ``limit``) into ``out[row, :]``."""
    gx, gy, usable = _central_gradients(image, mask, limit)
    out[:, 0] = np.where(usable, np.hypot(gx, gy), 0.0).sum(axis=1)
    out[:, 1] = usable.sum(axis=1)
