"""Append-only journal of results: one JSON object per line, on disk before the call returns.

Every intake path (``portalign serve``, ``portalign scp``, ``portalign watch``
and :class:`portalign.stream.FrameStream`) writes one line per frame or per
failure, so that a result can always be traced after the fact, and a crash
loses at most the record being written. Each :meth:`Journal.append` writes the
whole line with a single ``write`` on a file opened in append mode, then
calls ``os.fsync`` on the descriptor (the file is unbuffered), under a lock: lines
from several threads never interleave, and a line that was acknowledged
survives a power cut (as far as the disk honours ``fsync``).

Record layout (shared by every writer)::

    {"time": "2024-05-01T10:00:00.123456+00:00",   # UTC, added when absent
     "source": "scp" | "watch" | "serve" | "stream",
     "status": "ok" | "not_ok" | "error" | "reference" | "skipped",
     "result": {...RegistrationResult.as_dict()...} | null,
     "error": "" | "one-line message naming the input",
     ...identifiers: sop_instance_uid, file, frame_id, reference_id, ...}

Non-finite floats (NaN, inf) are written as ``null`` so that every line is
strict JSON; numpy scalars and arrays become numbers and lists.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import PortalignError

__all__ = ["Journal", "JournalError", "iter_journal", "json_ready", "read_journal", "result_status", "to_json_line"]


class JournalError(PortalignError, OSError):
    """The journal file cannot be opened or written."""


class Journal:
    """Thread-safe, append-only JSON-lines file with ``fsync`` per record.

    Parameters
    ----------
    path : str or os.PathLike
        The file to append to; created (with its parent folders, unless
        ``make_folders`` is false) when missing. Existing lines are kept.
    fsync : bool
        ``os.fsync`` after every record (default). Turn off only for throwaway
        journals (benchmarks), never for clinical use.
    make_folders : bool
        Create missing parent folders (default). The CLI passes false unless told
        ``--create``: a typo in a folder name must not send the results elsewhere.

    Raises
    ------
    JournalError
        The file cannot be opened for appending, or (``make_folders=False``) its folder does not exist.

    Examples
    --------
    >>> with Journal(tmp_path / "results.jsonl") as journal:  # doctest: +SKIP
    ...     journal.append({"source": "stream", "status": "ok", "result": result.as_dict()})
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True, make_folders: bool = True) -> None:
        self.path = Path(path)
        self._fsync = bool(fsync)
        self._lock = threading.Lock()
        self.records_written = 0
        if not make_folders and not self.path.parent.is_dir():
            raise JournalError(f"{self.path}: the results journal's folder {self.path.parent} does not exist; check "
                               "the path (or create the folder)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # binary + append: one os-level write per line, O_APPEND positions it at the end
            self._file = open(self.path, "ab", buffering=0)  # closed in close()
        except OSError as exc:
            reason = exc.strerror or exc
            raise JournalError(f"{self.path}: cannot open the results journal for appending ({reason})") from exc

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._file.closed

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record as one line and make it durable.

        Parameters
        ----------
        record : mapping
            JSON-ready values (numpy scalars/arrays and non-finite floats are
            converted). ``time`` (UTC ISO 8601) is added when absent.

        Returns
        -------
        dict
            The record as written (with ``time``).

        Raises
        ------
        JournalError
            When the journal is closed or the write fails (disk full...).
        """
        data = dict(record)
        data.setdefault("time", datetime.now(timezone.utc).isoformat())
        line = to_json_line(data).encode("utf-8") + b"\n"
        with self._lock:
            if self._file.closed:
                raise JournalError(f"{self.path}: the journal is closed; open a new Journal to append")
            try:
                view = memoryview(line)
                while view:  # an unbuffered write may be partial (signals); finish it
                    written = self._file.write(view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                raise JournalError(f"{self.path}: cannot write the results journal ({exc.strerror or exc})") from exc
            self.records_written += 1
        return data

    def close(self) -> None:
        """Close the file (further appends raise :class:`JournalError`)."""
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, records_written={self.records_written})"


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every complete record of a journal.

    A last line without its newline (the writer died mid-record) is ignored;
    any other line that is not a JSON object raises.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    list of dict

    Raises
    ------
    JournalError
        When the file cannot be read or a complete line is not a JSON object.
    """
    return list(iter_journal(path))


def iter_journal(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the complete records of a journal one by one (see :func:`read_journal`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the results journal ({exc.strerror or exc})") from exc
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or an unfinished record
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise JournalError(f"{path}: line {number} is not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise JournalError(f"{path}: line {number} is not a JSON object")
        yield record


def result_status(result: Any) -> str:
    """Return ``"ok"`` or ``"not_ok"`` for a :class:`~portalign.result.RegistrationResult`."""
    return "ok" if getattr(result, "ok", False) else "not_ok"


def to_json_line(record: Mapping[str, Any]) -> str:
    """Encode a record as one line of strict JSON (no NaN, no newlines)."""
    return json.dumps(json_ready(record), separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def json_ready(value: Any) -> Any:
    """Return a copy of ``value`` made of strict-JSON types (NaN/inf -> None, numpy -> Python)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in value]
    if isinstance(value, (os.PathLike,)):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return json_ready(value.tolist())
    if hasattr(value, "as_dict"):
        return json_ready(value.as_dict())
    return str(value)
