"""The 6-DOF search: start from the 2-D engine, refine all six parameters on DRRs rendered on the fly.

Stages (one program, each a function of the prepared CT and the views' data):

``initialise``
    Per view, a DRR at the planned pose (the frame's pixel grid binned 2x) is
    registered with the 2-D engine: ``(dx, dy, theta)`` and the detected field.
    The views combine as in :mod:`portalign.couch` (least squares of
    ``(dx, dy) = P t`` and ``theta = b . w``) into the starting pose; a
    rotation the in-plane angles do not see starts at 0.
``refine``
    Per level (coarse volume on a 4 mm detector grid, then the CT's own grid
    on a 2 mm grid), a quadratic model of the similarity is fitted from
    ``1 + 2k + k(k-1)/2`` poses around the current pose (28 for six
    parameters: the centre, +-h along each axis and each pair), all rendered in
    one batched projector call per view; a trust-region Newton step on the
    model gives the next pose, kept when its own similarity is higher.
``assess``
    Per view, a DRR at the result is registered again with the 2-D engine:
    what it still finds (shift, rotation) is the view's residual. The result is
    ``ok`` when every residual and score passes and the pose lies inside the
    search range.

Similarity: gradient correlation (Penney et al., IEEE TMI 17:586, 1998): the
mean of the normalised cross-correlations of the horizontal and the vertical
image gradients (Sobel), DRR against frame, on the detector grid inside the
frame's field (shrunk by ``field_margin_mm``, so that the jaw edges, which do
not move with the patient, never enter). A portal frame's pixels are
proportional to the transmitted fluence ``I0 exp(-integral mu)``, so it is
compared as ``-log(pixel)``: a line integral up to an additive constant (which
the correlation ignores), bone bright as in the DRR, and the gradients of thick
and thin parts weighted alike (a frame whose ``kind`` is ``"drr"`` is used as
it is).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from ..backends import cpu_exclusive
from ..couch import PATIENT_DIRECTIONS
from ..errors import GeometryError, PortalImageError
from ..image import Image, as_image
from ..options import RegistrationOptions
from ..registration._quality import PARALLAX_DEPTH_MM, UNESTIMATED_TURN_DEG
from ..tolerance import ToleranceTable
from ._geometry import (
    PARAMETERS,
    ViewGeometry,
    check_not_parallel,
    euler_angles,
    measured_axes,
    rotation_matrix,
)
from ._result import Register3DResult
from ._volume import PreparedCT, VolumeLevel


@dataclass(frozen=True)
class SearchLevel:
    """One level of the coarse-to-fine search.

    Attributes
    ----------
    volume : {"coarse", "fine"}
        Which attenuation volume the rays cross.
    grid_mm : float
        Detector grid spacing at the isocentre plane (the frame is smoothed to match).
    step_translation_mm, step_rotation_deg : float
        Finite-difference steps ``h`` of the quadratic model.
    max_iterations : int
        Newton steps at most.
    cross_terms : bool
        Sample the pairs ``e_i + e_j`` for the off-diagonal curvature (28 poses per model for six
        parameters); False samples the axes only (13 poses) and scales the previous level's coupling.
    """

    volume: str
    grid_mm: float
    step_translation_mm: float
    step_rotation_deg: float
    max_iterations: int
    cross_terms: bool = True


@dataclass(frozen=True)
class Register3DOptions:
    """Options of the 6-DOF 2D/3D registration.

    Attributes
    ----------
    levels : tuple of SearchLevel
        Coarse to fine.
    max_grid_points : int
        Largest number of detector grid points along one side of a view (the
        grid coarsens for larger fields).
    field_margin_mm : float
        The field's edges are excluded: the grid stays this far inside the
        detected field (isocentre plane).
    max_translation_mm, max_rotation_deg : float
        Search range; a result outside it is not ``ok``.
    min_score : float
        Smallest accepted gradient correlation of a view at the result.
    max_residual_mm, max_residual_deg : float
        Largest accepted residual of a view (2-D engine against the DRR at the result).
    max_translation_uncertainty_mm : float
        Largest accepted standard uncertainty of an estimated translation (mm), propagated from the views' 2-D
        precision (:func:`translation_uncertainty`): views close to parallel resolve the displacement along their
        beams poorly (a trial: views 15 deg apart, vertical 0.31 mm for 1.50, ok).
    drr_spacing_mm : float
        The 2-D engine's DRRs (start and residual) are rendered on the frame's
        pixel grid binned to about this spacing (never finer than the frame).
    min_grid_points : int
        Smallest number of grid points along the shorter side of a small field
        (the grid gets finer than the level's ``grid_mm``, down to the frame's
        pixel spacing).
    """

    levels: tuple[SearchLevel, ...] = (
        SearchLevel("coarse", 4.0, 2.0, 1.0, 8),
        SearchLevel("fine", 2.0, 0.7, 0.35, 6, cross_terms=False),
    )
    max_grid_points: int = 96
    field_margin_mm: float = 8.0
    max_translation_mm: float = 20.0
    max_rotation_deg: float = 6.0
    min_score: float = 0.1
    max_residual_mm: float = 1.0
    max_residual_deg: float = 1.0
    max_translation_uncertainty_mm: float = 1.0
    drr_spacing_mm: float = 1.2
    min_grid_points: int = 40

    def __post_init__(self) -> None:
        if not self.levels or any(lv.volume not in ("coarse", "fine") for lv in self.levels):
            raise GeometryError("Register3DOptions.levels needs at least one SearchLevel with volume 'coarse' or 'fine'")
        for name in ("field_margin_mm", "max_translation_mm", "max_rotation_deg", "max_residual_mm",
                     "max_residual_deg", "max_translation_uncertainty_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise GeometryError(f"Register3DOptions.{name} must be a non-negative number, got {value!r}")
        if not 8 <= int(self.min_grid_points) <= int(self.max_grid_points):
            raise GeometryError("Register3DOptions: need 8 <= min_grid_points <= max_grid_points")


# A portal frame's pixels are clipped at this fraction of their maximum before the logarithm.
_LOG_FLOOR = 1e-3
# Newton steps shorter than this (in units of the finite-difference step) end a level.
_CONVERGED = 0.05
_START_RADIUS, _MAX_RADIUS, _MIN_RADIUS = 2.0, 4.0, 0.1
# An accepted step shorter than this (units of h) ends the level without a new model around it.
_FINAL_STEP = 0.5


@dataclass
class _View:
    """A frame with its geometry and what the 2-D engine found."""

    frame: Image
    geometry: ViewGeometry
    linearise: bool
    field_box_mm: tuple[float, float, float, float]
    initial: Any = None


@dataclass
class _ViewLevel:
    """One view's detector grid and frame gradients at one level (gradients on the backend)."""

    room: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    shape: tuple[int, int]
    gx: Any
    gy: Any
    out: dict[int, Any]


def register_prepared(
    prepared: PreparedCT,
    frames: Any,
    *,
    options: Register3DOptions | None = None,
    registration_options: RegistrationOptions | None = None,
    tolerance: ToleranceTable | None = None,
) -> Register3DResult:
    """Register the frames of one setup against a prepared CT (see :func:`portalign.register3d.register_3d`)."""
    with cpu_exclusive():  # a lock only under numba's workqueue layer (not thread-safe)
        return _register_prepared(prepared, frames, options, registration_options, tolerance)


def _register_prepared(prepared: PreparedCT, frames: Any, options: Register3DOptions | None,
                       registration_options: RegistrationOptions | None, tolerance: ToleranceTable | None) -> Register3DResult:
    started = time.perf_counter()
    options = options or Register3DOptions()
    images = _frames(frames)
    geometries = [ViewGeometry.of(f) for f in images]
    check_not_parallel(geometries)
    basis, not_estimated = measured_axes(geometries)
    views = [_View(f, g, f.info.kind != "drr", _extent_box(f)) for f, g in zip(images, geometries, strict=True)]
    warnings: list[str] = []
    opts2d = registration_options or RegistrationOptions(method="edge", max_shift_mm=options.max_translation_mm + 5)

    pose = initialise(prepared, views, basis, opts2d, options.drr_spacing_mm, warnings)
    counters = {"iterations": 0, "renders": 0}
    coupling = None
    for level in options.levels:
        data = [_view_level(prepared, v, level, options) for v in views]
        pose, coupling = refine(prepared, prepared.levels[level.volume], data, views, pose, basis, level, counters,
                                coupling)
    final_level = prepared.levels[options.levels[-1].volume]
    final_data = [_view_level(prepared, v, options.levels[-1], options) for v in views]
    scores = _scores(prepared, final_level, final_data, views, pose[None, :])[:, 0]
    rows, reasons = assess(prepared, views, pose, scores, opts2d, options)
    uncertainty = translation_uncertainty(views, rows, not_estimated)
    reasons.extend(_imprecise(views, uncertainty, options.max_translation_uncertainty_mm))
    unseen = [name for name in PARAMETERS[3:] if name in not_estimated]
    if unseen:
        # a turn the views cannot see still moves the anatomy they show: what is reported absorbs part of it
        warnings.append(f"{' and '.join(unseen)} not estimated and held at 0: a patient turned about "
                        f"{'that axis' if len(unseen) == 1 else 'those axes'} moves the anatomy these views show, and "
                        "the translations and rotations reported absorb part of it (a trial from one view: 0.8 mm and "
                        "0.3 deg off for turns of 2-2.5 deg); add a view at another gantry angle to measure all six")
    if np.any(np.abs(pose[:3]) > options.max_translation_mm) or np.any(np.abs(pose[3:]) > options.max_rotation_deg):
        reasons.append(f"the result lies outside the search range ({options.max_translation_mm:g} mm, "
                       f"{options.max_rotation_deg:g} deg)")
    return _result(prepared, views, pose, not_estimated, rows, scores, counters, reasons, warnings, tolerance,
                   (time.perf_counter() - started) * 1e3, uncertainty)


#: A view's 2-D standard uncertainty (mm) where its check at the result measured none: the upper end of the 2-D
#: engine's usual 0.1-0.3 mm (``details["shift_uncertainty_mm"]``).
NOMINAL_VIEW_UNCERTAINTY_MM = 0.3


def translation_uncertainty(views: list[_View], rows: list[dict[str, Any]],
                            not_estimated: dict[str, str]) -> dict[str, float | None]:
    """Return the standard uncertainty (mm) of each estimated translation, from the views' 2-D precision.

    Each view measures the translation's projection on its image axes ``(ex, ey)`` (IEC 61217 room axes) to its
    2-D standard uncertainty (the check at the result's ``shift_uncertainty_mm``, else the start's, else
    ``NOMINAL_VIEW_UNCERTAINTY_MM``); the least-squares propagation through the stacked projections (as
    :func:`portalign.couch.solve_couch_shift`'s ``uncertainty_mm``): ``u_k = sqrt(sum_j (P+_kj w_j)^2)``, ``P+`` the
    pseudo-inverse. Two views ``a`` apart see the displacement along their beams to about ``u / sin a``. A rotation
    not estimated (one view: pitch and roll, say) is held at 0, yet a turn ``theta`` about axis ``w`` moves anatomy at
    depth ``z`` along the beam ``b`` by ``z theta (w x b)``: each such turn adds ``(Z s (w x b)_k)^2`` to axis ``k``'s
    variance, with ``Z`` and ``s`` the 2-D engine's ``PARALLAX_DEPTH_MM`` (30 mm) and ``UNESTIMATED_TURN_DEG`` (1
    deg). ``None`` for an axis not estimated.
    """
    projections, weights = [], []
    for view, row in zip(views, rows, strict=True):
        known = row.get("shift_uncertainty_mm")
        if known is None and view.initial is not None:
            known = (view.initial.details or {}).get("shift_uncertainty_mm")
        u = float(known) if known is not None and math.isfinite(known) and known > 0 else NOMINAL_VIEW_UNCERTAINTY_MM
        ex, ey, _ = view.geometry.axes
        projections.extend([ex, ey])
        weights.extend([u, u])
    solve = np.linalg.pinv(np.array(projections, dtype=np.float64))
    w = np.array(weights)
    variance = ((solve * w) ** 2).sum(axis=1)
    # a turn the views cannot see (held at 0) moves anatomy at depth z off the isocentre along the beam by z theta
    # across it: theta ~ UNESTIMATED_TURN_DEG (1 sd), z ~ PARALLAX_DEPTH_MM (RMS), along axis x beam (a physicist's
    # trial: one view, turns of 2-2.5 deg, longitudinal 0.81 mm off with 0.3 mm stated)
    lever = PARALLAX_DEPTH_MM * math.radians(UNESTIMATED_TURN_DEG)
    for k, name in enumerate(PARAMETERS[3:]):
        if name in not_estimated:
            for view in views:
                moved = np.cross(np.eye(3)[k], view.geometry.axes[2]) * lever
                variance = variance + moved * moved / len(views)
    return {name: None if name in not_estimated else float(np.sqrt(variance[k]))
            for k, name in enumerate(PARAMETERS[:3])}


def _imprecise(views: list[_View], uncertainty: dict[str, float | None], limit: float) -> list[str]:
    """Say which estimated translations the views resolve only beyond ``limit`` (mm); ``[]`` if none."""
    over = {name: u for name, u in uncertainty.items() if u is not None and u > limit}
    if not over:
        return []
    known = ", ".join(f"{name} to {u:.2f} mm" for name, u in over.items())
    if len(views) == 1:  # its 2-D precision and the turns it cannot see
        return [f"the one view (gantry {views[0].geometry.gantry_deg:g}) resolves the {known} only (standard "
                f"uncertainty from its 2-D precision and the turns it cannot see; at most {limit:g} mm): add a view at "
                "another gantry angle"]
    beams = [v.geometry.axes[2] for v in views]
    apart = max((math.degrees(math.asin(min(1.0, float(np.linalg.norm(np.cross(a, b))))))
                 for i, a in enumerate(beams) for b in beams[i + 1:]), default=0.0)
    gantries = ", ".join(f"{v.geometry.gantry_deg:g}" for v in views)
    return [f"the views at gantry {gantries} are at most {apart:.0f} deg apart: they resolve the {known} only "
            f"(standard uncertainty from their 2-D precision; at most {limit:g} mm): add a view further from the "
            "others (e.g. 0 and 90)"]


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------


def initialise(prepared: PreparedCT, views: list[_View], basis: np.ndarray, opts2d: RegistrationOptions,
               drr_spacing_mm: float, warnings: list[str]) -> np.ndarray:
    """Start pose from the 2-D engine per view, combined by least squares in the searched directions."""
    from .. import register

    rows, measured, beams, thetas = [], [], [], []
    planned = np.zeros(6)
    for view in views:
        drr = drr_image(prepared, view, planned, _binning(view.frame, drr_spacing_mm))
        result = register(drr, view.frame, opts2d, backend=prepared.backend.name)
        view.initial = result
        view.field_box_mm = field_box(view.frame, result, view.linearise, warnings)
        if not result.ok:
            warnings.append(f"{view.geometry.label}: the 2-D start was not ok ({result.reason}); refined anyway")
        ex, ey, beam = view.geometry.axes
        if result.dx_mm is not None and result.dy_mm is not None:  # a refusal may measure nothing (null): no start
            rows.extend([ex, ey])
            measured.extend([result.dx_mm, result.dy_mm])
        if result.rotation_deg is not None:  # the 2-D engine may not estimate it (then it starts at 0)
            beams.append(beam)
            thetas.append(result.rotation_deg)
    # no view measured a shift: the search starts from the planned position
    translation = np.linalg.lstsq(np.array(rows), np.array(measured), rcond=None)[0] if rows else np.zeros(3)
    # theta = b . w to first order (portalign.couch); the minimum-norm solution leaves unseen components at 0.
    rotation = np.linalg.lstsq(np.array(beams), np.array(thetas), rcond=None)[0] if beams else np.zeros(3)
    start = np.concatenate([translation, rotation])
    return basis @ (basis.T @ start)


def refine(prepared: PreparedCT, volume: VolumeLevel, data: list[_ViewLevel], views: list[_View], pose: np.ndarray,
           basis: np.ndarray, level: SearchLevel, counters: dict[str, int],
           coupling: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Trust-region Newton ascent of the mean gradient correlation on quadratic models (module notes).

    Returns the pose and the curvature coupling of the last full model (``None`` when the level sampled
    the axes only); a level with ``cross_terms=False`` samples the ``1 + 2k`` axis poses and takes its
    off-diagonal curvature from ``coupling``.
    """
    k = basis.shape[1]
    scale = np.array([level.step_translation_mm if np.abs(basis[:3, j]).sum() > 0.5 else level.step_rotation_deg
                      for j in range(k)])
    full = level.cross_terms or coupling is None
    offsets = _model_offsets(k) if full else _model_offsets(k)[:1 + 2 * k]

    def evaluate(poses: np.ndarray) -> np.ndarray:
        counters["iterations"] += 1
        counters["renders"] += len(poses) * len(views)
        return _scores(prepared, volume, data, views, poses).mean(axis=0)

    centre = pose.copy()
    values = evaluate(centre + (offsets * scale) @ basis.T)
    radius = _START_RADIUS
    for _ in range(level.max_iterations):
        step, _ = _newton_step(values, k, radius, None if full else coupling)
        length = float(np.linalg.norm(step))
        if length < _CONVERGED:
            break
        candidate = centre + basis @ (scale * step)
        if evaluate(candidate[None, :])[0] > values[0]:
            centre = candidate
            if length < _FINAL_STEP:  # a short step from a good model: the next one would be shorter still
                break
            values = evaluate(centre + (offsets * scale) @ basis.T)
            if length >= radius * 0.99:
                radius = min(2.0 * radius, _MAX_RADIUS)
        else:
            radius = 0.5 * length
            best = int(np.argmax(values))
            if radius < _MIN_RADIUS:
                if best != 0:  # the model misleads, a sampled pose is better: move there and go on
                    centre = centre + basis @ (scale * offsets[best])
                    values = evaluate(centre + (offsets * scale) @ basis.T)
                    radius = 1.0
                    continue
                break
    return centre, (_coupling(values, k) if full else coupling)


def assess(prepared: PreparedCT, views: list[_View], pose: np.ndarray, scores: np.ndarray,
           opts2d: RegistrationOptions, options: Register3DOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """Per view: the 2-D engine against the DRR at the result (the residual) and the checks on it."""
    from .. import register

    rows: list[dict[str, Any]] = []
    reasons: list[str] = []
    for view, score in zip(views, scores, strict=True):
        drr = drr_image(prepared, view, pose, _binning(view.frame, options.drr_spacing_mm))
        residual = register(drr, view.frame, replace(opts2d, max_shift_mm=min(opts2d.max_shift_mm, 10.0)),
                            backend=prepared.backend.name)
        # the 2-D check may measure nothing (a null shift: a wrong scale, no match): then no residual is known
        distance = (None if residual.dx_mm is None or residual.dy_mm is None
                    else math.hypot(residual.dx_mm, residual.dy_mm))
        label = view.geometry.label
        why = []
        # The 2-D check's own ok is reported, not required: its ambiguity test looks for far optima over
        # +-max_shift_mm, while what matters here is whether its best optimum is near zero.
        if distance is None:
            why.append(f"the 2-D check at the result measured no residual ({residual.reason})")
        elif distance > options.max_residual_mm:
            why.append(f"residual {distance:.2f} mm (more than {options.max_residual_mm:g} mm)")
        if residual.rotation_deg is not None and abs(residual.rotation_deg) > options.max_residual_deg:
            why.append(f"residual rotation {residual.rotation_deg:+.2f} deg (more than {options.max_residual_deg:g})")
        if not score >= options.min_score:
            why.append(f"gradient correlation {score:.3f} below {options.min_score:g}")
        reasons.extend(f"{label} (gantry {view.geometry.gantry_deg:g}): {w}" for w in why)
        start = view.initial
        rows.append({
            "label": label,
            "gantry_deg": view.geometry.gantry_deg,
            "couch_deg": view.geometry.couch_deg,
            "initial_dx_mm": _optional(start.dx_mm),
            "initial_dy_mm": _optional(start.dy_mm),
            "initial_rotation_deg": _optional(start.rotation_deg),
            "initial_ok": bool(start.ok),
            "score": float(score),
            "residual_dx_mm": _optional(residual.dx_mm),
            "residual_dy_mm": _optional(residual.dy_mm),
            "residual_rotation_deg": _optional(residual.rotation_deg),
            "residual_mm": _optional(distance),
            "residual_check_ok": bool(residual.ok),
            # the 2-D precision of this view (its check at the result's), which the translation's uncertainty takes
            "shift_uncertainty_mm": _optional((residual.details or {}).get("shift_uncertainty_mm")),
            "residual_check_reason": residual.reason,
            "field_box_mm": [float(v) for v in view.field_box_mm],
            "ok": not why,
            "reason": "; ".join(why),
        })
    return rows, reasons


# ---------------------------------------------------------------------------
# rendering and similarity
# ---------------------------------------------------------------------------


def drr_image(prepared: PreparedCT, view: _View, pose: np.ndarray, binning: int) -> Image:
    """Render the kV DRR of the patient at ``pose`` on the frame's pixel grid binned by ``binning``."""
    frame = view.frame
    rows, cols = frame.shape[0] // binning, frame.shape[1] // binning
    sy, sx = frame.spacing_mm
    cx, cy = frame.beam_axis_px
    half = (binning - 1) / 2.0
    x0, y0 = frame.pixel_to_mm(half, half)
    room = view.geometry.detector_grid(float(x0), float(y0), binning * sx, binning * sy)
    level = prepared.levels["fine"]
    be = prepared.backend
    out = be.xp.zeros((1, rows, cols), dtype=be.xp.float32)
    prepared.render(level, prepared.to_volume(level, pose[None, :], *room), out)
    g = view.geometry
    return Image.from_array(be.to_host(out)[0], pixel_spacing_mm=(binning * sy, binning * sx),
                            beam_axis_px=((cx - half) / binning, (cy - half) / binning),
                            name=f"DRR for {g.label}", kind="drr", gantry_deg=g.gantry_deg, couch_deg=g.couch_deg,
                            sid_mm=g.sid_mm, sad_mm=g.sad_mm, patient_position=prepared.patient_position)


def field_box(frame: Image, result: Any, linearise: bool, warnings: list[str]) -> tuple[float, float, float, float]:
    """Return the frame's field ``(x_min, x_max, y_min, y_max)`` (mm, isocentre plane), to exclude its edges.

    The 2-D engine's detection when it found one; else :func:`portalign.field.detect_field`
    on ``-log`` of the frame (through a thick patient the field's inside can be
    as dark as the jaws' transmission in linear intensity, not in its
    logarithm); intersected with the planned jaws when the frame carries them
    (``planned_jaws_mm`` read from DICOM, ``field_mm`` of a simulated frame).
    """
    from ..field import detect_field

    box = _extent_box(frame)
    found = False
    if result.field_detected and result.field_box_mm is not None:
        box, found = tuple(float(v) for v in result.field_box_mm), True  # type: ignore[assignment]
    else:
        factor = max(1, int(max(frame.shape) / 160))
        rows, cols = frame.shape[0] // factor, frame.shape[1] // factor
        small = frame.pixels[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3),
                                                                                                      dtype=np.float64)
        if linearise:
            small = -np.log(np.maximum(small, _LOG_FLOOR * max(float(small.max()), np.finfo(np.float64).tiny)))
        estimate = detect_field(small)
        if estimate.detected and estimate.box_px is not None:
            c0, c1, r0, r1 = (v * factor + (factor - 1) / 2.0 for v in estimate.box_px)
            (x0, x1), (y0, y1) = frame.pixel_to_mm(np.array([c0, c1]), np.array([r0, r1]))
            box, found = (float(x0), float(x1), float(y0), float(y1)), True
    planned = _planned_box(frame)
    if planned is not None:
        box = (max(box[0], planned[0]), min(box[1], planned[1]), max(box[2], planned[2]), min(box[3], planned[3]))
        found = True
    if not found:
        warnings.append(f"{frame.info.source}: no radiation field found; the whole image is compared (a field edge "
                        "inside it would hold the result)")
    return box


def _planned_box(frame: Image) -> tuple[float, float, float, float] | None:
    extra = frame.info.extra
    jaws = extra.get("planned_jaws_mm")
    if jaws and all(k in jaws for k in ("x1", "x2", "y1", "y2")):
        return float(jaws["x1"]), float(jaws["x2"]), float(jaws["y1"]), float(jaws["y2"])
    simulated = extra.get("field_mm")  # portalign.simulate: (x1, x2, y1, y2) with image y in (-y2, -y1)
    if simulated is not None and len(simulated) == 4 and not frame.info.collimator_deg:
        x1, x2, y1, y2 = (float(v) for v in simulated)
        return x1, x2, -y2, -y1
    return None


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)


def _binning(frame: Image, spacing_mm: float) -> int:
    return max(1, int(spacing_mm / min(frame.spacing_mm) + 0.5))


def _view_level(prepared: PreparedCT, view: _View, level: SearchLevel, options: Register3DOptions) -> _ViewLevel:
    """Detector grid inside the field and the frame's normalised gradients on it."""
    frame = view.frame
    x_min, x_max, y_min, y_max = view.field_box_mm
    fx0, fy0 = frame.pixel_to_mm(1.0, 1.0)
    fx1, fy1 = frame.pixel_to_mm(frame.shape[1] - 2.0, frame.shape[0] - 2.0)
    margin = options.field_margin_mm
    lo_x, hi_x = max(x_min + margin, float(fx0)), min(x_max - margin, float(fx1))
    lo_y, hi_y = max(y_min + margin, float(fy0)), min(y_max - margin, float(fy1))
    if hi_x - lo_x < 8 * min(frame.spacing_mm) or hi_y - lo_y < 8 * min(frame.spacing_mm):
        raise GeometryError(f"{view.geometry.label}: the field ({x_max - x_min:.0f} x {y_max - y_min:.0f} mm) leaves "
                            f"no anatomy once its {margin:g} mm edge is excluded; lower field_margin_mm")
    grid = min(level.grid_mm, min(hi_x - lo_x, hi_y - lo_y) / (options.min_grid_points - 1))
    grid = max(grid, min(frame.spacing_mm))
    cols = min(int((hi_x - lo_x) / grid) + 1, options.max_grid_points)
    rows = min(int((hi_y - lo_y) / grid) + 1, options.max_grid_points)
    cols, rows = max(cols, 8), max(rows, 8)
    step_x, step_y = (hi_x - lo_x) / (cols - 1), (hi_y - lo_y) / (rows - 1)
    room = view.geometry.detector_grid(lo_x, lo_y, step_x, step_y)

    sy, sx = frame.spacing_mm
    smooth = gaussian_filter(frame.pixels.astype(np.float64), (0.5 * step_y / sy, 0.5 * step_x / sx), mode="nearest")
    xs, ys = lo_x + step_x * np.arange(cols), lo_y + step_y * np.arange(rows)
    col_px, row_px = frame.mm_to_pixel(xs, ys)
    grid_rows, grid_cols = np.meshgrid(row_px, col_px, indexing="ij")
    sampled = map_coordinates(smooth, [grid_rows, grid_cols], order=1, mode="nearest")
    if view.linearise:
        sampled = -np.log(np.maximum(sampled, _LOG_FLOOR * max(float(sampled.max()), np.finfo(np.float64).tiny)))
    gx, gy = _gradients(sampled[None])
    be = prepared.backend
    return _ViewLevel(room, (rows, cols), be.asarray(_normalised(gx[0])), be.asarray(_normalised(gy[0])), {})


def _scores(prepared: PreparedCT, volume: VolumeLevel, data: list[_ViewLevel], views: list[_View],
            poses: np.ndarray) -> np.ndarray:
    """Gradient correlation of every view (rows) at every pose (columns)."""
    xp = prepared.backend.xp
    out = np.empty((len(data), len(poses)))
    for v, d in enumerate(data):
        buffer = d.out.get(len(poses))
        if buffer is None:  # one buffer per batch size (the model's poses, a single candidate), reused
            buffer = d.out[len(poses)] = xp.empty((len(poses), *d.shape), dtype=xp.float32)
        prepared.render(volume, prepared.to_volume(volume, poses, *d.room), buffer)
        gx, gy = _gradients(buffer)
        out[v] = prepared.backend.to_host(0.5 * (_correlation(xp, gx, d.gx) + _correlation(xp, gy, d.gy)))
    return out


def _gradients(images: Any) -> tuple[Any, Any]:
    """Sobel gradients along columns and rows of ``[P, rows, cols]``, on the interior ``[P, rows-2, cols-2]``.

    The [1, 2, 1] smoothing across each difference keeps the frame's quantum
    noise from dominating the correlation on fine grids.
    """
    dx = images[:, :, 2:] - images[:, :, :-2]
    dy = images[:, 2:, :] - images[:, :-2, :]
    return (dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:]), (dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:])


def _normalised(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    norm = float(np.sqrt((centred * centred).sum()))
    if norm == 0.0:
        raise PortalImageError("a frame shows no structure inside its field (its gradients are all zero)")
    return (centred / norm).astype(np.float32)


def _correlation(xp: Any, moving: Any, fixed: Any) -> Any:
    """Normalised cross-correlation of each pose's ``moving`` with the centred, unit-norm ``fixed``."""
    centred = moving - moving.mean(axis=(1, 2), keepdims=True)
    norm = xp.sqrt((centred * centred).sum(axis=(1, 2), dtype=xp.float64))
    dot = (centred * fixed[None]).sum(axis=(1, 2), dtype=xp.float64)
    return xp.where(norm > 0, dot / xp.where(norm > 0, norm, 1.0), 0.0)


# ---------------------------------------------------------------------------
# quadratic model
# ---------------------------------------------------------------------------


def _model_offsets(k: int) -> np.ndarray:
    """Sample offsets (units of h): 0, +e_i, -e_i, e_i + e_j (i < j)."""
    eye = np.eye(k)
    pairs = [eye[i] + eye[j] for i in range(k) for j in range(i + 1, k)]
    return np.array([np.zeros(k), *eye, *(-eye), *pairs]).reshape(-1, k)


def _hessian(values: np.ndarray, k: int, coupling: np.ndarray | None = None) -> np.ndarray:
    """Finite-difference Hessian (units of h) from the samples of :func:`_model_offsets`.

    ``H_ii = f(+e_i) + f(-e_i) - 2 f(0)``, ``H_ij = f(e_i + e_j) - f(+e_i) - f(+e_j) + f(0)``;
    with ``coupling`` (and only the axis samples) ``H_ij = C_ij sqrt(H_ii H_jj)`` where both
    diagonals are negative, else 0.
    """
    f0, plus, minus, pairs = values[0], values[1:1 + k], values[1 + k:1 + 2 * k], values[1 + 2 * k:]
    hessian = np.diag(plus + minus - 2.0 * f0)
    if coupling is not None:
        depth = np.sqrt(np.maximum(-np.diag(hessian), 0.0))
        return hessian + (coupling - np.diag(np.diag(coupling))) * np.outer(depth, depth)
    index = 0
    for i in range(k):
        for j in range(i + 1, k):
            hessian[i, j] = hessian[j, i] = pairs[index] - plus[i] - plus[j] + f0
            index += 1
    return hessian


def _coupling(values: np.ndarray, k: int) -> np.ndarray:
    """Scale-free curvature coupling ``C_ij = H_ij / sqrt(H_ii H_jj)`` of a full model (0 where not concave)."""
    hessian = _hessian(values, k)
    depth = np.sqrt(np.maximum(-np.diag(hessian), 0.0))
    outer = np.outer(depth, depth)
    return np.where(outer > 0, hessian / np.where(outer > 0, outer, 1.0), 0.0)


def _newton_step(values: np.ndarray, k: int, radius: float,
                 coupling: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ascent step of the quadratic through the samples of :func:`_model_offsets`, at most ``radius`` long.

    ``g_i = (f(+e_i) - f(-e_i)) / 2`` and :func:`_hessian`; directions of
    non-negative curvature get a small negative one, so the step follows the
    gradient there (and the radius bounds it). Returns the step and the Hessian.
    """
    gradient = 0.5 * (values[1:1 + k] - values[1 + k:1 + 2 * k])
    hessian = _hessian(values, k, coupling)
    eigenvalues, vectors = np.linalg.eigh(hessian)
    floor = max(1e-3 * float(np.abs(eigenvalues).max()), 1e-12)
    step = -vectors @ ((vectors.T @ gradient) / np.minimum(eigenvalues, -floor))
    length = float(np.linalg.norm(step))
    return (step * (radius / length) if length > radius else step), hessian


# ---------------------------------------------------------------------------
# inputs and the result
# ---------------------------------------------------------------------------


def _frames(frames: Any) -> list[Image]:
    items = [frames] if isinstance(frames, (Image, str)) or hasattr(frames, "__fspath__") else list(frames)
    if not items:
        raise PortalImageError("register_3d needs at least one frame (an RT Image with its gantry angle)")
    return [as_image(f, name=f"frame {i}") for i, f in enumerate(items)]


def _extent_box(frame: Image) -> tuple[float, float, float, float]:
    x0, y0 = frame.pixel_to_mm(0.0, 0.0)
    x1, y1 = frame.pixel_to_mm(frame.shape[1] - 1.0, frame.shape[0] - 1.0)
    return float(x0), float(x1), float(y0), float(y1)


def _result(prepared: PreparedCT, views: list[_View], pose: np.ndarray, not_estimated: dict[str, str],
            rows: list[dict[str, Any]], scores: np.ndarray, counters: dict[str, int], reasons: list[str],
            warnings: list[str], tolerance: ToleranceTable | None, elapsed_ms: float,
            uncertainty: dict[str, float | None] | None = None) -> Register3DResult:
    values: dict[str, float | None] = {name: (None if name in not_estimated else float(pose[k]) + 0.0)
                                       for k, name in enumerate(PARAMETERS)}
    rotation = rotation_matrix(pose[3], pose[4], pose[5])
    back = rotation.T
    correction_t = -back @ pose[:3]
    correction_r = euler_angles(back)
    six: dict[str, float | None] = {}
    for k, name in enumerate(PARAMETERS):
        value = correction_t[k] if k < 3 else correction_r[k - 3]
        six[name] = None if name in not_estimated else float(value) + 0.0
    three = {name: (None if values[name] is None else -values[name] + 0.0) for name in PARAMETERS[:3]}  # type: ignore[operator]
    # a couch that also turns about IEC Z: the yaw undone (Rz(-yaw) R = Ry(roll) Rx(pitch)), then the translation
    # that brings the anatomy at the isocentre back: -Rz(-yaw) t
    yaw = values["yaw"]
    turned = -(rotation_matrix(0.0, 0.0, -(yaw or 0.0)) @ pose[:3])
    four: dict[str, float | None] = {name: (None if three[name] is None else float(turned[k]) + 0.0)
                                     for k, name in enumerate(PARAMETERS[:3])}
    four["yaw"] = None if yaw is None else -yaw + 0.0
    if reasons:  # a result that is not ok is no correction to apply: none is given (the measurement stays)
        six = dict.fromkeys(six)
        four = dict.fromkeys(four)
        three = dict.fromkeys(three)
    left = {name: values[name] for name in PARAMETERS[3:]}
    within: dict[str, bool | None] = {}
    all_within: bool | None = None
    if tolerance is not None:
        t = [values[n] for n in PARAMETERS[:3]]
        rotations = [abs(v) for v in left.values() if v is not None]
        measured = {"lat": t[0], "lng": t[1], "vrt": t[2],
                    "vec": None if None in t else float(np.linalg.norm(t)),  # type: ignore[arg-type]
                    "rot": max(rotations) if rotations else None,
                    "pitch": left["pitch"], "roll": left["roll"], "yaw": left["yaw"]}
        within = tolerance.check(measured)
        all_within = not any(flag is False for flag in within.values())
    directions = PATIENT_DIRECTIONS.get(prepared.patient_position)
    return Register3DResult(
        lateral_mm=values["lateral"], longitudinal_mm=values["longitudinal"], vertical_mm=values["vertical"],
        pitch_deg=values["pitch"], roll_deg=values["roll"], yaw_deg=values["yaw"],
        not_estimated=dict(not_estimated),
        translation_uncertainty_mm=dict(uncertainty or {}),
        couch_correction_6dof=six, couch_correction_4dof=four, couch_correction_3dof=three,
        rotations_not_corrected_deg=left,
        views=rows, score=float(np.mean(scores)), iterations=counters["iterations"], renders=counters["renders"],
        ok=not reasons, reason="; ".join(reasons), elapsed_ms=elapsed_ms, prepare_ms=prepared.prepare_ms,
        backend=prepared.backend.name, patient_position=prepared.patient_position,
        patient_directions=dict(directions) if directions else None,
        within_tolerance=within, all_within_tolerance=all_within,
        warnings=warnings + [f"{name} not estimated: {why}" for name, why in not_estimated.items()],
    )
