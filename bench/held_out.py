"""Held-out-style pairs of every kind (apertures, portal references, low dose, dead lines) from a real CT.

``python -m bench.held_out [--pairs 40] [--seed 11] [--simpleitk] [--ct PATH] [--max-shift-mm 5] [--max-turn-deg
1.5]`` (from the source checkout, with ``../shared`` present) renders, per pair, an MV frame of the patient moved
by a random couch shift (up to 5 mm on each axis; at the cardinal gantry angles also turned in plane by up to 1.5
degrees) and registers
it against a reference of the planned position. The kinds cycle through:

- gantry: 0, 45, 90, 135, 180, 225, 270, 315 (the oblique ones through the patient's diagonal);
- reference: a kV DRR (no field), or an MV reference portal image through the same aperture (own noise);
- aperture of the frame (and of a portal reference), applied to the open-beam image with a 2 mm
  (sigma) penumbra and 2 % transmission: rectangular jaws, jaws turned by a collimator angle of
  15-75 degrees (recorded in both images' headers), an MLC shape (5 mm leaves with their own openings),
  a circular cone of 20-40 mm, or no aperture at all (open field);
- dose: normal (1.5 % quantum noise) or low (5 %);
- detector: sound, or two dead rows and a dead column.

The truth is the couch shift projected onto the image axes (parallax of anatomy off the isocentre plane
is part of every method's error). Prints one line per pair; per kind of aperture and overall, how many
are ok, the median and largest error of the ok ones, and how many ok ones are more than 2 mm off (must
be 0). ``--simpleitk`` registers every pair with the field-masked SimpleITK peer of :mod:`bench.peers`
too (masks from :func:`bench.cases.field_mask`, independent of portalign's own field detection).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import special  # noqa: E402

__all__ = ["main", "aperture", "render_pairs", "HeldOutPair", "RECORDED_DETAILS"]

GANTRIES = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
APERTURES = ("jaws", "collimator", "mlc", "cone", "open")
PENUMBRA_SIGMA_MM = 2.0
TRANSMISSION = 0.02


def _edge(distance_mm: np.ndarray) -> np.ndarray:
    """Fraction of the beam passed at a signed distance inside (+) the aperture's edge."""
    return 0.5 * special.erfc(-distance_mm / (math.sqrt(2.0) * PENUMBRA_SIGMA_MM))


def aperture(kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Beam fraction (0..1) of aperture ``kind`` at image points ``(x, y)`` mm; and its collimator angle (deg)."""
    if kind == "open":
        return np.ones_like(x), 0.0
    if kind == "cone":
        radius = rng.uniform(10.0, 20.0)
        return _edge(radius - np.hypot(x, y)), 0.0
    if kind == "mlc":
        half_y = rng.uniform(35.0, 60.0)
        leaf = 5.0
        n = int(math.ceil(2 * half_y / leaf))
        left = -rng.uniform(25.0, 70.0) + np.cumsum(rng.normal(0.0, 4.0, n))
        right = rng.uniform(25.0, 70.0) + np.cumsum(rng.normal(0.0, 4.0, n))
        right = np.maximum(right, left + 20.0)
        k = np.clip(((y + half_y) // leaf).astype(int), 0, n - 1)
        return _edge(x - left[k]) * _edge(right[k] - x) * _edge(half_y - np.abs(y)), 0.0
    half_x, half_y = rng.uniform(40.0, 80.0), rng.uniform(35.0, 65.0)
    angle = rng.uniform(15.0, 75.0) * rng.choice([-1.0, 1.0]) if kind == "collimator" else 0.0
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v = c * x + s * y, -s * x + c * y
    return _edge(half_x - np.abs(u)) * _edge(half_y - np.abs(v)), angle


def _apply(image, beam: np.ndarray, collimator_deg: float, dead: bool):  # type: ignore[no-untyped-def]
    """The open-beam MV image through an aperture (and dead detector lines); the collimator in the header."""
    pixels = image.pixels.astype(np.float64) * (TRANSMISSION + (1.0 - TRANSMISSION) * beam)
    if dead:
        rows, cols = pixels.shape
        pixels[rows // 3, :] = 0.0
        pixels[rows // 3 + 1, :] = 0.0
        pixels[:, (2 * cols) // 3] = 0.0
    info = replace(image.info, collimator_deg=collimator_deg)
    return replace(image, pixels=pixels.astype(np.float32), info=info)


GRID = {"detector_shape": (384, 512), "detector_spacing_mm": 0.784, "blur_mm": 0.6}


@dataclass(frozen=True)
class HeldOutPair:
    """One rendered pair: its index, kind, images and the true in-plane shift (mm, image axes)."""

    index: int
    kind: str
    gantry_deg: float
    portal_reference: bool
    low_dose: bool
    dead_lines: bool
    reference: Any
    frame: Any
    dx_mm: float
    dy_mm: float
    #: the true in-plane rotation (deg, portalign's sign): the patient's turn about the image normal
    rotation_deg: float = 0.0

    @property
    def label(self) -> str:
        """``kind gantry reference [lowdose] [dead]``."""
        return (f"{self.kind:<10} g{self.gantry_deg:3.0f} {'portal' if self.portal_reference else 'drr':<6}"
                f"{' lowdose' if self.low_dose else ''}{' dead' if self.dead_lines else ''}")


def render_pairs(ct, seed: int, count: int, only: Iterable[int] | None = None, *,  # type: ignore[no-untyped-def]
                 max_shift_mm: float = 5.0, max_turn_deg: float = 1.5) -> Iterator[HeldOutPair]:
    """Render pairs ``0..count-1`` of seed ``seed`` (or only those in ``only``; the others are the same either way).

    Each couch shift is uniform within ``max_shift_mm`` on each axis, each turn (cardinal gantries) within
    ``max_turn_deg``; other limits scale the same draws, so the kinds, apertures and noise stay those of the seed.
    """
    from portalign.simulate import _beam_axes, render_drr

    chosen = None if only is None else set(only)
    rng = np.random.default_rng(seed)
    for i in range(count):
        gantry = GANTRIES[i % len(GANTRIES)]
        kind = APERTURES[(i // 2) % len(APERTURES)]
        portal_reference = i % 2 == 1
        low_dose = i % 3 == 2
        dead = i % 7 == 3
        shift = rng.uniform(-1.0, 1.0, 3) * max_shift_mm
        turn = rng.uniform(-1.0, 1.0) * max_turn_deg if gantry % 90 == 0 else 0.0
        aperture_rng = np.random.default_rng([seed, i])  # each pair's aperture, whichever pairs are rendered
        if chosen is not None and i not in chosen:
            continue
        # an in-plane turn: about IEC Z seen from gantry 0/180, about IEC X from gantry 90/270
        rotation = (0.0, 0.0, turn) if gantry % 180 == 0 else (turn, 0.0, 0.0)
        noise = 0.05 if low_dose else 0.015
        frame = render_drr(ct, gantry_deg=gantry, energy="mv", noise=noise, seed=300 + i, couch_shift_mm=tuple(shift),
                           patient_rotation_deg=rotation, **GRID)
        x, y = frame.pixel_to_mm(np.arange(frame.shape[1])[None, :], np.arange(frame.shape[0])[:, None])
        beam, collimator = aperture(kind, x, y, aperture_rng)
        frame = _apply(frame, beam, collimator, dead)
        if portal_reference:
            reference = render_drr(ct, gantry_deg=gantry, energy="mv", noise=0.015, seed=400 + i, **GRID)
            reference = _apply(reference, beam, collimator, False)
        else:
            reference = render_drr(ct, gantry_deg=gantry, energy="kv", **GRID)
            reference = replace(reference, info=replace(reference.info, collimator_deg=collimator))
        ex, ey, _ = _beam_axes(gantry)
        # the turn seen in the image: the rotation vector along the image normal (ex x ey; checked on the
        # normal-dose cardinal pairs of seed 11, where every reported angle has this sign)
        yield HeldOutPair(i, kind, gantry, portal_reference, low_dose, dead, reference, frame, float(shift @ ex),
                          float(shift @ ey), float(np.dot(rotation, np.cross(ex, ey))))


def read_ct(path: Path):  # type: ignore[no-untyped-def]
    """Return the CT at ``path``: a DICOM series folder (portalign's reader) or a NIfTI file (read by SimpleITK).

    A NIfTI volume is turned into portalign's axis-aligned ``[z, y, x]`` HU grid in DICOM patient (LPS)
    coordinates; its axes are flipped where its direction matrix points them the other way. The patient
    position is taken as HFS (NIfTI does not record it).
    """
    from portalign.ct import CTVolume, read_ct_series

    if path.is_dir():
        return read_ct_series(path)
    import SimpleITK as sitk  # noqa: N813 - its usual name

    image = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)  # [z, y, x]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    signs = np.sign(np.diag(direction))
    if not np.allclose(np.abs(direction), np.eye(3), atol=1e-3):
        raise SystemExit(f"held_out: {path} is not axis-aligned (direction {direction.ravel().tolist()})")
    spacing = np.array(image.GetSpacing())  # x, y, z
    origin = np.array(image.GetOrigin())  # LPS, of voxel [0, 0, 0]
    size = np.array(image.GetSize())
    for axis in range(3):  # x, y, z: make every index axis run towards +LPS
        if signs[axis] < 0:
            hu = np.flip(hu, axis=2 - axis)
            origin[axis] -= spacing[axis] * (size[axis] - 1)
    return CTVolume(np.ascontiguousarray(hu), (float(spacing[2]), float(spacing[1]), float(spacing[0])),
                    (float(origin[0]), float(origin[1]), float(origin[2])), "HFS", source=path.name)


def main(argv: list[str] | None = None) -> int:
    """Render and register the pairs; return the exit status."""
    import portalign
    from portalign.ct import read_ct_series

    from bench.cases import CT_FOLDER, DRR_CT_DOWNSAMPLE
    from bench.peers import SimpleITKMethod, translation_error

    parser = argparse.ArgumentParser(prog="python -m bench.held_out", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40, help="pairs rendered and registered (the kinds cycle)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the motions, apertures and noise")
    parser.add_argument("--simpleitk", action="store_true", help="register every pair with the SimpleITK peer too")
    parser.add_argument("--max-shift-mm", type=float, default=5.0, help="largest couch shift on each axis (mm)")
    parser.add_argument("--max-turn-deg", type=float, default=1.5,
                        help="largest in-plane turn of the patient at the cardinal gantry angles (deg)")
    parser.add_argument("--only", type=int, nargs="*", default=None, help="register only these pairs (0-based)")
    parser.add_argument("--details", action="store_true", help="print each result's details")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="write one JSON line per pair here (its truth, result and the details its uncertainty "
                             "comes from)")
    parser.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "both"),
                        help="backend of the registrations; both: the CPU's are reported and each pair is registered "
                             "on the GPU too, with their largest difference")
    parser.add_argument("--ct", type=Path, default=None,
                        help="another CT: a DICOM series folder or a NIfTI file (default: the thorax CT of "
                             "../shared/data/real/itkelastix/thorax_ct_phase00, downsampled)")
    args = parser.parse_args(argv)
    if args.ct is not None:
        ct = read_ct(args.ct)
    elif not CT_FOLDER.is_dir():
        print(f"held_out: the thorax CT is not at {CT_FOLDER}", file=sys.stderr)
        return 1
    else:
        ct = read_ct_series(CT_FOLDER).downsampled(DRR_CT_DOWNSAMPLE)
    sitk = SimpleITKMethod() if args.simpleitk else None
    if sitk is not None:
        sitk.start()
    # (aperture, error, ok, simpleitk error, rotation error, its stated uncertainty, dx and dy errors in theirs)
    rows: list[tuple[str, float, bool, float, float, float, float, float]] = []
    gaps: list[tuple[float, float, bool]] = []  # GPU - CPU: (mm, deg, same verdict)
    out = args.jsonl.open("w") if args.jsonl else None
    for pair in render_pairs(ct, args.seed, args.pairs, args.only,
                             max_shift_mm=args.max_shift_mm, max_turn_deg=args.max_turn_deg):
        i, kind, reference, frame, dx, dy = pair.index, pair.kind, pair.reference, pair.frame, pair.dx_mm, pair.dy_mm
        result = portalign.register(reference, frame, backend="cpu" if args.backend == "both" else args.backend)
        # nothing measured (dx_mm None): a refusal, its error NaN
        error = math.nan if result.dx_mm is None else math.hypot(result.dx_mm - dx, result.dy_mm - dy)
        # the rotation's error where one was reported (None: not estimated, never counted as 0)
        turn = math.nan if result.rotation_deg is None else abs(result.rotation_deg - pair.rotation_deg)
        # and its stated standard uncertainty (details["rotation_uncertainty_deg"]): how many of them hold the truth
        spread = result.details.get("rotation_uncertainty_deg")
        spread = math.nan if spread is None else float(spread)
        # the shift's, each of dx and dy: its axis errors in it
        shift_u = result.details.get("shift_uncertainty_mm")
        axes = (math.nan, math.nan) if shift_u is None or result.dx_mm is None else (
            abs(result.dx_mm - dx) / shift_u, abs(result.dy_mm - dy) / shift_u)
        shift_text = "" if shift_u is None else f" (u {shift_u:.2f})"
        line = (f"pair {i:2d} {pair.label:<38} portalign {error:6.3f} mm{shift_text} "
                f"{'  (none)' if math.isnan(turn) else f'{turn:5.2f} deg (u {spread:.2f})'} ok={result.ok!s:<5}")
        if args.backend == "both":
            line += _backend_gap(result, portalign.register(reference, frame, backend="gpu"), gaps)
        peer = math.nan
        if sitk is not None and sitk.available:
            try:
                peer = translation_error(sitk, f"held-{i}", reference, frame, dx, dy)
                line += f" | simpleitk {peer:6.3f} mm"
            except Exception as exc:  # noqa: BLE001 - a peer's failure is reported, not fatal
                line += f" | simpleitk failed: {str(exc).splitlines()[0][:60]}"
        if not result.ok:
            line += f"  ({result.reason})"
        print(line, flush=True)
        if args.details:
            print(f"    truth dx={dx:.3f} dy={dy:.3f}; result dx={result.dx_mm} dy={result.dy_mm} "
                  f"rotation={result.rotation_deg}; warnings={result.warnings}")
            print(f"    details={ {k: v for k, v in result.details.items() if k not in ('view', 'candidates')} }")
        rows.append((kind, error, bool(result.ok), peer, turn, spread, *axes))
        if out is not None:
            out.write(json.dumps(_record(pair, result)) + "\n")
    if out is not None:
        out.close()
    print("--")
    for kind in (*APERTURES, "all"):
        chosen = [r for r in rows if kind == "all" or r[0] == kind]
        ok = [r[1] for r in chosen if r[2]]
        peers = [r[3] for r in chosen if r[2] and np.isfinite(r[3])]
        turns = [r[4] for r in chosen if r[2] and np.isfinite(r[4])]
        held = [r[4] / r[5] for r in chosen if r[2] and np.isfinite(r[4]) and r[5] > 0]  # error in uncertainties
        text = (f"SUMMARY {kind:<10}: {len(chosen)} pairs, {len(ok)} ok, median ok err "
                f"{np.median(ok) if ok else math.nan:.3f} mm, max ok err {max(ok) if ok else math.nan:.3f} mm, "
                f"ok>2mm: {sum(e > 2.0 for e in ok)}; rotation on {len(turns)}: median err "
                f"{np.median(turns) if turns else math.nan:.2f} deg, max {max(turns) if turns else math.nan:.2f}")
        if held:
            text += (f", within 1 u {sum(h <= 1.0 for h in held) / len(held):.0%}, within 2 u "
                     f"{sum(h <= 2.0 for h in held) / len(held):.0%}")
        shifts = [a for r in chosen if r[2] for a in r[6:8] if np.isfinite(a)]  # the ok shifts' axis errors, in u
        if shifts:
            text += (f"; shift axes within 1 u {sum(a <= 1.0 for a in shifts) / len(shifts):.0%}, within 2 u "
                     f"{sum(a <= 2.0 for a in shifts) / len(shifts):.0%}")
        if peers:
            text += f" | simpleitk on the same pairs: median {np.median(peers):.3f} mm"
        print(text)
    if gaps:
        mm, deg, same = (np.array(v, dtype=float) for v in zip(*gaps, strict=True))
        print(f"SUMMARY gpu vs cpu: {len(gaps)} pairs, largest difference {np.nanmax(mm):.4f} mm, "
              f"{np.nanmax(deg):.4f} deg; verdicts (ok, reason) differ on {int((1 - same).sum())}")
    return 0


#: The details a JSON line carries beside the truth and the result: what the stated uncertainty is made of and how the
#: matched edges run (an uncertainty model can be fitted to the lines without registering again; bench.real_windows
#: records the same).
RECORDED_DETAILS = ("shift_uncertainty_mm", "rotation_uncertainty_deg", "working_spacing_mm", "split_half_mm",
                     "edge_mi_gap_mm", "matched_isotropy", "matched_edge_direction_deg", "edge_score",
                     "match_significance", "rotation_support_mm", "rotation_offset_mm")


def _record(pair: Any, result: Any) -> dict[str, Any]:
    """One pair's JSON line: its label and truth, the result's pose and verdict, and ``RECORDED_DETAILS``."""
    record = {"index": pair.index, "kind": pair.kind, "label": pair.label, "dx": pair.dx_mm, "dy": pair.dy_mm,
              "rotation": pair.rotation_deg, "ok": bool(result.ok), "reason": result.reason or "",
              "dx_mm": result.dx_mm, "dy_mm": result.dy_mm, "rotation_deg": result.rotation_deg}
    record.update({key: result.details.get(key) for key in RECORDED_DETAILS})
    return record


def _backend_gap(cpu, gpu, gaps: list) -> str:  # type: ignore[no-untyped-def]
    """Record and describe how far the GPU's result lies from the CPU's (both measured, or both not)."""
    if gpu.backend != "gpu":
        gaps.append((math.nan, math.nan, False))
        return f" | gpu fell back: {gpu.warnings[-1] if gpu.warnings else gpu.backend}"
    same = (cpu.ok, cpu.reason) == (gpu.ok, gpu.reason)
    if cpu.dx_mm is None or gpu.dx_mm is None:
        gaps.append((0.0 if cpu.dx_mm is gpu.dx_mm else math.inf, 0.0, same))
        return f" | gpu {'same (not measured)' if same and gpu.dx_mm is None else 'DIFFERENT'}"
    mm = math.hypot(gpu.dx_mm - cpu.dx_mm, gpu.dy_mm - cpu.dy_mm)
    if cpu.rotation_deg is None or gpu.rotation_deg is None:  # not estimated: both, or a difference
        deg = 0.0 if cpu.rotation_deg is gpu.rotation_deg else math.inf
    else:
        deg = abs(gpu.rotation_deg - cpu.rotation_deg)
    gaps.append((mm, deg, same))
    return f" | gpu-cpu {mm:.4f} mm {deg:.4f} deg{'' if same else ' VERDICT DIFFERS'}"


if __name__ == "__main__":
    sys.exit(main())
