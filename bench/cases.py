"""Benchmark cases: image pairs with a known (or measured) displacement.

Three families, all built from a fixed seed:

* ``synthetic``: smooth random structures (multi-scale band-limited noise plus
  soft-edged blobs), the frame resampled from the same continuous image under
  the true pose. Truth is exact; no noise; no field.
* ``drr``: a kV DRR reference and a 6 MV portal frame rendered from the real
  thorax CT with :func:`portalign.simulate.render_pair`: field aperture fixed to
  the imager, quantum noise, blur, small out-of-plane rotations. Truth is the
  simulated in-plane displacement (exact in the isocentre plane; the out-of-plane
  tilt makes the 2-D answer approximate on purpose). Rendering is slow, so pairs
  are cached on disk keyed by every parameter and the renderer's source.
* ``wl``: real Winston-Lutz EPID images (pylinac, TrueBeam aS1200): ``cardinal``
  is the reference, a couch-shifted set at the same gantry angle the frame. Truth
  is **measured**: the BB centroid found in each image (dark disc inside the
  bright field), scaled to the isocentre; the rotation is not observable from a
  sphere and is not scored.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from portalign import Image
from scipy import ndimage

from .geometry import Pose

__all__ = [
    "Case",
    "REAL",
    "SIZES",
    "synthetic_case",
    "synthetic_cases",
    "drr_cases",
    "wl_cases",
    "field_mask",
    "measure_bb",
    "default_cache_dir",
]

#: Real third-party data next to the repository (see shared/data/real/SOURCES.md).
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
CT_FOLDER = REAL / "itkelastix" / "thorax_ct_phase00"
WL_FOLDER = REAL / "pylinac" / "wl_shift_truebeam"

#: Image sizes (rows, cols) of the synthetic scaling series.
SIZES: tuple[tuple[int, int], ...] = ((256, 256), (512, 512), (768, 1024), (1280, 1280), (2048, 2048))
#: Pixel spacing (mm at the isocentre) of the synthetic images: a 1024x768 imager of 0.392 mm
#: pitch at SID 1500 / SAD 1000, so a bigger image is a bigger field of view.
SYNTHETIC_SPACING_MM = 0.2613
#: Displacement ranges drawn for synthetic and DRR pairs.
MAX_SHIFT_MM = 8.0
MAX_ROTATION_DEG = 3.0
#: Field-edge band removed from the peers' masks, the same as portalign's default field_margin_mm.
FIELD_MARGIN_MM = 3.0


@dataclass
class Case:
    """One registration problem: a reference, a frame and the answer.

    Attributes
    ----------
    name : str
        Unique, short (``drr-03``, ``syn-1024x768-0``, ``wl-lat3mm-g0``).
    family : {"synthetic", "drr", "wl"}
    reference, frame : portalign.Image
    truth : Pose
        The true displacement in the DESIGN.md contract.
    truth_kind : {"exact", "simulated", "measured"}
    rotation_observable : bool
        False when the images cannot reveal a rotation (a BB); rotation is then not scored.
    landmark_ref_mm, landmark_frame_mm : (float, float) or None
        A point seen in both images (the BB): the translation error is measured there.
    params : dict
        Everything that made the case (seed, sizes, render parameters, files).
    """

    name: str
    family: str
    reference: Image
    frame: Image
    truth: Pose
    truth_kind: str
    rotation_observable: bool = True
    landmark_ref_mm: tuple[float, float] | None = None
    landmark_frame_mm: tuple[float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    _masks: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    @property
    def size_label(self) -> str:
        """``"COLSxROWS"`` of the frame, as imagers are named (``1024x768``)."""
        rows, cols = self.frame.shape
        return f"{cols}x{rows}"

    def mask(self, which: str) -> np.ndarray | None:
        """Field mask (bool, eroded by the edge band) of ``"frame"`` or ``"reference"``; None without a field."""
        if which not in self._masks:
            image = self.frame if which == "frame" else self.reference
            known = self.params.get("field_mm") if which == "frame" and self.family == "drr" else None
            self._masks[which] = field_mask(image, field_mm=None if known is None else tuple(known))
        return self._masks[which]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (no pixels)."""
        return {
            "name": self.name,
            "family": self.family,
            "size": self.size_label,
            "shape": list(self.frame.shape),
            "spacing_mm": list(self.frame.spacing_mm),
            "truth": self.truth.as_dict(),
            "truth_kind": self.truth_kind,
            "rotation_observable": self.rotation_observable,
            "landmark_ref_mm": None if self.landmark_ref_mm is None else list(self.landmark_ref_mm),
            "landmark_frame_mm": None if self.landmark_frame_mm is None else list(self.landmark_frame_mm),
            "params": self.params,
        }


def default_cache_dir() -> Path:
    """Where rendered pairs are cached: ``$PORTALIGN_BENCH_CACHE`` or ``~/.cache/portalign/bench``.

    Shared by ``python -m bench``, ``bench/latency.py`` and ``tests/test_benchmarks.py``, so that a
    pair is rendered once per machine.
    """
    env = os.environ.get("PORTALIGN_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "portalign" / "bench"


# --- synthetic -----------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma_px`` (FFT), normalised to unit variance."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fx * fx + fy * fy))
    out = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
    return (out - out.mean()) / max(out.std(), 1e-12)


def synthetic_case(shape: tuple[int, int], *, seed: int, index: int = 0, pose: Pose | None = None,
                   spacing_mm: float = SYNTHETIC_SPACING_MM, beam_axis_px: tuple[float, float] | None = None) -> Case:
    """Build one noise-free synthetic pair with an exact displacement.

    A canvas larger than the image carries smooth random structure: band-limited
    noise at 8 mm and 2 mm and soft-edged blobs (a thresholded 6 mm field blurred
    by 0.8 mm, like bone edges). The reference samples it at the identity, the
    frame at ``R(-theta)(p - d)`` (cubic spline on the same canvas), so an
    anatomy point ``q`` of the reference is at ``R(theta) q + d`` in the frame.

    Parameters
    ----------
    shape : (rows, cols)
    seed, index : int
        The pair is a function of ``(seed, shape, index)``.
    pose : Pose, optional
        The displacement; drawn within +-8 mm and +-3 degrees by default.
    spacing_mm : float
        Pixel spacing of both images at the isocentre.
    beam_axis_px : (col, row), optional
        Beam axis of both images; the image centre by default. An off-centre axis
        shows whether a method's answer is really about the beam axis.

    Returns
    -------
    Case
    """
    rows, cols = (int(n) for n in shape)
    rng = np.random.default_rng([seed, rows, cols, index, 1])
    if pose is None:
        dx, dy = rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 2)
        pose = Pose(float(dx), float(dy), float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
    axis = ((cols - 1) / 2.0, (rows - 1) / 2.0) if beam_axis_px is None else tuple(float(v) for v in beam_axis_px)
    # canvas: big enough that the rotated, shifted frame stays inside it
    corner_px = max(math.hypot(c - axis[0], r - axis[1]) for c in (0, cols) for r in (0, rows))
    reach_mm = corner_px * spacing_mm * 2 * math.sin(math.radians(abs(pose.rotation_deg)) / 2) \
        + math.hypot(pose.dx_mm, pose.dy_mm) + 4.0
    pad = int(math.ceil(reach_mm / spacing_mm)) + 8
    canvas_shape = (rows + 2 * pad, cols + 2 * pad)
    px = lambda mm: mm / spacing_mm  # noqa: E731
    coarse = _smooth_noise(rng, canvas_shape, px(8.0))
    fine = _smooth_noise(rng, canvas_shape, px(2.0))
    blobs = _smooth_noise(rng, canvas_shape, px(6.0)) > 0.6
    edges = ndimage.gaussian_filter(blobs.astype(np.float64), px(0.8))
    canvas = 100.0 + 20.0 * coarse + 6.0 * fine + 40.0 * edges
    coeffs = ndimage.spline_filter(canvas, order=3)
    c_axis = (axis[0] + pad, axis[1] + pad)

    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    x = (cc - axis[0]) * spacing_mm
    y = (rr - axis[1]) * spacing_mm

    def sample(p: Pose) -> np.ndarray:
        t = math.radians(p.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        u, v = x - p.dx_mm, y - p.dy_mm
        qx, qy = c * u + s * v, -s * u + c * v  # R(-theta) (p - d)
        coords = [qy / spacing_mm + c_axis[1], qx / spacing_mm + c_axis[0]]
        return ndimage.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="mirror").astype(np.float32)

    ref = Image.from_array(sample(Pose(0.0, 0.0, 0.0)), pixel_spacing_mm=spacing_mm, beam_axis_px=axis,
                           name=f"synthetic reference {cols}x{rows}", kind="drr")
    frame = Image.from_array(sample(pose), pixel_spacing_mm=spacing_mm, beam_axis_px=axis,
                             name=f"synthetic frame {cols}x{rows}", kind="portal")
    return Case(
        name=f"syn-{cols}x{rows}-{index}",
        family="synthetic",
        reference=ref,
        frame=frame,
        truth=pose,
        truth_kind="exact",
        params={"seed": seed, "index": index, "spacing_mm": spacing_mm, "canvas_pad_px": pad},
    )


def synthetic_cases(sizes: list[tuple[int, int]], pairs_per_size: int, seed: int) -> list[Case]:
    """``pairs_per_size`` synthetic pairs of each size."""
    return [synthetic_case(shape, seed=seed, index=i) for shape in sizes for i in range(pairs_per_size)]


# --- DRR vs MV portal (rendered from the real CT) ------------------------------------------------

#: Rendering set-up of the realistic pairs: 1024x768 imager, 0.392 mm pitch, SID 1500, SAD 1000.
DRR_DETECTOR = (768, 1024)
DRR_PITCH_MM = 0.392
DRR_CT_DOWNSAMPLE = (1, 2, 2)


def drr_pair_parameters(n_pairs: int, seed: int) -> list[dict[str, Any]]:
    """Draw the render parameters of ``n_pairs`` DRR/MV pairs (fixed seed)."""
    rng = np.random.default_rng([seed, 2024])
    out = []
    for i in range(n_pairs):
        dx, dy = rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 2)
        rot = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        tilt = rng.uniform(-1.0, 1.0, 2)
        half_x = rng.uniform(60.0, 100.0)
        half_y = rng.uniform(50.0, 80.0)
        out.append({
            "shift_mm": [round(float(dx), 3), round(float(dy), 3)],
            "rotation_deg": round(float(rot), 3),
            "out_of_plane_deg": [round(float(t), 3) for t in tilt],
            "gantry_deg": 0.0 if i % 2 == 0 else 90.0,
            "field_mm": [-round(half_x, 1), round(half_x, 1), -round(half_y, 1), round(half_y, 1)],
            "noise": 0.015,
            "blur_mm": 0.6,
            "penumbra_mm": 4.0,
            "seed": int(seed * 1000 + i),
            "detector_shape": list(DRR_DETECTOR),
            "detector_spacing_mm": DRR_PITCH_MM,
        })
    return out


def _renderer_fingerprint() -> str:
    """Hash of the renderer's source, so that a changed renderer re-renders the cache."""
    from portalign import simulate
    from portalign.kernels.cpu import projection

    h = hashlib.sha256()
    for module in (simulate, projection):
        h.update(Path(module.__file__).read_bytes())  # type: ignore[arg-type]
    return h.hexdigest()[:16]


def drr_cases(n_pairs: int, seed: int, cache_dir: Path, *, log: Any = print) -> list[Case]:
    """Realistic MV-portal-vs-DRR pairs rendered from the thorax CT (cached on disk).

    Parameters
    ----------
    n_pairs : int
    seed : int
    cache_dir : Path
        Rendered pairs are stored here as ``drr-<hash>.npz``; the hash covers the
        render parameters, the CT folder, the downsampling and the renderer source.
    log : callable
        Progress messages.

    Returns
    -------
    list of Case
        Empty when the CT is not available.
    """
    if n_pairs <= 0:
        return []
    if not CT_FOLDER.is_dir():
        log(f"drr cases skipped: {CT_FOLDER} not found")
        return []
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _renderer_fingerprint()
    ct = None
    cases = []
    for i, params in enumerate(drr_pair_parameters(n_pairs, seed)):
        key_src = json.dumps({"params": params, "ct": str(CT_FOLDER.name), "down": DRR_CT_DOWNSAMPLE,
                              "renderer": fingerprint}, sort_keys=True)
        key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
        path = cache_dir / f"drr-{key}.npz"
        if not path.exists():
            if ct is None:
                from portalign.ct import read_ct_series

                log(f"reading CT {CT_FOLDER} ...")
                ct = read_ct_series(CT_FOLDER).downsampled(DRR_CT_DOWNSAMPLE)
            from portalign.simulate import render_pair

            log(f"rendering DRR pair {i} ({params['gantry_deg']:.0f} deg gantry) -> {path.name}")
            ref, frame, truth = render_pair(
                ct,
                shift_mm=tuple(params["shift_mm"]),
                rotation_deg=params["rotation_deg"],
                out_of_plane_deg=tuple(params["out_of_plane_deg"]),
                gantry_deg=params["gantry_deg"],
                detector_shape=tuple(params["detector_shape"]),
                detector_spacing_mm=params["detector_spacing_mm"],
                field_mm=tuple(params["field_mm"]),
                penumbra_mm=params["penumbra_mm"],
                blur_mm=params["blur_mm"],
                noise=params["noise"],
                seed=params["seed"],
            )
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(
                tmp, reference=ref.pixels, frame=frame.pixels,
                ref_spacing=np.array(ref.spacing_mm), ref_axis=np.array(ref.beam_axis_px),
                frame_spacing=np.array(frame.spacing_mm), frame_axis=np.array(frame.beam_axis_px),
                truth=np.array([truth["dx_mm"], truth["dy_mm"], truth["rotation_deg"]]), key=key_src,
            )
            tmp.replace(path)
        with np.load(path) as data:
            ref = Image(data["reference"], tuple(data["ref_spacing"]), tuple(data["ref_axis"]),  # type: ignore[arg-type]
                        _info(f"DRR {i}", "drr", params["gantry_deg"]))
            frame = Image(data["frame"], tuple(data["frame_spacing"]), tuple(data["frame_axis"]),  # type: ignore[arg-type]
                          _info(f"MV frame {i}", "portal", params["gantry_deg"]))
            t = data["truth"]
        cases.append(Case(
            name=f"drr-{i:02d}-g{params['gantry_deg']:.0f}",
            family="drr",
            reference=ref,
            frame=frame,
            truth=Pose(float(t[0]), float(t[1]), float(t[2])),
            truth_kind="simulated",
            params={**params, "ct": CT_FOLDER.name, "ct_downsample": list(DRR_CT_DOWNSAMPLE), "cache": path.name},
        ))
    return cases


def _info(source: str, kind: str, gantry: float) -> Any:
    from portalign import ImageInfo

    return ImageInfo(source=source, kind=kind, gantry_deg=gantry, modality="RTIMAGE")


# --- Winston-Lutz (real EPID images, measured truth) ---------------------------------------------

WL_SETS = ("lat3mm", "lng3mm", "vrt3mm")


def _wl_images(set_name: str) -> list[tuple[str, bytes | Path]]:
    folder = WL_FOLDER / set_name
    if folder.is_dir():
        return [(p.name, p) for p in sorted(folder.glob("*.dcm"))]
    archive = WL_FOLDER / f"{set_name}.zip"
    if archive.is_file():
        with zipfile.ZipFile(archive) as zf:
            return [(n, zf.read(n)) for n in sorted(zf.namelist()) if n.lower().endswith(".dcm")]
    return []


def wl_cases(sets: list[str], gantries: list[float] | None = None, *, log: Any = print) -> list[Case]:
    """Winston-Lutz pairs: ``cardinal`` (reference) against each shifted set at the same gantry angle.

    Parameters
    ----------
    sets : list of str
        Any of ``lat3mm``, ``lng3mm``, ``vrt3mm`` (the last two are read from their zip).
    gantries : list of float, optional
        Only these gantry angles (0, 90, 180, 270); all by default.
    log : callable

    Returns
    -------
    list of Case
        Truth is the measured BB displacement (``truth_kind="measured"``).
    """
    from portalign import read_rt_image

    if not WL_FOLDER.is_dir():
        log(f"wl cases skipped: {WL_FOLDER} not found")
        return []
    refs = {}
    for name, src in _wl_images("cardinal"):
        img = read_rt_image(io.BytesIO(src) if isinstance(src, bytes) else src)
        refs[round((img.info.gantry_deg or 0.0) / 90.0) % 4 * 90] = (name, img)
    cases = []
    for set_name in sets:
        for name, src in _wl_images(set_name):
            frame = read_rt_image(io.BytesIO(src) if isinstance(src, bytes) else src)
            gantry = round((frame.info.gantry_deg or 0.0) / 90.0) % 4 * 90
            if gantries is not None and gantry not in gantries:
                continue
            if gantry not in refs:
                continue
            ref_name, ref = refs[gantry]
            bb_ref = measure_bb(ref)
            bb_frame = measure_bb(frame)
            cases.append(Case(
                name=f"wl-{set_name}-g{gantry}",
                family="wl",
                reference=ref,
                frame=frame,
                truth=Pose(bb_frame[0] - bb_ref[0], bb_frame[1] - bb_ref[1], 0.0),
                truth_kind="measured",
                rotation_observable=False,
                landmark_ref_mm=bb_ref,
                landmark_frame_mm=bb_frame,
                params={"reference_file": f"cardinal/{ref_name}", "frame_file": f"{set_name}/{name}",
                        "gantry_deg": gantry, "truth": "BB centroid displacement measured in both images"},
            ))
    cases.sort(key=lambda c: c.name)
    return cases


def measure_bb(image: Image) -> tuple[float, float]:
    """Centroid ``(x_mm, y_mm)`` of the dark BB inside the bright field of a Winston-Lutz image.

    The field is everything above half the 99.9th percentile (holes filled); the BB
    is the largest connected region inside it darker than halfway between the
    field's median and its darkest pixel; the centroid is weighted by the
    attenuation ``field_level - pixel`` over the BB region grown by 1 mm, so the
    penumbra of the BB counts symmetrically.

    Raises
    ------
    ValueError
        When no field or no BB is found.
    """
    p = ndimage.gaussian_filter(image.pixels.astype(np.float64), 1.0)
    top = np.percentile(p, 99.9)
    fld = ndimage.binary_fill_holes(p > 0.5 * top)
    labels, n = ndimage.label(fld)
    if n == 0:
        raise ValueError(f"{image.info.source}: no bright field found for the BB measurement")
    sizes = ndimage.sum(fld, labels, range(1, n + 1))
    fld = labels == (int(np.argmax(sizes)) + 1)
    inner = ndimage.binary_erosion(fld, iterations=max(1, int(round(2.0 / min(image.spacing_mm)))))
    level = float(np.median(p[inner]))
    darkest = float(p[inner].min())
    dark = inner & (p < 0.5 * (level + darkest))
    labels, n = ndimage.label(dark)
    if n == 0:
        raise ValueError(f"{image.info.source}: no BB found inside the field")
    sizes = ndimage.sum(dark, labels, range(1, n + 1))
    bb = labels == (int(np.argmax(sizes)) + 1)
    grown = ndimage.binary_dilation(bb, iterations=max(1, int(round(1.0 / min(image.spacing_mm))))) & inner
    w = np.clip(level - p, 0.0, None) * grown
    rows, cols = np.indices(p.shape)
    c = float((w * cols).sum() / w.sum())
    r = float((w * rows).sum() / w.sum())
    x, y = image.pixel_to_mm(c, r)
    return float(x), float(y)


# --- field masks for the peers -------------------------------------------------------------------


def field_mask(image: Image, margin_mm: float = FIELD_MARGIN_MM,
               field_mm: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
    """Radiation field of a portal image, minus a band of ``margin_mm`` inside its edge; None without one.

    With ``field_mm`` (the planned jaws ``(x1, x2, y1, y2)`` at the isocentre, as
    :func:`portalign.simulate.render_drr` takes them) the mask is that rectangle:
    the peers get the exact field, which favours them. Otherwise it is detected,
    independently of portalign's own detection (the peers must not depend on the
    engine under test): Otsu's threshold on the log intensity decides whether a
    field exists (jaws cut the beam by a constant factor, so field and outside
    are two clear levels there); the field is then everything above half the
    in-field level (90th percentile: the 50 % line of the edge of a flat field),
    holes (a BB) filled, the largest region kept.
    """
    rows, cols = image.shape
    if field_mm is not None:
        x1, x2, y1, y2 = field_mm
        x, y = image.pixel_to_mm(np.arange(cols), np.arange(rows))
        # image +y is -Yb: the jaw y1 < y2 covers image y in (-y2, -y1)
        inside_x = (x > x1 + margin_mm) & (x < x2 - margin_mm)
        inside_y = (y > -y2 + margin_mm) & (y < -y1 - margin_mm)
        mask = inside_y[:, None] & inside_x[None, :]
        return mask if mask.sum() >= 64 else None
    p = image.pixels.astype(np.float64)
    top = np.percentile(p, 99.9)
    if not top > 0:
        return None
    v = np.log(np.maximum(p, 1e-3 * top))
    v = ndimage.gaussian_filter(v, 1.0 / min(image.spacing_mm))
    rough = v > _otsu(v)
    border = np.concatenate([rough[0], rough[-1], rough[:, 0], rough[:, -1]])
    if border.mean() > 0.5 or rough.mean() > 0.95 or rough.mean() < 1e-4:
        return None
    # a field is a clear two-level split: closed jaws transmit a few percent
    if np.median(v[rough]) - np.median(v[~rough]) < math.log(5.0):
        return None
    smooth = ndimage.gaussian_filter(p, 0.5 / min(image.spacing_mm))
    bright = ndimage.binary_fill_holes(smooth > 0.5 * np.percentile(p[rough], 90))
    labels, n = ndimage.label(bright)
    if n == 0:
        return None
    sizes = ndimage.sum(bright, labels, range(1, n + 1))
    fld = labels == (int(np.argmax(sizes)) + 1)
    # erosion by a disc of margin_mm: keep pixels farther than that from the outside (or the border)
    distance = ndimage.distance_transform_edt(np.pad(fld, 1), sampling=image.spacing_mm)[1:-1, 1:-1]
    mask = distance > margin_mm
    return mask if mask.sum() >= 64 else None


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = hist.astype(np.float64) / hist.sum()
    omega = np.cumsum(w)
    mu = np.cumsum(w * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = 0.0
    return float(edges[int(np.argmax(between[:-1])) + 1])
