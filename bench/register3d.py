"""6-DOF 2D/3D registration: two 640x480 MV views against the thorax CT, time and accuracy.

Usage (from the repository root)::

    python -m bench.register3d [--setups 3] [--repeats 3] [--shape 480x640] [--backend cpu] [--seed 0]

For each setup a random rigid motion (translations up to 8 mm, rotations up to
3 deg about each axis) is rendered as two simulated MV portal frames (gantry 0
and 90, 200 x 160 mm field, 1 % quantum noise) from the full-resolution thorax
CT of ``../shared/data/real/itkelastix/thorax_ct_phase00``; the CT is prepared
once (timed) and each setup registered ``--repeats`` times. Prints the median
registration time (CT preparation excluded; target <= 10 s on the 2-core CPU,
<= 0.3 s on a GPU), the errors against the truth, the 2D/2D baseline of
``portalign couch`` on the same frames (2-D registrations against DRRs at the
planned pose, combined in 3-D: no out-of-plane rotation correction) and the
batched projector's throughput in rays/s (one 28-pose batch on a 96x96 grid of
the CT's own resolution).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["main"]

FIELD = (-100.0, 100.0, -80.0, 80.0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    from portalign.couch import register_views
    from portalign.ct import read_ct_series
    from portalign.register3d import prepare_ct
    from portalign.simulate import render_drr

    from bench.cases import CT_FOLDER

    parser = argparse.ArgumentParser(prog="python -m bench.register3d", description=__doc__.split("\n")[0])
    parser.add_argument("--setups", type=int, default=3, help="random 6-DOF setups")
    parser.add_argument("--repeats", type=int, default=3, help="registrations timed per setup")
    parser.add_argument("--shape", default="480x640", help="frame rows x cols")
    parser.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if not CT_FOLDER.is_dir():
        print(f"thorax CT not found at {CT_FOLDER}", file=sys.stderr)
        return 2
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    pitch = 0.392 * 1024 / cols  # the panel of a 1024x768 imager at 0.392 mm, binned to this size

    started = time.perf_counter()
    ct = read_ct_series(CT_FOLDER)
    read_s = time.perf_counter() - started
    iso = np.array(ct.centre_mm) + np.array([0.0, 20.0, 0.0])
    started = time.perf_counter()
    prepared = prepare_ct(ct, isocenter_mm=iso, backend=args.backend)
    prepare_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed)
    report: dict = {"ct_shape": list(ct.shape), "ct_spacing_mm": list(ct.spacing_mm), "frame_shape": [rows, cols],
                    "backend": prepared.backend.name, "device": prepared.backend.device, "read_ct_s": read_s,
                    "prepare_s": prepare_s, "setups": []}
    geometry = dict(isocentre_mm=tuple(iso), detector_shape=(rows, cols), detector_spacing_mm=pitch)
    times = []
    for k in range(args.setups):
        translation = rng.uniform(-8, 8, 3)
        rotation = rng.uniform(-3, 3, 3)
        frames = [render_drr(ct, gantry_deg=g, energy="mv", couch_shift_mm=tuple(translation),
                             patient_rotation_deg=tuple(rotation), field_mm=FIELD, noise=0.01, seed=k * 10 + i,
                             **geometry) for i, g in enumerate((0.0, 90.0))]
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = prepared.register(frames)
            runs.append(time.perf_counter() - t0)
        times.extend(runs)
        found = np.array([result.lateral_mm, result.longitudinal_mm, result.vertical_mm, result.pitch_deg,
                          result.roll_deg, result.yaw_deg])
        truth = np.concatenate([translation, rotation])
        references = [render_drr(ct, gantry_deg=g, energy="kv", **geometry) for g in (0.0, 90.0)]
        couch, _ = register_views(list(zip(references, frames, strict=True)), backend="cpu")
        baseline = couch.displacement_mm - translation
        row = {"truth": truth.tolist(), "found": found.tolist(), "error": (found - truth).tolist(), "ok": result.ok,
               "reason": result.reason, "seconds": runs, "renders": result.renders,
               "couch_2d2d_translation_error_mm": baseline.tolist(), "couch_2d2d_ok": couch.ok}
        report["setups"].append(row)
        print(f"setup {k}: truth t {np.round(translation, 2)} r {np.round(rotation, 2)}")
        print(f"  6-DOF error  t {np.round(found[:3] - translation, 3)} mm  r {np.round(found[3:] - rotation, 3)} deg"
              f"  ok={result.ok}  {np.median(runs):.2f} s  ({result.renders} renders)")
        print(f"  2D/2D couch  t {np.round(baseline, 3)} mm  (rotations: pitch/yaw first order, roll not estimated)")

    report["register_s_median"] = float(np.median(times))
    report["rays_per_s"] = _projector_throughput(prepared)
    errors = np.array([r["error"] for r in report["setups"]])
    base = np.array([r["couch_2d2d_translation_error_mm"] for r in report["setups"]])
    print(f"CT read {read_s:.2f} s, prepared once in {prepare_s:.2f} s ({prepared.backend.name})")
    print(f"two {rows}x{cols} views, 6 DOF: median {report['register_s_median']:.2f} s per setup over {len(times)} runs "
          f"(target <= 10 s on the 2-core CPU)")
    print(f"max |error|: translation {np.abs(errors[:, :3]).max():.3f} mm, rotation {np.abs(errors[:, 3:]).max():.3f} "
          f"deg; 2D/2D couch translation {np.abs(base).max():.3f} mm")
    print(f"batched projector: {report['rays_per_s'] / 1e6:.2f} M rays/s on the fine volume")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _projector_throughput(prepared) -> float:
    """Rays per second of one 28-pose batch on a 96x96 detector grid through the CT's own grid (after warm-up)."""
    from portalign.image import Image
    from portalign.register3d._geometry import ViewGeometry

    frame = Image.from_array(np.ones((96, 96)) + np.eye(96), pixel_spacing_mm=2.0, gantry_deg=0.0, sid_mm=1500.0,
                             sad_mm=1000.0)
    room = ViewGeometry.of(frame).detector_grid(-95.0, -95.0, 2.0, 2.0)
    poses = np.zeros((28, 6))
    poses[:, 5] = np.linspace(-3, 3, 28)
    level = prepared.levels["fine"]
    geometry = prepared.to_volume(level, poses, *room)
    xp = prepared.backend.xp
    out = xp.empty((28, 96, 96), dtype=xp.float32)
    prepared.render(level, geometry, out)
    prepared.backend.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        prepared.render(level, geometry, out)
    prepared.backend.synchronize()
    return 3 * out.size / (time.perf_counter() - t0)


if __name__ == "__main__":
    raise SystemExit(main())
