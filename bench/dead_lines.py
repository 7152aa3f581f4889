"""Dead and hot detector lines, from a few to a striped image, in the reference or the frame of the handed pairs.

``python -m bench.dead_lines [--frame] [--seeds N]`` (from the source checkout, with ``../shared`` present) takes the
two handed pairs of ``../shared/field-cases`` (a 30 mm portal-dosimetry field whose outside reads exactly zero, and
an open field) and kills lines of the reference (``--frame``: of the frame): 3-40 % of its rows at random, dead
(zero) or hot (1.3 x its maximum), two rows dead or hot over half their length from one end, every 2nd, 4th or 16th
column. It prints one line per variant: the error against the handed right answer, ok or not, and what the result
said (its reason or error, the dead lines' warning); then
how many are ok, refused or raised, the largest ok error and how many ok ones are more than 0.5 mm off (must be 0).
``--seeds N`` repeats the random variants with N seeds (the rows drawn differently), columns on odd seeds.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import portalign
from portalign.errors import PortalignError

from tests.field_sets import FIELD_CASES

#: (reference, frame, right dx, right dy) of each handed pair.
PAIRS = {
    "open": ("open-field/ref_inside.dcm", "open-field/frame_inside_r-15_c+21.dcm", 5.488, -3.920),
    "small": ("small-field/ref_crop.dcm", "small-field/frame_shift_r+9_c-13.dcm", -2.912, 2.016),
}


def variants(pixels: np.ndarray, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, pixels)``: the image sound, with random rows (columns on odd seeds) dead or hot, and periodic."""
    rng = np.random.default_rng(seed)
    axis = seed % 2
    lines = pixels.shape[axis]
    hot = float(pixels.max()) * 1.3
    yield "sound", pixels
    for share, value, label in ((0.03, 0.0, "dead"), (0.08, 0.0, "dead"), (0.2, 0.0, "dead"), (0.4, 0.0, "dead"),
                                (0.2, hot, "hot")):
        out = np.array(pixels, dtype=np.float32)
        picked = rng.choice(lines, int(share * lines), replace=False)
        if axis == 0:
            out[picked, :] = value
        else:
            out[:, picked] = value
        yield f"{label} {share:.0%} {'rows' if axis == 0 else 'cols'}", out
    for count, value, label in ((2, 0.0, "dead"), (2, hot, "hot")):
        # lines dead (or hot) over half their length, from one end (a panel read out in halves, a broken line)
        out = np.array(pixels, dtype=np.float32)
        picked = rng.choice(np.arange(lines // 5, 4 * lines // 5), count, replace=False)
        length = pixels.shape[1 - axis]
        for line in picked:
            part = slice(None, length // 2) if rng.random() < 0.5 else slice(length // 2, None)
            if axis == 0:
                out[line, part] = value
            else:
                out[part, line] = value
        yield f"{label} half {'rows' if axis == 0 else 'cols'}", out
    if seed == 0:
        for step in (2, 4, 16):
            out = np.array(pixels, dtype=np.float32)
            out[:, ::step] = 0.0
            yield f"every {step} cols", out


def main(argv: list[str] | None = None) -> None:
    """Run every variant; print a line each and the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.dead_lines", description=__doc__.split("\n")[0])
    parser.add_argument("--frame", action="store_true", help="kill the frame's lines, not the reference's")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the random variants")
    args = parser.parse_args(argv)
    tally = {"ok": 0, "refused": 0, "raised": 0}
    worst, wrong = 0.0, 0
    for name, (ref_path, frame_path, dx, dy) in PAIRS.items():
        if not (FIELD_CASES / ref_path).is_file():
            raise SystemExit(f"{FIELD_CASES / ref_path} not found: run from the source checkout with ../shared beside it")
        reference = portalign.read_rt_image(FIELD_CASES / ref_path)
        frame = portalign.read_rt_image(FIELD_CASES / frame_path)
        target = frame if args.frame else reference
        for seed in range(args.seeds):
            for label, pixels in variants(target.pixels, seed):
                if label == "sound" and seed:
                    continue
                image = replace(target, pixels=pixels)
                try:
                    result = (portalign.register(reference, image, backend="cpu") if args.frame
                              else portalign.register(image, frame, backend="cpu"))
                except PortalignError as exc:
                    tally["raised"] += 1
                    print(f"{name:5s} seed {seed} {label:15s} raised: {str(exc)[:150]}")
                    continue
                error = None if result.dx_mm is None else math.hypot(result.dx_mm - dx, result.dy_mm - dy)
                said = result.reason or "; ".join(w for w in result.warnings if "dead detector" in w)
                if result.ok:
                    tally["ok"] += 1
                    worst = max(worst, error)
                    wrong += error > 0.5
                else:
                    tally["refused"] += 1
                shown = "" if error is None else f"{error:.3f}"
                print(f"{name:5s} seed {seed} {label:15s} err={shown:>7s} ok={result.ok!s:5s} {said[:110]}")
    print(f"SUMMARY {'frame' if args.frame else 'reference'} lines: {tally['ok']} ok (largest error {worst:.3f} mm, "
          f"{wrong} more than 0.5 mm off), {tally['refused']} refused, {tally['raised']} raised")


if __name__ == "__main__":
    main()
