"""Reference portal image against portal frame: both MV, the same field, rendered from the real thorax CT.

``python -m bench.portal_pairs [--pairs 8] [--seed 7]`` (from the source checkout, with ``../shared``
present) renders, per pair, an MV reference portal image at the planned position and an MV frame of the
patient moved by a known couch shift (up to 6 mm on each axis) and turned in plane (up to 2 degrees about
the beam axis), through the same jaw field (100-180 x 80-140 mm), each with its own 1.5 % quantum noise, at
gantry 0 or 90 (384 x 512 detector, 0.784 mm pitch). Both portalign and the field-masked SimpleITK peer of
:mod:`bench.peers` register every pair; the error is the in-plane translation error against the couch shift
projected onto the image axes. Prints one line per pair and both medians.

The projected shift is the motion of anatomy at the isocentre plane: anatomy off that plane moves a little
more or less (parallax), so part of every method's error is the truth's own approximation; both methods
are measured against the same truth.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Render and register the pairs; return the exit status."""
    import portalign
    from portalign.ct import read_ct_series
    from portalign.simulate import _beam_axes, render_drr

    from bench.cases import CT_FOLDER, DRR_CT_DOWNSAMPLE
    from bench.peers import SimpleITKMethod, translation_error

    parser = argparse.ArgumentParser(prog="python -m bench.portal_pairs", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not CT_FOLDER.is_dir():
        print(f"portal_pairs: the thorax CT is not at {CT_FOLDER}", file=sys.stderr)
        return 1
    ct = read_ct_series(CT_FOLDER).downsampled(DRR_CT_DOWNSAMPLE)
    rng = np.random.default_rng(args.seed)
    sitk = SimpleITKMethod()
    sitk.start()
    ours, peer = [], []
    for i in range(args.pairs):
        gantry = 0.0 if i % 2 == 0 else 90.0
        half_x, half_y = rng.uniform(50, 90), rng.uniform(40, 70)
        shift = rng.uniform(-6, 6, 3)
        turn = rng.uniform(-2, 2)
        # an in-plane turn: about IEC Z (yaw) seen from gantry 0, about IEC X (pitch) from gantry 90
        rotation = (0.0, 0.0, turn) if gantry == 0 else (turn, 0.0, 0.0)
        common = {"gantry_deg": gantry, "energy": "mv", "field_mm": (-half_x, half_x, -half_y, half_y),
                  "noise": 0.015, "blur_mm": 0.6, "detector_shape": (384, 512), "detector_spacing_mm": 0.784}
        reference = render_drr(ct, seed=100 + i, **common)
        frame = render_drr(ct, seed=200 + i, couch_shift_mm=tuple(shift), patient_rotation_deg=rotation, **common)
        ex, ey, _ = _beam_axes(gantry)
        dx, dy = float(shift @ ex), float(shift @ ey)
        result = portalign.register(reference, frame, backend="cpu")
        error = math.nan if result.dx_mm is None else math.hypot(result.dx_mm - dx, result.dy_mm - dy)
        ours.append(error if result.ok else math.nan)
        line = f"pair {i} gantry {gantry:3.0f}: portalign {error:.3f} mm ok={result.ok}"
        if sitk.available:
            peer.append(translation_error(sitk, f"portal-{i}", reference, frame, dx, dy))
            line += f" | simpleitk {peer[-1]:.3f} mm"
        print(line)
    summary = f"median translation error: portalign {np.nanmedian(ours):.3f} mm ({np.isfinite(ours).sum()} ok)"
    if peer:
        summary += f", field-masked SimpleITK {np.median(peer):.3f} mm"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
