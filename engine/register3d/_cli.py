"""``portalign register3d``: frames of one setup against the planning CT, six degrees of freedom."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_options import (
    add_geometry_arguments,
    add_invert_argument,
    command_error,
    export_reg,
    geometry_keywords,
    patient_position_argument,
    shown,
)
from ..couch import AXES
from ..errors import GeometryError, PortalignError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign register3d`` arguments to a parser."""
    parser.add_argument("ct_dir", metavar="CT_DIR", help="folder of the planning CT's axial DICOM series")
    parser.add_argument("frames", nargs="+", metavar="FRAME",
                        help="RT Image(s) of one setup: one gives what one view can, two or more non-parallel give 6 DOF")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--isocenter-mm", default=None, metavar="X,Y,Z",
                       help="planned isocentre in the CT's DICOM patient coordinates (mm; default: --plan's, else "
                            "the frames' IsocenterPosition)")
    where.add_argument("--plan", default=None, metavar="RTPLAN",
                       help="take the isocentre from this RT Plan (default: --isocenter-mm)")
    parser.add_argument("--beam-number", default=None, metavar="N", type=int,
                        help="with --plan: the beam whose isocentre to take, for a plan whose beams have several "
                             "(default: the plan's one isocentre)")
    parser.add_argument("--patient-position", default=None, metavar="POS", type=patient_position_argument,
                        help="HFS, FFS, HFP or FFP (default: the CT's PatientPosition)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "gpu"),
                        help="compute backend (auto: the GPU when one works here, else the CPU)")
    tolerance = parser.add_mutually_exclusive_group()
    tolerance.add_argument("--tolerance", default=None, metavar="SPEC",
                           help="action levels, e.g. lat=2,lng=2,vrt=2,pitch=1,roll=1,yaw=1 (mm, degrees; "
                                "default: none checked)")
    tolerance.add_argument("--tolerance-file", default=None, metavar="TOML",
                           help="action levels from a TOML file (default: none checked)")
    add_invert_argument(parser)
    add_geometry_arguments(parser)
    parser.add_argument("--reg-out", default=None, metavar="PATH",
                        help="also write a DICOM Spatial Registration (REG) object with the rigid 4x4 matrix "
                             "(default: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run ``portalign register3d``: 0 on a result (ok or not), 2 with a one-line error on unusable input."""
    from ..ct import read_ct_series
    from ..dicom import read_rt_image
    from ..tolerance import tolerance_from_flags
    from . import register_3d

    try:
        tolerance = tolerance_from_flags(args.tolerance, args.tolerance_file)
        frames = [read_rt_image(path, **geometry_keywords(args)) for path in args.frames]
        isocenter = _isocenter(args, frames)
        ct = read_ct_series(args.ct_dir)
        result = register_3d(ct, frames, isocenter_mm=isocenter, patient_position=args.patient_position,
                             backend=args.backend, tolerance=tolerance)
    except PortalignError as exc:
        return command_error("register3d", args, exc)
    export = None
    if args.reg_out:
        export = export_reg("register3d", args, result.ok, result.reason,
                            lambda: _write_reg(args, result, ct, frames, isocenter))
    # the result is shown whatever happens to the REG file: a failed export never hides a measurement
    if args.json:
        payload = json.loads(result.as_json())
        if export is not None:  # what became of --reg-out, in the object a script reads
            payload.update(export.fields)
        print(json.dumps(payload))
    else:
        print(text_report(result))
    if export is None:
        return 0
    export.emit()
    return export.status


def _isocenter(args: argparse.Namespace, frames: list[Any]) -> tuple[float, float, float]:
    if getattr(args, "beam_number", None) is not None and args.plan is None:
        raise GeometryError(f"--beam-number {args.beam_number} chooses a beam of --plan's RT Plan, and no --plan was "
                            "given; pass --plan RTPLAN with it, or drop --beam-number")
    if args.isocenter_mm is not None:
        try:
            values = tuple(float(v) for v in str(args.isocenter_mm).replace(" ", "").split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not all(np.isfinite(values)):
            raise GeometryError(f"--isocenter-mm {args.isocenter_mm!r}: expected three numbers X,Y,Z in mm "
                                "(DICOM patient coordinates of the CT), e.g. --isocenter-mm 0,-20.5,12")
        return values  # type: ignore[return-value]
    if args.plan is not None:
        from ..dicom import read_plan_isocenter

        return read_plan_isocenter(args.plan, beam_number=getattr(args, "beam_number", None))
    found = {tuple(round(float(v), 2) for v in f.info.extra["isocenter_position_mm"][:3])
             for f in frames if f.info.extra.get("isocenter_position_mm")}
    if len(found) == 1 and all(f.info.extra.get("isocenter_position_mm") for f in frames):
        return next(iter(found))  # type: ignore[return-value]
    carried = [f for f in frames if f.info.extra.get("isocenter_position_mm")]
    if not carried:
        what = ("carries no IsocenterPosition (300A,012C)" if len(frames) == 1
                else f"none of the {len(frames)} frames carries an IsocenterPosition (300A,012C)")
    elif len(carried) < len(frames):
        what = f"only {len(carried)} of the {len(frames)} frames carry an IsocenterPosition (300A,012C)"
    else:
        what = f"the frames carry {len(found)} different IsocenterPositions (300A,012C)"
    raise GeometryError(f"{args.frames[0]}: {what}; pass --isocenter-mm X,Y,Z (DICOM patient coordinates of the CT, "
                        "mm) or --plan RTPLAN")


def _write_reg(args: argparse.Namespace, result: Any, ct: Any, frames: list[Any], isocenter: Any) -> Any:
    """Write the result as a REG: the CT's frame of reference (one of its slices referenced) and the frames."""
    from ..couch import CouchShift
    from ..dicom import read_dataset
    from ..image import Image
    from ..reg import write_spatial_registration

    slice_ds = None
    for path in sorted(Path(args.ct_dir).iterdir()):
        try:
            ds = read_dataset(path)
        except PortalignError:
            continue
        if str(ds.get("Modality", "")) == "CT" and str(ds.get("SeriesInstanceUID", "")) == ct.series_instance_uid:
            slice_ds = ds
            break
    if slice_ds is None:  # read_ct_series found the slices, so this cannot happen short of a race
        raise GeometryError(f"{args.ct_dir}: no CT slice to reference in the REG object")
    # The CT enters the REG only through its identity (UIDs, patient, study); an 8x8 ramp carries it as an Image.
    reference = Image.from_array(
        np.arange(64, dtype=np.float32).reshape(8, 8), pixel_spacing_mm=1.0, name=str(args.ct_dir), modality="CT",
        sop_instance_uid=str(slice_ds.SOPInstanceUID), frame_of_reference_uid=ct.frame_of_reference_uid,
        series_instance_uid=ct.series_instance_uid, patient_position=result.patient_position,
        extra={k: str(slice_ds.get(t, "")) for k, t in (("study_instance_uid", "StudyInstanceUID"),
                                                        ("patient_id", "PatientID"), ("patient_name", "PatientName"))
               if slice_ds.get(t)},
    )
    missing = unmeasured_components(result)
    if missing:
        # a REG matrix has no way to say "not measured": a 0 there would be a silent wrong value
        raise PortalignError(
            f"the registration did not measure {', '.join(missing)} "
            f"({len(args.frames)} view(s) constrain only the others), and a REG matrix cannot carry a value that was "
            "not measured; add a frame at another gantry angle (two non-parallel views give all six), or leave out "
            "--reg-out"
        )
    t = [float(result.lateral_mm), float(result.longitudinal_mm), float(result.vertical_mm)]
    rotation = dict(result.rotation_deg)
    couch = CouchShift(
        lateral_mm=t[0], longitudinal_mm=t[1], vertical_mm=t[2],
        couch_correction={axis: -t[i] for i, axis in enumerate(AXES)}, rotation_deg=rotation,
        rotation_correction_deg={k: None if v is None else -v for k, v in rotation.items()},
        views=result.views, condition=float("nan"), separation_deg=float("nan"), ok=result.ok, reason=result.reason,
        patient_position=result.patient_position,
    )
    return write_spatial_registration(args.reg_out, couch, reference, frames, patient_position=result.patient_position,
                                      isocentre_mm=isocenter, series_description="portalign 6-DOF 2D/3D registration")


def unmeasured_components(result: Any) -> list[str]:
    """Return the names of the six degrees of freedom ``result`` did not measure (``None``), in IEC axis order."""
    names = ("lateral_mm", "longitudinal_mm", "vertical_mm", "pitch_deg", "roll_deg", "yaw_deg")
    return [name for name in names if getattr(result, name) is None]


def text_report(result: Any) -> str:
    """Return the result as lines of text, like ``portalign couch``."""
    # a result that is not ok says so before any number a therapist could take for a correction to apply
    lines = [] if result.ok else [f"NOT OK: {result.reason} (the values below are not a correction to apply)"]
    names = result.patient_directions or {}
    for axis in AXES:
        value = getattr(result, f"{axis}_mm")
        hint = f"  (+ = {names[axis]})" if axis in names else ""
        correction = result.couch_correction_3dof[axis]
        u = (getattr(result, "translation_uncertainty_mm", None) or {}).get(axis)
        if value is None:
            lines.append(f"{axis:>13}: not estimated")
        else:
            lines.append(f"{axis:>13}: {shown(value):+7.2f} mm{'' if u is None else f' (u {u:.2f})'}   correction "
                         f"(translation only) {'n/a' if correction is None else format(shown(correction), '+7.2f') + ' mm'}"
                         f"{hint}")
    for name in ("pitch", "roll", "yaw"):
        value = getattr(result, f"{name}_deg")
        lines.append(f"{name:>13}: " + ("not estimated" if value is None else f"{shown(value):+7.2f} deg"))
    for label, correction in (("4-DOF correction (translation and yaw)", result.couch_correction_4dof),
                              ("6-DOF correction", result.couch_correction_6dof)):
        lines.append(f"{label}: " + ", ".join(
            f"{k} {'n/a' if v is None else format(shown(v), '+.2f')}" for k, v in correction.items()))
    for view in result.views:
        turn = view["residual_rotation_deg"]
        distance = view["residual_mm"]  # null: the 2-D check at the result measured nothing (its reason says why)
        lines.append(f"  gantry {view['gantry_deg']:6.1f}: score {view['score']:.3f}  residual "
                     f"{'not measured' if distance is None else format(distance, '.2f') + ' mm'} "
                     f"{'rotation n/a' if turn is None else format(shown(turn), '+.2f') + ' deg'}"
                     f"{'' if view['ok'] else '  NOT OK: ' + view['reason']}  {view['label']}")
    if result.within_tolerance:
        flags = ", ".join(f"{k} {'within' if v else ('n/a' if v is None else 'OUTSIDE')}"
                          for k, v in result.within_tolerance.items())
        lines.append(f"tolerance: {flags}")
    # the reason was said first, before the numbers: the closing verdict does not repeat it (a long one was printed twice)
    lines.append(f"{'ok' if result.ok else 'NOT OK (the reason is on the first line)'}  "
                 f"({result.elapsed_ms:.0f} ms on {result.backend})")
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
