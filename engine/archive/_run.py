"""The archive run: index -> pair -> one Dask task per beam -> tables -> statistics -> report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import __version__
from ..errors import MissingDependencyError, PortalignError
from ..options import RegistrationOptions
from . import _index, _pair, _report, _setups, _stats, _tables, _tasks

__all__ = ["ArchiveError", "ArchiveResult", "AXES", "run"]

#: IEC 61217 patient-support axes of the 3-D statistics.
AXES = ("lateral", "longitudinal", "vertical")
_UNREADABLE = ("not_dicom", "unreadable", "truncated")
_INDEX_CHUNK = 256


class ArchiveError(PortalignError, ValueError):
    """The archive run cannot start or go on: bad sources, output folder, or cluster."""


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`run` wrote and the figures of ``summary.json``.

    Attributes
    ----------
    out_dir : str
        The output folder.
    summary : dict
        The content of ``summary.json``.
    outputs : dict
        Name -> path of ``registrations``, ``setups``, ``index``, ``summary``, ``report``.
    tasks_run, tasks_skipped, tasks_failed : int
        Beams registered in this run, skipped because ``resume`` found their part
        file, and lost after their retries.
    """

    out_dir: str
    summary: dict[str, Any]
    outputs: dict[str, str]
    tasks_run: int
    tasks_skipped: int
    tasks_failed: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return asdict(self)


def run(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    first_portal_reference: bool = False,
    options: RegistrationOptions | None = None,
    backend: str = "cpu",
    retries: int = 2,
    max_residual_mm: float = 1.0,
    progress: bool | TextIO = False,
    connect_timeout_s: float = 20.0,
    parts_on_workers: bool | None = None,
    invert: bool | None = None,
) -> ArchiveResult:
    """Re-register every portal image under ``sources`` on a Dask cluster and report setup errors.

    Parameters
    ----------
    sources : path or sequence of paths
        Files and folders (walked recursively).
    out : path
        Output folder: ``registrations.parquet``, ``setups.parquet``,
        ``index.parquet``, ``summary.json``, ``report.md`` (+ ``plots/``) and
        ``parts/`` (one Parquet file per beam, the unit that ``resume`` keeps).
    workers : int, optional
        Worker processes of the local cluster (1 thread each); the machine's CPU
        count by default. Not with ``scheduler``.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); its workers must
        have portalign installed and see the files at the same paths.
    resume : bool
        Keep the beams whose part file is already in ``out/parts`` and register
        the rest. Without it, an ``out`` that holds part files is an error.
    first_portal_reference : bool
        A beam without a DRR / reference image takes its earliest portal image as
        its reference instead of leaving its frames unmatched.
    options : RegistrationOptions, optional
        Registration options for every frame.
    backend : {"cpu", "auto", "gpu"}
        Backend of the workers' registrations.
    retries : int
        Times a beam's task is run again after it failed (a worker lost mid-task).
    max_residual_mm : float
        A view further than this from its fraction's 3-D solution makes the
        fraction's setup not ok (left out of the population statistics).
    progress : bool or file
        Print a progress line (to stderr, or to the file given).
    connect_timeout_s : float
        How long to try to reach ``scheduler`` before giving up.
    parts_on_workers : bool, optional
        Workers write their beams' part files into ``out/parts`` themselves
        (``out`` must be on storage they share); the client only reads them at the
        end. Default: yes on a local cluster, no with ``scheduler``.
    invert : bool, optional
        Force (``True``) or forbid (``False``) inverting the pixel values of every
        image read (Elekta iView files); by default the DICOM intensity sign decides.

    Returns
    -------
    ArchiveResult

    Raises
    ------
    ArchiveError
        No sources, a source that does not exist, both ``workers`` and
        ``scheduler``, an output folder holding an earlier run without
        ``resume``, or an unreachable scheduler.
    MissingDependencyError
        Without the ``archive`` extra (dask[distributed], pandas, pyarrow).
    """
    started = time.perf_counter()
    source_list = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    out_dir = Path(out).resolve()
    _check_arguments(source_list, out_dir, workers, scheduler, resume, retries, backend, max_residual_mm,
                     connect_timeout_s)
    options_dict = options.as_dict() if options is not None else {}
    stream = (sys.stderr if progress is True else progress) or None

    parts_dir = out_dir / "parts"
    files = _index.list_files(source_list, exclude=out_dir)
    timing: dict[str, float] = {}
    if scheduler is None and backend != "gpu":
        # numba compiles a kernel on its first call and caches it on disk: with a cold cache every worker of a new
        # local cluster would compile the same kernels at once (about a minute of CPU each); compiled here first,
        # they load from the cache in each
        t0 = time.perf_counter()
        _compile_once(options)
        timing["compile_s"] = time.perf_counter() - t0
    with _client(workers, scheduler, connect_timeout_s) as (client, cluster_info):
        # made once there is a cluster: a scheduler refused leaves no empty output folder behind
        try:
            parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # what the argument check cannot foresee (a full disk, a folder removed meanwhile)
            raise _out_unusable(out_dir, str(exc.strerror or exc)) from None
        t0 = time.perf_counter()
        chunks = list(_index.iter_chunks(files, _INDEX_CHUNK))
        index_futures = client.map(_index.index_files, chunks, retries=retries, pure=False)
        try:
            index_rows = [row for chunk in client.gather(index_futures) for row in chunk]
        except Exception as exc:  # a worker without portalign, or a cluster that went away
            raise ArchiveError(f"archive: the index tasks failed on the cluster ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); the workers need portalign "
                               "installed and the sources at the same paths") from None
        del index_futures
        timing["index_s"] = time.perf_counter() - t0

        pairing = _pair.pair_frames(index_rows, first_portal_reference=first_portal_reference,
                                    options=options_dict, backend=backend, invert=invert)
        done = {p.stem for p in parts_dir.glob("*.parquet")} if resume else set()
        todo = [t for t in pairing.tasks if t.beam_id not in done]
        skipped = len(pairing.tasks) - len(todo)

        t0 = time.perf_counter()
        timing["frames_this_run"] = sum(t.n_frames for t in todo)
        on_workers = cluster_info["local"] if parts_on_workers is None else bool(parts_on_workers)
        cluster_info["parts_written_by"] = "workers" if on_workers else "client"
        failed_rows, failures, cost = _register(client, todo, parts_dir, retries, stream, skipped,
                                                parts_on_workers=on_workers)
        timing["register_s"] = time.perf_counter() - t0
        timing.update(cost)

    # Combine: every current beam's part file (this run's and resumed ones), failures, unmatched frames.
    rows: list[dict[str, Any]] = []
    for task in pairing.tasks:
        part = parts_dir / f"{task.beam_id}.parquet"
        if part.exists():
            rows.extend(_tables.records(_tables.read_parquet(part)))
    rows.extend(failed_rows)
    for frame in pairing.unmatched:
        rows.extend(_tasks.frame_rows(None, frame, status="unmatched", reason=frame.get("reason")))
    rows.sort(key=_row_order)
    _index_fates(pairing.index, rows)

    setups = _setups.combine_fractions(rows, max_residual_mm=max_residual_mm)
    summary = _summary(pairing, rows, setups, timing, cluster_info, options_dict, backend,
                       len(todo), skipped, len(failures), first_portal_reference)
    outputs = {
        "registrations": str(_tables.write_parquet(_tables.to_frame(rows, _tasks.REGISTRATION_COLUMNS),
                                                   out_dir / "registrations.parquet")),
        "setups": str(_tables.write_parquet(_tables.to_frame(setups, _setups.SETUP_COLUMNS),
                                            out_dir / "setups.parquet")),
        "index": str(_tables.write_parquet(_tables.to_frame(pairing.index, _index.INDEX_COLUMNS),
                                           out_dir / "index.parquet")),
    }
    outputs["report"] = str(_report.write_report(out_dir, summary, rows, setups))
    timing["total_s"] = time.perf_counter() - started  # everything but writing summary.json itself
    summary["timing"].update({k: round(v, 3) for k, v in timing.items() if k != "frames_this_run"})
    summary["timing"]["frames_this_run"] = int(timing["frames_this_run"])
    summary_path = out_dir / "summary.json"
    _write_text(summary_path, json.dumps(summary, indent=2, default=_json_default))
    outputs["summary"] = str(summary_path)
    return ArchiveResult(out_dir=str(out_dir), summary=summary, outputs=outputs, tasks_run=len(todo) - len(failures),
                         tasks_skipped=skipped, tasks_failed=len(failures), warnings=list(summary["warnings"]))


# ---------------------------------------------------------------------------
# cluster and tasks
# ---------------------------------------------------------------------------


def _out_unusable(out_dir: Path, why: str) -> ArchiveError:
    """Return the one-line error of an ``--out`` whose ``parts/`` cannot be made, ``why`` in brackets."""
    return ArchiveError(f"archive: --out {out_dir}: cannot create parts/ there ({why}); give a folder you can write")


def _check_arguments(sources: list[Any], out_dir: Path, workers: int | None, scheduler: str | None, resume: bool,
                     retries: int, backend: str, max_residual_mm: float, connect_timeout_s: float) -> None:
    if not sources:
        raise ArchiveError("archive: no SOURCE given; pass one or more folders or files of DICOM RT Images")
    for source in sources:
        if not os.path.exists(source):
            raise ArchiveError(f"archive: source {os.fspath(source)!r} does not exist; pass an existing folder or file")
    if workers is not None and scheduler is not None:
        raise ArchiveError("archive: --workers and --scheduler exclude each other; the scheduler's cluster has its "
                           "own workers (pass one of them)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ArchiveError(f"archive: --workers must be a positive integer, got {workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ArchiveError(f"archive: --retries must be a non-negative integer, got {retries!r}")
    for name, value in (("max_residual_mm", max_residual_mm), ("connect_timeout_s", connect_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ArchiveError(f"archive: {name} must be a positive number, got {value!r}")
    if backend not in ("cpu", "auto", "gpu"):
        raise ArchiveError(f"archive: --backend must be one of cpu, auto, gpu, got {backend!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ArchiveError(f"archive: --out {out_dir} is a file; pass a folder")
    # a folder that cannot be made is said before any cluster starts (nothing is made here: a refused --scheduler
    # leaves no folder behind); the nearest existing folder above it must be one that can be written
    above = out_dir
    while not above.exists() and above.parent != above:
        above = above.parent
    why = ("Not a directory" if not above.is_dir() else
           "Permission denied" if not os.access(above, os.W_OK | os.X_OK) else "")
    if why:
        raise _out_unusable(out_dir, f"{why}: {above}")
    parts = out_dir / "parts"
    if not resume and parts.is_dir() and any(parts.glob("*.parquet")):
        raise ArchiveError(f"archive: {out_dir} already holds a run (parts/*.parquet); pass --resume to continue it "
                           "or choose an empty --out")
    try:
        import dask.distributed  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError.for_module(exc.name or "dask", "portalign archive") from None


def _compile_once(options: RegistrationOptions | None) -> None:
    """Register a small synthetic portal frame against a DRR-like reference here, with ``options``, on the CPU.

    Its only effect is numba's on-disk cache of the kernels a registration calls (a few tens of milliseconds once
    warm). A failure here is not the archive's: the workers register, and say, what the files hold.
    """
    import numpy as np
    from scipy import ndimage

    from .. import register
    from ..image import Image

    rng = np.random.default_rng(0)
    anatomy = ndimage.gaussian_filter(rng.standard_normal((200, 200)), 4.0)
    rows, cols = np.mgrid[0:160, 0:160]
    field = ndimage.gaussian_filter(((abs(rows - 80) < 50) & (abs(cols - 80) < 45)).astype(float), 1.5)
    reference = Image.from_array(anatomy[20:180, 20:180].astype(np.float32), pixel_spacing_mm=1.0, kind="drr")
    frame = (0.02 + field) * (1.0 + 0.3 * anatomy[23:183, 18:178]) + rng.normal(0.0, 0.002, (160, 160))
    try:
        register(reference, Image.from_array(frame.astype(np.float32), pixel_spacing_mm=1.0, kind="portal"),
                 options, backend="cpu")
    except PortalignError:
        pass  # refused or not: the kernels it called are compiled


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None,
            connect_timeout_s: float = 20.0) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield a Dask client on ``scheduler`` or on a new LocalCluster of ``workers`` single-threaded processes."""
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise ArchiveError(f"archive: cannot reach the Dask scheduler at {scheduler} ({exc}); start one "
                               "(`dask scheduler`, `dask worker ADDRESS`) or leave out --scheduler") from None
        except ValueError as exc:  # not an address at all (no port, another protocol, empty)
            raise ArchiveError(f"archive: --scheduler {scheduler!r} is not a Dask scheduler address ({exc}); give "
                               "tcp://HOST:PORT, as `dask scheduler` prints it") from None
        try:
            info = {"scheduler": scheduler, "workers": len(client.scheduler_info(n_workers=-1)["workers"]),
                    "local": False}
            yield client, info
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    # One thread per worker process, and each registration on one thread (PORTALIGN_THREADS: numba's
    # set_num_threads): the cluster's parallelism is the processes; OpenMP threads that spin-wait on cores the other
    # workers use would only slow them down. Not NUMBA_NUM_THREADS: Dask sets this environment in the worker after
    # it has started, and where the worker imported numba before (a script that imports portalign at its top,
    # re-imported by the spawned worker) numba's pool size and its environment then disagree, and the first kernel
    # compiled after the pool started raised "Cannot set NUMBA_NUM_THREADS to a different value" in every task
    single = {"PORTALIGN_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # (no dashboard; the scheduler's own HTTP server, which it starts anyway, on a free port: at the default 8787 a
    # second run beside the first warned "Port 8787 is already in use", an error where warnings are errors)
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=single) as cluster, Client(cluster) as client:
        yield client, {"scheduler": cluster.scheduler_address, "workers": n, "local": True}


def _register(client: Any, tasks: list[_pair.BeamTask], parts_dir: Path, retries: int, stream: TextIO | None,
              skipped: int, function: Callable[..., dict[str, Any]] = _tasks.register_beam,
              parts_on_workers: bool = False) -> tuple[list[dict[str, Any]], list[str], dict[str, float]]:
    """Submit one task per beam, write each beam's part file as it completes; return failed rows and beam ids.

    A task that raises is run again up to ``retries`` times (``Client.submit(retries=)``); a task whose
    worker dies is moved to another worker by the scheduler (up to ``distributed.scheduler.allowed-failures``
    deaths, 3 by default). Either way only that beam's work is lost. ``function`` is the task's body
    (:func:`~portalign.archive._tasks.register_beam`; tests pass one that kills its worker). With
    ``parts_on_workers`` each worker writes its beam's part file itself (the folder must be shared).
    """
    from dask.distributed import as_completed

    token = uuid.uuid4().hex[:8]
    where = {"parts_dir": str(parts_dir)} if parts_on_workers else {}
    futures = {client.submit(function, task, key=f"portalign-beam-{task.beam_id}-{token}", retries=retries,
                             **where): task for task in tasks}
    failed_rows: list[dict[str, Any]] = []
    failures: list[str] = []
    cost = {"task_cpu_s": 0.0, "task_wall_s": 0.0, "client_write_s": 0.0}
    total_frames = sum(t.n_frames for t in tasks)
    done_frames = 0
    progress = _Progress(stream, len(tasks), total_frames, skipped)
    for future in as_completed(list(futures)):
        task = futures.pop(future)
        if future.status == "finished":
            result = future.result()
            cost["task_cpu_s"] += float(result.get("cpu_s") or 0.0)
            cost["task_wall_s"] += float(result.get("elapsed_s") or 0.0)
            if result["rows"] is not None:  # not written by the worker: the client writes the part
                t_write = time.perf_counter()
                part = _tables.to_frame(result["rows"], _tasks.REGISTRATION_COLUMNS)
                _tables.write_parquet(part, parts_dir / f"{task.beam_id}.parquet")
                cost["client_write_s"] += time.perf_counter() - t_write
        else:
            exc = future.exception()
            error = f"beam task failed after {retries} retries: {type(exc).__name__}: {exc}".splitlines()[0]
            failures.append(task.beam_id)
            failed_rows.extend(r for frame in task.frames
                               for r in _tasks.frame_rows(task, frame, status="failed", error=error))
        future.release()
        done_frames += task.n_frames
        progress.update(done_frames, len(failures))
    progress.close()
    return failed_rows, failures, cost


class _Progress:
    """One progress line: beams and frames done, frames/s; rewritten in place on a terminal."""

    def __init__(self, stream: TextIO | None, beams: int, frames: int, skipped: int) -> None:
        self.stream, self.beams, self.frames, self.skipped = stream, beams, frames, skipped
        self.start = time.perf_counter()
        self.done_beams = 0
        self.last = 0.0
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def update(self, frames: int, failed: int) -> None:
        self.done_beams += 1
        now = time.perf_counter()
        if self.stream is None or (now - self.last < (0.2 if self.tty else 5.0) and self.done_beams < self.beams):
            return
        self.last = now
        rate = frames / max(now - self.start, 1e-9)
        bar_width = 30
        filled = int(bar_width * self.done_beams / max(self.beams, 1))
        line = (f"archive [{'#' * filled}{'.' * (bar_width - filled)}] {self.done_beams}/{self.beams} beams, "
                f"{frames}/{self.frames} frames, {rate:.1f} frames/s"
                + (f", {failed} failed" if failed else "") + (f", {self.skipped} resumed" if self.skipped else ""))
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------
# tables and summary
# ---------------------------------------------------------------------------


def _row_order(row: dict[str, Any]) -> tuple[Any, ...]:
    return (str(row.get("patient_id")), str(row.get("plan_uid")), row.get("beam_number") or -1,
            str(row.get("fraction")), str(row.get("path")), row.get("frame_index") or 0)


def _index_fates(index: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Fill ``fate`` / ``reason`` of registered frame files from their registration rows.

    A reference that could not be prepared (every frame of its beam failed on it) is ``failed`` too, with its
    reason, not ``used_as_reference`` (a new user's all-constant DRR was listed as used while its 4 frames failed).
    """
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_reference: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] != "unmatched":
            by_path[row["path"]].append(row)
            if row.get("reference_path"):
                by_reference[row["reference_path"]].append(row)
    for entry in index:
        if entry.get("fate") != "used_as_reference":
            continue
        used = by_reference.get(entry["path"], [])
        prefix = f"reference {entry['path']}: "
        if used and all(r["status"] == "failed" and str(r.get("error") or "").startswith(prefix) for r in used):
            entry.update(fate="failed", reason=f"cannot be used as the reference of its beam's {len(used)} frame(s): "
                                               f"{used[0]['error'][len(prefix):]}")
    for entry in index:
        if entry.get("fate") is not None or entry["category"] != "frame":
            continue
        frames = by_path.get(entry["path"], [])
        if not frames:
            entry.update(fate="failed", reason="no registration result (bug: please report)")
            continue
        failed = [r for r in frames if r["status"] == "failed"]
        not_ok = [r for r in frames if r["status"] == "registered" and not r["ok"]]
        if failed and len(failed) == len(frames):
            entry.update(fate="failed", reason=failed[0]["error"])
        else:
            text = f"registered {len(frames) - len(failed)} frame(s) against {frames[0]['reference_path']}"
            if not_ok:
                text += f"; {len(not_ok)} not ok ({not_ok[0]['reason']})"
            if failed:
                text += f"; {len(failed)} failed ({failed[0]['error']})"
            entry.update(fate="registered", reason=text)


def _summary(pairing: _pair.Pairing, rows: list[dict[str, Any]], setups: list[dict[str, Any]],
             timing: dict[str, float], cluster: dict[str, Any], options: dict[str, Any], backend: str,
             tasks_run: int, tasks_skipped: int, tasks_failed: int, first_portal_reference: bool) -> dict[str, Any]:
    categories = Counter(r["category"] for r in pairing.index)
    registered = [r for r in rows if r["status"] == "registered"]
    good = [s for s in setups if s["ok"]]
    population = _stats.population_statistics([s["patient_id"] for s in good],
                                              {axis: [s[f"{axis}_mm"] for s in good] for axis in AXES})
    rotation = _stats.population_statistics([s["patient_id"] for s in good],
                                            {name: [s[f"{name}_deg"] for s in good] for name in ("pitch", "roll", "yaw")},
                                            unit="deg")
    image_axes, beams = _image_axes(rows)
    warnings: list[str] = []
    if tasks_failed:
        warnings.append(f"{tasks_failed} beam task(s) failed after their retries; rerun with --resume to retry them")
    # two images under one SOP Instance UID: one was skipped, and which one depends on the order the files were read
    clashes = [r for r in pairing.index if r["category"] == "duplicate"
               and str(r.get("reason", "")).startswith("duplicate UID, different image")]
    if clashes:
        warnings.append(f"{len(clashes)} file(s) skipped that share a SOP Instance UID with a different image "
                        f"(first: {clashes[0]['path']}: {clashes[0]['reason']}); which one of each pair is kept "
                        "depends on the order the files are read: give each image its own UID")
    # a systematic error from few patients is itself uncertain: its relative standard error is 1/sqrt(2(n-1))
    in_statistics = max((population[axis]["n_patients"] for axis in AXES), default=0)
    spread = _stats.sigma_relative_se(in_statistics)
    if spread is not None and spread > _stats.SIGMA_MAX_RELATIVE_SE:
        warnings.append(f"Sigma and the margins come from {in_statistics} patients: Sigma's own standard error is about "
                        f"{100 * spread:.0f} % of it (1/sqrt(2(n-1)) for normal data), so the margins are indicative "
                        f"only; {math.ceil(1 + 0.5 / _stats.SIGMA_MAX_RELATIVE_SE ** 2)} or more patients bring it "
                        f"to {100 * _stats.SIGMA_MAX_RELATIVE_SE:.0f} % or less")
    not_ok_setups = [s for s in setups if s["n_views"] >= 2 and not s["ok"]]
    if not_ok_setups:
        warnings.append(f"{len(not_ok_setups)} fraction(s) with two or more views are not ok and are left out of the "
                        f"population statistics (first: {not_ok_setups[0]['reason']})")
    # what else is left out of Sigma and sigma, said where the numbers are (a physicist's trial found it only in the
    # tables): fractions without a 3-D setup, patients with one ok fraction (no SD), later exposures of a beam
    few_views = [s for s in setups if s["n_views"] < 2]
    if few_views:
        named = "; ".join(f"patient {s['patient_id']}, {s['fraction']}" for s in few_views[:10])
        warnings.append(f"{len(few_views)} fraction(s) with fewer than two ok views have no 3-D setup error and are "
                        f"left out of the population statistics ({named}{' ...' if len(few_views) > 10 else ''}; "
                        f"the first's reason: {few_views[0]['reason']}); their 2-D values are in image_axes")
    ok_fractions = Counter(s["patient_id"] for s in good)
    lone = sorted(str(p) for p, n in ok_fractions.items() if n < 2)
    if lone:
        warnings.append(f"{len(lone)} patient(s) with one ok fraction only are left out of M, Sigma and sigma (a "
                        f"patient's SD needs two): {', '.join(lone[:10])}{' ...' if len(lone) > 10 else ''}")
    noted = [s for s in setups if s.get("note")]
    if noted:
        warnings.append(f"{len(noted)} fraction(s) imaged a beam again after its first exposure and the later image "
                        f"disagrees: the first exposure is the setup error (first: patient {noted[0]['patient_id']}, "
                        f"{noted[0]['fraction']}: {noted[0]['note']})")
    frames_per_s = (timing["frames_this_run"] / timing["register_s"]) if timing.get("frames_this_run") else None
    # why frames were not registered, most frequent first: the console says it, not only report.md
    why = Counter((r["status"], r.get("reason") or r.get("error") or "no reason recorded")
                  for r in rows if r["status"] in ("unmatched", "failed"))
    # ...and why registered frames were not ok (their reasons, each once)
    not_ok_why: Counter[str] = Counter()
    not_ok_first: dict[str, str] = {}  # each reason's first frame: its file (and frame), for the console
    for r in registered:
        if not r["ok"]:
            reason = r.get("reason") or "no reason recorded"
            not_ok_why[reason] += 1
            not_ok_first.setdefault(reason, f"{r.get('path')}" + (f" frame {r['frame_index']}"
                                                                  if r.get("frame_index") else ""))
    return {
        "version": __version__,
        "definitions": {
            "axes": "IEC 61217 patient support: lateral (X), longitudinal (Y), vertical (Z); mm",
            "m_p, s_p": "per patient with >= 2 ok fractions: mean and SD (n-1) over fractions",
            "M_mm": "mean of the m_p", "Sigma_mm": "SD of the m_p (n-1): systematic error",
            "sigma_mm": "root mean square of the s_p: random error",
            "margin_van_herk_mm": "2.5 Sigma + 0.7 sigma (van Herk et al. 2000)",
            "margin_stroom_mm": "2 Sigma + 0.7 sigma (Stroom et al. 1999)",
            "population_rotation_deg": "the same M, Sigma and sigma of pitch, roll and yaw (IEC 61217), in degrees; "
                                       "no margin recipe applies to rotations",
        },
        "population": population,
        "population_rotation_deg": rotation,
        "image_axes": image_axes,
        "beams": beams,
        "counts": {
            "files": len(pairing.index),
            "patients": len({r["patient_id"] for r in rows}),
            "fractions": len({(r["patient_id"], r["plan_uid"], r["fraction"]) for r in registered}),
            "frames": len(rows),
            "registered": len(registered),
            "not_ok": sum(1 for r in registered if not r["ok"]),
            "unmatched": sum(1 for r in rows if r["status"] == "unmatched"),
            "failed": sum(1 for r in rows if r["status"] == "failed"),
            "unreadable": sum(categories[c] for c in _UNREADABLE),
            "duplicates": categories["duplicate"],
            "references": categories["reference"] + sum(1 for r in pairing.index if r["fate"] == "used_as_reference"
                                                        and r["category"] == "frame"),
            "plans": categories["plan"],
            "other": categories["other"],
            "beams": len(pairing.tasks),
            "setups": len(setups),
            "setups_ok": len(good),
            "patients_in_statistics": population["lateral"]["n_patients"],
        },
        "categories": dict(sorted(categories.items())),
        "not_registered": [{"status": status, "reason": reason, "frames": n}
                           for (status, reason), n in sorted(why.items(), key=lambda item: (-item[1], item[0]))],
        "not_ok": [{"reason": reason, "frames": n, "first": not_ok_first[reason]}
                   for reason, n in sorted(not_ok_why.items(), key=lambda item: (-item[1], item[0]))],
        "tasks": {"total": len(pairing.tasks), "run": tasks_run - tasks_failed, "skipped_resume": tasks_skipped,
                  "failed": tasks_failed},
        "timing": {"frames_per_s": frames_per_s},
        "cluster": cluster,
        "options": {"registration": options, "backend": backend, "first_portal_reference": first_portal_reference},
        "warnings": warnings,
    }


def _image_axes(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Statistics of the 2-D displacements (image x, y) per gantry angle, and per beam (patient, plan, beam)."""
    fractions = _setups.fraction_views(rows)
    by_gantry: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"patient": [], "x": [], "y": []})
    by_beam: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for (patient, plan, _fraction), entry in fractions.items():
        for beam, view in entry["views"].items():
            if view["dx_mm"] is None or view["gantry_deg"] is None:
                continue
            key = f"gantry_{round(float(view['gantry_deg'])) % 360:d}"
            by_gantry[key]["patient"].append(patient)
            by_gantry[key]["x"].append(view["dx_mm"])
            by_gantry[key]["y"].append(view["dy_mm"])
            by_beam[(patient, plan, beam)].append(view)
    stats = {key: _stats.population_statistics(values["patient"], {"x": values["x"], "y": values["y"]})
             for key, values in sorted(by_gantry.items())}
    beams = []
    for (patient, plan, beam), views in sorted(by_beam.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        item: dict[str, Any] = {"patient_id": patient, "plan_uid": plan, "beam_number": beam,
                                "gantry_deg": views[0]["gantry_deg"], "n_fractions": len(views)}
        for axis, name in (("x", "dx_mm"), ("y", "dy_mm")):
            values = [float(v[name]) for v in views]
            mean = sum(values) / len(values)
            item[f"mean_{axis}_mm"] = mean
            item[f"sd_{axis}_mm"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                                      if len(values) >= 2 else None)
        beams.append(item)
    return stats, beams


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
