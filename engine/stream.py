"""Real-time frame streams: one prepared reference, frames pushed as they arrive, one record per frame.

The acquisition side calls :meth:`FrameStream.push` (or :meth:`FrameStream.push_cine`
for every frame of a multi-frame cine RT Image); a worker thread registers the
frames against the reference prepared once at construction; the consumer reads
:class:`FrameRecord` objects in push order (:meth:`FrameStream.get`, iteration,
or an ``on_record`` callback).

Between the two sides sits a bounded queue with an explicit overflow policy:

``policy="all"``
    Every frame is registered. When ``maxsize`` frames are waiting, ``push``
    blocks (back-pressure on the acquisition); with a timeout it raises
    :class:`StreamFullError` instead, and the refused frame still gets an error
    record, so the journal shows it.
``policy="latest"``
    Only the newest frame is worth registering (a cine EPID at 15 frames/s must
    not fall further and further behind). ``push`` never blocks: a frame still
    waiting when a newer one arrives is *skipped*: its pixels are released and a
    record with ``skipped=True`` takes its place in the result stream.

No accepted frame disappears without a record: registered (``ok`` or not),
skipped, or failed (unreadable pixels, a reference that cannot be matched...)
with the error message; a failing frame never stops the stream.

Each record carries its latency: ``queue_ms`` (from ``push`` to the moment the
worker takes it) plus ``register_ms`` (decoding and registration).

Intrafraction monitoring: with a :class:`HoldTolerance` the stream raises a
``hold`` when the displacement exceeds the tolerance (``|dx|``, ``|dy|`` in mm,
``|rotation|`` in degrees, each compared on its own) on ``consecutive``
successive trustworthy (``ok``) frames, and clears it at the first ``ok`` frame
back within tolerance. Frames that are not ``ok``, skipped or failed neither
extend nor break the run (they say nothing about the patient); they carry the
current hold state. Every record says ``hold`` and ``hold_reason``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from .errors import PortalignError
from .image import Image, as_image
from .journal import Journal
from .options import RegistrationOptions
from .registration import Reference, batch_workers, prepare_reference, register_each
from .result import RegistrationResult

__all__ = [
    "POLICIES",
    "FrameRecord",
    "FrameStream",
    "HoldMonitor",
    "HoldTolerance",
    "StreamClosedError",
    "StreamFullError",
    "StreamStats",
]

#: Overflow policies of the queue between acquisition and registration.
POLICIES = ("all", "latest")


class StreamClosedError(PortalignError, RuntimeError):
    """A frame was pushed to a closed stream, or a record was asked of a finished one."""


class StreamFullError(PortalignError, RuntimeError):
    """``policy="all"``: the queue stayed full for the whole push timeout.

    Attributes
    ----------
    frame_ids : list
        The ids of the frames the push gave records to, in order (one frame for :meth:`FrameStream.push`; every
        frame of the file for :meth:`FrameStream.push_cine`, refused or not).
    refused_ids : list
        Those of them refused (an error record each).
    """

    frame_ids: list
    refused_ids: list


@dataclass(frozen=True)
class HoldTolerance:
    """Intrafraction tolerance: when to raise the ``hold`` signal.

    Attributes
    ----------
    dx_mm, dy_mm : float
        Largest acceptable ``|dx_mm|`` and ``|dy_mm|`` (isocentre plane).
    rotation_deg : float
        Largest acceptable ``|rotation_deg|``.
    consecutive : int
        Number of successive ``ok`` frames out of tolerance that raise the hold
        (1 = the first one).
    """

    dx_mm: float = 3.0
    dy_mm: float = 3.0
    rotation_deg: float = 2.0
    consecutive: int = 3

    def __post_init__(self) -> None:
        for name in ("dx_mm", "dy_mm", "rotation_deg"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise PortalignError(f"HoldTolerance.{name} must be a positive number; got {value!r}")
        if isinstance(self.consecutive, bool) or not isinstance(self.consecutive, int) or self.consecutive < 1:
            raise PortalignError(f"HoldTolerance.consecutive must be an integer >= 1; got {self.consecutive!r}")

    def exceeded(self, result: RegistrationResult) -> list[str]:
        """Return one phrase per axis of ``result`` out of tolerance (empty when within)."""
        out = []
        for value, limit, label, unit in (
            (result.dx_mm, self.dx_mm, "dx", "mm"),
            (result.dy_mm, self.dy_mm, "dy", "mm"),
            (result.rotation_deg, self.rotation_deg, "rotation", "deg"),
        ):
            if value is not None and abs(value) > limit:  # a rotation not estimated is not checked
                out.append(f"{label} {value:+.2f} {unit} beyond ±{limit:g} {unit}")
        return out


class HoldMonitor:
    """Count consecutive out-of-tolerance ``ok`` frames and decide the ``hold`` signal.

    Parameters
    ----------
    tolerance : HoldTolerance
    """

    def __init__(self, tolerance: HoldTolerance) -> None:
        self.tolerance = tolerance
        self.hold = False
        self.reason = ""
        self.run_length = 0

    def update(self, result: RegistrationResult | None) -> tuple[bool, str, bool | None]:
        """Take one frame's result into account.

        Parameters
        ----------
        result : RegistrationResult or None
            ``None`` for a skipped or failed frame.

        Returns
        -------
        hold : bool
            The signal after this frame.
        reason : str
            Why the hold is raised, or how close it is; empty when within tolerance.
        out_of_tolerance : bool or None
            This frame's verdict; ``None`` when it says nothing (not ``ok``, skipped, failed).
        """
        if result is None or not result.ok:
            return self.hold, self.reason, None
        exceeded = self.tolerance.exceeded(result)
        if not exceeded:
            self.run_length = 0
            self.hold = False
            self.reason = ""
            return False, "", False
        self.run_length += 1
        n = self.tolerance.consecutive
        what = ", ".join(exceeded)
        if self.run_length >= n:
            self.hold = True
            self.reason = f"{what}: out of tolerance on {self.run_length} consecutive frames (hold at {n})"
        else:
            self.reason = f"{what}: out of tolerance on {self.run_length} of {n} consecutive frames needed for a hold"
        return self.hold, self.reason, True

    def reset(self) -> None:
        """Clear the hold and the run of out-of-tolerance frames."""
        self.hold, self.reason, self.run_length = False, "", 0


@dataclass(frozen=True)
class FrameRecord:
    """What happened to one pushed frame.

    Attributes
    ----------
    frame_id : object
        The id given to :meth:`FrameStream.push` (its sequence number by default).
    sequence : int
        0-based order in which the stream accepted the frame; records come out in this order.
    status : {"ok", "not_ok", "error", "skipped"}
        ``ok``/``not_ok``: registered (``result.ok``); ``error``: the frame could
        not be registered (``error`` says why); ``skipped``: dropped by ``policy="latest"``.
    result : RegistrationResult or None
        ``None`` unless registered.
    error, error_kind : str
        One-line message naming the frame and the exception class; empty otherwise.
    skipped : bool
        ``status == "skipped"``.
    hold : bool
        Intrafraction hold signal after this frame (always False without a tolerance).
    hold_reason : str
        Why (or how close to) a hold; empty when within tolerance.
    out_of_tolerance : bool or None
        This frame's verdict; ``None`` when it carries none.
    queue_ms, register_ms, latency_ms : float
        Wait in the queue, decoding + registration, and their sum.
    """

    frame_id: Any
    sequence: int
    status: str
    result: RegistrationResult | None = None
    error: str = ""
    error_kind: str = ""
    skipped: bool = False
    hold: bool = False
    hold_reason: str = ""
    out_of_tolerance: bool | None = None
    queue_ms: float = 0.0
    register_ms: float = 0.0
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the frame was registered and the result is trustworthy."""
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the result nested under ``"result"``)."""
        return {
            "frame_id": _json_id(self.frame_id),
            "sequence": self.sequence,
            "status": self.status,
            "skipped": self.skipped,
            "error": self.error,
            "error_kind": self.error_kind,
            "hold": self.hold,
            "hold_reason": self.hold_reason,
            "out_of_tolerance": self.out_of_tolerance,
            "queue_ms": self.queue_ms,
            "register_ms": self.register_ms,
            "latency_ms": self.latency_ms,
            "result": self.result.as_dict() if self.result is not None else None,
        }


@dataclass
class _Item:
    sequence: int
    frame_id: Any
    payload: Any
    pixel_spacing_mm: Any
    pushed: float
    marker: str = ""  # "" (a frame to register), "skipped" or "error"
    error: str = ""
    error_kind: str = ""
    settled: float = 0.0  # when a marker was decided


@dataclass
class StreamStats:
    """Counts of what a stream has done so far."""

    accepted: int = 0
    registered: int = 0
    ok: int = 0
    not_ok: int = 0
    errors: int = 0
    skipped: int = 0
    holds: int = 0
    latency_ms: list[float] = field(default_factory=list)


_END = object()


class FrameStream:
    """Register a stream of frames against one reference, prepared once, in a worker thread.

    Parameters
    ----------
    reference : Reference, Image, numpy.ndarray, path or pydicom.Dataset
        A prepared :class:`~portalign.registration.Reference` is used as it is;
        anything else is prepared here, once (arrays need ``pixel_spacing_mm``).
    options : RegistrationOptions, optional
        Used only when the reference is prepared here.
    backend : {"auto", "cpu", "gpu"}
        Likewise.
    pixel_spacing_mm : float or (float, float), optional
        Isocentre-plane spacing of array frames (and of an array reference),
        unless given per :meth:`push`.
    policy : {"all", "latest"}
        Overflow policy (see the module notes).
    maxsize : int
        ``policy="all"``: frames that may wait before ``push`` blocks.
        ``policy="latest"`` keeps only the newest waiting frame.
    push_timeout : float, optional
        ``policy="all"``: seconds ``push`` waits for room before raising
        :class:`StreamFullError`; ``None`` waits as long as it takes.
    tolerance : HoldTolerance, optional
        Enables the intrafraction ``hold`` signal.
    journal : Journal, optional
        Every record is appended (``source="stream"``).
    on_record : callable, optional
        Called with each :class:`FrameRecord` from the worker thread; keep it
        short. Exceptions it raises are kept in :attr:`callback_errors`.
    keep_records : bool
        Also queue the records for :meth:`get` / iteration (default). Turn off
        when only ``on_record`` or the journal consume them.

    Examples
    --------
    >>> with FrameStream(drr, policy="latest", tolerance=HoldTolerance(3, 3, 2, consecutive=3)) as stream:
    ...     for frame in epid_frames:          # doctest: +SKIP
    ...         stream.push(frame)
    ...     for record in stream.drain():
    ...         print(record.frame_id, record.status, record.hold)
    """

    def __init__(
        self,
        reference: Any,
        *,
        options: RegistrationOptions | None = None,
        backend: str = "auto",
        pixel_spacing_mm: Any = None,
        policy: str = "all",
        maxsize: int = 4,
        push_timeout: float | None = None,
        tolerance: HoldTolerance | None = None,
        journal: Journal | None = None,
        on_record: Callable[[FrameRecord], None] | None = None,
        keep_records: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise PortalignError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise PortalignError(f"maxsize must be an integer >= 1; got {maxsize!r}")
        if push_timeout is not None and not push_timeout >= 0:
            raise PortalignError(f"push_timeout must be >= 0 seconds or None; got {push_timeout!r}")
        if isinstance(reference, Reference):
            self.reference = reference
        else:
            image = as_image(reference, name="reference", pixel_spacing_mm=pixel_spacing_mm)
            self.reference = prepare_reference(image, options, backend=backend)
        self.policy = policy
        self.maxsize = maxsize if policy == "all" else 1
        self.push_timeout = push_timeout
        self.pixel_spacing_mm = pixel_spacing_mm
        self.monitor = HoldMonitor(tolerance) if tolerance is not None else None
        self.journal = journal
        self.on_record = on_record
        self.callback_errors: list[BaseException] = []
        self.journal_errors: list[BaseException] = []
        self.stats = StreamStats()
        self._keep = keep_records
        self._items: deque[_Item] = deque()
        self._waiting = 0  # items holding pixels (not markers)
        self._next_sequence = 0
        self._closing = False
        self._cond = threading.Condition()
        self._out: queue.Queue[Any] = queue.Queue()
        self._finished = False
        self._worker = threading.Thread(target=self._run, name="portalign-stream", daemon=True)
        self._worker.start()

    # --- acquisition side -----------------------------------------------------------------------

    def push(self, frame: Any, *, frame_id: Any = None, pixel_spacing_mm: Any = None,
             timeout: float | None = None) -> Any:
        """Queue one frame for registration and return its id.

        Parameters
        ----------
        frame : numpy.ndarray, Image, pydicom.Dataset, path or bytes
            Converted to an :class:`Image` in the worker (a frame that cannot be
            converted gets an error record). Arrays are copied here, so the
            acquisition may reuse its buffer at once. A multi-frame dataset gives
            its first frame; use :meth:`push_cine` for all of them.
        frame_id : object, optional
            Carried into the record; the sequence number by default.
        pixel_spacing_mm : float or (float, float), optional
            For array frames; defaults to the stream's.
        timeout : float, optional
            ``policy="all"``: seconds to wait for room in this call; the stream's
            ``push_timeout`` by default.

        Returns
        -------
        object
            The frame id.

        Raises
        ------
        StreamFullError
            ``policy="all"`` and no room within the timeout (the frame still gets
            an error record).
        StreamClosedError
            The stream is closed (the frame was not accepted; no record).
        """
        spacing = self.pixel_spacing_mm if pixel_spacing_mm is None else pixel_spacing_mm
        wait = self.push_timeout if timeout is None else timeout
        if isinstance(frame, np.ndarray):
            frame = frame.copy()
        now = time.perf_counter()
        with self._cond:
            self._check_open()
            if self.policy == "all":
                deadline = None if wait is None else now + float(wait)
                while self._waiting >= self.maxsize and not self._closing:
                    remaining = None if deadline is None else deadline - time.perf_counter()
                    if remaining is not None and remaining <= 0:
                        item = self._accept(frame_id, None, spacing, now)
                        item.marker, item.error_kind = "error", StreamFullError.__name__
                        item.error = (
                            f"frame {item.frame_id}: refused, the queue held {self.maxsize} frames for {wait:g} s; "
                            "registration is slower than acquisition (use policy='latest' or a longer push_timeout)"
                        )
                        item.settled = time.perf_counter()
                        self._cond.notify_all()
                        full = StreamFullError(item.error)
                        full.frame_ids, full.refused_ids = [item.frame_id], [item.frame_id]
                        raise full
                    self._cond.wait(remaining)
                self._check_open()
            else:
                # latest: a frame still waiting is stale now; drop its pixels, keep its place for the record
                for older in self._items:
                    if not older.marker:
                        older.marker, older.payload, older.settled = "skipped", None, now
                        self._waiting -= 1
            item = self._accept(frame_id, frame, spacing, now)
            self._waiting += 1
            self._cond.notify_all()
            return item.frame_id

    def push_cine(self, source: Any, *, frame_ids: list[Any] | None = None, pixel_spacing_mm: Any = None,
                  timeout: float | None = None) -> list[Any]:
        """Push every frame of a (multi-frame) RT Image and return their ids.

        The file is decoded here, in the caller's thread
        (:func:`portalign.dicom.read_rt_image_frames`). When it cannot be read,
        one error record stands for the whole instance and its id is returned alone.

        Parameters
        ----------
        source : path, bytes, file-like or pydicom.Dataset
        frame_ids : list, optional
            One id per frame; sequence numbers by default.
        pixel_spacing_mm : float or (float, float), optional
            Overrides the file's spacing (isocentre plane).
        timeout : float, optional
            As for :meth:`push`.

        Returns
        -------
        list
            The ids, in frame order.

        Raises
        ------
        StreamFullError
            ``policy="all"``: some frames were refused (the queue stayed full for the timeout). Every frame was
            pushed and has its record; the exception's ``frame_ids`` are all their ids, ``refused_ids`` the refused.
        """
        from .dicom import read_rt_image_frames

        try:
            frames = read_rt_image_frames(source, pixel_spacing_mm=pixel_spacing_mm)
        except Exception as exc:  # an unreadable instance is a record, not a crash
            with self._cond:
                self._check_open()
                item = self._accept(frame_ids[0] if frame_ids else None, None, None, time.perf_counter())
                item.marker, item.error, item.error_kind = "error", _named(item.frame_id, exc), type(exc).__name__
                item.settled = item.pushed
                self._cond.notify_all()
                return [item.frame_id]
        if frame_ids is not None and len(frame_ids) != len(frames):
            raise PortalignError(f"push_cine: {len(frame_ids)} frame ids for {len(frames)} frames")
        # every frame is pushed, a refused one included (its error record): a refusal does not end the file there
        # (a new user's second frame had no record at all and its id was never returned)
        ids: list[Any] = []
        refused: list[Any] = []
        for index, image in enumerate(frames):
            try:
                ids.append(self.push(image, frame_id=None if frame_ids is None else frame_ids[index], timeout=timeout))
            except StreamFullError as exc:
                ids.extend(exc.frame_ids)
                refused.extend(exc.refused_ids)
        if refused:
            full = StreamFullError(
                f"push_cine: {len(refused)} of {len(frames)} frames refused (ids {', '.join(map(str, refused))}), the "
                f"queue held {self.maxsize} frames for the push timeout; each has an error record, the others were "
                "queued; registration is slower than acquisition (use policy='latest' or a longer push_timeout)")
            full.frame_ids, full.refused_ids = ids, refused
            raise full
        return ids

    def warm_up(self, frame: Any, *, pixel_spacing_mm: Any = None) -> None:
        """Register ``frame`` once in the calling thread, without a record.

        Builds the reference's plan for this frame geometry and compiles the
        kernels, so that the first real frame is not late.
        """
        spacing = self.pixel_spacing_mm if pixel_spacing_mm is None else pixel_spacing_mm
        self.reference.warm_up(as_image(frame, name="warm-up frame", pixel_spacing_mm=spacing))

    # --- consumer side ----------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> FrameRecord:
        """Return the next record, in push order.

        Raises
        ------
        TimeoutError
            No record within ``timeout`` seconds.
        StreamClosedError
            The stream is closed and every record has been returned.
        """
        if not self._keep:
            raise StreamClosedError("this stream was created with keep_records=False; read on_record or the journal")
        try:
            record = self._out.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no frame record within {timeout} s") from None
        if record is _END:
            self._out.put(_END)  # let other readers see the end too
            raise StreamClosedError("the stream is closed and every record has been read")
        return record  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[FrameRecord]:
        """Yield records until the stream is closed and drained (blocks while it is open)."""
        while True:
            try:
                yield self.get()
            except StreamClosedError:
                return

    def drain(self, timeout: float | None = None) -> list[FrameRecord]:
        """Close the stream (registering every accepted frame) and return the records not yet read."""
        self.close(timeout=timeout)
        return list(self)

    @property
    def pending(self) -> int:
        """Frames (and markers) accepted but not yet turned into records."""
        with self._cond:
            return len(self._items)

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting frames and wait for the worker.

        Parameters
        ----------
        drain : bool
            Register the frames still waiting (default); ``False`` records them as skipped.
        timeout : float, optional
            Seconds to wait for the worker; it keeps running in the background past that.
        """
        with self._cond:
            self._closing = True
            if not drain:
                now = time.perf_counter()
                for item in self._items:
                    if not item.marker:
                        item.marker, item.payload, item.settled = "skipped", None, now
                        self._waiting -= 1
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise StreamClosedError("the stream is closed; create a new FrameStream to push more frames")

    def _accept(self, frame_id: Any, payload: Any, spacing: Any, pushed: float) -> _Item:
        sequence = self._next_sequence
        self._next_sequence += 1
        item = _Item(sequence, sequence if frame_id is None else frame_id, payload, spacing, pushed)
        self._items.append(item)
        self.stats.accepted += 1
        return item

    def _run(self) -> None:
        # cine ("all"): frames already waiting when the worker turns round go into one batch, registered side by
        # side (one lane each; on the CPU one thread each), and their records still come out in push order
        workers = batch_workers(self.reference) if self.policy == "all" else 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="portalign-stream") if workers > 1 else None
        try:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait()
                    if not self._items:
                        break
                    batch = [self._items.popleft()]
                    while (not batch[0].marker and len(batch) < workers and self._items
                           and not self._items[0].marker):
                        batch.append(self._items.popleft())
                    self._waiting -= sum(1 for item in batch if not item.marker)
                    self._cond.notify_all()  # room for a blocked push
                try:
                    records = self._process(batch, pool)
                except BaseException as exc:  # pragma: no cover - _process catches everything it expects
                    records = [FrameRecord(item.frame_id, item.sequence, "error", error=_one_line(exc),
                                           error_kind=type(exc).__name__) for item in batch]
                for record in records:
                    self._emit(record)
        finally:
            if pool is not None:
                pool.shutdown(wait=False)
            self._finished = True
            self._out.put(_END)

    def _process(self, batch: list[_Item], pool: ThreadPoolExecutor | None) -> list[FrameRecord]:
        taken = time.perf_counter()
        if batch[0].marker:
            item = batch[0]
            return [self._record(item, item.marker, None, item.error, item.error_kind,
                                 (item.settled - item.pushed) * 1e3, 0.0)]
        images: list[Any] = []
        failures: dict[int, BaseException] = {}
        for index, item in enumerate(batch):
            payload, item.payload = item.payload, None
            try:
                images.append(_to_image(payload, item.frame_id, item.pixel_spacing_mm))
            except Exception as exc:  # a bad frame is a record; the stream goes on
                images.append(None)
                failures[index] = exc
        good = [i for i, image in enumerate(images) if image is not None]
        results, errors = register_each(self.reference, [images[i] for i in good], pool=pool)
        done = time.perf_counter()
        for position, index in enumerate(good):
            if position in errors:
                failures[index] = errors[position]
        records = []
        for index, item in enumerate(batch):
            result: RegistrationResult | None = None
            if index in failures:
                status, error, kind = "error", _named(item.frame_id, failures[index]), type(failures[index]).__name__
            else:
                result = results[good.index(index)]
                status, error, kind = ("ok" if result.ok else "not_ok"), "", ""
            records.append(self._record(item, status, result, error, kind, (taken - item.pushed) * 1e3,
                                        (done - taken) * 1e3))
        return records

    def _record(self, item: _Item, status: str, result: RegistrationResult | None, error: str, kind: str,
                queue_ms: float, register_ms: float) -> FrameRecord:
        """Return the record of one item; the hold state is updated in push order."""
        if self.monitor is not None:
            hold, reason, out = self.monitor.update(result)
        else:
            hold, reason, out = False, "", None
        return FrameRecord(
            frame_id=item.frame_id,
            sequence=item.sequence,
            status=status,
            result=result,
            error=error,
            error_kind=kind,
            skipped=status == "skipped",
            hold=hold,
            hold_reason=reason,
            out_of_tolerance=out,
            queue_ms=queue_ms,
            register_ms=register_ms,
            latency_ms=queue_ms + register_ms,
        )

    def _emit(self, record: FrameRecord) -> None:
        stats = self.stats
        if record.status in ("ok", "not_ok"):
            stats.registered += 1
            stats.latency_ms.append(record.latency_ms)
            if len(stats.latency_ms) > 10000:
                del stats.latency_ms[:5000]
        if record.status == "ok":
            stats.ok += 1
        elif record.status == "not_ok":
            stats.not_ok += 1
        elif record.status == "error":
            stats.errors += 1
        elif record.status == "skipped":
            stats.skipped += 1
        if record.hold:
            stats.holds += 1
        if self.journal is not None:
            try:
                self.journal.append({"source": "stream", **record.as_dict()})
            except Exception as exc:  # the journal failing must not stop registration
                self.journal_errors.append(exc)
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception as exc:
                self.callback_errors.append(exc)
        if self._keep:
            self._out.put(record)


def _to_image(payload: Any, frame_id: Any, pixel_spacing_mm: Any) -> Image:
    if isinstance(payload, Image):
        return payload
    return as_image(payload, name=f"frame {frame_id}", pixel_spacing_mm=pixel_spacing_mm)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _named(frame_id: Any, exc: BaseException) -> str:
    """Return a frame's error naming the frame.

    A list pushed said "<stream>: cannot read DICOM from a list", a bad path only the path: the id a caller looks for
    was in neither.
    """
    text = _one_line(exc)
    name = f"frame {frame_id}"
    return text if text.startswith(name) else f"{name}: {text}"


def _json_id(frame_id: Any) -> Any:
    """Return a frame id as JSON takes it: numpy scalars as Python numbers, other objects as their text."""
    if frame_id is None or isinstance(frame_id, (str, bool, int, float)):
        return frame_id
    if hasattr(frame_id, "item") and getattr(frame_id, "ndim", None) == 0:
        return frame_id.item()
    return str(frame_id)
