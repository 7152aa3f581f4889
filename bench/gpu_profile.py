"""Where a warm frame's host time goes on a backend: cProfile of timed frames, and how the GPU's launch sequences ran.

Usage (from the repository root)::

    python -m bench.gpu_profile [--backend gpu] [--frames 30] [--top 25]

One 1024 x 768 synthetic reference (``bench/gpu_latency.py``) is prepared and
warmed up; then ``--frames`` frames are registered under cProfile. Prints the
median wall time per frame without and with the profiler, the Python-level
calls per frame, the ``--top`` functions by own time and by cumulative time,
and on the GPU how the refinement levels' launch sequences ran (eager, captured
into a CUDA graph, replayed), which tells whether the graph path is taken on
this device.
"""

from __future__ import annotations

import argparse
import collections
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
    """Run the profile; return the exit status."""
    import portalign
    from portalign.kernels.gpu import launch

    from bench.gpu_latency import SPACING_MM, synthetic_frames, synthetic_reference

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_profile", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="gpu", choices=("cpu", "gpu"), help="backend whose frames are profiled")
    parser.add_argument("--frames", type=int, default=30, help="frames timed, then profiled (after warm-up)")
    parser.add_argument("--top", type=int, default=25, help="functions listed by own and by cumulative time")
    args = parser.parse_args(argv)

    reference = synthetic_reference((768, 1024))
    frames, _ = synthetic_frames(reference, 8)
    options = portalign.RegistrationOptions(field="none")
    prepared = portalign.prepare_reference(portalign.Image.from_array(reference, pixel_spacing_mm=SPACING_MM),
                                           options, backend=args.backend)
    images = [portalign.Image.from_array(f, pixel_spacing_mm=SPACING_MM) for f in frames]
    for image in images:  # warm-up: compilation, plans, the graphs' first (eager) and second (captured) runs
        prepared.register(image)
        prepared.register(image)

    outcomes: collections.Counter = collections.Counter()
    original = launch.run_captured

    def counting(key, enqueue):  # type: ignore[no-untyped-def]
        how = original(key, enqueue)
        outcomes[how] += 1
        return how

    launch.run_captured = counting
    try:
        plain = []
        for i in range(args.frames):
            t0 = time.perf_counter()
            prepared.register(images[i % len(images)])
            plain.append(time.perf_counter() - t0)
        profiler = cProfile.Profile()
        profiled = []
        for i in range(args.frames):
            t0 = time.perf_counter()
            profiler.enable()
            prepared.register(images[i % len(images)])
            profiler.disable()
            profiled.append(time.perf_counter() - t0)
    finally:
        launch.run_captured = original
    stats = pstats.Stats(profiler)
    calls = sum(entry[1] for entry in stats.stats.values()) / args.frames  # type: ignore[attr-defined]
    where = "host (compiled CPU calls)" if prepared.backend.host_level_stage else "the backend's own kernels"
    print(f"levels made ready on: {where}")
    print(f"{args.backend} ({prepared.backend.device}): median {np.median(plain) * 1e3:.2f} ms per frame, "
          f"{np.median(profiled) * 1e3:.2f} ms under cProfile; {calls:.0f} Python-level calls per frame")
    if outcomes:
        per_frame = {k: v / (2 * args.frames) for k, v in sorted(outcomes.items())}
        print("refinement launch sequences per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in per_frame.items()))
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(args.top)
        body = text.getvalue()
        print(f"== by {order} (over {args.frames} frames)")
        print(body[body.find("ncalls"):] if "ncalls" in body else body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
