"""``portalign archive``: the command-line face of :func:`portalign.archive.run`."""

from __future__ import annotations

import argparse
import json
import sys

from .._cli_options import add_invert_argument, as_flags
from ..errors import PortalignError
from ..options import RegistrationOptions

__all__ = ["add_arguments", "run"]

#: The console names this many reasons why frames were not registered (the most frequent).
NOT_REGISTERED_SHOWN = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign archive`` arguments to a parser."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="folders (walked recursively) and files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes of a local Dask cluster, 1 thread each (default: the CPU count)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running Dask scheduler, e.g. tcp://host:8786, whose workers see the files "
                            "(default: none, a local cluster)")
    parser.add_argument("--resume", action="store_true", help="keep beams already written in DIR/parts, do the rest")
    parser.add_argument("--first-portal-reference", action="store_true",
                        help="a beam without a DRR/reference image takes its first portal image as the reference")
    parser.add_argument("--method", default="auto", choices=("auto", "mi", "edge"),
                        help="similarity of the final refinement, as for register")
    add_invert_argument(parser)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "auto", "gpu"),
                        help="registration backend on the workers (default cpu, unlike the other commands' auto: "
                             "every worker process would otherwise hold a CUDA context and its own copy of the kernels "
                             "on one GPU; a worker per core on the CPU is the archive's parallelism)")
    parser.add_argument("--max-shift-mm", type=float, default=None, metavar="MM",
                        help="search range (default: the engine's, 20)")
    parser.add_argument("--retries", type=int, default=2, metavar="N", help="reruns of a beam task whose worker was lost")
    parser.add_argument("--max-residual-mm", type=float, default=1.0, metavar="MM",
                        help="a view further than this from its fraction's 3-D solution makes it not ok")
    parser.add_argument("--parts-on-workers", action="store_true", default=None,
                        help="with --scheduler: the workers write DIR/parts themselves (DIR on shared storage; "
                             "always so on a local cluster)")
    parser.add_argument("--connect-timeout", type=float, default=20.0, metavar="S",
                        help="seconds to keep trying to reach --scheduler")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    parser.add_argument("--json", action="store_true",
                        help="print summary.json's counts, population, reasons and warnings as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``portalign archive``: 0 when the outputs are written, 2 with a one-line error on unusable input."""
    from . import run as run_archive

    try:
        changes = {"method": args.method}
        if args.max_shift_mm is not None:
            changes["max_shift_mm"] = args.max_shift_mm
        options = RegistrationOptions().replace(**changes) if changes != {"method": "auto"} else None
        result = run_archive(args.sources, args.out, workers=args.workers, scheduler=args.scheduler,
                             resume=args.resume, first_portal_reference=args.first_portal_reference,
                             options=options, backend=args.backend, retries=args.retries,
                             max_residual_mm=args.max_residual_mm, progress=not args.no_progress,
                             connect_timeout_s=args.connect_timeout, parts_on_workers=args.parts_on_workers,
                             invert=args.invert)
    except PortalignError as exc:
        text = str(exc).removeprefix("archive: ")  # the library's messages name themselves; the prefix says it here
        print(f"portalign archive: error: {as_flags(text, getattr(args, 'subparser', None))}", file=sys.stderr)
        return 2
    summary = result.summary
    if args.json:
        print(json.dumps({k: summary[k] for k in ("counts", "population", "population_rotation_deg", "tasks", "timing",
                                                  "not_registered", "not_ok", "warnings")}, default=str))
        return 0
    counts = summary["counts"]
    print(f"{counts['files']} files: {counts['frames']} frames ({counts['registered']} registered, {counts['not_ok']} not "
          f"ok, {counts['unmatched']} unmatched, {counts['failed']} failed), {counts['unreadable']} unreadable, "
          f"{counts['duplicates']} duplicates; {result.tasks_run} beams registered, {result.tasks_skipped} resumed")
    for axis, s in summary["population"].items():
        values = " ".join(f"{name} {'n/a' if s[key] is None else format(s[key], '.2f')}" for name, key in (
            ("M", "M_mm"), ("Sigma", "Sigma_mm"), ("sigma", "sigma_mm"), ("margin (van Herk)", "margin_van_herk_mm")))
        print(f"{axis:>13}: {values} mm  ({s['n_patients']} patients)")
    # why frames were not registered (each reason once, most frequent first; report.md lists every frame)
    shown_reasons = summary.get("not_registered") or []
    for entry in shown_reasons[:NOT_REGISTERED_SHOWN]:
        print(f"{entry['status']}: {entry['frames']} frame(s): "
              f"{as_flags(entry['reason'], getattr(args, 'subparser', None))}")
    if len(shown_reasons) > NOT_REGISTERED_SHOWN:
        print(f"... {len(shown_reasons) - NOT_REGISTERED_SHOWN} more reason(s) in report.md and summary.json")
    not_ok = summary.get("not_ok") or []  # registered, not ok: why (each reason once, most frequent first)
    for entry in not_ok[:NOT_REGISTERED_SHOWN]:
        print(f"not ok: {entry['frames']} frame(s) (first: {entry.get('first')}): "
              f"{as_flags(entry['reason'], getattr(args, 'subparser', None))}")
    if len(not_ok) > NOT_REGISTERED_SHOWN:
        print(f"... {len(not_ok) - NOT_REGISTERED_SHOWN} more not-ok reason(s) in registrations.parquet and summary.json")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"outputs in {result.out_dir} (report.md, summary.json, registrations/setups/index.parquet)")
    return 0
