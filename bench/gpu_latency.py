"""Latency and batched throughput of the CPU and GPU backends on synthetic 1024 x 768 frames.

Usage::

    python bench/gpu_latency.py                       # both backends (GPU skipped with its reason if absent)
    python bench/gpu_latency.py --backend cpu --frames 30
    python bench/gpu_latency.py --backend gpu --batch 256 --lanes 1,2,4 --json out/gpu_latency.json

One reference is prepared per backend; the frames are the reference resampled
under known poses (a few mm, a few tenths of a degree) plus noise. After a
warm-up (plan, JIT compilation, cuFFT plans) each frame is registered on its
own and timed on the host from the call to the returned result: the result's
numbers are on the host, so this includes every device synchronisation
(latency: median and p99). Throughput registers ``--batch`` frames in one
``portalign.register_batch`` call for each lane count of ``--lanes`` (frames in
flight at once, each on its own buffers and stream). Each row also reports the
largest error against the true pose, so a fast wrong answer cannot pass
unnoticed, and whether registering the same frame twice gave bit-identical
numbers. With both backends, the next line is the largest CPU-GPU difference
over the timed frames. For the GPU the last line is the host's fixed cost per
device operation (a kernel call with its argument views, a read of a result, one
argument view alone): about 24 kernel calls and 14 reads make up a frame
(``python -m bench.device_work``), so these costs are a floor under its latency.
Last, a 768 x 1024 DRR of the demo phantom CT is rendered on each backend
(``render_drr(backend=...)``): seconds per render and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import portalign
from portalign import register_batch
from portalign.kernels import cpu as cpu_kernels
from portalign.registration import pose_affines
from scipy import ndimage

SPACING_MM = 0.392 * 1000.0 / 1500.0  # a 0.392 mm imager pixel at SID 1500, SAD 1000


def synthetic_reference(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Band-limited texture with soft-edged "bones" and a bright body outline (float32)."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    img = np.zeros(shape)
    for sigma, weight in [(40.0, 1.0), (12.0, 0.5), (4.0, 0.2)]:
        img += weight * ndimage.gaussian_filter(rng.standard_normal(shape), sigma) * sigma
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    for _ in range(12):
        cy, cx = rng.uniform(0.15, 0.85) * rows, rng.uniform(0.15, 0.85) * cols
        ay, ax = rng.uniform(15, 90), rng.uniform(15, 90)
        inside = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1.0
        img += rng.uniform(0.5, 1.5) * ndimage.gaussian_filter(inside.astype(np.float64), 2.0)
    img -= img.min()
    return (1000.0 * img / img.max() + 100.0).astype(np.float32)


def synthetic_frames(reference: np.ndarray, n: int, seed: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames showing ``reference`` displaced by random poses (dx, dy mm; theta rad), with noise."""
    rng = np.random.default_rng(seed)
    rows, cols = reference.shape
    axis = ((cols - 1) / 2, (rows - 1) / 2)
    spacing = (SPACING_MM, SPACING_MM)
    poses = np.column_stack([rng.uniform(-5, 5, n), rng.uniform(-5, 5, n), np.radians(rng.uniform(-1.5, 1.5, n))])
    frames = []
    for pose in poses:
        affine = pose_affines(pose[None, :], axis, spacing, axis, spacing)[0]
        frame = np.empty_like(reference)
        cpu_kernels.warp_bilinear(reference, affine, float(reference.mean()), frame)
        frame += rng.normal(0.0, 5.0, frame.shape).astype(np.float32)
        frames.append(frame)
    return frames, poses


def graph_runs(name: str) -> dict[str, int]:
    """How the GPU's captured launch sequences have run so far (``launch.GRAPH_RUNS``); empty for the CPU."""
    if name != "gpu":
        return {}
    from portalign.kernels.gpu import launch

    return dict(launch.GRAPH_RUNS)


def through_aperture(image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` through a 120 x 150 mm rectangular field (2 mm penumbra, 3 % transmission outside), new noise per seed.

    The field is the machine's, so it stays where it is while the anatomy moves: a frame's detected field,
    and so its usable-pixel counts, vary by a few pixels from frame to frame, as a cine stream's do.
    """
    rows, cols = image.shape
    y = (np.arange(rows) - (rows - 1) / 2)[:, None] * SPACING_MM
    x = (np.arange(cols) - (cols - 1) / 2)[None, :] * SPACING_MM
    edge = 2.0 / 2.563  # 80-20 % penumbra of 2 mm
    inside = ndimage.gaussian_filter(((np.abs(x) < 75.0) & (np.abs(y) < 60.0)).astype(np.float64), edge / SPACING_MM)
    noise = np.random.default_rng(1000 + seed).normal(0.0, 5.0, image.shape)
    return ((0.03 + 0.97 * inside) * image + noise).astype(np.float32)


def run_backend(name: str, reference: np.ndarray, frames: list[np.ndarray], poses: np.ndarray, n_latency: int,
                n_batch: int, warmup: int, lanes: list[int], field: bool = False,
                options: portalign.RegistrationOptions | None = None) -> dict:
    """Time one backend: latency per frame and batched throughput per lane count; worst pose error.

    ``field``: the frames and the reference are seen through a radiation field (:func:`through_aperture`) that
    each frame detects for itself. ``options``: the registration options (default: the defaults, with
    ``field="none"`` unless ``field``).
    """
    if options is None:
        options = portalign.RegistrationOptions() if field else portalign.RegistrationOptions(field="none")
    if field:
        reference = through_aperture(reference, 0)
        frames = [through_aperture(f, i + 1) for i, f in enumerate(frames)]
    ref_image = portalign.Image.from_array(reference, pixel_spacing_mm=SPACING_MM)
    images = [portalign.Image.from_array(f, pixel_spacing_mm=SPACING_MM) for f in frames]
    start = time.perf_counter()
    prepared = portalign.prepare_reference(ref_image, options, backend=name)
    for i in range(warmup):
        prepared.register(images[i % len(images)])
    prepare_s = time.perf_counter() - start
    latencies = []
    errors = []
    poses_found = []
    runs_before = graph_runs(name)
    for i in range(n_latency):
        t0 = time.perf_counter()
        result = prepared.register(images[i % len(images)])
        latencies.append((time.perf_counter() - t0) * 1e3)
        truth = poses[i % len(images)]
        errors.append(max(abs(result.dx_mm - truth[0]), abs(result.dy_mm - truth[1])))
        poses_found.append((result.dx_mm, result.dy_mm, result.rotation_deg))
    runs = {k: v - runs_before[k] for k, v in graph_runs(name).items()}
    again = prepared.register(images[0])
    repeatable = (again.dx_mm, again.dy_mm, again.rotation_deg) == poses_found[0]
    batch = [images[i % len(images)] for i in range(n_batch)]
    throughput = {}
    ok = []
    for count in lanes:
        register_batch(prepared, batch[: max(count, 1) * 2], lanes=count)  # make and warm the lanes
        t0 = time.perf_counter()
        results = register_batch(prepared, batch, lanes=count)
        throughput[str(count)] = n_batch / (time.perf_counter() - t0)
        ok.extend(r.ok for r in results)
    overheads = host_overheads(prepared.backend) if prepared.backend.name == "gpu" else {}
    return {
        "backend": name,
        "device": prepared.backend.device,
        "host_overheads": overheads,
        "prepare_and_warmup_s": prepare_s,
        "latency_ms_median": float(np.median(latencies)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "frames_per_s_batched": throughput,
        "field": field,
        "graph_runs_timed_frames": runs,
        "max_error_mm": float(max(errors)),
        "ok_fraction": float(np.mean(ok)),
        "repeat_bit_identical": bool(repeatable),
        "poses": poses_found,
    }


def host_overheads(backend: Any, repeats: int = 200) -> dict[str, float]:
    """Microseconds of host time per kernel call, per read back to the host and per argument view, on ``backend``.

    The kernel is the 2x2 -> 1x1 pyramid step (two array arguments): what is
    timed is Python's launch path, not arithmetic. Launches are asynchronous,
    so the loop is synchronised once at the end.
    """
    from portalign.kernels.gpu import launch

    src = backend.asarray(np.ones((2, 2), dtype=np.float32))
    out = backend.xp.empty((1, 1), dtype=backend.xp.float32)
    backend.kernels.downsample2(src, out)  # compile
    backend.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        backend.kernels.downsample2(src, out)
    backend.synchronize()
    per_call = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        backend.to_host(out)
    per_read = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        launch.device_arg(src)
    per_view = (time.perf_counter() - t0) / repeats
    return {"kernel_call_us": per_call * 1e6, "read_back_us": per_read * 1e6, "argument_view_us": per_view * 1e6}


def drr_timing(names: list[str], shape: tuple[int, int], repeats: int = 3) -> dict[str, Any]:
    """Seconds per DRR of the demo phantom on each backend (best of ``repeats`` after one warm-up)."""
    from portalign.demo import phantom_ct
    from portalign.simulate import render_drr

    ct = phantom_ct()
    seconds, images = {}, {}
    for name in names:
        try:
            images[name] = render_drr(ct, detector_shape=shape, backend=name)  # compiles
        except portalign.BackendUnavailableError:
            continue
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            render_drr(ct, detector_shape=shape, backend=name)
            times.append(time.perf_counter() - t0)
        seconds[name] = min(times)
    out: dict[str, Any] = {"shape": list(shape), "seconds": seconds}
    if len(images) == 2:
        a, b = (images[n].pixels.astype(np.float64) for n in names)
        out["max_relative_difference"] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["cpu", "gpu", "both"], default="both")
    parser.add_argument("--frames", type=int, default=50, help="frames timed one by one (latency)")
    parser.add_argument("--batch", type=int, default=64, help="frames in the batched throughput call")
    parser.add_argument("--lanes", default="1,2,4", help="lane counts to time the batch with (comma-separated)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shape", default="768x1024", help="rows x cols of the synthetic images")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--no-drr", action="store_true", help="skip the DRR rendering comparison")
    parser.add_argument("--field", action="store_true",
                        help="frames through a 120 x 150 mm radiation field that each frame detects (usable-pixel "
                             "counts vary from frame to frame, as in cine)")
    args = parser.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    reference = synthetic_reference((rows, cols))
    frames, poses = synthetic_frames(reference, min(max(args.frames, args.warmup, 1), 32))
    names = ["cpu", "gpu"] if args.backend == "both" else [args.backend]
    lanes = [int(v) for v in args.lanes.split(",")]
    table = []
    for name in names:
        try:
            # the CPU's kernels already use every core: its batch runs on one lane
            table.append(run_backend(name, reference, frames, poses, args.frames, args.batch, args.warmup,
                                     lanes if name == "gpu" else [1], field=args.field))
        except portalign.BackendUnavailableError as exc:
            if args.backend != "both":
                print(f"gpu_latency: {exc}", file=sys.stderr)
                return 2
            table.append({"backend": name, "device": f"unavailable: {exc}"})
    print(f"{rows}x{cols} frames{' through a detected field' if args.field else ''}, {args.frames} timed one by one, "
          f"batches of {args.batch}")
    print(f"{'backend':8} {'median ms':>10} {'p99 ms':>9} {'frames/s (lanes)':>28} {'max err mm':>11} {'ok':>5} "
          f"{'repeat':>7}  device")
    for row in table:
        if "latency_ms_median" not in row:
            print(f"{row['backend']:8} {'-':>10} {'-':>9} {'-':>28} {'-':>11} {'-':>5} {'-':>7}  {row['device']}")
            continue
        fps = " ".join(f"{v:.0f}({k})" for k, v in row["frames_per_s_batched"].items())
        print(f"{row['backend']:8} {row['latency_ms_median']:10.2f} {row['latency_ms_p99']:9.2f} {fps:>28} "
              f"{row['max_error_mm']:11.3f} {row['ok_fraction']:5.0%} "
              f"{'same' if row['repeat_bit_identical'] else 'DIFF':>7}  {row['device']}")
    measured = {row["backend"]: np.array(row["poses"]) for row in table if "poses" in row}
    if len(measured) == 2:
        gap = np.abs(measured["cpu"] - measured["gpu"])
        print(f"gpu vs cpu, largest difference over the timed frames: {gap[:, :2].max():.4f} mm, "
              f"{gap[:, 2].max():.4f} deg")
    for row in table:
        if row.get("graph_runs_timed_frames"):
            r = row["graph_runs_timed_frames"]
            print(f"{row['backend']} launch sequences of the timed frames: {r['replayed']} replayed graphs, "
                  f"{r['captured']} captured, {r['eager']} eager")
    for row in table:
        if row.get("host_overheads"):
            o = row["host_overheads"]
            print(f"{row['backend']} host cost: {o['kernel_call_us']:.1f} us per kernel call, {o['read_back_us']:.1f} us "
                  f"per read back, {o['argument_view_us']:.1f} us per argument view")
    drr = {} if args.no_drr else drr_timing(names, (rows, cols))
    if drr.get("seconds"):
        timings = ", ".join(f"{k} {v:.3f} s" for k, v in drr["seconds"].items())
        gap = drr.get("max_relative_difference")
        print(f"DRR {rows}x{cols} of the demo phantom: {timings}"
              + ("" if gap is None else f"; largest difference {gap:.1e} of the maximum"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": [rows, cols], "rows": table, "drr": drr}, indent=2))
    return 0 if all(math.isfinite(r.get("latency_ms_median", 0.0)) for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
