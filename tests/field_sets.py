"""Pairs with exact truth for the field tests: windows of real RT Images, and rendered small fields.

``window_pair`` crops one real image twice, like the handed ``../shared/field-cases``: the reference is
the window at ``(row0, col0)``, the frame the window moved so that the reference's content appears
``rows`` rows down and ``cols`` columns right, both with the header of the reference window (same
beam axis, same planned aperture). The true result is ``dx = cols * col_spacing``,
``dy = rows * row_spacing``, no rotation. ``cone_pair`` renders a circular SRS cone with a ball bearing
and soft anatomy, the whole set-up moved by a known shift (a cone's edge and a ball give no hold on
rotation).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from portalign import Image
from portalign.dicom import read_rt_image
from scipy import special

from tests.synthetic import anatomy

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"
FIELD_CASES = SHARED / "field-cases"


def window_pair(image: Image, row0: int, col0: int, height: int, width: int, rows: int, cols: int
                ) -> tuple[Image, Image, float, float]:
    """Reference window and a frame window whose content is moved by ``(rows, cols)`` pixels; and the truth."""
    ax, ay = image.beam_axis_px
    axis = (ax - col0, ay - row0)
    ref = replace(image, pixels=np.ascontiguousarray(image.pixels[row0:row0 + height, col0:col0 + width]),
                  beam_axis_px=axis)
    r1, c1 = row0 - rows, col0 - cols
    if r1 < 0 or c1 < 0 or r1 + height > image.shape[0] or c1 + width > image.shape[1]:
        raise ValueError("window_pair: the moved window leaves the image")
    frame = replace(image, pixels=np.ascontiguousarray(image.pixels[r1:r1 + height, c1:c1 + width]),
                    beam_axis_px=axis)
    return ref, frame, cols * image.spacing_mm[1], rows * image.spacing_mm[0]


def centred_window_pair(image: Image, size_mm: float, rows: int, cols: int, *, centre_px: tuple[float, float] | None = None
                        ) -> tuple[Image, Image, float, float]:
    """A square window of ``size_mm`` centred on ``centre_px`` (col, row; default the beam axis), moved by ``(rows, cols)``."""
    side = int(round(size_mm / min(image.spacing_mm)))
    cx, cy = centre_px if centre_px is not None else image.beam_axis_px
    return window_pair(image, int(round(cy)) - side // 2, int(round(cx)) - side // 2, side, side, rows, cols)


def cone_image(shape: tuple[int, int], spacing_mm: float, shift_mm: tuple[float, float], *, cone_mm: float = 26.0,
               bb_mm: tuple[float, float] = (0.6, -0.4), noise: float = 0.005, seed: int = 0,
               texture: float = 0.05) -> np.ndarray:
    """An SRS cone field (circular, 1 mm erf penumbra, 2 % transmission) with a 5 mm ball bearing and soft anatomy.

    Everything (cone, ball, anatomy) is displaced by ``shift_mm``: a window moved over one set-up.
    """
    rows, cols = shape
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    x = (cc - (cols - 1) / 2) * spacing_mm - shift_mm[0]
    y = (rr - (rows - 1) / 2) * spacing_mm - shift_mm[1]
    img = 0.02 + 0.98 * 0.5 * special.erfc((np.hypot(x, y) - cone_mm / 2) / 1.0)
    ball = np.sqrt(np.clip(2.5**2 - (x - bb_mm[0]) ** 2 - (y - bb_mm[1]) ** 2, 0.0, None)) / 2.5
    img *= 1.0 - 0.3 * ball
    if texture:
        base = anatomy(256, seed=7)
        from scipy import ndimage

        tex = ndimage.map_coordinates(base, [y / 0.5 + 127.5, x / 0.5 + 127.5], order=1, mode="nearest")
        img *= 1.0 + texture * (tex - tex.mean()) / max(np.ptp(tex), 1e-12)
    return img + np.random.default_rng(seed).normal(0.0, noise, shape)


def cone_pair(dx_mm: float, dy_mm: float, *, spacing_mm: float = 0.25, size: int = 200, cone_mm: float = 26.0
              ) -> tuple[Image, Image]:
    """A rendered cone reference and its frame moved by ``(dx_mm, dy_mm)`` (portal images, sign unknown)."""
    ref = Image.from_array(cone_image((size, size), spacing_mm, (0.0, 0.0), cone_mm=cone_mm), pixel_spacing_mm=spacing_mm)
    frame = Image.from_array(cone_image((size, size), spacing_mm, (dx_mm, dy_mm), cone_mm=cone_mm, seed=1),
                             pixel_spacing_mm=spacing_mm)
    return ref, frame


def read(path: Path) -> Image:
    """Read an RT Image of the real data (a zipped Winston-Lutz set is not needed here)."""
    return read_rt_image(path)


def low_dose(image: Image, fraction: float, seed: int) -> Image:
    """``image`` with white noise of ``fraction`` times its signal range (1st to 99th percentile) added (low dose)."""
    pixels = image.pixels.astype(np.float64)
    sigma = fraction * float(np.subtract(*np.percentile(pixels, [99, 1])))
    return replace(image, pixels=pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape))


def dead_lines(image: Image, rows: tuple[int, ...] = (), cols: tuple[int, ...] = ()) -> Image:
    """``image`` with whole detector rows / columns reading zero (dead lines of the panel), as float64."""
    return with_lines(image, rows, cols, dtype=np.float64)


def with_lines(image: Image, rows: Any = (), cols: Any = (), value: float = 0.0, dtype: Any = np.float32) -> Image:
    """``image`` (a copy of ``dtype``) with whole detector rows / columns reading ``value`` (0: dead; high: hot)."""
    pixels = np.array(image.pixels, dtype=dtype)
    pixels[list(rows), :] = value
    pixels[:, list(cols)] = value
    return replace(image, pixels=pixels)
