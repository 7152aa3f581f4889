"""The work a Dask worker does for one beam: prepare its reference once, register its frames.

:func:`register_beam` is a plain function of a :class:`~portalign.archive._pair.BeamTask`
that returns plain rows (dicts), so it pickles to any worker and its result to the
client. It never raises for bad input: an unreadable reference or frame becomes
an ``error`` on the rows it concerns; only a bug (or a dying worker, which Dask
retries) escapes.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ._pair import BeamTask

__all__ = ["REGISTRATION_COLUMNS", "register_beam", "frame_rows"]

#: Columns of ``registrations.parquet`` (one row per frame), in order.
REGISTRATION_COLUMNS = [
    "beam_id", "patient_id", "plan_uid", "beam_number", "fraction", "fraction_number", "date", "time",
    "path", "sop_instance_uid", "frame_index", "reference_path", "reference_sop_instance_uid", "reference_kind",
    "gantry_deg", "couch_deg", "collimator_deg", "receptor_angle_deg", "patient_position",
    "status", "dx_mm", "dy_mm", "rotation_deg", "ok", "reason", "score", "method", "backend", "error",
    "read_ms", "register_ms", "worker",
    # each frame's standard uncertainties (details["shift_uncertainty_mm"], details["rotation_uncertainty_deg"])
    "shift_uncertainty_mm", "rotation_uncertainty_deg",
]


def frame_rows(task: BeamTask | None, frame: dict[str, Any], *, status: str, error: str | None = None,
               reason: str | None = None) -> list[dict[str, Any]]:
    """Rows (one per frame of a file) for a frame file that was not registered.

    Parameters
    ----------
    task : BeamTask or None
        The beam, when the file was paired with one.
    frame : dict
        The frame file's index row (or task item).
    status : {"unmatched", "failed"}
    error, reason : str, optional

    Returns
    -------
    list of dict
        ``number_of_frames`` rows, every measured value ``None``.
    """
    rows = []
    for k in range(int(frame.get("number_of_frames") or 1)):
        row = _base_row(task, frame)
        row.update(frame_index=k, status=status, error=error, reason=reason)
        rows.append(row)
    return rows


def register_beam(task: BeamTask, parts_dir: str | None = None) -> dict[str, Any]:
    """Register every frame of one beam against its reference.

    Parameters
    ----------
    task : BeamTask
    parts_dir : str, optional
        Write the beam's rows here as ``<beam_id>.parquet`` (temporary file, then
        rename) instead of returning them: the worker, not the client, pays for
        the Parquet, which keeps the client off the critical path on a large
        cluster. The folder must be visible to the worker.

    Returns
    -------
    dict
        ``beam_id``; ``rows`` (one per frame, keys :data:`REGISTRATION_COLUMNS`;
        ``None`` when written to ``parts_dir``); ``frames``; ``prepare_ms`` (reading
        and preparing the reference, ``None`` when it failed); ``worker``
        (host:pid); ``elapsed_s`` (wall) and ``cpu_s`` (this process's CPU time:
        the task's cost whatever else the machine runs).
    """
    start, cpu = time.perf_counter(), time.process_time()
    _worker_threads()
    result = _register_frames(task)
    result["frames"] = len(result["rows"])
    if parts_dir is not None:
        from ._tables import to_frame, write_parquet

        write_parquet(to_frame(result["rows"], REGISTRATION_COLUMNS), os.path.join(parts_dir, f"{task.beam_id}.parquet"))
        result["rows"] = None
    result["elapsed_s"] = time.perf_counter() - start
    result["cpu_s"] = time.process_time() - cpu
    return result


def _worker_threads() -> None:
    """Hold this task's numba kernels to ``PORTALIGN_THREADS`` threads (a local cluster's workers: 1), if set.

    The frames keep to it through the thread policy; this covers the rest (the reference's preparation), with the
    count the policy gives (:func:`~portalign.backends.frame_threads`). numba's ``set_num_threads`` holds for the
    calling thread: the worker's task thread.
    """
    if not os.environ.get("PORTALIGN_THREADS"):
        return
    import numba

    from ..backends import frame_threads

    numba.set_num_threads(frame_threads())


def _register_frames(task: BeamTask) -> dict[str, Any]:
    from .. import RegistrationOptions, prepare_reference
    from ..dicom import read_rt_image, read_rt_image_frames
    from ..errors import PortalignError

    start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    options = RegistrationOptions(**task.options) if task.options else None
    try:
        reference = prepare_reference(read_rt_image(task.reference["path"], invert=task.invert), options,
                                      backend=task.backend)
    except PortalignError as exc:
        error = f"reference {task.reference['path']}: {_one_line(exc)}"
        lost = [r for frame in task.frames for r in frame_rows(task, frame, status="failed", error=error)]
        for r in lost:
            r["worker"] = worker
        return {"beam_id": task.beam_id, "rows": lost, "prepare_ms": None, "worker": worker}
    prepare_ms = (time.perf_counter() - start) * 1e3

    rows: list[dict[str, Any]] = []
    for frame in task.frames:
        t0 = time.perf_counter()
        try:
            images = read_rt_image_frames(frame["path"], invert=task.invert)
        except PortalignError as exc:
            failed = frame_rows(task, frame, status="failed", error=_one_line(exc))
            for r in failed:
                r["worker"] = worker
            rows.extend(failed)
            continue
        read_ms = (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        for image in images:
            row = _base_row(task, frame)
            info = image.info
            row.update(frame_index=info.frame_index, gantry_deg=info.gantry_deg, couch_deg=info.couch_deg,
                       collimator_deg=info.collimator_deg,
                       receptor_angle_deg=info.extra.get("receptor_angle_deg"),
                       patient_position=(info.patient_position or frame.get("patient_position") or None),
                       read_ms=read_ms, worker=worker)
            try:
                result = reference.register(image)
            except PortalignError as exc:
                row.update(status="failed", error=_one_line(exc))
            else:
                row.update(status="registered", dx_mm=_finite_or_none(result.dx_mm), dy_mm=_finite_or_none(result.dy_mm),
                           rotation_deg=None if result.rotation_deg is None else float(result.rotation_deg),
                           ok=bool(result.ok),
                           reason=result.reason or None, score=_finite_or_none(result.score),
                           method=result.method, backend=result.backend, register_ms=float(result.elapsed_ms),
                           shift_uncertainty_mm=_finite_or_none(result.details.get("shift_uncertainty_mm")),
                           rotation_uncertainty_deg=_finite_or_none(result.details.get("rotation_uncertainty_deg")))
            rows.append(row)
    return {"beam_id": task.beam_id, "rows": rows, "prepare_ms": prepare_ms, "worker": worker}


def _base_row(task: BeamTask | None, frame: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(REGISTRATION_COLUMNS)
    for key in ("patient_id", "fraction", "fraction_number", "date", "time", "path", "sop_instance_uid",
                "patient_position"):
        row[key] = frame.get(key)
    for key in ("plan_uid", "beam_number", "gantry_deg", "couch_deg", "collimator_deg", "receptor_angle_deg"):
        row[key] = frame.get(key)
    if task is not None:
        row.update(beam_id=task.beam_id, plan_uid=task.plan_uid, beam_number=task.beam_number,
                   reference_path=task.reference["path"],
                   reference_sop_instance_uid=task.reference.get("sop_instance_uid"),
                   reference_kind=task.reference.get("kind"))
    return row


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
