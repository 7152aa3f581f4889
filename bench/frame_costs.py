"""Per-frame time and Python-level calls of every held-out kind: which frames keep up with a cine, and why not.

``python -m bench.frame_costs [--pairs 40] [--seed 11] [--only 3 5] [--warm 8] [--timed 7]`` (from the source
checkout, with ``../shared`` present) renders the pairs of :mod:`bench.held_out` (apertures, DRR or portal
references, low dose, dead detector lines; 384 x 512 detectors at 0.52 mm at the isocentre), prepares each
reference, registers the frame ``--warm`` times (the thread tuner's exploring frames, the geometry's first-frame
checks) and then ``--timed`` times, and prints per pair the median frame time, the Python-level calls a frame
(cProfile over three more frames) and the three costliest functions; then the median time per kind. The latency
target of DESIGN.md is measured by :mod:`bench.latency` on one 1024 x 768 DRR pair; this shows the spread over the
kinds a cine meets (30 frames/s needs 33 ms a frame). Times on a shared machine are noise unless compared in the
same run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Render, time and profile the pairs; return the exit status."""
    import portalign
    from portalign.ct import read_ct_series

    from bench.cases import CT_FOLDER, DRR_CT_DOWNSAMPLE
    from bench.held_out import render_pairs

    parser = argparse.ArgumentParser(prog="python -m bench.frame_costs", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=40, help="pairs of bench.held_out's seed (the kinds cycle)")
    parser.add_argument("--seed", type=int, default=11, help="bench.held_out's seed")
    parser.add_argument("--only", type=int, nargs="*", default=None, help="time only these pairs (0-based)")
    parser.add_argument("--warm", type=int, default=8, help="frames registered before timing")
    parser.add_argument("--timed", type=int, default=7, help="frames timed (their median is printed)")
    args = parser.parse_args(argv)
    if not CT_FOLDER.is_dir():
        print(f"frame_costs: the thorax CT is not at {CT_FOLDER}", file=sys.stderr)
        return 1
    ct = read_ct_series(CT_FOLDER).downsampled(DRR_CT_DOWNSAMPLE)
    per_kind: dict[str, list[float]] = {}
    for pair in render_pairs(ct, args.seed, args.pairs, args.only):
        reference = portalign.prepare_reference(pair.reference, backend="cpu")
        for _ in range(args.warm):
            result = reference.register(pair.frame)
        times = []
        for _ in range(args.timed):
            start = time.perf_counter()
            result = reference.register(pair.frame)
            times.append(time.perf_counter() - start)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(3):
            reference.register(pair.frame)
        profile.disable()
        stats = pstats.Stats(profile, stream=io.StringIO())
        costliest = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:3]  # type: ignore[attr-defined]
        heavy = ", ".join(f"{where[2]} {1e3 * row[2] / 3:.1f} ms" for where, row in costliest)
        ms = 1e3 * float(np.median(times))
        label = (f"{pair.kind} {'portal' if pair.portal_reference else 'drr'}"
                 f"{' low-dose' if pair.low_dose else ''}{' dead-lines' if pair.dead_lines else ''}")
        per_kind.setdefault(pair.kind, []).append(ms)
        print(f"pair {pair.index:2d} {label:36s} {ms:6.1f} ms a frame, {stats.total_calls // 3:5d} Python-level calls "  # type: ignore[attr-defined]
              f"(ok={result.ok}) | {heavy}", flush=True)
    for kind, values in per_kind.items():
        print(f"SUMMARY {kind:10s}: {len(values)} pairs, median {np.median(values):.1f} ms a frame, "
              f"largest {max(values):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
