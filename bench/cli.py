"""Command line of the benchmark: ``python -m bench`` (and ``portalign bench``).

``add_arguments(parser)`` and ``run(args) -> int`` let another CLI mount it as a
sub-command; ``main(argv)`` is the stand-alone entry point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "main"]


def _sizes(text: str) -> list[tuple[int, int]]:
    """``"128"``, ``"1024x768"`` or a comma list of them (``COLSxROWS``) -> [(rows, cols)]."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            if "x" in item:
                cols, rows = (int(v) for v in item.split("x"))
            else:
                cols = rows = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {item!r}: use N or COLSxROWS, e.g. 512 or 1024x768") from None
        if rows < 32 or cols < 32:
            raise argparse.ArgumentTypeError(f"size {item!r} is too small: at least 32x32")
        out.append((rows, cols))
    if not out:
        raise argparse.ArgumentTypeError("no sizes given")
    return out


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    from .peers import PEERS

    parser.add_argument("--quick", action="store_true",
                        help="few pairs and repeats: finishes in under 5 minutes on 2 cores (rendering included)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("results/bench"),
                        help="output folder for results.json, results.md and the PNGs (default results/bench)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where rendered DRR pairs are cached (default $PORTALIGN_BENCH_CACHE or "
                             "~/.cache/portalign/bench)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--peers", nargs="*", default=None, metavar="PEER",
                        help=f"peers to run beside portalign: any of {', '.join(PEERS)}, or none (default all)")
    parser.add_argument("--no-gpu", action="store_true", help="do not try portalign's GPU backend")
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="synthetic image sizes, e.g. 256,512,1024x768 (default by mode)")
    parser.add_argument("--synthetic-pairs", type=int, default=None, help="synthetic pairs per size (default: by mode)")
    parser.add_argument("--drr-pairs", type=int, default=None,
                        help="MV-vs-DRR pairs rendered from the thorax CT (default: by mode)")
    parser.add_argument("--wl", nargs="*", default=None, metavar="SET",
                        help="Winston-Lutz sets against 'cardinal': lat3mm lng3mm vrt3mm (none: no WL pairs; default: by mode)")
    parser.add_argument("--repeats", type=int, default=None, help="timed frames per pair for portalign (default: by mode)")
    parser.add_argument("--peer-repeats", type=int, default=None,
                        help="timed registrations per pair for peers (default: by mode)")
    parser.add_argument("--batch-sizes", type=_ints, default=None, help="batch sizes, e.g. 1,4,16 (default: by mode)")
    parser.add_argument("--numba-threads", type=int, default=None,
                        help="threads for portalign's CPU kernels (numba.set_num_threads); numba's default otherwise")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; write the results; return the exit status."""
    from .peers import PEERS
    from .report import NO_PLOTS, headline_table, write_results
    from .runner import preset, run_benchmark

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    peers = list(PEERS) if args.peers is None else [p for p in args.peers if p.lower() != "none"]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        print(f"bench: unknown peer {', '.join(unknown)}; choose from {', '.join(PEERS)} or none", file=sys.stderr)
        return 2
    wl = None if args.wl is None else [s for s in args.wl if s.lower() != "none"]
    cfg = preset(mode, args.out, args.cache_dir, seed=args.seed, peers=peers, sizes=args.sizes,
                 synthetic_pairs=args.synthetic_pairs, drr_pairs=args.drr_pairs, wl_sets=wl, repeats=args.repeats,
                 peer_repeats=args.peer_repeats, batch_sizes=args.batch_sizes, numba_threads=args.numba_threads)
    cfg.gpu = not args.no_gpu

    def log(msg: Any) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    results = run_benchmark(cfg, log=log)
    paths = write_results(results, cfg.out)
    print()
    print(headline_table(results))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "scaling" not in paths:
        print(NO_PLOTS)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m bench``)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="portalign benchmarks against peers")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
