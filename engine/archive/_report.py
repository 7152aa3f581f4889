"""``report.md`` with its plots (matplotlib, Agg backend).

Population table, per-patient box plots, the population histogram and the setup
error against the fraction.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_AXES = ("lateral", "longitudinal", "vertical")


def write_report(out_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]],
                 setups: list[dict[str, Any]]) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/plots/*.png``; return the report's path.

    Parameters
    ----------
    out_dir : Path
    summary : dict
        The content of ``summary.json``.
    rows : list of dict
        Registration rows.
    setups : list of dict
        Setup rows (one per fraction).

    Returns
    -------
    Path
    """
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    good = [s for s in setups if s["ok"]]
    images = _plots(plots, good) if good else {}
    counts = summary["counts"]
    lines = [
        "# Portal image archive: setup errors and margins",
        "",
        f"portalign {summary['version']}: {counts['files']} files, {counts['patients']} patients, "
        f"{counts['fractions']} fractions, {counts['frames']} frames ({counts['registered']} registered, "
        f"{counts['not_ok']} not ok, {counts['unmatched']} unmatched, {counts['failed']} failed), "
        f"{counts['unreadable']} unreadable files, {counts['duplicates']} duplicates.",
        "",
        "## Population (IEC 61217 patient-support axes, mm)",
        "",
        f"Over {counts['patients_in_statistics']} patients with at least two ok fractions (3-D setups from two or "
        "more views). M: mean of the patient means m_p; Σ: SD of the m_p (n-1), systematic; σ: root mean square "
        "of the patient SDs s_p, random; margins: van Herk 2.5Σ + 0.7σ, Stroom 2Σ + 0.7σ.",
        "",
        "| axis | patients | fractions | M | Σ | σ | van Herk 2.5Σ+0.7σ | Stroom 2Σ+0.7σ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for axis in _AXES:
        s = summary["population"][axis]
        lines.append(f"| {axis} | {s['n_patients']} | {s['n_fractions']} | {_mm(s['M_mm'])} | {_mm(s['Sigma_mm'])} | "
                     f"{_mm(s['sigma_mm'])} | {_mm(s['margin_van_herk_mm'])} | {_mm(s['margin_stroom_mm'])} |")
    rotations = summary.get("population_rotation_deg") or {}
    if any(s["n_patients"] for s in rotations.values()):
        lines += ["", "## Rotations (IEC 61217 pitch, roll, yaw; degrees)", "",
                  "Where estimated (from views that pin them); no margin recipe applies to a rotation.", "",
                  "| rotation | patients | fractions | M | Σ | σ |", "|---|---|---|---|---|---|"]
        for name, s in rotations.items():
            lines.append(f"| {name} | {s['n_patients']} | {s['n_fractions']} | {_mm(s['M_deg'])} | "
                         f"{_mm(s['Sigma_deg'])} | {_mm(s['sigma_deg'])} |")
    if summary["image_axes"]:
        lines += ["", "## Per gantry angle, image axes (mm at the isocentre plane)", "",
                  "| view | axis | patients | M | Σ | σ | van Herk | Stroom |", "|---|---|---|---|---|---|---|---|"]
        for view, by_axis in summary["image_axes"].items():
            for axis, s in by_axis.items():
                lines.append(f"| {view} | {axis} | {s['n_patients']} | {_mm(s['M_mm'])} | {_mm(s['Sigma_mm'])} | "
                             f"{_mm(s['sigma_mm'])} | {_mm(s['margin_van_herk_mm'])} | {_mm(s['margin_stroom_mm'])} |")
    for title, name in (("Per patient", "boxplot"), ("Population histogram", "histogram"),
                        ("Setup error against fraction", "by_fraction")):
        if name in images:
            lines += ["", f"## {title}", "", f"![{title}]({images[name]})"]
    if summary["beams"]:
        lines += ["", "## Per beam (image axes, mm)", "",
                  "| patient | plan | beam | gantry | fractions | mean x | SD x | mean y | SD y |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for b in summary["beams"]:
            lines.append(f"| {b['patient_id']} | {_short(b['plan_uid'])} | {b['beam_number']} | {b['gantry_deg']:g} | "
                         f"{b['n_fractions']} | {_mm(b['mean_x_mm'])} | {_mm(b['sd_x_mm'])} | {_mm(b['mean_y_mm'])} | "
                         f"{_mm(b['sd_y_mm'])} |")
    unmatched = [r for r in rows if r["status"] in ("unmatched", "failed")]
    if unmatched:
        lines += ["", "## Frames not registered", "", "| file | frame | status | why |", "|---|---|---|---|"]
        for r in unmatched[:200]:
            lines.append(f"| {os.path.basename(str(r['path']))} | {r['frame_index']} | {r['status']} | "
                         f"{(r['reason'] or r['error'] or '').replace('|', '/')} |")
        if len(unmatched) > 200:
            lines.append(f"| ... | | | {len(unmatched) - 200} more in registrations.parquet |")
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"* {w}" for w in summary["warnings"]]
    lines += ["", "Tables: `registrations.parquet` (one row per frame), `setups.parquet` (one row per fraction), "
              "`index.parquet` (every file and its fate), `summary.json`.", ""]
    path = out_dir / "report.md"
    tmp = path.with_name(f".report.md.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _plots(folder: Path, setups: list[dict[str, Any]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, no GUI

    by_patient: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for s in setups:
        by_patient[s["patient_id"]].append(s)
    patients = sorted(by_patient, key=str)
    out: dict[str, str] = {}

    fig = Figure(figsize=(max(6.0, 0.5 * len(patients) + 3.0), 7.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for ax, axis in zip(axes, _AXES, strict=True):
        data = [[s[f"{axis}_mm"] for s in by_patient[p]] for p in patients]
        ax.boxplot(data, tick_labels=[str(p) for p in patients])
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_ylabel(f"{axis} (mm)")
    axes[-1].tick_params(axis="x", labelrotation=60)
    fig.suptitle("Setup error per patient (one point per fraction)")
    out["boxplot"] = _save(fig, folder / "setup_per_patient.png")

    fig = Figure(figsize=(10.0, 3.5), layout="constrained")
    for ax, axis in zip(fig.subplots(1, 3), _AXES, strict=True):
        values = [s[f"{axis}_mm"] for s in setups]
        ax.hist(values, bins=max(5, min(40, len(values) // 3)), color="C0", alpha=0.8)
        ax.set_xlabel(f"{axis} (mm)")
    fig.suptitle("Population: setup error of every fraction")
    out["histogram"] = _save(fig, folder / "setup_histogram.png")

    fig = Figure(figsize=(10.0, 7.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for ax, axis in zip(axes, _AXES, strict=True):
        for p in patients:
            items = sorted(by_patient[p], key=lambda s: s["fraction_ordinal"])
            ax.plot([s["fraction_ordinal"] for s in items], [s[f"{axis}_mm"] for s in items], marker="o", ms=3, lw=0.8)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_ylabel(f"{axis} (mm)")
    axes[-1].set_xlabel("fraction (per patient, in order)")
    fig.suptitle("Setup error against fraction (one line per patient)")
    out["by_fraction"] = _save(fig, folder / "setup_by_fraction.png")
    return out


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=100)
    return f"plots/{path.name}"


def _mm(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _short(uid: Any) -> str:
    text = str(uid)
    return text if len(text) <= 16 else "..." + text[-12:]
