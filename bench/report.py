"""Write the results: ``results.json`` (everything), ``results.md`` (tables) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .runner import HEADLINE_SIZE

__all__ = ["write_results", "headline_table", "to_json_ready", "NO_PLOTS"]

#: DESIGN.md / issue targets, printed beside the measurements.
TARGET_CPU_MS = 10.0
TARGET_RATIO_SITK = 90.0


def to_json_ready(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_ready(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``scaling.png`` and ``accuracy.png`` into ``out``; return their paths.

    Without matplotlib (the ``bench`` extra) the two plots are not drawn and not among the paths returned;
    ``results.md`` says so in their place (``NO_PLOTS``).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "scaling": out / "scaling.png",
             "accuracy": out / "accuracy.png"}
    paths["json"].write_text(json.dumps(to_json_ready(results), indent=1, allow_nan=False))
    try:
        import matplotlib  # noqa: F401  (the bench extra's: the plots only)
    except ImportError:  # the tables and results.json still come; the caller says what is missing (NO_PLOTS)
        del paths["scaling"], paths["accuracy"]
    else:
        _plot_scaling(results, paths["scaling"])
        _plot_accuracy(results, paths["accuracy"])
    paths["md"].write_text(markdown(results, paths))
    return paths


#: What stands in for the plots (in ``results.md`` and on the console) where matplotlib is not installed.
NO_PLOTS = 'plots not drawn: they need matplotlib, which is not installed: pip install -e ".[bench]"'



def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, method description, summary) in table order, unavailable methods included."""
    out = []
    for name, desc in results["methods"].items():
        out.append((name, desc, results["summary"].get(name, {})))
    return out


def headline_table(results: dict[str, Any]) -> str:
    """The one table a reviewer reads first: a row per method."""
    lines = [
        f"| method | version | pairs (failed / not ok) | translation error median / max (mm) "
        f"| rotation error median / max (°) | latency median / p99 / min @{HEADLINE_SIZE} (ms) | frames/s "
        f"| peak RSS rise per frame @{HEADLINE_SIZE} (MB) | portalign-cpu speed-up (median of per-pair ratios) | start-up (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, desc, s in _rows(results):
        if not desc["available"]:
            lines.append(f"| {name} | {desc['version'] or '–'} | not run: {desc['reason']} | | | | | | | |")
            continue
        acc = s.get("accuracy", {}).get("all", {})
        t = acc.get("translation_error_mm", {})
        r = acc.get("rotation_error_deg", {})
        lat = s.get("latency_headline", {})
        ratio = s.get("speed_ratio_vs_portalign_cpu")
        ratio_txt = "1 (baseline)" if name == "portalign-cpu" else (
            f"{_f(ratio['median'], 1)}× ({ratio['pairs']} pairs, {_f(ratio['min'], 1)}–{_f(ratio['max'], 1)})"
            if ratio and ratio.get("pairs") else "–")
        lines.append(
            f"| {name} | {desc['version']} | {acc.get('pairs', 0)} ({acc.get('failed', 0)} / {acc.get('not_ok', 0)}) "
            f"| {_f(t.get('median'), 3)} / {_f(t.get('max'), 3)} | {_f(r.get('median'), 3)} / {_f(r.get('max'), 3)} "
            f"| {_f(lat.get('median'), 1)} / {_f(lat.get('p99'), 1)} / {_f(lat.get('min'), 1)} (n={lat.get('n', 0)}) "
            f"| {_f(s.get('throughput_fps'), 1)} | {_f(s.get('peak_rss_mb_headline'), 1)} | {ratio_txt} "
            f"| {_f(desc.get('startup_ms'), 0)} |"
        )
    return "\n".join(lines)


def _accuracy_tables(results: dict[str, Any]) -> str:
    out = []
    for family, title in (("synthetic", "Synthetic pairs (exact truth, noise-free)"),
                          ("drr", "MV portal vs kV DRR rendered from the real thorax CT (simulated truth)"),
                          ("wl", "Winston-Lutz EPID pairs (measured truth: BB centroid displacement)")):
        rows = []
        for name, _desc, s in _rows(results):
            acc = s.get("accuracy", {}).get(family)
            if not acc:
                continue
            t, r = acc["translation_error_mm"], acc["rotation_error_deg"]
            rot = "not observable" if family == "wl" else f"{_f(r['median'], 3)} / {_f(r['max'], 3)}"
            rows.append(f"| {name} | {acc['pairs']} | {acc['failed']} | {acc['not_ok']} | {_f(t['median'], 3)} "
                        f"/ {_f(t['max'], 3)} | {rot} |")
        if rows:
            out += [f"### {title}", "",
                    "| method | pairs | failed | not ok | translation error median / max (mm) "
                    "| rotation error median / max (°) |", "|---|---|---|---|---|---|", *rows, ""]
    return "\n".join(out)


def _scaling_table(results: dict[str, Any]) -> str:
    sizes: list[str] = []
    for s in results["summary"].values():
        for size in s.get("latency_by_size", {}):
            if size not in sizes:
                sizes.append(size)
    sizes.sort(key=lambda v: int(v.split("x")[0]) * int(v.split("x")[1]))
    if not sizes:
        return ""
    lines = ["| method | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name, desc, s in _rows(results):
        if not desc["available"] or not s:
            continue
        by = s.get("latency_by_size", {})
        lines.append(f"| {name} | " + " | ".join(_f(by.get(z, {}).get("median"), 1) for z in sizes) + " |")
    return "\n".join(lines)


def _batch_table(results: dict[str, Any]) -> str:
    batch = results.get("batch", {})
    lines = []
    for name, b in batch.get("methods", {}).items():
        sizes = list(b["per_frame_ms"])
        lines += [f"{name} on `{batch['case']}` — {b['note']}:", "",
                  "| batch size | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes),
                  "| ms per frame | " + " | ".join(_f(b["per_frame_ms"][z], 1) for z in sizes) + " |",
                  "| frames/s | " + " | ".join(_f(b["frames_per_s"][z], 1) for z in sizes) + " |", ""]
    others = [n for n, d in results["methods"].items() if d["available"] and not n.startswith("portalign")]
    if others:
        lines.append("Peers have no batch call: a batch of B frames costs B single registrations "
                     f"({', '.join(others)}).")
    return "\n".join(lines)


def _targets(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = []
    p = s.get("portalign-cpu")
    if p and p["latency_headline"].get("n"):
        med = p["latency_headline"]["median"]
        lines.append(f"- portalign CPU median per {HEADLINE_SIZE} frame: **{_f(med, 1)} ms**, fastest "
                     f"{_f(p['latency_headline']['min'], 1)} ms "
                     f"(issue target ≤ {TARGET_CPU_MS:.0f} ms: {'met' if med <= TARGET_CPU_MS else 'NOT met'}).")
    elif p:
        lines.append(f"- portalign CPU latency at {HEADLINE_SIZE}: not measured in this run (no pair of that size).")
    sitk = s.get("simpleitk")
    if p and sitk and sitk.get("speed_ratio_vs_portalign_cpu", {}).get("pairs"):
        ratio = sitk["speed_ratio_vs_portalign_cpu"]["median"]
        pa = p["accuracy"]["all"]["translation_error_mm"]["median"]
        sa = sitk["accuracy"]["all"]["translation_error_mm"]["median"]
        lines.append(f"- speed-up over SimpleITK (median of per-pair ratios): **{_f(ratio, 1)}×** "
                     f"(target ≥ {TARGET_RATIO_SITK:.0f}×: {'met' if ratio >= TARGET_RATIO_SITK else 'NOT met'}); "
                     f"median translation error portalign {_f(pa, 3)} mm vs SimpleITK {_f(sa, 3)} mm "
                     f"({'equal or better' if pa <= sa else 'worse'}).")
    gpu = results["methods"].get("portalign-gpu")
    if gpu and not gpu["available"]:
        lines.append(f"- GPU: not measured ({gpu['reason']}).")
    return "\n".join(lines)


def markdown(results: dict[str, Any], paths: dict[str, Path]) -> str:
    """The whole ``results.md``."""
    m = results["machine"]
    cfg = results["config"]
    first = results.get("first_frame", {})
    first_lines = [f"- {n}: first call {_f(v['first_call_ms'], 0)} ms on `{v['first_call_case']}` (numba compilation "
                   f"or cache load, plus the plan for that geometry); later first frames of a new geometry (plan "
                   f"only): median {_f(v['per_case_first_frame_ms']['median'], 0)} ms" for n, v in first.items()]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v != "not installed")
    threads = ", ".join(f"{k}={v}" for k, v in results["threads"].items())
    tm = results.get("tracemalloc", {})
    tm_line = ", ".join(f"{k} {_f(v, 1)} MB" for k, v in tm.items() if k != "case")
    parts = [
        "# portalign benchmark",
        "",
        f"Mode `{cfg['mode']}`, seed {cfg['seed']}, {len(results['cases'])} pairs, run took "
        f"{_f(results['elapsed_s'], 0)} s.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
        f"{m['memory_gb']} GB, GPU: {m['gpu']}; {m['os']}; Python {m['python']}. Load average at start "
        f"{m['load_average_1_5_15']} (a shared machine: other jobs may have run during the measurement).",
        "",
        f"Threads: {threads}.",
        "",
        f"Versions: {versions}.",
        "",
        "## Headline",
        "",
        headline_table(results),
        "",
        _targets(results),
        "",
        "Latency: wall time per frame after warm-up, pooled over every timed frame of the "
        f"{HEADLINE_SIZE} pairs; portalign repeats each frame {cfg['repeats']}×, peers {cfg['peer_repeats']}×. "
        "Throughput: single stream, 1000 / mean latency. Peak RSS: rise of the process's resident high-water "
        "mark during one registration (native allocations included). Speed-up: for each pair, the peer's median "
        "time over portalign-cpu's median time on the same pair; the median of those ratios.",
        "",
        "Start-up (import, first call) is excluded from latency and shown in its own column. portalign's first "
        "frames:",
        *first_lines,
        "",
        f"Python-level peak allocation of one registration (tracemalloc, `{tm.get('case', '')}`): {tm_line}.",
        "",
        "## Accuracy by case family",
        "",
        "Translation error: distance between the found and the true (dx, dy) at the isocentre plane; for the "
        "Winston-Lutz pairs, the distance between where the found pose puts the reference BB and where the BB is "
        "in the frame. Rotation error: |found − true| in degrees. Failed: the method raised or returned no pose. "
        "Not ok: the method itself flagged the result (portalign's `ok=False`).",
        "",
        _accuracy_tables(results),
        "## Cost against image size (synthetic pairs, median ms per frame)",
        "",
        _scaling_table(results),
        "",
        f"![scaling]({paths['scaling'].name})" if "scaling" in paths else f"({NO_PLOTS})",
        "",
        "## Cost against batch size",
        "",
        _batch_table(results),
        "",
        f"![accuracy]({paths['accuracy'].name})" if "accuracy" in paths else f"({NO_PLOTS})",
        "",
        "## How the peers were set up",
        "",
        "Every peer answers in the same contract as portalign (DESIGN.md: a reference point q appears in the "
        "frame at R(θ)q + d, mm at the isocentre plane, x along columns, y along rows, origin on the beam axis); "
        "`tests/test_bench.py` checks each conversion on a synthetic pair with a known shift and rotation. "
        "Peers receive the field masks precomputed (untimed): the planned field for the simulated frames, a "
        "detected one for the Winston-Lutz images, minus the same 3 mm edge band as portalign's default; "
        "portalign detects the field itself inside its timed call.",
        "",
    ]
    for name, desc in results["methods"].items():
        if name.startswith("portalign"):
            continue
        parts.append(f"- **{name}** ({desc['description']}): "
                     + ("; ".join(f"{k}: {v}" for k, v in desc["settings"].items() if not isinstance(v, list))
                        if desc["available"] else f"not run: {desc['reason']}"))
    parts += ["", "## Cases", "",
              "| case | family | size | truth dx, dy (mm), θ (°) | truth |", "|---|---|---|---|---|"]
    for c in results["cases"]:
        t = c["truth"]
        parts.append(f"| {c['name']} | {c['family']} | {c['size']} | {t['dx_mm']:.3f}, {t['dy_mm']:.3f}, "
                     f"{t['rotation_deg']:.3f} | {c['truth_kind']} |")
    parts.append("")
    return "\n".join(parts)


def _plot_scaling(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, s in results["summary"].items():
        by = s.get("latency_by_size", {})
        if not by:
            continue
        sizes = sorted(by, key=lambda v: int(v.split("x")[0]) * int(v.split("x")[1]))
        mp = [int(z.split("x")[0]) * int(z.split("x")[1]) / 1e6 for z in sizes]
        ax1.plot(mp, [by[z]["median"] for z in sizes], "o-", label=name)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("image size (megapixels)")
    ax1.set_ylabel("median time per frame (ms)")
    ax1.set_title("cost against image size (synthetic pairs)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    batch = results.get("batch", {}).get("methods", {})
    for name, b in batch.items():
        sizes = [int(z) for z in b["per_frame_ms"]]
        ax2.plot(sizes, list(b["per_frame_ms"].values()), "o-", label=f"{name} ({'batched' if b['batched'] else 'loop'})")
    for name, s in results["summary"].items():
        if name.startswith("portalign") or not batch:
            continue
        med = s.get("latency_headline", {}).get("median")
        if med is not None and math.isfinite(med):
            xs = [int(z) for z in next(iter(batch.values()))["per_frame_ms"]]
            ax2.plot(xs, [med] * len(xs), "--", label=f"{name} (no batch call)")
    ax2.set_xscale("log", base=2)
    ax2.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.set_yscale("log")
    ax2.set_xlabel("batch size (frames)")
    ax2.set_ylabel("time per frame (ms)")
    ax2.set_title(f"cost against batch size ({HEADLINE_SIZE})")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_accuracy(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, d in results["methods"].items() if d["available"]]
    families = ["synthetic", "drr", "wl"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, (key, label) in enumerate((("translation_error_mm", "translation error (mm)"),
                                      ("rotation_error_deg", "rotation error (°)"))):
        ax = axes[k]
        labelled: set[str] = set()
        for j, fam in enumerate(families):
            for i, n in enumerate(names):
                vals = [r[key] for r in results["runs"] if r["method"] == n and r["family"] == fam
                        and r.get(key) is not None and r["completed"]]
                if not vals:
                    continue
                x = i + (j - 1) * 0.25
                ax.scatter([x] * len(vals), vals, s=14, color=f"C{j}", label=fam if fam not in labelled else None)
                labelled.add(fam)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        ax.set_yscale("symlog", linthresh=0.01)
        top = max((r[key] for r in results["runs"] if r.get(key) is not None and r["completed"]), default=1.0)
        ax.set_ylim(0.0, max(top, 0.01) * 2.0)
        ax.set_ylabel(label + ", linear below 0.01")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("accuracy per pair (each dot one pair)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
