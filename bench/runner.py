"""Run every method on every case, interleaved, and summarise.

Methods run case by case (portalign, then each peer on the same pair) so that a
change of machine load hits all of them alike; the per-pair speed ratio is the
ratio of the two medians measured on that pair, minutes apart at most.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cases import SIZES, Case, default_cache_dir, drr_cases, synthetic_cases, wl_cases
from .geometry import Pose, pose_errors
from .measure import machine_info, package_versions, peak_memory, stats, thread_counts, timed, tracemalloc_peak_mb
from .peers import PEERS, Method, Outcome, PortalignMethod, make_methods

__all__ = ["Config", "preset", "run_benchmark", "summarise", "HEADLINE_SIZE"]

#: The imager size the targets are stated for.
HEADLINE_SIZE = "1024x768"


@dataclass
class Config:
    """What one benchmark run does (see :func:`preset`)."""

    out: Path
    cache_dir: Path
    seed: int = 0
    mode: str = "full"
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    gpu: bool = True
    sizes: list[tuple[int, int]] = field(default_factory=lambda: list(SIZES))
    synthetic_pairs: int = 3
    drr_pairs: int = 8
    wl_sets: list[str] = field(default_factory=lambda: ["lat3mm", "lng3mm", "vrt3mm"])
    wl_gantries: list[float] | None = None
    repeats: int = 30
    peer_repeats: int = 3
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    numba_threads: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["out"], d["cache_dir"] = str(self.out), str(self.cache_dir)
        d["sizes"] = [f"{c}x{r}" for r, c in self.sizes]
        return d


def preset(mode: str, out: Path, cache_dir: Path | None = None, **overrides: Any) -> Config:
    """``full``, ``quick`` (under 5 minutes on 2 cores) or ``smoke`` (seconds, for the tests)."""
    cache = cache_dir or default_cache_dir()
    if mode == "full":
        cfg = Config(out=out, cache_dir=cache, mode=mode)
    elif mode == "quick":
        cfg = Config(out=out, cache_dir=cache, mode=mode, synthetic_pairs=1, drr_pairs=2, wl_sets=["lat3mm"],
                     wl_gantries=[0, 180], repeats=10, peer_repeats=1, batch_sizes=[1, 4, 16])
    elif mode == "smoke":
        cfg = Config(out=out, cache_dir=cache, mode=mode, sizes=[(128, 128)], synthetic_pairs=1, drr_pairs=0,
                     wl_sets=[], repeats=3, peer_repeats=1, batch_sizes=[1, 2])
    else:
        raise ValueError(f"unknown mode {mode!r}; choose full, quick or smoke")
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def build_cases(cfg: Config, log: Any = print) -> list[Case]:
    """Synthetic, DRR and Winston-Lutz cases of this configuration."""
    cases = synthetic_cases(cfg.sizes, cfg.synthetic_pairs, cfg.seed)
    cases += drr_cases(cfg.drr_pairs, cfg.seed, cfg.cache_dir, log=log)
    if cfg.wl_sets:
        cases += wl_cases(cfg.wl_sets, cfg.wl_gantries, log=log)
    return cases


def _failed(exc: BaseException) -> Outcome:
    nan = float("nan")
    return Outcome(Pose(nan, nan, nan), False, f"raised {type(exc).__name__}: {exc}")


def _run_case(method: Method, case: Case, repeats: int) -> dict[str, Any]:
    """Prepare, warm up (portalign), time ``repeats`` registrations; memory on the first."""
    row: dict[str, Any] = {"case": case.name, "method": method.name, "family": case.family, "size": case.size_label}
    try:
        state, row["prepare_ms"] = timed(lambda: method.prepare(case))
    except Exception as exc:  # a peer that cannot take this input is a result, not a crash
        return {**row, **_outcome_row(_failed(exc), case), "times_ms": []}
    if isinstance(method, PortalignMethod):
        # first frame of this geometry: builds the plan (and, on the very first call, compiles or loads kernels)
        _, row["first_frame_ms"] = timed(lambda: method.register(state, case))
    times: list[float] = []
    outcome: Outcome | None = None
    for i in range(repeats):
        try:
            if i == 0:
                (outcome, ms), row["peak_rss_mb"] = peak_memory(lambda: timed(lambda: method.register(state, case)))
            else:
                _, ms = timed(lambda: method.register(state, case))
        except Exception as exc:
            outcome = _failed(exc)
            break
        times.append(ms)
    assert outcome is not None
    row.update(_outcome_row(outcome, case))
    row["times_ms"] = times
    row["median_ms"] = float(np.median(times)) if times else float("nan")
    return row


def _outcome_row(outcome: Outcome, case: Case) -> dict[str, Any]:
    trans_err, rot_err = pose_errors(outcome.pose, case.truth, landmark_ref_mm=case.landmark_ref_mm,
                                     landmark_frame_mm=case.landmark_frame_mm)
    finite = all(math.isfinite(v) for v in (outcome.pose.dx_mm, outcome.pose.dy_mm, outcome.pose.rotation_deg))
    return {
        "pose": outcome.pose.as_dict(),
        "truth": case.truth.as_dict(),
        "ok": bool(outcome.ok),
        "completed": finite,
        "reason": outcome.reason,
        "translation_error_mm": trans_err,
        "rotation_error_deg": rot_err if case.rotation_observable else None,
        "extra": outcome.extra,
    }


def run_benchmark(cfg: Config, log: Any = print) -> dict[str, Any]:
    """Run the benchmark described by ``cfg`` and return every measurement (JSON-ready)."""
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "config": cfg.as_dict(),
        "machine": machine_info(),
        "versions": package_versions(),
    }
    log(f"machine: {results['machine']['cpu']}, {results['machine']['usable_cores']} cores, "
        f"load {results['machine']['load_average_1_5_15']}")
    t0 = time.perf_counter()
    cases = build_cases(cfg, log)
    log(f"{len(cases)} cases ready in {time.perf_counter() - t0:.1f} s")
    for case in cases:  # the peers' masks are given, not timed
        case.mask("frame")
        case.mask("reference")
    results["cases"] = [c.describe() for c in cases]

    if cfg.numba_threads is not None:
        import numba

        numba.set_num_threads(cfg.numba_threads)
    methods = make_methods(cfg.peers, gpu=cfg.gpu)
    for m in methods:
        m.start()
        status = f"start-up {m.startup_ms:.0f} ms" if m.available else f"unavailable: {m.reason}"
        log(f"{m.name}: {status}")
    live = [m for m in methods if m.available]

    rows: list[dict[str, Any]] = []
    for case in cases:
        for m in live:
            reps = cfg.repeats if isinstance(m, PortalignMethod) else cfg.peer_repeats
            row = _run_case(m, case, reps)
            rows.append(row)
            log(f"  {case.name:22s} {m.name:14s} {row.get('median_ms', float('nan')):9.1f} ms  "
                f"err {row['translation_error_mm']:.3f} mm"
                + ("" if row["rotation_error_deg"] is None else f" {row['rotation_error_deg']:.3f} deg")
                + ("" if row["ok"] else f"  NOT OK: {row['reason'][:70]}"))
    results["runs"] = rows

    # first-ever portalign frame (numba compile or cache load + plan), reported apart from latency
    first_frames = {}
    for m in live:
        if isinstance(m, PortalignMethod):
            mine = [r for r in rows if r["method"] == m.name and "first_frame_ms" in r]
            if mine:
                first_frames[m.name] = {"first_call_ms": mine[0]["first_frame_ms"],
                                        "first_call_case": mine[0]["case"],
                                        "per_case_first_frame_ms": stats([r["first_frame_ms"] for r in mine[1:]])}
    results["first_frame"] = first_frames
    results["threads"] = thread_counts()
    results["threads"].update({m.name: m.threads for m in methods if m.threads is not None})

    headline = next((c for c in cases if c.size_label == HEADLINE_SIZE and c.family == "drr"),
                    next((c for c in cases if c.size_label == HEADLINE_SIZE), cases[0] if cases else None))
    results["tracemalloc"] = _tracemalloc(live, headline, log) if headline is not None else {}
    results["batch"] = _batch_scaling(live, headline, cfg.batch_sizes, log) if headline is not None else {}
    results["methods"] = {m.name: m.describe() for m in methods}
    results["summary"] = summarise(rows, [m.name for m in methods], results)
    results["elapsed_s"] = time.perf_counter() - t_start
    return results


def _tracemalloc(methods: list[Method], case: Case, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"case": case.name}
    for m in methods:
        try:
            state = m.prepare(case)
            if isinstance(m, PortalignMethod):
                m.register(state, case)
            _, mb = tracemalloc_peak_mb(lambda: m.register(state, case))  # noqa: B023
        except Exception as exc:
            log(f"tracemalloc {m.name}: {exc}")
            continue
        out[m.name] = mb
    return out


def _batch_scaling(methods: list[Method], case: Case, sizes: list[int], log: Any) -> dict[str, Any]:
    """Time per frame for batches of frames: portalign's batch call when it has one, a loop otherwise."""
    out: dict[str, Any] = {"case": case.name, "methods": {}}
    for m in methods:
        if not isinstance(m, PortalignMethod):
            continue
        state = m.prepare(case)
        m.register(state, case)
        native = m.batch_call(state) is not None
        per = {}
        for b in sizes:
            reps = max(1, min(5, 32 // b))
            times = [timed(lambda: m.register_batch(state, case, b))[1] for _ in range(reps)]  # noqa: B023
            per[b] = float(np.median(times))
        out["methods"][m.name] = {
            "batched": native,
            "note": "the backend's batch call (portalign.register_batch)" if native
            else "no batch call in this backend: frames registered in a loop",
            "batch_ms": {str(b): v for b, v in per.items()},
            "per_frame_ms": {str(b): v / b for b, v in per.items()},
            "frames_per_s": {str(b): 1000.0 * b / v for b, v in per.items()},
        }
        log(f"batch {m.name}: " + ", ".join(f"B={b}: {v / b:.1f} ms/frame" for b, v in per.items()))
    return out


def summarise(rows: list[dict[str, Any]], method_names: list[str], results: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, latency, throughput, memory and speed ratios per method."""
    summary: dict[str, Any] = {}
    by_method: dict[str, list[dict[str, Any]]] = {n: [r for r in rows if r["method"] == n] for n in method_names}
    baseline = "portalign-cpu"
    for name, mine in by_method.items():
        if not mine:
            continue
        s: dict[str, Any] = {"accuracy": {}, "latency_by_size": {}}
        for family in ("all", "synthetic", "drr", "wl"):
            sel = [r for r in mine if family == "all" or r["family"] == family]
            if sel:
                s["accuracy"][family] = _accuracy(sel)
        head = [r for r in mine if r["size"] == HEADLINE_SIZE]
        pooled = [t for r in head for t in r["times_ms"]]
        s["latency_headline"] = {"size": HEADLINE_SIZE, **stats(pooled)}
        s["throughput_fps"] = 1000.0 / s["latency_headline"]["mean"] if pooled else float("nan")
        for size in sorted({r["size"] for r in mine}, key=_pixels):
            sel = [t for r in mine if r["size"] == size and r["family"] == "synthetic" for t in r["times_ms"]]
            if sel:
                s["latency_by_size"][size] = stats(sel)
        rss = [r["peak_rss_mb"] for r in head if r.get("peak_rss_mb") is not None]
        s["peak_rss_mb_headline"] = max(rss) if rss else None
        all_rss = [r["peak_rss_mb"] for r in mine if r.get("peak_rss_mb") is not None]
        s["peak_rss_mb_max"] = max(all_rss) if all_rss else None
        s["tracemalloc_mb_headline"] = results.get("tracemalloc", {}).get(name)
        s["prepare_ms"] = stats([r["prepare_ms"] for r in mine if "prepare_ms" in r])
        if name != baseline and by_method.get(baseline):
            s["speed_ratio_vs_portalign_cpu"] = _ratio(by_method[baseline], mine)
        summary[name] = s
    return summary


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["completed"]]
    t = [r["translation_error_mm"] for r in done]
    rot = [r["rotation_error_deg"] for r in done if r["rotation_error_deg"] is not None]
    return {
        "pairs": len(rows),
        "failed": len(rows) - len(done),
        "not_ok": sum(1 for r in rows if not r["ok"]),
        "translation_error_mm": {"median": _med(t), "max": _max(t)},
        "rotation_error_deg": {"median": _med(rot), "max": _max(rot), "pairs": len(rot)},
    }


def _ratio(base: list[dict[str, Any]], peer: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over pairs of (peer median time / portalign median time) on the same pair."""
    base_ms = {r["case"]: r.get("median_ms", float("nan")) for r in base}
    ratios = []
    for r in peer:
        b = base_ms.get(r["case"], float("nan"))
        p = r.get("median_ms", float("nan"))
        if math.isfinite(b) and math.isfinite(p) and b > 0:
            ratios.append(p / b)
    if not ratios:
        return {"pairs": 0, "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"pairs": len(ratios), "median": float(np.median(ratios)), "min": float(min(ratios)),
            "max": float(max(ratios))}


def _med(v: list[float]) -> float:
    return float(np.median(v)) if v else float("nan")


def _max(v: list[float]) -> float:
    return float(np.max(v)) if v else float("nan")


def _pixels(size: str) -> int:
    c, r = (int(v) for v in size.split("x"))
    return c * r
