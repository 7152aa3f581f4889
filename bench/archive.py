"""End-to-end throughput of ``portalign archive`` on Dask, beside the single-process engine, same files.

Usage (from the repository root)::

    python -m bench.archive [--patients 4] [--fractions 10] [--copies 9] [--workers 1 2] [--out DIR] [--keep]

Writes a synthetic archive of 640x480 MV portal frames (``bench.archive_data``:
two views per fraction, a DRR per beam; ``--copies`` more fractions per rendered
one, same pixels under new UIDs, so that the archive is large enough for the
cluster's start-up to be amortised) and registers it three ways:

* ``engine``: one process (one numba thread, like a worker), no Dask: for each beam read and prepare the reference,
  then read and register its frames (``portalign.read_rt_image_frames`` +
  ``Reference.register``): the floor any orchestration is measured against;
* ``archive, N workers``: ``portalign.archive.run(..., workers=N)`` on a fresh
  LocalCluster, once per N, every stage included (cluster start, index, tasks,
  Parquet, statistics, report).

Reports frames/s end to end (wall time of the whole call) and of the
registration stage alone (from the first task submitted to the last result), and
the per-worker efficiency ``fps(N) / (N * fps(1))``. Issue targets: >= 50
frames/s of 640x480 frames on this 2-core machine, efficiency >= 80 % at 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["main", "replicate_fractions", "single_process"]


def single_process(root: Path) -> dict[str, float]:
    """Register every beam of the archive in this process with the engine as it is; return counts and seconds."""
    import portalign
    from portalign.archive import index_file, list_files, pair_frames
    from portalign.dicom import read_rt_image_frames

    start, cpu = time.perf_counter(), time.process_time()
    pairing = pair_frames([index_file(p) for p in list_files([root])])
    frames = 0
    for task in pairing.tasks:
        reference = portalign.prepare_reference(portalign.read_rt_image(task.reference["path"]), backend="cpu")
        for item in task.frames:
            for image in read_rt_image_frames(item["path"]):
                reference.register(image)
                frames += 1
    return {"frames": frames, "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def replicate_fractions(root: Path, copies: int) -> int:
    """Add ``copies`` more fractions per rendered one: same pixels, new SOP Instance UID, fraction number and date.

    Rendering a 640x480 frame costs ~0.5 s here, registering it ~15 ms: copies make an archive big enough for
    the throughput to be measured past the cluster's start-up, at the price of a header rewrite each.
    Returns the number of files written.
    """
    import datetime as dt

    import pydicom
    from pydicom.uid import generate_uid

    originals = sorted(p for p in root.rglob("fx*_beam*.dcm") if "_copy" not in p.name)
    fractions = max(int(pydicom.dcmread(p, stop_before_pixels=True).FractionNumber) for p in originals)
    written = 0
    for path in originals:
        ds = pydicom.dcmread(path)
        number = int(ds.FractionNumber)
        date = dt.date.fromisoformat(f"{ds.AcquisitionDate[:4]}-{ds.AcquisitionDate[4:6]}-{ds.AcquisitionDate[6:]}")
        for k in range(1, copies + 1):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.FractionNumber = number + k * fractions
            ds.AcquisitionDate = (date + dt.timedelta(days=k * fractions)).strftime("%Y%m%d")
            ds.save_as(path.with_name(f"{path.stem}_copy{k:03d}.dcm"), enforce_file_format=True)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write ``results.json``; return the exit status."""
    from bench.archive_data import write_synthetic_archive
    from bench.measure import machine_info

    parser = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--fractions", type=int, default=10)
    parser.add_argument("--copies", type=int, default=9,
                        help="extra fractions per rendered one (header rewrites of the same pixels)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=None, help="folder for the archive and the results (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the archive and the outputs")
    args = parser.parse_args(argv)

    import portalign.archive

    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="portalign-archive-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    source = base / "src"
    t0 = time.perf_counter()
    marker = base / "src.complete"
    spec = f"{args.patients} patients x {args.fractions} x {1 + args.copies} fractions x 2 views, 640x480"
    if marker.exists() and marker.read_text() == spec:
        print(f"archive: reusing {source} ({spec})", flush=True)
    else:
        shutil.rmtree(source, ignore_errors=True)
        archive = write_synthetic_archive(source, patients=args.patients, fractions=args.fractions,
                                          detector_shape=(480, 640), detector_spacing_mm=0.4, junk=False, cine=False)
        copies = replicate_fractions(source, args.copies) if args.copies > 0 else 0
        marker.write_text(spec)
        print(f"archive: {archive.n_frames} rendered frames of 640x480 (+{copies} copies as further fractions) in "
              f"{len(archive.files) + copies} files, written in {time.perf_counter() - t0:.1f} s", flush=True)
    load_start = os.getloadavg()[0]

    import numba

    # One thread, like each worker: the comparison is per process, and on a busy machine numba's spin-waiting
    # OpenMP threads would only slow the single process down.
    numba.set_num_threads(1)
    rows = []
    single_process(source)  # warm-up: numba's cache loaded, and the files in the page cache for every run
    engine = single_process(source)
    rows.append({"what": "engine, 1 process (no Dask)", "workers": 1, "frames": engine["frames"],
                 "total_s": engine["seconds"], "register_s": engine["seconds"], "cpu_s": engine["cpu_s"]})
    for n in args.workers:
        out = base / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        result = portalign.archive.run([source], out, workers=n)
        total = time.perf_counter() - t
        timing = result.summary["timing"]
        rows.append({"what": f"archive, {n} worker{'s' if n > 1 else ''} (LocalCluster)", "workers": n,
                     "frames": result.summary["counts"]["registered"], "total_s": total,
                     "register_s": timing["register_s"], "index_s": timing["index_s"],
                     "cpu_s": timing["task_cpu_s"]})
    one = next((r for r in rows if r["workers"] == 1 and r["what"].startswith("archive")), None)
    print(f"\nload average (1 min) at the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f}, "
          f"on {os.cpu_count()} cores")
    print("\n| run | frames | end to end (s) | frames/s end to end | registration stage (s) | frames/s registering "
          "| per-worker efficiency | frames per CPU-second of the tasks |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["fps_total"] = r["frames"] / r["total_s"]
        r["fps_register"] = r["frames"] / r["register_s"]
        eff = (r["fps_register"] / (r["workers"] * one["fps_register"])) if one and r["what"].startswith("archive") \
            else None
        r["efficiency"] = eff
        print(f"| {r['what']} | {r['frames']} | {r['total_s']:.1f} | {r['fps_total']:.1f} | {r['register_s']:.1f} | "
              f"{r['fps_register']:.1f} | {'' if eff is None else f'{100 * eff:.0f} %'} | {r['frames'] / r['cpu_s']:.1f} |")
    (base / "results.json").write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2, default=str))
    print(f"\nresults in {base / 'results.json'}")
    if not args.keep and not args.out:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
