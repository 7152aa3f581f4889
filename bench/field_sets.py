"""Accuracy on the field kinds of issue 11: small fields, fields that fill the panel, and their variants.

``python -m bench.field_sets`` (from the source checkout, with ``../shared`` present) registers:
windows of real RT Images moved by a known number of rows and columns (the handed
``../shared/field-cases``, pylinac's planar-imaging phantoms inside the field, TrueBeam and aS500
Winston-Lutz fields), rendered 26 mm and 15 mm SRS cones, a DRR against 26 mm cone frames, and
low-dose (3 % noise) and dead-line variants of every third pair. It prints one line per pair and, per
kind, how many are ok, the median and largest error of the ok ones, and how many ok ones are more than
2 mm off (must be 0). ``RegistrationOptions`` fields can be given as ``key=value`` arguments;
``--simpleitk`` also registers every pair with the field-masked SimpleITK peer of ``bench.peers`` (Mattes
MI, Euler2D, masks from ``bench.cases.field_mask``, independent of portalign's field detection) and
prints its summary beside portalign's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import portalign
from scipy import special

from tests.field_sets import (
    FIELD_CASES,
    REAL,
    centred_window_pair,
    cone_pair,
    dead_lines,
    low_dose,
    read,
    window_pair,
)
from tests.synthetic import anatomy, moved

PYLINAC = REAL / "pylinac"
Case = tuple  # (name, reference, frame, true dx_mm, true dy_mm)


def drr_and_cone(dx: float, dy: float) -> tuple[portalign.Image, portalign.Image]:
    """A DRR of soft anatomy and a 26 mm cone MV frame of it moved by ``(dx, dy)`` mm (0.5 mm pixels)."""
    base = anatomy(512, seed=5)
    grid = {"shape": (400, 400), "spacing_mm": 0.5, "base_spacing_mm": 0.5}
    drr = portalign.Image.from_array(moved(base, 0, 0, 0, **grid), pixel_spacing_mm=0.5, kind="drr")
    values = moved(base, dx, dy, 0, **grid)
    values = (values - values.min()) / np.ptp(values)
    yy, xx = (np.mgrid[0:400, 0:400] - 199.5) * 0.5
    cone = 0.02 + 0.98 * 0.5 * special.erfc((np.hypot(xx, yy) - 13.0) / 1.0)
    frame = portalign.Image.from_array(1000 * cone * np.exp(-0.8 * values), pixel_spacing_mm=0.5, kind="portal")
    return drr, frame


def cases() -> Iterator[Case]:
    """Every base pair, open-field kinds first."""
    pips = read(PYLINAC / "planar_imaging" / "pipspro.dcm")
    for shift in [(-15, 21), (12, -9), (25, 30), (-30, -8), (6, 40)]:
        yield ("open:pipspro", *window_pair(pips, 44, 52, 680, 920, *shift))
    qc3 = read(PYLINAC / "planar_imaging" / "QC3_2.5MV.dcm")
    for shift in [(10, -14), (-20, 7), (30, 25)]:
        yield ("open:QC3", *window_pair(qc3, 300, 300, 680, 680, *shift))
    leeds = read(PYLINAC / "planar_imaging" / "leeds_kv.dcm")
    for shift in [(10, -14), (-20, 7)]:
        yield ("open:leeds_kv", *window_pair(leeds, 120, 200, 520, 620, *shift))
    open_dir, small_dir = FIELD_CASES / "open-field", FIELD_CASES / "small-field"
    yield ("open:handed", read(open_dir / "ref_inside.dcm"), read(open_dir / "frame_inside_r-15_c+21.dcm"), 5.488, -3.920)
    yield ("small:handed", read(small_dir / "ref_crop.dcm"), read(small_dir / "frame_shift_r+9_c-13.dcm"), -2.912, 2.016)
    for name in ["wl-3-30-18_card-000.dcm", "wl-3-30-18_card-001.dcm", "wl-3-30-18_card-003.dcm"]:
        image = read(PYLINAC / "wl_shift_truebeam" / "cardinal" / name)
        for shift in [(9, -13), (-7, 11), (15, 4)]:
            yield ("small:truebeam", *centred_window_pair(image, 90, *shift))
    for name in ["gantry0.dcm", "coll45.dcm", "couch90.dcm"]:
        image = read(PYLINAC / "wl_demo_as500" / name)
        for shift in [(5, -4), (-3, 6)]:
            yield ("small:as500", *centred_window_pair(image, 80, *shift))
    for d in [(1.5, -2.0), (-3.0, 1.0), (0.7, 2.2), (4.0, 3.5)]:
        yield ("small:cone26", *cone_pair(*d), *d)
    for d in [(1.5, -2.0), (-2.0, 1.2)]:
        yield ("small:cone15", *cone_pair(*d, cone_mm=15.0), *d)
    for d in [(2.0, -1.5), (-3.0, 2.5), (0.5, 4.0)]:
        yield ("small:drr+cone26", *drr_and_cone(*d), *d)


def variants() -> Iterator[Case]:
    """Every pair, and for every third one a low-dose pair and a frame with a dead row and column."""
    for i, (name, ref, frame, dx, dy) in enumerate(cases()):
        yield name, ref, frame, dx, dy
        if i % 3 == 0 and not name.endswith("cone15"):
            yield f"{name}+lowdose", low_dose(ref, 0.03, i), low_dose(frame, 0.03, i + 100), dx, dy
            rows, cols = frame.shape
            yield f"{name}+dead", ref, dead_lines(frame, rows=(rows // 3,), cols=(cols // 2 + 3,)), dx, dy


def run(options: dict) -> list[tuple]:
    """Register every variant: ``(name, error_mm or None, ok, rotation_deg, reason)`` per pair."""
    rows = []
    for name, ref, frame, dx, dy in variants():
        try:
            r = portalign.register(ref, frame, portalign.RegistrationOptions(**options), backend="cpu")
            error = math.nan if r.dx_mm is None else math.hypot(r.dx_mm - dx, r.dy_mm - dy)  # None: nothing measured
            rows.append((name, error, r.ok, r.rotation_deg, r.reason[:90]))
        except portalign.PortalignError as exc:
            rows.append((name, None, False, None, f"ERROR {type(exc).__name__}: {str(exc)[:90]}"))
    return rows


def run_simpleitk() -> list[tuple]:
    """The field-masked SimpleITK peer on every variant, rows as :func:`run` (ok unless ITK raised)."""
    from .cases import Case
    from .geometry import Pose
    from .peers import SimpleITKMethod

    method = SimpleITKMethod()
    method.start()
    if not method.available:
        raise SystemExit(f"SimpleITK peer unavailable: {method.reason}")
    rows = []
    for name, ref, frame, dx, dy in variants():
        case = Case(name, "field", ref, frame, Pose(dx, dy, 0.0), "exact", rotation_observable=False)
        try:
            pose = method.register(method.prepare(case), case).pose
        except RuntimeError as exc:  # ITK refuses some pairs (e.g. "all samples map outside moving image")
            rows.append((name, None, False, None, f"ERROR {str(exc).splitlines()[-1][:90]}"))
            continue
        rows.append((name, math.hypot(pose.dx_mm - dx, pose.dy_mm - dy), True, pose.rotation_deg, ""))
    return rows


def main(argv: list[str]) -> None:
    """Run every pair with the options ``key=value`` in ``argv``; print one line per pair and a summary per kind."""
    import argparse
    import dataclasses

    names = [f.name for f in dataclasses.fields(portalign.RegistrationOptions)]
    parser = argparse.ArgumentParser(prog="python -m bench.field_sets", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("option", nargs="*", metavar="KEY=VALUE",
                        help=f"a RegistrationOptions field for every pair (one of: {', '.join(names)})")
    parser.add_argument("--simpleitk", action="store_true",
                        help="also register every pair with the field-masked SimpleITK peer and print its summary")
    args = parser.parse_args(argv)
    options = {}
    defaults = portalign.RegistrationOptions()
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            parser.error(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        kind = type(getattr(defaults, key))
        options[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    rows = run(options)
    for name, error, ok, rotation, reason in rows:
        shown = "" if error is None else f"{error:.3f}"
        turned = "" if rotation is None else f"{rotation:+.2f}"
        print(f"{name:24s} err={shown:>7s} ok={ok!s:5s} rot={turned:6s} {reason}")
    summarise("portalign", rows)
    if args.simpleitk:
        peer = run_simpleitk()
        for peer_row, row in zip(peer, rows, strict=True):
            shown = "" if peer_row[1] is None else f"{peer_row[1]:.3f}"
            print(f"{peer_row[0]:24s} simpleitk err={shown:>7s} (portalign ok={row[2]}) {peer_row[4]}")
        summarise("simpleitk, all pairs", peer)
        # the same pairs portalign called ok
        summarise("simpleitk, portalign's ok pairs", [p for p, r in zip(peer, rows, strict=True) if r[2]])


def summarise(label: str, rows: list[tuple]) -> None:
    """Print per kind: pairs, ok, median and largest error of the ok ones, ok ones > 2 mm off, errors."""
    print(f"-- {label}")
    for kind in ["open", "small"]:
        chosen = [row for row in rows if row[0].startswith(kind)]
        ok_errors = [row[1] for row in chosen if row[2]]
        wrong = sum(1 for row in chosen if row[2] and row[1] > 2.0)
        failed = sum(row[1] is None for row in chosen)
        median = float(np.median(ok_errors)) if ok_errors else float("nan")
        largest = max(ok_errors) if ok_errors else float("nan")
        print(f"SUMMARY {kind}: {len(chosen)} pairs, {len(ok_errors)} ok, median ok err {median:.3f} mm, "
              f"max ok err {largest:.3f} mm, ok>2mm: {wrong}, errors: {failed}")


if __name__ == "__main__":
    main(sys.argv[1:])
