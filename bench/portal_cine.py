"""A cine of portal frames against a reference portal image through one fixed aperture: per-frame latency.

``python -m bench.portal_cine [--frames 30] [--aperture mlc] [--detector 768x1024] [--spacing 0.392]`` (from the
source checkout, with ``../shared`` present) renders, from the real thorax CT at gantry 0, an MV reference portal
image and ``--frames`` MV frames of the patient moving a little (0.2-0.8 mm: a patient holding still), all through
the same aperture (``bench.held_out``'s: jaws, collimator-turned jaws, MLC, cone or open), each with its own 1.5 %
quantum noise. Every frame is matched within 2 mm of its fixed aperture's position, so the aperture check reads the
anatomy deep inside the field on every frame (``_interior.InteriorModel.match``), as in intrafraction monitoring
against the first frame. Prints the median and p99 per frame over the timed frames, the median time of the check
alone (its ``match`` called on the same frames and poses), the frames that came out ok, and the median error.

Timings are of this machine at the time: compare runs made side by side, not with other machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["main"]


def _shape(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    try:
        return int(rows), int(cols)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, e.g. 768x1024; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Render the cine, register every frame; return the exit status."""
    import portalign
    from portalign.simulate import _beam_axes, render_drr

    from bench.cases import CT_FOLDER
    from bench.held_out import APERTURES, _apply, aperture, read_ct

    parser = argparse.ArgumentParser(prog="python -m bench.portal_cine", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames rendered and timed (default 30)")
    parser.add_argument("--aperture", choices=APERTURES, default="mlc", help="the fixed aperture (default mlc)")
    parser.add_argument("--detector", type=_shape, default=(768, 1024), help="detector ROWSxCOLS (default 768x1024)")
    parser.add_argument("--spacing", type=float, default=0.392, help="detector pixel pitch, mm (default 0.392)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the aperture, the motions and the noise")
    args = parser.parse_args(argv)
    if args.frames < 1:
        print("portal_cine: --frames must be at least 1", file=sys.stderr)
        return 2
    if not CT_FOLDER.is_dir():
        print(f"portal_cine: the thorax CT is not at {CT_FOLDER}; it is needed to render the cine", file=sys.stderr)
        return 1
    ct = read_ct(CT_FOLDER)
    grid = {"detector_shape": args.detector, "detector_spacing_mm": args.spacing, "blur_mm": 0.6}
    rng = np.random.default_rng(args.seed)
    reference = render_drr(ct, gantry_deg=0.0, energy="mv", noise=0.015, seed=args.seed, **grid)
    x, y = reference.pixel_to_mm(np.arange(reference.shape[1])[None, :], np.arange(reference.shape[0])[:, None])
    beam, collimator = aperture(args.aperture, x, y, np.random.default_rng([args.seed, 1]))
    reference = _apply(reference, beam, collimator, False)
    ex, ey, _ = _beam_axes(0.0)
    frames, truths = [], []
    for k in range(args.frames):
        direction = rng.normal(size=3)
        shift = direction / np.linalg.norm(direction) * rng.uniform(0.2, 0.8)
        frame = render_drr(ct, gantry_deg=0.0, energy="mv", noise=0.015, seed=1000 * args.seed + k,
                           couch_shift_mm=tuple(shift), **grid)
        frames.append(_apply(frame, beam, collimator, False))
        truths.append((float(shift @ ex), float(shift @ ey)))
    prepared = portalign.prepare_reference(reference, portalign.RegistrationOptions(), backend="cpu")
    first = prepared.register(frames[0])  # compile / cache load, the plan, the interior model
    times, results = [], []
    for frame in frames:
        t0 = time.perf_counter()
        results.append(prepared.register(frame))
        times.append((time.perf_counter() - t0) * 1e3)
    model = prepared.interior_model()
    check_ms = []
    if model is not None:
        for frame, result in zip(frames, results, strict=True):
            if result.dx_mm is None:
                continue
            pose = (result.dx_mm, result.dy_mm, np.radians(result.rotation_deg or 0.0))
            t0 = time.perf_counter()
            model.match(frame, pose)
            check_ms.append((time.perf_counter() - t0) * 1e3)
    errors = [float(np.hypot(r.dx_mm - t[0], r.dy_mm - t[1])) for r, t in zip(results, truths, strict=True) if r.ok]
    checked = sum(1 for r in results if (r.details or {}).get("interior_check"))
    print(f"portal cine: {args.aperture} aperture, {args.detector[0]}x{args.detector[1]} detector at "
          f"{args.spacing:g} mm, {args.frames} frames; first frame {first.elapsed_ms:.0f} ms")
    print(f"per frame: median {np.median(times):.1f} ms, p99 {np.percentile(times, 99):.1f} ms; "
          f"{checked} of {args.frames} frames read the deep interior"
          + (f" (the check alone: median {np.median(check_ms):.1f} ms)" if check_ms else "; no deep interior"))
    print(f"ok: {len(errors)} of {args.frames}"
          + (f"; median error {np.median(errors):.3f} mm, max {np.max(errors):.3f} mm" if errors else ""))
    refused = {r.reason for r in results if not r.ok}
    for reason in sorted(refused)[:3]:
        print(f"  not ok: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
