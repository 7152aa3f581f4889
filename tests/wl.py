"""Winston-Lutz ball-bearing images: an independent measurement of how far the BB moved.

The truth for "cardinal versus a couch-shifted set" is measured from the images
themselves: the BB is the dark disc inside the bright field; its intensity-
weighted centroid (darkness below the local field level, inside a disc around
the darkest blob) is found in each image and the difference is scaled to the
isocentre plane. This is how pylinac locates the BB too, done here in a few
lines so that the engine is compared with something that is not itself.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from portalign.dicom import read_rt_image
from scipy import ndimage

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
WL = REAL / "pylinac" / "wl_shift_truebeam"


def wl_files(set_name: str, tmp_dir: Path) -> dict[int, Path]:
    """Files of one WL set keyed by gantry angle (0/90/180/270); zipped sets are extracted into ``tmp_dir``."""
    folder = WL / set_name
    if not folder.is_dir():
        with zipfile.ZipFile(WL / f"{set_name}.zip") as archive:
            folder = tmp_dir / set_name
            folder.mkdir(parents=True, exist_ok=True)
            for member in archive.namelist():
                if member.lower().endswith(".dcm"):
                    (folder / Path(member).name.replace(" ", "_")).write_bytes(archive.read(member))
    out: dict[int, Path] = {}
    for path in sorted(folder.glob("*.dcm")):
        gantry = int(round(read_rt_image(path).info.gantry_deg or 0.0)) % 360
        out[gantry] = path
    return out


def bb_centroid_mm(path: Path) -> tuple[float, float]:
    """BB centre (x_mm, y_mm) at the isocentre plane, relative to the beam axis."""
    image = read_rt_image(path)
    pixels = ndimage.gaussian_filter(image.pixels.astype(np.float64), 1.0)
    field = pixels > 0.5 * np.percentile(pixels, 99.5)
    field = ndimage.binary_fill_holes(field)
    interior = ndimage.binary_erosion(field, iterations=8)
    level = np.median(pixels[interior])
    darkness = np.where(interior, np.clip(level - pixels, 0, None), 0.0)
    radius_px = 4.0 / image.spacing_mm[0]  # the BB is about 8 mm across
    smooth = ndimage.gaussian_filter(darkness, radius_px / 2)
    row, col = (float(v) for v in np.unravel_index(int(np.argmax(smooth)), smooth.shape))
    rows, cols = np.indices(darkness.shape)
    for _ in range(10):  # mean shift on the dark disc; the thinner, fainter support rod stays below threshold
        disc = (rows - row) ** 2 + (cols - col) ** 2 <= (1.3 * radius_px) ** 2
        core = disc & (darkness > 0.5 * darkness[disc].max())
        weight = darkness * core
        row, col = float((weight * rows).sum() / weight.sum()), float((weight * cols).sum() / weight.sum())
    x, y = image.pixel_to_mm(col, row)
    return float(x), float(y)
