"""A synthetic radiotherapy archive on disk, with known setup errors, for the archive tests and benchmark.

Patients (head-first supine, the phantom pelvis of :mod:`portalign.demo`) are each
given a systematic setup error ``S_p ~ N(M, Σ)`` per IEC axis and, per fraction, a
random error ``e ~ N(0, σ)``: the patient is displaced by ``S_p + e`` (couch axes,
lateral / longitudinal / vertical). Every fraction is imaged with an MV portal
frame per beam (gantry 0 and 90 by default), rendered with
:func:`portalign.simulate.render_drr` at that displacement, and each beam has a
kV DRR reference at the planned position. Files are DICOM RT Images that reference
their plan (``ReferencedRTPlanSequence``) and beam (``ReferencedBeamNumber``) and
carry ``FractionNumber`` and the acquisition date, as a record-and-verify export does.

Optional extras make the archive realistic: junk (a text file, a truncated copy
of a frame, a duplicate copy), an RT Plan, an RT Structure Set, a portal frame
of a beam without a reference (unmatched) and a two-frame cine acquisition.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SyntheticArchive", "write_synthetic_archive"]

AXES = ("lateral", "longitudinal", "vertical")


@dataclass
class SyntheticArchive:
    """What was written: the truth and every file's expected category."""

    root: Path
    displacements: dict[str, list[np.ndarray]]  # patient -> per fraction (lat, lng, vrt) mm
    systematic: dict[str, np.ndarray]
    files: dict[str, str] = field(default_factory=dict)  # path -> expected category
    n_frames: int = 0  # frames (cine frames one by one) in frame files that are not junk
    unmatched_frames: int = 0
    cine_path: str | None = None


def write_synthetic_archive(
    root: str | Path,
    *,
    patients: int = 4,
    fractions: int = 4,
    gantries: tuple[float, ...] = (0.0, 90.0),
    population_mean_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    systematic_sd_mm: tuple[float, float, float] = (2.0, 2.0, 2.0),
    random_sd_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    detector_shape: tuple[int, int] = (120, 160),
    detector_spacing_mm: float = 1.6,
    ct_spacing_mm: float = 2.0,
    junk: bool = True,
    cine: bool = True,
    noise: float = 0.01,
    seed: int = 0,
) -> SyntheticArchive:
    """Write the archive under ``root`` (``root/PAT01/...``) and return its truth.

    Frame pixel spacing at the isocentre is ``detector_spacing_mm * 1000 / 1500``
    (SID 1500, SAD 1000). With ``cine`` the last patient's last fraction at gantry
    0 is a two-frame file (both frames rendered at that fraction's displacement).
    """
    from portalign.demo import phantom_ct, write_rt_image
    from portalign.simulate import render_drr
    from pydicom.uid import generate_uid

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ct = phantom_ct(ct_spacing_mm)
    geometry = dict(sid_mm=1500.0, detector_shape=detector_shape, detector_spacing_mm=detector_spacing_mm)
    field_mm = tuple(0.42 * e for e in (-detector_shape[1], detector_shape[1], -detector_shape[0], detector_shape[0]))
    field_mm = tuple(v * detector_spacing_mm / 1.5 for v in field_mm)
    drrs = {g: render_drr(ct, gantry_deg=g, **geometry) for g in gantries}
    archive = SyntheticArchive(root=root, displacements={}, systematic={})
    start = _dt.date(2026, 3, 2)

    for p in range(patients):
        pid = f"PAT{p + 1:02d}"
        folder = root / pid
        folder.mkdir(exist_ok=True)
        plan_uid = generate_uid()
        systematic = np.array(population_mean_mm) + rng.normal(0.0, 1.0, 3) * np.array(systematic_sd_mm)
        archive.systematic[pid] = systematic
        archive.displacements[pid] = []
        tags = dict(PatientID=pid, PatientName=f"SYNTHETIC^{pid}", plan_uid=plan_uid)
        for b, g in enumerate(gantries, start=1):
            path = folder / f"drr_beam{b}.dcm"
            _write(write_rt_image, drrs[g], path, "DRR", f"DRR beam {b}", beam=b, **tags)
            archive.files[str(path)] = "reference"
        for f in range(fractions):
            shift = systematic + rng.normal(0.0, 1.0, 3) * np.array(random_sd_mm)
            archive.displacements[pid].append(shift)
            date = start + _dt.timedelta(days=f)
            for b, g in enumerate(gantries, start=1):
                frames = 2 if (cine and p == patients - 1 and f == fractions - 1 and b == 1) else 1
                images = [render_drr(ct, gantry_deg=g, energy="mv", couch_shift_mm=tuple(shift), field_mm=field_mm,
                                     noise=noise, seed=int(rng.integers(1 << 30)), **geometry) for _ in range(frames)]
                path = folder / f"fx{f + 1:02d}_beam{b}.dcm"
                _write(write_rt_image, images, path, "PORTAL", f"MV fx {f + 1} beam {b}", beam=b, fraction=f + 1,
                       date=date, **tags)
                archive.files[str(path)] = "frame"
                archive.n_frames += frames
                if frames > 1:
                    archive.cine_path = str(path)
        if p == 0:
            plan = folder / "plan.dcm"
            _write_plan(plan, plan_uid, pid)
            archive.files[str(plan)] = "plan"
    if junk:
        first = root / "PAT01"
        # a frame of a beam that has no reference: unmatched
        image = render_drr(ct, gantry_deg=gantries[0], energy="mv", field_mm=field_mm, noise=noise, seed=7, **geometry)
        path = first / "fx01_beam9_no_reference.dcm"
        plan_uid = _plan_of(first / "fx01_beam1.dcm")
        _write(write_rt_image, [image], path, "PORTAL", "MV beam 9", beam=9, fraction=1, date=start,
               PatientID="PAT01", PatientName="SYNTHETIC^PAT01", plan_uid=plan_uid)
        archive.files[str(path)] = "frame"
        archive.unmatched_frames += 1
        archive.n_frames += 1
        junk_dir = root / "misc"
        junk_dir.mkdir(exist_ok=True)
        text = junk_dir / "notes.txt"
        text.write_text("treatment notes, not an image\n")
        archive.files[str(text)] = "not_dicom"
        source = first / "fx02_beam1.dcm"
        data = source.read_bytes()
        truncated = junk_dir / "truncated.dcm"
        truncated.write_bytes(data[: len(data) // 2])
        archive.files[str(truncated)] = "truncated"
        duplicate = junk_dir / "copy_of_fx02_beam1.dcm"
        shutil.copyfile(source, duplicate)
        archive.files[str(duplicate)] = "duplicate"
        struct = junk_dir / "rtstruct.dcm"
        _write_other(struct, "RTSTRUCT", "PAT01")
        archive.files[str(struct)] = "other"
    return archive


def _write(write_rt_image: Any, images: Any, path: Path, image_type: str, label: str, *, beam: int, plan_uid: str,
           PatientID: str, PatientName: str, fraction: int | None = None,  # noqa: N803 (DICOM keywords)
           date: _dt.date | None = None) -> None:
    import pydicom
    from pydicom.dataset import Dataset

    images = images if isinstance(images, list) else [images]
    write_rt_image(images[0], path, label=label, image_type=image_type)
    ds = pydicom.dcmread(path)
    if len(images) > 1:
        stack = np.stack([im.pixels.astype(np.float64) for im in images])
        lo, hi = float(stack.min()), float(stack.max())
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
        ds.PixelData = np.round((stack - lo) / slope).astype(np.uint16).tobytes()
        ds.NumberOfFrames = len(images)
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{lo:.10g}"
    ds.PatientID = PatientID
    ds.PatientName = PatientName
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    item.ReferencedSOPInstanceUID = plan_uid
    ds.ReferencedRTPlanSequence = [item]
    ds.ReferencedBeamNumber = beam
    if fraction is not None:
        ds.FractionNumber = fraction
    if date is not None:
        ds.AcquisitionDate = date.strftime("%Y%m%d")
        ds.AcquisitionTime = "090000"
    ds.save_as(path, enforce_file_format=True)


def _plan_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID)


def _write_plan(path: Path, plan_uid: str, patient_id: str) -> None:
    _write_other(path, "RTPLAN", patient_id, sop_uid=plan_uid, sop_class="1.2.840.10008.5.1.4.1.1.481.5")


def _write_other(path: Path, modality: str, patient_id: str, *, sop_uid: str | None = None,
                 sop_class: str = "1.2.840.10008.5.1.4.1.1.481.3") -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.save_as(path, enforce_file_format=True)


def main(argv: list[str] | None = None) -> int:
    """Write a synthetic archive to try ``portalign archive`` on: ``python -m bench.archive_data DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.archive_data", description=main.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("root", metavar="DIR", help="folder to write the archive into (made if missing)")
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--fractions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    archive = write_synthetic_archive(args.root, patients=args.patients, fractions=args.fractions, seed=args.seed)
    systematic = np.array(list(archive.systematic.values()))
    print(f"wrote {len(archive.files)} files under {archive.root}: {args.patients} patients x {args.fractions} "
          "fractions x gantry 0/90, with a cine file, a truncated copy, a duplicate, an RT Plan, an RT Struct, a text "
          "file and a frame without a reference")
    print("drawn systematic errors S_p (lateral, longitudinal, vertical mm; each patient's fractions add their random "
          "errors, so their realised means differ): " +
          "; ".join(f"{pid} {', '.join(f'{v:+.2f}' for v in s)}" for pid, s in archive.systematic.items()))
    print(f"SD of these true systematic errors: {', '.join(f'{v:.2f}' for v in systematic.std(axis=0, ddof=1))} mm "
          "(the archive's Sigma is estimated from the measured patient means, which carry the random error / sqrt(n) too)")
    print(f"next: portalign archive {archive.root} --out {archive.root}_results --workers 2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
