"""Watch folder: register every RT Image file that lands in a folder, exactly once.

``portalign watch DIR --results results.jsonl [--reference REF.dcm] [--poll 0.2]``
polls ``DIR`` (no extra dependency, works on network shares where change
notifications do not) and handles each new file:

Write-complete detection
    A file is taken only when its size and modification time are the same on
    ``stable_polls`` (default 2) consecutive polls, i.e. nobody wrote to it for
    at least one poll interval; an empty file must stay empty for
    ``empty_polls`` polls (default 10). A file that then reads as cut short
    (truncated, damaged, no DICOM header yet) and was written to less than
    ``YOUNG_S`` (10 s) before is taken as still being written (a writer that
    pauses longer than a poll between its chunks): it is left where it is and
    taken again once it has changed or aged; a trial's file written in five
    chunks 0.5 s apart had been moved to ``failed/`` half written. Names ending in ``.part``, ``.tmp``,
    ``.partial``, ``.crdownload`` or ``~`` and hidden names (``.*``) are never
    taken: the safest way to deliver a file is to write ``NAME.part`` and rename
    it to ``NAME`` when complete (a rename is atomic on one file system). The
    results journal, when it is written inside ``DIR``, is never taken either.
Outcome, one journal line per frame (``source="watch"``, ``file=NAME``)
    A file that is decoded and used (registered, ``ok`` or not, or kept as a
    beam reference; see :class:`portalign.scp.InstanceRegistrar`) is moved to
    ``DIR/done/``. A file that fails (not DICOM, unusable pixels, no reference
    for its beam, registration error) is moved to ``DIR/failed/`` with
    ``NAME.error.txt`` beside it saying why, and its error lines are in the
    journal. A name already taken in ``done/`` or ``failed/`` gets a ``-1``,
    ``-2``... suffix.
Once
    A file is handled once: it leaves ``DIR`` afterwards. If it cannot be moved
    (permissions), it is remembered (path, size, mtime) and not taken again
    while it is unchanged, and the journal says so. Nothing is retried for ever
    and nothing is skipped without a line in the journal.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._cli_options import (
    add_invert_argument,
    add_mismatch_arguments,
    as_flags,
    mismatch_options,
    print_file_line,
)
from .backends import BACKENDS
from .errors import PortalignError
from .journal import Journal
from .scp import InstanceRegistrar, is_reference

__all__ = ["IGNORED_SUFFIXES", "FolderWatcher", "add_arguments", "is_ignored", "run"]

#: A file that cannot be read and was modified less than this many seconds before is taken as still being written.
YOUNG_S = 10.0
#: ``--once``: how long (s) files that keep changing are waited for after the last file was taken.
ONCE_WAIT_S = 60.0


#: Files with these endings are still being written (or are editor/browser leftovers).
IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", "~")
DONE, FAILED = "done", "failed"


def is_ignored(name: str) -> bool:
    """Whether a file name marks a file that must not be taken (in progress, hidden)."""
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(IGNORED_SUFFIXES) or lowered.endswith(".error.txt")


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    polls: int = 1  # consecutive polls with this size and mtime (fewer than 1: held back, see YOUNG_S)


class FolderWatcher:
    """Poll a folder and hand each complete new file to an :class:`~portalign.scp.InstanceRegistrar`.

    Parameters
    ----------
    folder : str or os.PathLike
        The watched folder (created when missing); ``done/`` and ``failed/`` are made inside it.
    registrar : InstanceRegistrar
        Holds the references and writes the journal.
    poll_s : float
        Seconds between polls.
    stable_polls : int
        Polls in a row that must see the same size and mtime before a file is taken (>= 2).
    empty_polls : int
        The same for an empty file.
    young_s : float
        A file that cannot be read and was modified less than this many seconds before is held back as still being
        written (default :data:`YOUNG_S`; 0 fails it at once).
    on_file : callable, optional
        Called as ``on_file(name, lines)`` after each file is handled, with the
        journal lines written for it (``portalign watch`` prints one line per file).
    """

    def __init__(self, folder: str | os.PathLike[str], registrar: InstanceRegistrar, *, poll_s: float = 0.2,
                 stable_polls: int = 2, empty_polls: int = 10, young_s: float = YOUNG_S,
                 on_file: Callable[[str, list[dict[str, Any]]], None] | None = None) -> None:
        if not poll_s > 0:
            raise PortalignError(f"poll_s (the poll interval) must be positive seconds; got {poll_s!r}")
        if stable_polls < 2:
            raise PortalignError(f"stable_polls must be at least 2 (one poll cannot see a file stop growing); "
                                 f"got {stable_polls!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done_dir = self.folder / DONE
        self.failed_dir = self.folder / FAILED
        self.done_dir.mkdir(exist_ok=True)
        self.failed_dir.mkdir(exist_ok=True)
        self.registrar = registrar
        # the results journal may be written into the watched folder itself: it is output, never an input. Only
        # plain files are taken (no links), so an entry is the journal when its name is, in the same folder
        journal_path = getattr(getattr(registrar, "journal", None), "path", None)
        journal_real = os.path.realpath(journal_path) if journal_path is not None else ""
        self._own_names = ({os.path.basename(journal_real)}
                           if journal_real and os.path.dirname(journal_real) == os.path.realpath(self.folder) else set())
        self.poll_s = float(poll_s)
        self.stable_polls = int(stable_polls)
        self.empty_polls = max(int(empty_polls), self.stable_polls)
        self.young_s = float(young_s)
        self._seen: dict[str, _Seen] = {}
        #: Subfolders of the watched folder (other than done/ and failed/) seen on the last scan: not looked into.
        self.subfolders: list[str] = []
        self.not_files: list[str] = []
        self._unmovable: set[tuple[str, int, int]] = set()
        self.files_done = 0
        self.files_failed = 0
        #: ``run(until_idle=True)``: files still changing when it gave up waiting (``once_wait_s``).
        self.left_waiting: list[str] = []
        self.once_wait_s = ONCE_WAIT_S
        self.on_file = on_file

    @property
    def waiting(self) -> list[str]:
        """Names seen but not yet taken (still changing, or not yet stable)."""
        return sorted(self._seen)

    def poll_once(self) -> list[dict[str, Any]]:
        """Scan once, handle every file that has become stable, and return the journal lines written."""
        present: dict[str, os.stat_result] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise PortalignError(f"{self.folder}: cannot list the watched folder ({exc.strerror or exc})") from exc
        self.subfolders = sorted(e.name for e in entries if e.name not in (DONE, FAILED) and _is_folder(e))
        # links, pipes and devices are not taken (a link's target may change or be anything: /dev/zero): said, not
        # dropped silently
        self.not_files = sorted(e.name for e in entries if e.name not in self.subfolders and not is_ignored(e.name)
                                and e.name not in (DONE, FAILED) and not _is_plain_file(e))
        for entry in entries:
            try:
                if (entry.is_file(follow_symlinks=False) and not is_ignored(entry.name)
                        and entry.name not in self._own_names):
                    present[entry.name] = entry.stat(follow_symlinks=False)
            except OSError:  # vanished between scandir and stat: it is not ours any more
                continue
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]  # renamed or removed by its writer before it was stable
        ready = []
        for name, stat in present.items():
            seen = self._seen.get(name)
            if seen is not None and seen.size == stat.st_size and seen.mtime_ns == stat.st_mtime_ns:
                seen.polls += 1
            else:
                seen = self._seen[name] = _Seen(stat.st_size, stat.st_mtime_ns)
            needed = self.stable_polls if stat.st_size > 0 else self.empty_polls
            key = (name, stat.st_size, stat.st_mtime_ns)
            if seen.polls >= needed and key not in self._unmovable:
                ready.append((stat.st_mtime_ns, name, key))
        lines: list[dict[str, Any]] = []
        queue = [(name, key) for _, name, key in sorted(ready)]
        for _, name, _ in ready:
            del self._seen[name]
        # a frame whose beam has no reference yet waits for the files taken in the same scan: its reference may be
        # among them (`cp *.dcm` copies a_frame.dcm before z_ref.dcm, and a trial's frame failed so)
        deferred = []
        for position, (name, key) in enumerate(queue):
            handled = self._handle(name, key, defer_orphan=position < len(queue) - 1)
            if handled is None:
                deferred.append((name, key))
            else:
                lines.extend(handled)
        for name, key in deferred:
            lines.extend(self._handle(name, key) or [])
        return lines

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False,
            timeout: float | None = None) -> None:
        """Poll until ``stop`` is set (or, with ``until_idle``, until no file is left to take).

        Parameters
        ----------
        stop : threading.Event, optional
        until_idle : bool
            Return once a poll finds no file waiting (files in progress under an
            ignored name are not waited for).
        timeout : float, optional
            Return after this many seconds in any case.
        """
        stop = stop or threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        progress, since = (self.files_done, self.files_failed), time.monotonic()
        while not stop.is_set():
            self.poll_once()
            if until_idle and not self._seen:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if until_idle:
                # files that keep changing are waited for while others are taken, and at most ONCE_WAIT_S after the
                # last one (a hostile campaign's file appended to for 90 s held --once with nothing said; a writer
                # that never stops would hold it for ever): they are left, and named (left_waiting)
                if (self.files_done, self.files_failed) != progress:
                    progress, since = (self.files_done, self.files_failed), time.monotonic()
                elif time.monotonic() - since >= self.once_wait_s:
                    self.left_waiting = sorted(self._seen)
                    return
            stop.wait(self.poll_s)

    # --- one file -----------------------------------------------------------------------------------

    def _handle(self, name: str, key: tuple[str, int, int], defer_orphan: bool = False) -> list[dict[str, Any]] | None:
        """Take one file; ``None`` (nothing done) for a frame with no reference yet when ``defer_orphan``."""
        from .dicom import read_rt_image_frames

        path = self.folder / name
        try:
            images = read_rt_image_frames(path, invert=self.registrar.invert)
        except Exception as exc:
            age = time.time() - key[2] / 1e9
            if age < self.young_s and key[1] > 0 and _cut_short(exc, key[1]):  # written a moment ago and ends early: likely still
                # being written; looked at again when it changes or is older (an empty file waited empty_polls already)
                self._seen[name] = _Seen(key[1], key[2], polls=1 - max(1, math.ceil((self.young_s - age) / self.poll_s)))
                return []
            detail = _watch_hints(_one_line(exc))
            detail = detail[len(name) + 2:] if detail.startswith(f"{name}: ") else detail  # the reader names it too
            message = f"{name}: cannot be read as an RT Image: {detail}"
            lines = [self.registrar.error(message, stage="decode", error_kind=type(exc).__name__, file=name)]
        else:
            if defer_orphan and images and not is_reference(images[0]) and not self.registrar.has_reference(images[0]):
                return None
            lines = self.registrar.handle(images, file=name)
        errors = [line for line in lines if line.get("status") == "error"]
        if errors:
            self.files_failed += 1
            text = "\n".join(str(line.get("error", "")) for line in errors) + "\n"
            lines += self._move(path, self.failed_dir, key, error_text=text)
        else:
            self.files_done += 1
            lines += self._move(path, self.done_dir, key)
        if self.on_file is not None:
            self.on_file(name, lines)
        return lines

    def _move(self, path: Path, folder: Path, key: tuple[str, int, int], error_text: str = "") -> list[dict[str, Any]]:
        target = _free_name(folder, path.name)
        try:
            os.replace(path, target)
        except OSError as exc:
            self._unmovable.add(key)
            message = (f"{path.name}: handled, but cannot be moved to {folder.name}/ ({exc.strerror or exc}); "
                       "it will not be taken again while unchanged")
            return [self.registrar.error(message, stage="move", error_kind=type(exc).__name__, file=path.name)]
        if error_text:
            try:
                target.with_name(target.name + ".error.txt").write_text(error_text, encoding="utf-8")
            except OSError as exc:
                message = f"{path.name}: moved to failed/ but the .error.txt cannot be written ({exc.strerror or exc})"
                return [self.registrar.error(message, stage="move", error_kind=type(exc).__name__, file=path.name)]
        return []


#: Words of the reader's errors that a file cut short (still being written) gives.
_CUT_SHORT = ("truncated", "cut short", "damaged DICOM file")
#: A DICOM file's preamble and "DICM": a file shorter than this is no DICOM file *yet*.
_DICOM_HEADER_BYTES = 132


def _cut_short(exc: BaseException, size: int) -> bool:
    """Whether a read error is one that a partly written file of ``size`` bytes gives."""
    text = str(exc)
    return any(words in text for words in _CUT_SHORT) or (size < _DICOM_HEADER_BYTES and "not a DICOM file" in text)


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix = os.path.splitext(name)
    n = 0
    while target.exists() or target.with_name(target.name + ".error.txt").exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


def _watch_hints(text: str) -> str:
    """Say the geometry overrides a reader's error names as the watch folder can take them: it has none per file.

    The reader's ``pass pixel_spacing_mm=`` (a Python keyword; ``portalign register --pixel-spacing-mm``) cannot be
    given to a watched file: the file itself must be corrected (a new user's trial followed it and found no flag).
    """
    return re.sub(r"(?:correct the tags? or )?pass (pixel_spacing_mm|sid_mm|sad_mm)=(?: and (?:sid_mm|sad_mm)=)?"
                  r"(?: \(--[\w-]+\))?(?: \(mm at the isocentre\))?",
                  "correct the file (a watched folder has no override for it; portalign register takes "
                  "--pixel-spacing-mm, --sid-mm and --sad-mm)", text)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign watch`` options to ``parser``."""
    parser.add_argument("folder", metavar="DIR", help="folder to watch (done/ and failed/ are made inside it)")
    parser.add_argument("--results", required=True, metavar="RESULTS.jsonl",
                        help="journal: one JSON line per frame (result or error)")
    parser.add_argument("--reference", metavar="REF.dcm",
                        help="reference for frames whose beam has no reference of its own "
                             "(default: none; every beam's reference is dropped in first)")
    add_invert_argument(parser)
    parser.add_argument("--poll", type=float, default=0.2, metavar="SECONDS", help="poll interval (default 0.2)")
    parser.add_argument("--stable-polls", type=int, default=2, metavar="N",
                        help="polls with unchanged size and mtime before a file is taken (default 2)")
    parser.add_argument("--once", action="store_true",
                        help="handle the files present (once complete) and exit instead of watching; exit status 1 "
                             "when any file failed (could not be read, or had no reference); a refused match is a "
                             "result, not a failure (status 0: the summary line counts the frames not ok, and the "
                             "journal says why)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="compute backend (default auto)")
    add_mismatch_arguments(parser)
    parser.add_argument("--create", action="store_true",
                        help="make DIR (and the folder of --results) when it does not exist (default: a missing folder "
                             "is an error: a typo in the path would otherwise watch an empty new folder and report "
                             "nothing, or write the results elsewhere)")


#: Exit status of ``portalign watch --once`` when a file failed (moved to failed/).
EXIT_FILE_FAILED = 1


def run(args: argparse.Namespace) -> int:
    """Run ``portalign watch``; returns the exit status.

    0 when every file was handled (``--once``) or the watch was stopped, 1
    (:data:`EXIT_FILE_FAILED`) with ``--once`` when any file failed, 2 on unusable arguments.
    """
    journal = None
    folder = Path(args.folder)
    if not folder.is_dir() and not getattr(args, "create", False):
        what = ("is a file, not a folder; give the folder the files land in" if folder.exists()
                else "does not exist; check the path (or pass --create to make it)")
        print(f"portalign watch: {folder} {what}", file=sys.stderr)
        return 2
    try:
        try:
            journal = Journal(args.results, make_folders=bool(getattr(args, "create", False)))
        except PortalignError as exc:  # its folder is missing: this command makes it with --create
            raise PortalignError(f"{exc}; --create makes it") from None
        registrar = InstanceRegistrar(journal, reference=args.reference, backend=args.backend, source="watch",
                                      invert=getattr(args, "invert", None), options=mismatch_options(args),
                                      wording=functools.partial(as_flags, parser=getattr(args, "subparser", None)))
        watcher = FolderWatcher(args.folder, registrar, poll_s=args.poll, stable_polls=args.stable_polls,
                                on_file=functools.partial(print_file_line, parser=getattr(args, "subparser", None)))
    except (PortalignError, OSError) as exc:
        if journal is not None:
            journal.close()
        print(f"portalign watch: {as_flags(str(exc), getattr(args, 'subparser', None))}", file=sys.stderr)
        return 2
    if not args.once:
        print(f"portalign watch: watching {watcher.folder} every {watcher.poll_s:g} s; results -> {journal.path}",
              file=sys.stderr, flush=True)
    stop = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main_thread else None
    try:
        watcher.run(stop, until_idle=args.once)
    except KeyboardInterrupt:
        pass
    except PortalignError as exc:
        print(f"portalign watch: {as_flags(str(exc), getattr(args, 'subparser', None))}", file=sys.stderr)
        return 2
    finally:
        journal.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.once:
        # files of earlier runs are not looked at again: say where they are when this run found nothing to do
        earlier = ""
        if not watcher.files_done and not watcher.files_failed:
            counts = {name: sum(1 for p in (watcher.folder / name).glob("*") if p.is_file() and p.suffix != ".txt")
                      for name in (DONE, FAILED) if (watcher.folder / name).is_dir()}
            if any(counts.values()):
                earlier = (" (nothing new; earlier runs left " + ", ".join(f"{n} in {name}/" for name, n in counts.items())
                           + f": move a file back into {watcher.folder} to process it again)")
        if watcher.subfolders:  # files there were not looked at: said, not dropped silently
            shown = ", ".join(f"{name}/" for name in watcher.subfolders[:5])
            more = f" and {len(watcher.subfolders) - 5} more" if len(watcher.subfolders) > 5 else ""
            earlier += (f"; subfolders are not looked into ({shown}{more}): move their files into {watcher.folder} "
                        "or watch each folder")
        if watcher.not_files:  # links, pipes, devices: not taken, and said
            shown = ", ".join(watcher.not_files[:5])
            more = f" and {len(watcher.not_files) - 5} more" if len(watcher.not_files) > 5 else ""
            earlier += (f"; entries that are not plain files are not taken ({shown}{more}: links, pipes or devices): "
                        f"copy the files themselves into {watcher.folder}")
        if watcher.left_waiting:  # still being written when --once stopped waiting: not taken, and said
            shown = ", ".join(watcher.left_waiting[:5])
            more = f" and {len(watcher.left_waiting) - 5} more" if len(watcher.left_waiting) > 5 else ""
            earlier += (f"; {len(watcher.left_waiting)} file(s) still changing after {watcher.once_wait_s:g} s were "
                        f"left as they are ({shown}{more}): run again once their writer has finished")
        what = f" ({watcher.registrar.summary()})" if watcher.files_done or watcher.files_failed else ""
        print(f"portalign watch: {watcher.files_done} done, {watcher.files_failed} failed{what}{earlier}",
              file=sys.stderr)
        return EXIT_FILE_FAILED if watcher.files_failed or watcher.left_waiting else 0
    return 0


def _is_plain_file(entry: os.DirEntry) -> bool:
    """Whether a scanned entry is a plain file (not through a link); True where it vanished (nothing to say)."""
    try:
        return entry.is_file(follow_symlinks=False) or not os.path.lexists(entry.path)
    except OSError:
        return True


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether a scanned entry is a folder (not through a link); False where it vanished."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m portalign.watch`` (same options as ``portalign watch``)."""
    parser = argparse.ArgumentParser(prog="portalign watch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.subparser = parser
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
