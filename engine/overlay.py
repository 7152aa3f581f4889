"""A review picture of a registration: what a physicist checks before trusting a shift.

Left: the reference moved by the found pose, in a checkerboard with the frame
(edges must continue across the squares; the squares at the beam axis are
lettered R for reference and F for frame). Right: a colour overlay (reference
in magenta, frame in green; matched anatomy turns grey). Both show the field
outline found in the frame, the beam axis (+) and the patient (or IEC 61217)
direction of each image edge. The title names both files with their gantry
angle and acquisition date, then the shift, the rotation ("rotation not
estimated" when it was not), the score and whether the result is ``ok``.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_options import rotation_text, shift_spread
from .couch import PATIENT_TO_IEC, image_axes
from .errors import MissingDependencyError
from .image import Image, beam_kind
from .registration import pose_affines
from .registration._views import angle_text
from .result import RegistrationResult

__all__ = ["write_overlay", "review_path", "reference_on_frame_grid", "edge_labels", "require_matplotlib"]


def require_matplotlib() -> Any:
    """Return ``matplotlib.pyplot`` on the non-interactive Agg backend.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (the message names the ``overlay`` extra): the command line asks before it
        registers, so that ``--overlay`` without it fails at once.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError.for_module(exc.name or "matplotlib", "--overlay (the review picture)") from None
    return plt


def reference_on_frame_grid(reference: Image, frame: Image, result: RegistrationResult) -> np.ndarray:
    """Resample the reference onto the frame's pixel grid, moved by the result's pose.

    A reference point ``q`` is drawn where the result says it is in the frame,
    ``R q + d``; pixels with no reference behind them are NaN.
    """
    from portalign.kernels import cpu

    rotation = result.rotation_deg or 0.0  # not estimated: the translation was found with the rotation held at 0
    # nothing measured: the reference is drawn where it is (the title says "not measured")
    pose = np.array([[result.dx_mm or 0.0, result.dy_mm or 0.0, math.radians(rotation)]])
    affine = pose_affines(pose, frame.beam_axis_px, frame.spacing_mm, reference.beam_axis_px, reference.spacing_mm)[0]
    out = np.empty(frame.shape, dtype=np.float32)
    cpu.warp_bilinear(reference.pixels, affine, np.nan, out)
    return out


def review_path(path: str | Path, frame: Image) -> Path:
    """Where :func:`write_overlay` writes for ``path``: inside an existing folder, ``.png`` added to a bare name."""
    path = Path(path)
    if path.is_dir():
        stem = Path(str(frame.info.source or "")).stem or "frame"
        return path / f"{stem}_review.png"
    return path if path.suffix else path.with_name(f"{path.name}.png")


def write_overlay(path: str | Path, reference: Image, frame: Image, result: RegistrationResult, *, squares: int = 8) -> Path:
    """Write a PNG review picture of ``result`` to ``path``.

    Parameters
    ----------
    path : str or Path
        Output file (PNG; ``.png`` is added to a name without a suffix), or an existing folder: the picture is
        written inside it as ``<frame file's stem>_review.png``.
    reference, frame : Image
        The registered pair.
    result : RegistrationResult
    squares : int
        Checkerboard squares along the shorter side.

    Returns
    -------
    Path
        The written file (what the caller reports: it may differ from ``path``).
    """
    plt = require_matplotlib()
    path = review_path(path, frame)
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
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.5), constrained_layout=True)
    axes[0].imshow(checker, cmap="gray", extent=extent, interpolation="nearest")
    axes[0].set_title("checkerboard: squares alternate moved reference (R) and frame (F)")
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
    _label_squares(axes[0], frame, size, board)
    labels = edge_labels(frame)
    for ax in axes:
        _label_edges(ax, labels)
    meaning = ""
    if labels is not None:
        position = (frame.info.patient_position or "").strip().upper()
        meaning = "   edge letters: " + (f"patient directions ({position})" if position in PATIENT_TO_IEC
                                         else "IEC 61217 patient-support axes")
    status = "OK" if result.ok else f"NOT OK: {result.reason}"
    rotation = rotation_text(result.rotation_deg, result.details)
    if result.dx_mm is None or result.dy_mm is None:
        shift = "dx, dy not measured (the reference drawn unmoved)"
    else:
        spread = shift_spread(result.details)
        shift = f"dx = {result.dx_mm:+.2f}{spread} mm   dy = {result.dy_mm:+.2f}{spread} mm"
    fig.suptitle(
        f"{textwrap.fill('reference: ' + _describe(reference), 150)}\n{textwrap.fill('frame: ' + _describe(frame), 150)}\n"
        f"{shift}   {rotation}   "
        f"{'score not measured' if result.score is None else f'score = {result.score:.3f}'} "
        f"({result.method}, {result.backend}){meaning}\n{textwrap.fill(status, 150)}",
        fontsize=10,
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


def _describe(image: Image) -> str:
    """File name, kind, gantry (collimator, couch where not 0) angles and acquisition date of an image, for the title."""
    info = image.info
    kind = beam_kind(info)
    gantry = "gantry unknown" if info.gantry_deg is None else f"gantry {float(angle_text(info.gantry_deg)):.1f} deg"
    # collimator and couch where recorded and not 0 (a trial's small field was collimator 90, couch 45: unsaid)
    for label, value in (("collimator", info.collimator_deg), ("couch", info.couch_deg)):
        if value is not None and float(angle_text(value)) not in (0.0, 360.0):
            gantry += f", {label} {float(angle_text(value)):.1f} deg"
    date = info.extra.get("acquisition_date")
    when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if date and len(date) >= 8 else "date unknown"
    return f"{info.source} ({kind}, {gantry}, {when})"


def edge_labels(image: Image) -> dict[str, str] | None:
    """Name the direction each edge of the image points to, or ``None`` without a gantry angle.

    The image axes in the room come from :func:`portalign.couch.image_axes` (gantry,
    couch and receptor angles). With a known patient position (HFS, FFS, HFP, FFP)
    the directions are the patient's (L/R, A/P, S/I, as in DICOM); otherwise the
    IEC 61217 patient-support axes (X lateral, Y longitudinal towards the gantry,
    Z vertical up).

    Returns
    -------
    dict or None
        ``{"left", "right", "top", "bottom"}``: image -x, +x, -y (rows upwards) and +y.
    """
    info = image.info
    if info.gantry_deg is None:
        return None
    ex, ey, _ = image_axes(info.gantry_deg, couch_deg=info.couch_deg or 0.0,
                           image_rotation_deg=float(info.extra.get("receptor_angle_deg") or 0.0))
    position = (info.patient_position or "").strip().upper()
    if position in PATIENT_TO_IEC:
        to_lps = np.array(PATIENT_TO_IEC[position], dtype=np.float64).T  # lps = M^T iec
        names = (("L", "R"), ("P", "A"), ("S", "I"))
        convert = to_lps
    else:
        names = (("+X", "-X"), ("+Y", "-Y"), ("+Z", "-Z"))
        convert = np.eye(3)

    def name(vector: np.ndarray) -> str:
        v = convert @ vector
        # every component above sin(22.5 deg): an oblique gantry shows two letters
        parts = [names[k][0 if v[k] > 0 else 1] for k in np.argsort(-np.abs(v)) if abs(v[k]) > 0.38]
        return "".join(parts) if position in PATIENT_TO_IEC else " ".join(parts) + " (IEC)"

    return {"left": name(-ex), "right": name(ex), "top": name(-ey), "bottom": name(ey)}


def _label_edges(ax, labels: dict[str, str] | None) -> None:  # type: ignore[no-untyped-def]
    if labels is None:
        ax.text(0.5, 0.01, "orientation unknown (no gantry angle)", transform=ax.transAxes, ha="center",
                va="bottom", color="yellow", fontsize=8)
        return
    style = {"transform": ax.transAxes, "color": "yellow", "fontsize": 11, "fontweight": "bold",
             "bbox": {"facecolor": "black", "alpha": 0.5, "pad": 1.5, "edgecolor": "none"}}
    ax.text(0.01, 0.5, labels["left"], ha="left", va="center", **style)
    ax.text(0.99, 0.5, labels["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.99, labels["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.01, labels["bottom"], ha="center", va="bottom", **style)


def _label_squares(ax, frame: Image, size: int, board: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Letter the checkerboard square at the beam axis and its right-hand neighbour: R reference, F frame."""
    rows, cols = board.shape
    col0 = int(min(max(frame.beam_axis_px[0], 0), cols - 1)) // size * size
    row0 = int(min(max(frame.beam_axis_px[1], 0), rows - 1)) // size * size
    for col in (col0, col0 + size):
        if col >= cols:
            continue
        centre_col, centre_row = min(col + size / 2, cols - 1), min(row0 + size / 2, rows - 1)
        x, y = frame.pixel_to_mm(centre_col, centre_row)
        letter = "R" if board[int(centre_row), int(centre_col)] else "F"
        ax.text(float(x), float(y), letter, color="cyan", fontsize=12, fontweight="bold", ha="center", va="center",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1.5, "edgecolor": "none"})
