"""Pairing: each portal frame with the reference of its plan and beam.

A beam is the pair (``ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID``,
``ReferencedBeamNumber``), as RT Images reference it (PS3.3 C.8.8.2). Every
beam with frames and a reference becomes one :class:`BeamTask`: the unit of work
sent to a Dask worker (prepare the reference once, register the frames).

Choices that decide the outcome (each file's ``fate`` and ``reason`` say which applied):

* duplicates: a file whose SOP Instance UID was already seen (in path order) is
  a ``duplicate`` and is not used;
* several references for one beam: a DRR wins over a reference portal image,
  then the newest (date, time), then the first path; the others are ``unused``;
* a beam without a reference: its frames are ``unmatched``, unless
  ``first_portal_reference`` is set, in which case its earliest portal image
  (fraction number, date, time, path) becomes the reference and is not registered.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BeamTask", "Pairing", "pair_frames"]

# What a frame row carries from the index into the task and the results table.
_FRAME_KEYS = ("path", "sop_instance_uid", "patient_id", "fraction", "fraction_number", "date", "time",
               "number_of_frames", "patient_position")


@dataclass(frozen=True)
class BeamTask:
    """One beam's work: its reference and the frame files to register against it.

    Attributes
    ----------
    beam_id : str
        Hash of everything that decides the results (plan, beam, reference, frame
        files, options, backend): the name of the beam's part file, so ``--resume``
        redoes a beam whose inputs changed.
    patient_id, plan_uid : str
    beam_number : int
    reference : dict
        ``path``, ``sop_instance_uid``, ``kind`` (``drr``, ``portal`` or ``first_portal``).
    frames : tuple of dict
        One per frame file: path, SOP Instance UID, patient, fraction, date, time,
        number of frames.
    options : dict
        :class:`portalign.RegistrationOptions` fields (``{}``: the defaults).
    backend : str
    invert : bool or None
        Passed to the readers (``None``: the DICOM intensity sign decides).
    """

    beam_id: str
    patient_id: str | None
    plan_uid: str
    beam_number: int
    reference: dict[str, Any]
    frames: tuple[dict[str, Any], ...]
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "cpu"
    invert: bool | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames (cine frames counted one by one)."""
        return sum(int(f.get("number_of_frames") or 1) for f in self.frames)


@dataclass
class Pairing:
    """Outcome of :func:`pair_frames`.

    Attributes
    ----------
    tasks : list of BeamTask
        One per beam with a reference and frames, in (plan, beam) order.
    unmatched : list of dict
        Frame files that have no reference (index rows, with ``reason``).
    index : list of dict
        Every index row, ``category``, ``fate`` and ``reason`` filled in for
        duplicates, references and unmatched frames (registered frames get
        theirs after registration).
    """

    tasks: list[BeamTask]
    unmatched: list[dict[str, Any]]
    index: list[dict[str, Any]]


#: Header values two copies of one image share; a file under the same UID that differs in any is another image.
_IDENTITY_KEYS = ("modality", "rows", "cols", "number_of_frames", "gantry_deg", "collimator_deg", "couch_deg",
                  "date", "time", "label", "patient_id", "beam_number", "plan_uid")


def pair_frames(index: list[dict[str, Any]], *, first_portal_reference: bool = False,
                options: dict[str, Any] | None = None, backend: str = "cpu", invert: bool | None = None) -> Pairing:
    """Pair frames with references by plan and beam.

    Parameters
    ----------
    index : list of dict
        Rows of :func:`portalign.archive._index.index_file`, in path order.
    first_portal_reference : bool
        Use a beam's earliest portal image as its reference when it has none.
    options : dict, optional
        Registration options recorded in each task.
    backend : str
        Backend recorded in each task.
    invert : bool, optional
        Intensity inversion recorded in each task.

    Returns
    -------
    Pairing
    """
    options = dict(options or {})
    seen: dict[str, dict[str, Any]] = {}
    for row in index:
        uid = row.get("sop_instance_uid")
        if row["category"] in ("not_dicom", "unreadable", "truncated") or not uid:
            continue
        first = seen.get(uid)
        if first is None:
            seen[uid] = row
            continue
        # the same image twice, or two images under one UID (an export that reuses UIDs): said apart
        differ = [key for key in _IDENTITY_KEYS if row.get(key) != first.get(key)]
        if differ:
            shown = ", ".join(f"{key} {first.get(key)!r} / {row.get(key)!r}" for key in differ[:3])
            reason = (f"duplicate UID, different image: SOP Instance UID {uid} is also {first['path']}, whose header "
                      f"differs ({shown}); skipped (an export that reuses UIDs: give each image its own)")
        else:
            reason = f"duplicate: SOP Instance UID {uid} already in {first['path']} (the same header)"
        row.update(category="duplicate", fate="skipped", reason=reason)

    references: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    frames: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    unmatched: list[dict[str, Any]] = []
    for row in index:
        if row["category"] not in ("reference", "frame"):
            continue
        missing = [name for name, key in (("ReferencedRTPlanSequence", "plan_uid"),
                                           ("ReferencedBeamNumber", "beam_number")) if row.get(key) in (None, "")]
        if missing:
            why = f"no {' and no '.join(missing)}: cannot be paired with a beam"
            if row["category"] == "reference":
                row.update(fate="unused", reason=why)
            else:
                row.update(fate="unmatched", reason=why)
                unmatched.append(row)
            continue
        key = (row["plan_uid"], int(row["beam_number"]))
        (references if row["category"] == "reference" else frames)[key].append(row)

    tasks: list[BeamTask] = []
    for key in sorted(set(references) | set(frames), key=lambda k: (k[0], k[1])):
        plan, beam = key
        beam_frames = sorted(frames.get(key, []), key=_acquisition_order)
        candidates = sorted(references.get(key, []), key=_reference_preference)
        chosen: dict[str, Any] | None = candidates[0] if candidates else None
        kind = chosen["reference_kind"] if chosen else None
        for other in candidates[1:]:
            other.update(fate="unused", reason=f"not used: the beam's reference is {chosen['path']}")  # type: ignore[index]
        if chosen is None and beam_frames and first_portal_reference:
            chosen, beam_frames = beam_frames[0], beam_frames[1:]
            kind = "first_portal"
            chosen.update(fate="used_as_reference",
                          reason=f"first portal image of plan {plan} beam {beam}, used as its reference (no DRR)")
        if chosen is None:
            for row in beam_frames:
                row.update(fate="unmatched", reason=f"no reference for plan {plan} beam {beam} "
                           "(none of the sources is its DRR or reference image; --first-portal-reference "
                           "(first_portal_reference=True) takes its first portal image)")
                unmatched.append(row)
            continue
        if not beam_frames:
            if kind != "first_portal":
                chosen.update(fate="unused", reason=f"reference of plan {plan} beam {beam}: no frames to register")
            continue
        if kind != "first_portal":
            chosen.update(fate="used_as_reference", reason=f"reference of plan {plan} beam {beam} "
                                                           f"({len(beam_frames)} frame files)")
        patients = Counter(r.get("patient_id") for r in beam_frames)
        reference = {"path": chosen["path"], "sop_instance_uid": chosen.get("sop_instance_uid"), "kind": kind}
        frame_items = tuple({k: r.get(k) for k in _FRAME_KEYS} for r in beam_frames)
        tasks.append(BeamTask(
            beam_id=_beam_id(plan, beam, reference, frame_items, options, backend, invert),
            patient_id=patients.most_common(1)[0][0],
            plan_uid=plan,
            beam_number=beam,
            reference=reference,
            frames=frame_items,
            options=options,
            backend=backend,
            invert=invert,
        ))
    return Pairing(tasks=tasks, unmatched=unmatched, index=index)


def _acquisition_order(row: dict[str, Any]) -> tuple[Any, ...]:
    number = row.get("fraction_number")
    return (number is None, number or 0, row.get("date") or "", row.get("time") or "", row["path"])


def _reference_preference(row: dict[str, Any]) -> tuple[Any, ...]:
    # DRR first; then the newest; then path order. Negating a string is not possible: sort on the inverse key.
    stamp = f"{row.get('date') or ''} {row.get('time') or ''}"
    return (row.get("reference_kind") != "drr", _Descending(stamp), row["path"])


class _Descending:
    """Sort key that orders strings newest first."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value


def _beam_id(plan: str, beam: int, reference: dict[str, Any], frames: tuple[dict[str, Any], ...],
             options: dict[str, Any], backend: str, invert: bool | None) -> str:
    payload = json.dumps({
        "plan": plan, "beam": beam, "reference": [reference["path"], reference["sop_instance_uid"], reference["kind"]],
        "frames": [[f["path"], f["sop_instance_uid"]] for f in frames], "options": options, "backend": backend,
        "invert": invert,
    }, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]
