"""DICOM receiver: a C-STORE SCP that registers every RT Image it receives.

``portalign scp --port 11112 --results results.jsonl [--reference REF.dcm]``
listens for RT Image Storage; for each received instance it

1. decodes it (every frame of a multi-frame cine image); an instance that
   cannot be decoded gets an error C-STORE status (``0xC210``, "cannot
   understand") with an ``ErrorComment`` saying why, and an error line;
2. keeps it as the reference of its beam when it *is* a reference (see
   :func:`is_reference`): a DRR, or an image whose ImageType or RTImageLabel
   says reference/DRR; the beam is the pair (ReferencedRTPlanSequence[0]
   .ReferencedSOPInstanceUID, ReferencedBeamNumber);
3. otherwise registers each frame against the reference of the same beam,
   received earlier, or else against the configured ``--reference``; the beam's
   own reference wins when both exist;
4. appends one JSON line per frame to the results journal (registration result
   or error, with the SOP Instance UID and frame index), ``fsync``-ed before the
   C-STORE response leaves;
5. answers ``0x0000`` (success) whenever the instance was received and decoded,
   even if the registration is not ``ok`` or no reference was available: the
   image was received, and the journal says what became of it.

Calling AE titles can be restricted (``--allow-ae CONSOLE1,CONSOLE2``): other
callers' associations are rejected. Verification (C-ECHO) is answered.

:class:`InstanceRegistrar` holds the reference logic and writes the journal; the
watch folder (:mod:`portalign.watch`) uses it too.
"""

from __future__ import annotations

import argparse
import functools
import re
import signal
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._cli_options import (
    add_invert_argument,
    add_mismatch_arguments,
    add_warm_up_argument,
    as_flags,
    listen_problem,
    mismatch_options,
    print_file_line,
)
from .backends import BACKENDS, Backend, select_backend
from .errors import MissingDependencyError, PortalignError
from .image import Image
from .journal import Journal
from .options import RegistrationOptions
from .registration import Reference, prepare_reference, warm_up_kernels

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_SUCCESS",
    "InstanceRegistrar",
    "add_arguments",
    "beam_key",
    "is_reference",
    "run",
    "start_scp",
]

STATUS_SUCCESS = 0x0000
#: C-STORE "Error: cannot understand" (PS3.4 B.2.3): the instance could not be decoded as an image.
STATUS_CANNOT_UNDERSTAND = 0xC210
#: C-STORE "Refused: out of resources" when the handler itself fails (a bug, or the journal cannot be written).
STATUS_OUT_OF_RESOURCES = 0xA700

_REFERENCE_WORDS = re.compile(r"(?<![A-Z0-9])(REF|REFERENCE|DRR)(?![A-Z0-9])")


def is_reference(image: Image) -> bool:
    """Whether a received RT Image is a reference (DRR or approved reference image) rather than a frame.

    True for a DRR (``info.kind == "drr"``: ImageType value 3 ``DRR``, a DRR label,
    or a WSD DERIVED image with SID = SAD; see :mod:`portalign.dicom`), and for an
    image whose ImageType has a ``REFERENCE`` value or whose RTImageLabel contains
    the word ``REF``, ``REFERENCE`` or ``DRR``.
    """
    if image.info.kind == "drr":
        return True
    extra = image.info.extra
    image_type = [v.strip().upper() for v in str(extra.get("image_type", "")).split("\\")]
    if "REFERENCE" in image_type or "DRR" in image_type:
        return True
    return bool(_REFERENCE_WORDS.search(str(extra.get("rt_image_label", "")).upper()))


def beam_key(image: Image) -> tuple[str, int | None]:
    """``(referenced RT Plan SOP Instance UID, referenced beam number)`` of an image; ``""``/``None`` when absent."""
    extra = image.info.extra
    beam = extra.get("referenced_beam_number")
    return str(extra.get("referenced_rt_plan_uid", "") or ""), (int(beam) if beam is not None else None)


class InstanceRegistrar:
    """Register received RT Images against their reference and journal every outcome.

    Parameters
    ----------
    journal : Journal
        One line per frame, reference or failure.
    reference : Reference, Image, path or pydicom.Dataset, optional
        The configured reference, used for frames whose beam has no reference of
        its own.
    options : RegistrationOptions, optional
    backend : {"auto", "cpu", "gpu"} or Backend
        Chosen once for every reference.
    source : str
        ``"scp"`` or ``"watch"``: the ``source`` field of the journal lines.
    max_references : int
        Per-beam references kept; the least recently used is dropped beyond it.
    invert : bool, optional
        Passed to the reader of every received image (``--invert``): force or
        forbid inverting the pixel values; the DICOM intensity sign by default.
    wording : callable, optional
        Applied to each journaled error, reason and warning: the command-line
        front ends pass one that names their flags (``as_flags``), so that the
        results file advises ``--allow-view-mismatch`` as their console does.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        reference: Any = None,
        options: RegistrationOptions | None = None,
        backend: str | Backend = "auto",
        source: str = "scp",
        max_references: int = 64,
        invert: bool | None = None,
        wording: Callable[[str], str] | None = None,
    ) -> None:
        self.journal = journal
        self.wording = wording
        self.invert = invert
        self.options = options or RegistrationOptions()
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend)
        self.source = source
        self.max_references = max_references
        self._beams: OrderedDict[tuple[str, int | None], tuple[Reference, str]] = OrderedDict()
        self._lock = threading.Lock()
        #: Journal lines written so far, by status (``ok``, ``not_ok``, ``reference``, ``error``).
        self.counts: Counter[str] = Counter()
        self.configured: Reference | None = None
        self.configured_uid = ""
        if reference is not None:
            if isinstance(reference, Reference):
                self.configured = reference
            else:
                from .dicom import read_rt_image
                from .image import as_image

                image = (as_image(reference, name="reference") if isinstance(reference, Image)
                         else read_rt_image(reference, invert=invert))
                self.configured = prepare_reference(image, self.options, backend=self.backend)
            self.configured_uid = self.configured.image.info.sop_instance_uid

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Journal ``record``, its error, reason and warnings in :attr:`wording`'s words where one is given."""
        if self.wording is not None:
            if record.get("error"):
                record["error"] = self.wording(record["error"])
            result = record.get("result")
            if result:
                result["reason"] = self.wording(result.get("reason") or "")
                result["warnings"] = [self.wording(w) for w in result.get("warnings") or ()]
        line = self.journal.append(record)
        with self._lock:
            self.counts[str(record.get("status"))] += 1
        return line

    def summary(self) -> str:
        """Return what was journaled so far, in words: ``"3 frames registered (2 ok, 1 not ok), 1 reference, 0 errors"``."""
        with self._lock:
            counts = dict(self.counts)
        ok, not_ok = counts.get("ok", 0), counts.get("not_ok", 0)
        references, errors = counts.get("reference", 0), counts.get("error", 0)
        return (f"{ok + not_ok} frame{'s' * (ok + not_ok != 1)} registered ({ok} ok, {not_ok} not ok), "
                f"{references} reference{'s' * (references != 1)}, {errors} error{'s' * (errors != 1)}")

    @property
    def beams(self) -> list[tuple[str, int | None]]:
        """Beams that have a reference of their own."""
        with self._lock:
            return list(self._beams)

    def error(self, message: str, *, stage: str, error_kind: str = "", **context: Any) -> dict[str, Any]:
        """Journal an error line for an instance (or file) that produced no image, and return it."""
        return self._append(
            {"source": self.source, "status": "error", "stage": stage, "error": message, "error_kind": error_kind,
             "result": None, **context}
        )

    def handle(self, images: Sequence[Image], **context: Any) -> list[dict[str, Any]]:
        """Use every frame of one received instance and return the journal lines written.

        Parameters
        ----------
        images : sequence of Image
            The frames of one instance (:func:`portalign.dicom.read_rt_image_frames`).
        **context
            Identifiers added to every line (``calling_ae=``, ``file=``...).

        Returns
        -------
        list of dict
            One line per frame; a reference instance gives one ``"reference"`` line.
        """
        if not images:
            return [self.error("the instance holds no frame", stage="decode", **context)]
        first = images[0]
        plan_uid, beam = beam_key(first)
        # not recorded: null, not an empty text
        ids = {"sop_instance_uid": first.info.sop_instance_uid or None, "plan_uid": plan_uid or None, "beam_number": beam}
        if is_reference(first):
            return [self._store_reference(first, ids, context)]
        lines = []
        for image in images:
            lines.append(self._register(image, ids, context))
        return lines

    def _store_reference(self, image: Image, ids: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        key = (ids["plan_uid"], ids["beam_number"])
        try:
            reference = prepare_reference(image, self.options, backend=self.backend)
        except Exception as exc:  # a reference that cannot be prepared is journaled, never fatal
            return self._append(
                {"source": self.source, "status": "error", "stage": "reference", **ids, **context,
                 "error": f"reference {image.info.source}: {_one_line(exc)}", "error_kind": type(exc).__name__,
                 "result": None}
            )
        with self._lock:
            replaced = key in self._beams
            self._beams[key] = (reference, image.info.sop_instance_uid)
            self._beams.move_to_end(key)
            while len(self._beams) > self.max_references:
                self._beams.popitem(last=False)
        return self._append(
            {"source": self.source, "status": "reference", **ids, **context, "kind": image.info.kind,
             "rt_image_label": image.info.extra.get("rt_image_label", ""), "replaced": replaced,
             "shape": list(image.shape), "spacing_mm": list(image.spacing_mm), "result": None, "error": ""}
        )

    def has_reference(self, image: Image) -> bool:
        """Whether a frame like ``image`` would find a reference now (its beam's, or the configured one)."""
        plan_uid, beam = beam_key(image)
        return self._lookup((plan_uid or None, beam))[0] is not None  # type: ignore[arg-type]

    def _lookup(self, key: tuple[str, int | None]) -> tuple[Reference | None, str, str]:
        if not key[0] and key[1] is None and self.configured is not None:
            # a frame that names no plan and no beam goes to the configured reference, not to whichever received
            # image named none either (a trial: a DRR dropped beside the frames captured them despite --reference)
            return self.configured, self.configured_uid, "configured"
        with self._lock:
            found = self._beams.get(key)
            if found is not None:
                self._beams.move_to_end(key)
                return found[0], found[1], "beam"
        if self.configured is not None:
            return self.configured, self.configured_uid, "configured"
        return None, "", ""

    def _register(self, image: Image, ids: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        key = (ids["plan_uid"], ids["beam_number"])
        line: dict[str, Any] = {"source": self.source, **ids, **context, "frame_index": image.info.frame_index}
        reference, ref_uid, match = self._lookup(key)
        if reference is None:
            plan = key[0] or "(none)"
            beam = "(none)" if key[1] is None else key[1]
            line.update(
                status="error",
                stage="reference",
                error=(
                    f"{image.info.source}: no reference for plan {plan} beam {beam}; send the beam's reference "
                    "image (a DRR, or ImageType/RTImageLabel marking it REFERENCE) first, or configure --reference"
                ),
                error_kind="NoReference",
                result=None,
            )
            return self._append(line)
        line.update(reference_sop_instance_uid=ref_uid, reference_match=match)
        started = time.perf_counter()
        try:
            result = reference.register(image)
        except Exception as exc:  # a bad frame is a journal line, never a dead receiver
            line.update(status="error", stage="register", error=f"{image.info.source}: {_one_line(exc)}",
                        error_kind=type(exc).__name__, result=None)
            return self._append(line)
        line.update(status="ok" if result.ok else "not_ok", result=result.as_dict(), error="",
                    latency_ms=(time.perf_counter() - started) * 1e3)
        return self._append(line)


# --------------------------------------------------------------------------------------------------
# the C-STORE SCP
# --------------------------------------------------------------------------------------------------


def _status(code: int, comment: str = "") -> Any:
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = _ascii(comment)[:64]  # LO: at most 64 characters
    return status


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\\", "/")


def _on_store(event: Any, registrar: InstanceRegistrar,
              on_instance: Callable[[str, list[dict[str, Any]]], None] | None = None) -> Any:
    """EVT_C_STORE handler: decode, register, journal, tell ``on_instance``; return the C-STORE status."""
    from .dicom import read_rt_image_frames

    calling = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
    request_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    context = {"calling_ae": calling, "sop_instance_uid": request_uid}
    named = f"instance {_ascii(request_uid)[:64].replace('/', '_')}" if request_uid else ""
    try:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            if named:  # messages name the instance, not "dataset" (a trial's journal: "the reference (dataset) but
                # ... the frame (dataset)"): the reader names a dataset by its file name
                dataset.filename = named
            images = read_rt_image_frames(dataset, invert=registrar.invert)
        except Exception as exc:
            detail = _one_line(exc)  # the reader's message names the instance: said once, and not in the 64
            if named and detail.startswith(f"{named}: "):  # characters of the sender's comment (it knows which)
                detail = detail[len(named) + 2:]
            message = f"instance {request_uid or '(no UID)'}: cannot decode: {detail}"
            line = registrar.error(message, stage="decode", error_kind=type(exc).__name__, **context)
            _tell(on_instance, calling, request_uid, [line])
            return _status(STATUS_CANNOT_UNDERSTAND, detail)
        lines = registrar.handle(images, calling_ae=calling)
        _tell(on_instance, calling, request_uid, lines)
        return _status(STATUS_SUCCESS)
    except Exception as exc:  # the journal failed, or a bug: refuse, so the sender keeps the image
        return _status(STATUS_OUT_OF_RESOURCES, f"portalign could not record the result: {_one_line(exc)}")


def _tell(on_instance: Callable[[str, list[dict[str, Any]]], None] | None, calling: str, uid: str,
          lines: list[dict[str, Any]]) -> None:
    """Hand an instance's journal lines to ``on_instance``; a failing console never fails the C-STORE."""
    if on_instance is None:
        return
    try:
        on_instance(f"{calling or '(no AE title)'} {uid or '(no SOP Instance UID)'}", lines)
    except Exception:  # noqa: BLE001 - the journal holds the line; a closed console must not refuse the image
        pass


def start_scp(
    registrar: InstanceRegistrar,
    *,
    host: str = "127.0.0.1",
    port: int = 11112,
    ae_title: str = "PORTALIGN",
    allow_ae: Sequence[str] | None = None,
    on_instance: Callable[[str, list[dict[str, Any]]], None] | None = None,
) -> Any:
    """Start the C-STORE SCP in background threads and return the pynetdicom server.

    Parameters
    ----------
    registrar : InstanceRegistrar
    host : str
        Address to listen on (``0.0.0.0`` for every interface).
    port : int
        0 picks a free port: read it back from ``server.server_address[1]``.
    ae_title : str
        This SCP's AE title (called AE titles are not checked).
    allow_ae : sequence of str, optional
        Calling AE titles allowed to associate; every caller when empty.
    on_instance : callable, optional
        Called after each received instance is journaled, with ``"CALLING_AE SOP_INSTANCE_UID"`` and that
        instance's journal lines (``portalign scp`` prints one console line per instance with it); an exception
        it raises is ignored.

    Returns
    -------
    pynetdicom.transport.ThreadedAssociationServer
        Call ``shutdown()`` to stop it.
    """
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import RTImageStorage, Verification  # type: ignore[attr-defined]

    if not ae_title or len(ae_title) > 16:
        raise PortalignError(f"AE title must be 1 to 16 characters; got {ae_title!r}")
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(RTImageStorage, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0  # no limit on what we receive in one PDU
    if allow_ae:
        ae.require_calling_aet = [a.strip() for a in allow_ae if a.strip()]
    handlers: list[Any] = [(evt.EVT_C_STORE, _on_store, [registrar, on_instance])]
    return ae.start_server((host, port), block=False, evt_handlers=handlers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign scp`` options to ``parser``."""
    import importlib.util

    missing = importlib.util.find_spec("pynetdicom") is None
    if missing:  # --help says so too, as serve's does without fastapi
        parser.description = (f"{parser.description or ''}. It needs pynetdicom, which is not installed: "
                              'pip install "portalign[service]"').lstrip(". ")
        # named before the arguments are checked (a bare `portalign scp` said only that --results was required)
        parser.set_defaults(plugin_error=str(MissingDependencyError.for_module("pynetdicom", "portalign scp")))
    parser.add_argument("--port", type=int, default=11112, help="TCP port (default 11112)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 to receive from the network)")
    parser.add_argument("--results", required=not missing, metavar="RESULTS.jsonl",
                        help="journal: one JSON line per received frame (result or error)")
    parser.add_argument("--reference", metavar="REF.dcm",
                        help="reference for frames whose beam has no reference of its own "
                             "(default: none; every beam's reference is sent first)")
    add_invert_argument(parser)
    parser.add_argument("--ae-title", default="PORTALIGN", help="this SCP's AE title (default PORTALIGN)")
    parser.add_argument("--allow-ae", default="", metavar="A,B",
                        help="comma-separated calling AE titles allowed to send (default: any)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="compute backend (default auto)")
    add_warm_up_argument(parser)
    add_mismatch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``portalign scp`` until interrupted; returns the exit status."""
    journal = None
    journal_existed = True
    try:
        try:  # before anything is opened: without pynetdicom no results file is left behind
            import pynetdicom  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError.for_module(exc.name or "pynetdicom", "portalign scp") from None
        # the port before the results file: a port out of range or held by another program left an empty journal
        # (and a traceback for --port -1)
        problem = listen_problem("portalign scp", args.host, args.port)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        journal_existed = Path(args.results).exists()
        journal = Journal(args.results, make_folders=False)  # a typo in its folder is an error, not a new folder
        registrar = InstanceRegistrar(journal, reference=args.reference, backend=args.backend, source="scp",
                                      invert=getattr(args, "invert", None), options=mismatch_options(args),
                                      wording=functools.partial(as_flags, parser=getattr(args, "subparser", None)))
        allow = [a for a in str(args.allow_ae or "").split(",") if a.strip()]
        if not getattr(args, "no_warm_up", False):
            # before the port opens: a sender's first frame would otherwise wait for the compiler past its DIMSE
            # timeout (pynetdicom's default 30 s; a cold numba cache takes minutes)
            print("portalign scp: compiling the kernels before listening (minutes on a fresh install, a few seconds "
                  "once numba's cache holds them; --no-warm-up skips)", file=sys.stderr, flush=True)
            warm_up_kernels(registrar.backend, registrar.options)
        server = start_scp(registrar, host=args.host, port=args.port, ae_title=args.ae_title, allow_ae=allow,
                           on_instance=functools.partial(print_file_line, parser=getattr(args, "subparser", None)))
    except (PortalignError, OSError, OverflowError) as exc:
        if journal is not None:
            journal.close()
            if not journal_existed and journal.records_written == 0:  # nothing received: no empty results file
                journal.path.unlink(missing_ok=True)
        message = as_flags(str(exc), getattr(args, "subparser", None))
        print(f"portalign scp: error: {message}" if not message.startswith("portalign scp") else f"portalign: error: {message}",
              file=sys.stderr)
        return 2
    port = server.server_address[1]
    who = ", ".join(allow) if allow else "any calling AE"
    print(f"portalign scp: {args.ae_title} listening on {args.host}:{port} ({who}); results -> {Path(args.results)}",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if _main_thread() else None
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        journal.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"portalign scp: stopped; {registrar.summary()}; results -> {Path(args.results)}", file=sys.stderr,
          flush=True)
    return 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m portalign.scp`` (same options as ``portalign scp``)."""
    parser = argparse.ArgumentParser(prog="portalign scp", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.subparser = parser
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
