"""Latency of one 1024x768 MV frame against a DRR: portalign beside SimpleITK, same pair, same run.

Usage (from the repository root)::

    python -m bench.latency [--repeats 50] [--sitk-repeats 3] [--pair 0] [--seed 0]
    python bench/latency.py ...

Prints portalign's median (and p99) per-frame time after warm-up, SimpleITK's
median registration time (Mattes MI, Euler2D, the set-up of
:class:`bench.peers.SimpleITKMethod`), the ratio of the two and both errors
against the simulated truth, the Python-level calls per frame (cProfile), and the one-shot
``portalign.register(reference, frame)`` time (reference preparation, a new geometry's plan, one frame).
The accuracy verdict compares the median errors of both over pairs ``0..--accuracy-pairs - 1`` of the
seed (each registered once), not the timed pair's alone. Targets (DESIGN.md): portalign <= 3 ms per
1024x768 frame on the 2-core CPU, >= 200x faster than SimpleITK at equal or better accuracy, <= 60 Python
calls a frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the latency comparison; return the exit status."""
    from bench.cases import CT_FOLDER, default_cache_dir, drr_cases
    from bench.geometry import pose_errors
    from bench.measure import machine_info, stats, thread_counts
    from bench.peers import PortalignMethod, SimpleITKMethod

    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="portalign frames timed after warm-up")
    parser.add_argument("--sitk-repeats", type=int, default=3, help="SimpleITK registrations timed")
    parser.add_argument("--pair", type=int, default=0, help="which rendered DRR pair (0-based)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--accuracy-pairs", type=int, default=8,
                        help="pairs 0..N-1 of the same seed registered once by both, for the accuracy verdict: one "
                             "pair's error is noise (0 or 1: the timed pair alone)")
    parser.add_argument("--numba-threads", type=int, default=None,
                        help="threads for portalign's CPU kernels; numba's default otherwise")
    args = parser.parse_args(argv)
    if args.numba_threads is not None:
        import numba

        numba.set_num_threads(args.numba_threads)

    if not CT_FOLDER.is_dir():
        print(f"latency: the thorax CT is not at {CT_FOLDER}; it is needed to render the DRR pair", file=sys.stderr)
        return 1
    case = drr_cases(args.pair + 1, args.seed, args.cache_dir or default_cache_dir())[args.pair]
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['usable_cores']} cores, GPU {m['gpu']}, load {m['load_average_1_5_15']}")
    print(f"threads: {thread_counts()}")
    print(f"pair {case.name}: {case.size_label} MV frame vs kV DRR, truth dx={case.truth.dx_mm:.3f} "
          f"dy={case.truth.dy_mm:.3f} mm, rotation {case.truth.rotation_deg:.3f} deg (simulated)")

    pa = PortalignMethod(args.backend)
    pa.start()
    if not pa.available:
        print(f"latency: portalign {args.backend} backend unavailable: {pa.reason}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    ref = pa.prepare(case)
    prepare_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    first = pa.register(ref, case)
    first_ms = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = pa.register(ref, case)
        times.append((time.perf_counter() - t0) * 1e3)
    p_err = pose_errors(out.pose, case.truth)
    p_stats = stats(times)
    calls = python_calls_per_frame(lambda: pa.register(ref, case))
    print(f"portalign-{args.backend}: prepare {prepare_ms:.0f} ms, first frame {first_ms:.0f} ms (JIT/cache + plan), "
          f"then median {p_stats['median']:.2f} ms, p99 {p_stats['p99']:.2f} ms over {len(times)} frames; "
          f"error {p_err[0]:.3f} mm, {p_err[1]:.3f} deg; ok={first.ok} {first.reason}")
    print(f"portalign-{args.backend}: {calls:.0f} Python-level calls per frame (cProfile, 10 frames; target <= 60)")
    one_shot = _one_shot_ms(case, args.backend)
    print(f"portalign-{args.backend}: one-shot portalign.register(reference, frame) (reference preparation, the plan "
          f"for the frame's geometry, one frame): median {one_shot:.1f} ms over 5 (target <= 50 ms per new geometry)")

    sitk = SimpleITKMethod()
    sitk.start()
    if not sitk.available:
        print(f"SimpleITK unavailable: {sitk.reason}; no ratio")
        return 0
    state = sitk.prepare(case)
    s_times = []
    for _ in range(args.sitk_repeats):
        t0 = time.perf_counter()
        s_out = sitk.register(state, case)
        s_times.append((time.perf_counter() - t0) * 1e3)
    s_err = pose_errors(s_out.pose, case.truth)
    s_med = float(np.median(s_times))
    print(f"simpleitk {sitk.version}: start-up {sitk.startup_ms:.0f} ms (excluded), median {s_med:.0f} ms over "
          f"{len(s_times)} registrations; error {s_err[0]:.3f} mm, {s_err[1]:.3f} deg")
    ratio = s_med / p_stats["median"]
    verdict_speed = "met" if p_stats["median"] <= 3.0 else "NOT met"
    verdict_ratio = "met" if ratio >= 200.0 else "NOT met"
    ours, theirs, label = [p_err[0]], [s_err[0]], "on the timed pair"
    if args.accuracy_pairs > 1:
        ours, theirs = [], []
        for other in drr_cases(args.accuracy_pairs, args.seed, args.cache_dir or default_cache_dir()):
            ours.append(pose_errors(pa.register(pa.prepare(other), other).pose, other.truth)[0])
            theirs.append(pose_errors(sitk.register(sitk.prepare(other), other).pose, other.truth)[0])
        label = f"median over pairs 0-{args.accuracy_pairs - 1} of seed {args.seed}"
        print(f"accuracy, {label}: portalign {np.median(ours):.3f} mm (max {max(ours):.3f}), SimpleITK "
              f"{np.median(theirs):.3f} mm (max {max(theirs):.3f})")
    verdict_acc = "equal or better" if np.median(ours) <= np.median(theirs) + 1e-9 else "worse"
    print(f"ratio: portalign is {ratio:.1f}x faster than SimpleITK (target >= 200x: {verdict_ratio}); "
          f"median {p_stats['median']:.2f} ms (target <= 3 ms: {verdict_speed}); "
          f"translation accuracy {verdict_acc} ({label}: {np.median(ours):.3f} vs {np.median(theirs):.3f} mm)")
    return 0


def _one_shot_ms(case: Any, backend: str, runs: int = 5) -> float:
    """Return the median time (ms) of ``portalign.register`` on the pair: nothing prepared beforehand."""
    import portalign

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        portalign.register(case.reference, case.frame, backend=backend)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def python_calls_per_frame(register: Any, frames: int = 10) -> float:
    """Return the Python-level function calls (cProfile's count) per call of ``register``."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(frames):
        register()
    profile.disable()
    return pstats.Stats(profile).total_calls / frames  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
