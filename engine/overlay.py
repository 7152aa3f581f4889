"""A review picture of a registration: what a physicist checks before trusting a shift.

Left: the reference moved by the found pose, in a checkerboard with the frame
(edges must continue across the squares). Right: a colour overlay (reference
in magenta, frame in green; matched anatomy turns grey). Both show the field
outline found in the frame and, in the title, the shift, the rotation, the
score and whether the result is ``ok``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import PortalignError
from .image import Image
from .registration import pose_affines
from .result import RegistrationResult

__all__ = ["write_overlay", "reference_on_frame_grid"]


def reference_on_frame_grid(reference: Image, frame: Image, result: RegistrationResult) -> np.ndarray:
    """Resample the reference onto the frame's pixel grid, moved by the result's pose.

    A reference point ``q`` is drawn where the result says it is in the frame,
    ``R q + d``; pixels with no reference behind them are NaN.
    """
    from portalign.kernels import cpu

    pose = np.array([[result.dx_mm, result.dy_mm, math.radians(result.rotation_deg)]])
    affine = pose_affines(pose, frame.beam_axis_px, frame.spacing_mm, reference.beam_axis_px, reference.spacing_mm)[0]
    out = np.empty(frame.shape, dtype=np.float32)
    cpu.warp_bilinear(reference.pixels, affine, np.nan, out)
    return out


def write_overlay(path: str | Path, reference: Image, frame: Image, result: RegistrationResult, *, squares: int = 8) -> Path:
    """Write a PNG review picture of ``result`` to ``path``.

    Parameters
    ----------
    path : str or Path
        Output file (PNG).
    reference, frame : Image
        The registered pair.
    result : RegistrationResult
    squares : int
        Checkerboard squares along the shorter side.

    Returns
    -------
    Path
        The written file.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PortalignError("--overlay needs matplotlib: pip install 'portalign[overlay]'") from exc
    path = Path(path)
    moved = reference_on_frame_grid(reference, frame, result)
    region = _field_region(frame, result.field_box_mm)
    ref_n = _normalise(moved, region)
    frame_n = _normalise(frame.pixels, region)
    if _correlation(ref_n, frame_n) < 0:  # MV against kV: show both with bone the same way
        ref_n = 1.0 - ref_n
    rows, cols = frame.shape
    box = result.field_box_mm
    view_px = min(rows, cols)
    if box is not None:  # a small field fills the picture: squares and view follow the field
        view_px = int(min((box[1] - box[0]) / frame.spacing_mm[1], (box[3] - box[2]) / frame.spacing_mm[0]))
    size = max(view_px // squares, 1)
    rr, cc = np.mgrid[0:rows, 0:cols]
    board = ((rr // size + cc // size) % 2).astype(bool)
    checker = np.where(board & np.isfinite(ref_n), ref_n, frame_n)
    colour = np.stack([np.nan_to_num(ref_n, nan=0.0), frame_n, np.nan_to_num(ref_n, nan=0.0)], axis=-1)
    extent = _extent_mm(frame)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True)
    axes[0].imshow(checker, cmap="gray", extent=extent, interpolation="nearest")
    axes[0].set_title("checkerboard: moved reference | frame")
    axes[1].imshow(np.clip(colour, 0, 1), extent=extent, interpolation="nearest")
    axes[1].set_title("reference (magenta) over frame (green)")
    for ax in axes:
        ax.set_xlabel("x (mm at isocentre)")
        ax.set_ylabel("y (mm at isocentre)")
        ax.plot([0], [0], marker="+", color="yellow", markersize=14)
        if box is not None:
            x0, x1, y0, y1 = box
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="orange", lw=1, label="field")
            pad = max(10.0, 0.25 * max(x1 - x0, y1 - y0))
            ax.set_xlim(max(x0 - pad, extent[0]), min(x1 + pad, extent[1]))
            ax.set_ylim(min(y1 + pad, extent[2]), max(y0 - pad, extent[3]))
    status = "OK" if result.ok else f"NOT OK: {result.reason}"
    fig.suptitle(
        f"dx = {result.dx_mm:+.2f} mm   dy = {result.dy_mm:+.2f} mm   rotation = {result.rotation_deg:+.2f} deg   "
        f"score = {result.score:.3f} ({result.method}, {result.backend})\n{status}",
        fontsize=11,
        color="black" if result.ok else "red",
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _field_region(frame: Image, box: list[float] | None) -> np.ndarray:
    """Pixels inside the detected field (all pixels when there is none): grey levels are set there."""
    if box is None:
        return np.ones(frame.shape, dtype=bool)
    cols, rows = np.meshgrid(np.arange(frame.shape[1]), np.arange(frame.shape[0]))
    x, y = frame.pixel_to_mm(cols, rows)
    return (x >= box[0]) & (x <= box[1]) & (y >= box[2]) & (y <= box[3])


def _normalise(pixels: np.ndarray, region: np.ndarray) -> np.ndarray:
    finite = pixels[np.isfinite(pixels) & region]
    if finite.size == 0:
        return np.full(pixels.shape, np.nan, dtype=np.float32)
    lo, hi = np.percentile(finite, [1, 99])
    return np.clip((pixels - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 16:
        return 1.0
    x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
    return float((x * y).sum() / max(math.sqrt((x * x).sum() * (y * y).sum()), 1e-30))


def _extent_mm(image: Image) -> tuple[float, float, float, float]:
    rows, cols = image.shape
    x0, y0 = image.pixel_to_mm(-0.5, -0.5)
    x1, y1 = image.pixel_to_mm(cols - 0.5, rows - 0.5)
    return float(x0), float(x1), float(y1), float(y0)
