"""Views of one fraction -> the 3-D setup error of that fraction (IEC 61217 couch axes).

The frames of a fraction (same patient, plan and fraction) are grouped by beam;
a beam's view is the mean 2-D displacement of its ``ok`` frames (one frame for a
single exposure, the average over a cine acquisition; of several exposures, the
first and those that agree with it: ``EXPOSURE_AGREEMENT_MM``), its angles their
circular mean. Two or more views at
non-parallel gantry angles are combined with :func:`portalign.couch.solve_couch_shift`
(least squares of ``(dx, dy) = P d`` over the views; ``P`` from the gantry, couch
and receptor angles). A fraction with a single view, or only parallel views, gets
a row with the 3-D values ``None`` and the reason; it still counts in the
image-axes statistics.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from ..couch import View, solve_couch_shift
from ..errors import GeometryError

__all__ = ["SETUP_COLUMNS", "combine_fractions", "fraction_views", "circular_mean_deg", "EXPOSURE_AGREEMENT_MM"]

#: Columns of ``setups.parquet`` (one row per fraction), in order.
SETUP_COLUMNS = [
    "patient_id", "plan_uid", "fraction", "fraction_number", "date", "fraction_ordinal", "patient_position",
    "n_views", "gantry_angles_deg", "n_frames", "n_frames_not_ok",
    "lateral_mm", "longitudinal_mm", "vertical_mm", "pitch_deg", "roll_deg", "yaw_deg",
    "max_residual_mm", "separation_deg", "ok", "reason", "note",
]

#: Exposures (files) of one beam in one fraction whose mean image shifts lie further apart than this (mm) are not
#: one setup imaged twice: the couch was moved between them (an online correction and its verification image), or
#: the patient moved. The fraction's setup error is then the first exposure's (acquisition date and time, then file
#: path), the error the patient was set up with; the later ones are named in the row's ``note``, not averaged in (an
#: average of a pre- and a post-correction image is neither). Exposures that agree are averaged (one setup measured
#: twice). A frame's own standard uncertainty is 0.1-0.3 mm (``shift_uncertainty_mm``); an action level of an online
#: protocol is 2-5 mm.
EXPOSURE_AGREEMENT_MM = 1.0


def circular_mean_deg(values: list[float]) -> float:
    """Return the mean direction of angles ``values`` (degrees), in ``[0, 360)``.

    Gantry read-outs of one beam either side of 0 (359.6 and 0.4) average to 0, not 180 (their arithmetic mean): the
    mean of the unit vectors ``(cos a, sin a)``, as for any circular quantity (Mardia & Jupp, *Directional
    Statistics*, 2000, section 2.2.1). Equal values return that value unchanged.
    """
    if all(v == values[0] for v in values):
        return float(values[0]) % 360.0
    s = sum(math.sin(math.radians(v)) for v in values)
    c = sum(math.cos(math.radians(v)) for v in values)
    return round(math.degrees(math.atan2(s, c)), 9) % 360.0


def _mean(frames: list[dict[str, Any]], name: str) -> float | None:
    values = [float(f[name]) for f in frames if f.get(name) is not None]
    return sum(values) / len(values) if values else None


def _beam_view(frames: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """One beam's view of a fraction from its registered frames, and a note on exposures left out ("" if none).

    Frames are grouped by exposure (SOP Instance UID, else file); the view is the mean of the ok frames of the first
    exposure that has any and of every later one that agrees with it (``EXPOSURE_AGREEMENT_MM``); angles by their
    circular mean (:func:`circular_mean_deg`).
    """
    exposures: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for f in frames:
        exposures[f.get("sop_instance_uid") or f.get("path")].append(f)
    ordered = sorted(exposures.values(), key=lambda fs: (str(fs[0].get("date") or ""), str(fs[0].get("time") or ""),
                                                         str(fs[0].get("path") or "")))
    first = frames[0]
    view: dict[str, Any] = {"gantry_deg": first.get("gantry_deg"), "couch_deg": first.get("couch_deg") or 0.0,
                            "receptor_angle_deg": first.get("receptor_angle_deg") or 0.0, "n_frames": 0,
                            "dx_mm": None, "dy_mm": None, "rotation_deg": None}
    used: list[dict[str, Any]] = []
    start: tuple[float, float] | None = None
    left_out: list[float] = []
    for exposure in ordered:
        good = [f for f in exposure if f.get("ok") and f.get("dx_mm") is not None and f.get("dy_mm") is not None]
        if not good:
            continue
        centre = (_mean(good, "dx_mm"), _mean(good, "dy_mm"))
        if start is None:
            start = centre  # type: ignore[assignment]
        else:
            apart = math.hypot(centre[0] - start[0], centre[1] - start[1])  # type: ignore[operator]
            if apart > EXPOSURE_AGREEMENT_MM:
                left_out.append(apart)
                continue
        used.extend(good)
    if used:
        view["n_frames"] = len(used)
        for name in ("dx_mm", "dy_mm", "rotation_deg"):
            view[name] = _mean(used, name)
        for name in ("gantry_deg", "couch_deg", "receptor_angle_deg"):
            angles = [float(f[name]) for f in used if f.get(name) is not None]
            if angles:
                view[name] = circular_mean_deg(angles)
    note = ""
    if left_out:
        note = (f"{len(left_out)} later exposure(s) {', '.join(f'{d:.1f}' for d in left_out)} mm from the first left "
                f"out (more than {EXPOSURE_AGREEMENT_MM:g} mm: a couch correction or patient motion between them); "
                "the first exposure is the setup error")
    return view, note


def fraction_views(rows: list[dict[str, Any]]) -> dict[tuple[Any, Any, Any], dict[str, Any]]:
    """Group registered frames into fractions and beams.

    Parameters
    ----------
    rows : list of dict
        Registration rows (``status == "registered"`` ones are used).

    Returns
    -------
    dict
        ``(patient_id, plan_uid, fraction)`` -> ``{"views": {beam_number: view dict},
        "n_frames", "n_frames_not_ok", "fraction_number", "date", "patient_position"}``;
        a view dict has ``gantry_deg, couch_deg, receptor_angle_deg, dx_mm, dy_mm,
        rotation_deg, n_frames`` (mean over the beam's ok frames of its first exposure and
        those that agree with it, angles their circular mean; ``None`` values when none is
        ok); ``"notes"`` (when any) names the exposures left out.
    """
    fractions: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    beams: dict[tuple[Any, Any, Any], dict[Any, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("status") != "registered" or row.get("fraction") is None:
            continue
        key = (row.get("patient_id"), row.get("plan_uid"), row.get("fraction"))
        entry = fractions.setdefault(key, {"n_frames": 0, "n_frames_not_ok": 0,
                                           "fraction_number": row.get("fraction_number"), "date": row.get("date"),
                                           "patient_position": row.get("patient_position")})
        entry["n_frames"] += 1
        if not row.get("ok"):
            entry["n_frames_not_ok"] += 1
        beams[key][row.get("beam_number")].append(row)
    for key, entry in fractions.items():
        views = {}
        for beam, frames in beams[key].items():
            view, note = _beam_view(frames)
            views[beam] = view
            if note:
                entry.setdefault("notes", []).append(f"beam {beam}: {note}")
        entry["views"] = views
    return fractions


def combine_fractions(rows: list[dict[str, Any]], *, max_residual_mm: float = 1.0) -> list[dict[str, Any]]:
    """One setup row per fraction: the 3-D displacement from its views.

    Parameters
    ----------
    rows : list of dict
        Registration rows.
    max_residual_mm : float
        Passed to :func:`portalign.couch.solve_couch_shift`: a view further than
        this from the 3-D solution makes the setup not ``ok``.

    Returns
    -------
    list of dict
        Keys :data:`SETUP_COLUMNS`; ``fraction_ordinal`` numbers each patient's
        fractions 1, 2, ... in (fraction number, date) order. 3-D values are in mm /
        degrees in IEC 61217 patient-support axes, ``None`` where not measured.
    """
    fractions = fraction_views(rows)
    out: list[dict[str, Any]] = []
    for (patient, plan, fraction), entry in fractions.items():
        row: dict[str, Any] = dict.fromkeys(SETUP_COLUMNS)
        views = [v for v in entry["views"].values() if v["dx_mm"] is not None and v["gantry_deg"] is not None]
        row.update(patient_id=patient, plan_uid=plan, fraction=fraction, fraction_number=entry["fraction_number"],
                   date=entry["date"], patient_position=entry["patient_position"], n_views=len(views),
                   gantry_angles_deg=",".join(f"{v['gantry_deg']:g}" for v in views) or None,
                   n_frames=entry["n_frames"], n_frames_not_ok=entry["n_frames_not_ok"], ok=False,
                   note="; ".join(entry.get("notes", [])) or None)
        if len(views) < 2:
            row["reason"] = (f"{len(views)} usable view{'s' if len(views) != 1 else ''}: a 3-D setup error needs two "
                             "non-parallel views with an ok registration")
            out.append(row)
            continue
        couch_views = [View(gantry_deg=float(v["gantry_deg"]), dx_mm=float(v["dx_mm"]), dy_mm=float(v["dy_mm"]),
                            rotation_deg=None if v["rotation_deg"] is None else float(v["rotation_deg"]),
                            couch_deg=float(v["couch_deg"]),
                            image_rotation_deg=float(v["receptor_angle_deg"]), label=f"beam {beam}")
                       for beam, v in entry["views"].items() if v in views]
        try:
            shift = solve_couch_shift(couch_views, patient_position=entry["patient_position"] or "",
                                      max_residual_mm=max_residual_mm)
        except GeometryError as exc:
            row["reason"] = str(exc)
            out.append(row)
            continue
        row.update(lateral_mm=shift.lateral_mm, longitudinal_mm=shift.longitudinal_mm, vertical_mm=shift.vertical_mm,
                   pitch_deg=shift.rotation_deg["pitch"], roll_deg=shift.rotation_deg["roll"],
                   yaw_deg=shift.rotation_deg["yaw"],
                   max_residual_mm=max(v["residual_mm"] for v in shift.views),
                   separation_deg=shift.separation_deg, ok=shift.ok, reason=shift.reason or None)
        out.append(row)
    _number_fractions(out)
    return sorted(out, key=lambda r: (str(r["patient_id"]), str(r["plan_uid"]), r["fraction_ordinal"]))


def _number_fractions(rows: list[dict[str, Any]]) -> None:
    by_patient: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_patient[row["patient_id"]].append(row)
    for items in by_patient.values():
        items.sort(key=lambda r: (r["date"] or "", r["fraction_number"] if r["fraction_number"] is not None
                                  else math.inf, str(r["fraction"])))
        for k, row in enumerate(items, start=1):
            row["fraction_ordinal"] = k
