"""HTTP backend: prepare a reference once, register many frames against it over HTTP.

``create_app()`` returns a FastAPI application; ``portalign serve`` runs it with
uvicorn. Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

=======  ==================================  =====================================================
POST     ``/v1/references``                  upload a reference -> ``201 {"id": ...}``
GET      ``/v1/references``                  the cached references
GET      ``/v1/references/{id}``             one reference's description
DELETE   ``/v1/references/{id}``             forget it -> ``204``
POST     ``/v1/references/{id}/register``    register a frame -> the result JSON
GET      ``/health``                         liveness (never needs the token)
GET      ``/metrics``                        Prometheus text format
=======  ==================================  =====================================================

Images are sent as the request body, either

* ``Content-Type: application/dicom``: an RT Image file (``?frame=N`` picks a
  frame of a multi-frame image; ``X-Pixel-Spacing-Mm`` overrides its spacing), or
* ``Content-Type: application/octet-stream``: raw little-endian pixels, row by
  row, described by the headers ``X-Rows``, ``X-Cols``, ``X-Dtype`` (``uint8``,
  ``uint16``, ``int16``, ``uint32``, ``int32``, ``float32``, ``float64``) and
  ``X-Pixel-Spacing-Mm`` (isocentre plane; ``"0.4"`` or ``"0.4,0.4"`` for
  row,col); ``X-Beam-Axis-Px: col,row`` optionally (image centre otherwise).

``X-Frame-Id`` names a frame in its result and in the journal. ``X-Invert: true``
(or ``false``) forces (or forbids) inverting the pixel values of that image, as
``--invert`` / ``--no-invert`` do for every image the server reads (Elekta iView
files are stored inverted without an intensity sign tag); by default the DICOM
intensity sign decides and raw pixels are kept.

Errors come back as ``{"detail": "<message naming the input and the fix>",
"error": "<kind>"}`` with 400 (malformed request: headers, sizes), 401 (token),
404 (unknown reference), 413 (body or declared image too large; nothing of that
size is allocated), 415 (content type) or 422 (the image itself is unusable:
not DICOM, no spacing, NaN or constant pixels, no structure). A failed request
never takes the server down.

Security: ``portalign serve`` binds 127.0.0.1 by default and refuses a
non-loopback host without ``--token``. With a token, every request except
``/health`` must carry ``X-API-Token`` (401 otherwise; compared in constant time).

Registration (and DICOM decoding) runs in a thread pool, off the event loop,
so ``/health`` answers while frames are being registered. Every registration
result, and every frame that failed, is appended to the journal when one is
configured (``--journal results.jsonl``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hmac
import ipaddress
import itertools
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import __version__
from ._cli_options import add_invert_argument, add_warm_up_argument, as_flags, listen_problem
from .backends import BACKENDS, Backend, select_backend
from .errors import GeometryError, PixelValuesError, PortalignError, ReferencePreparationError
from .image import Image, declared_kind
from .journal import Journal, json_ready, to_json_line
from .options import RegistrationOptions
from .registration import Reference, prepare_reference, warm_up_kernels

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "RAW_DTYPES",
    "ServerThread",
    "add_arguments",
    "create_app",
    "is_loopback",
    "main",
    "run",
]

#: Largest accepted request body (a 4k x 4k uint16 image is 32 MiB).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: ``X-Dtype`` values for raw pixels, all little-endian.
RAW_DTYPES: dict[str, str] = {
    "uint8": "u1",
    "uint16": "<u2",
    "int16": "<i2",
    "uint32": "<u4",
    "int32": "<i4",
    "float32": "<f4",
    "float64": "<f8",
}
#: Largest rows or columns accepted in ``X-Rows`` / ``X-Cols``.
MAX_SIDE = 16384
#: A refused body is read and discarded up to this many bytes before the answer, so that the
#: client can read the answer; past it the connection is closed.
DRAIN_BYTES = 64 * 1024 * 1024
#: ...and for at most this long (s): a client that declares a huge body and sends nothing, or sends it slowly, gets its
#: answer then (before, it waited for the body it never sent: a declared 93 GiB got no answer).
DRAIN_SECONDS = 2.0
#: Latency histogram bucket bounds, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_MEDIA_DICOM = "application/dicom"
_MEDIA_RAW = "application/octet-stream"
_IMAGE_BODY = {
    "required": True,
    "content": {
        _MEDIA_DICOM: {"schema": {"type": "string", "format": "binary"}},
        _MEDIA_RAW: {"schema": {"type": "string", "format": "binary"}},
    },
    "description": (
        "An RT Image (application/dicom) or raw little-endian pixels (application/octet-stream) "
        "described by X-Rows, X-Cols, X-Dtype and X-Pixel-Spacing-Mm."
    ),
}
_RAW_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
    for name, text in (
        ("X-Rows", "raw pixels: number of rows"),
        ("X-Cols", "raw pixels: number of columns"),
        ("X-Dtype", "raw pixels: " + ", ".join(RAW_DTYPES) + " (little-endian)"),
        ("X-Pixel-Spacing-Mm", "pixel spacing at the isocentre plane, mm: 's' or 'row,col'"),
        ("X-Beam-Axis-Px", "raw pixels: beam axis 'col,row' in pixels (image centre by default)"),
        ("X-Frame-Id", "a name for this image in results and the journal"),
    )
]


class ApiError(Exception):
    """An HTTP error answer: status, error kind and a message naming the input and the fix."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------------------------------
# metrics (Prometheus text exposition format 0.0.4, written by hand)
# --------------------------------------------------------------------------------------------------


class Metrics:
    """Counters and a latency histogram, rendered in Prometheus text format."""

    def __init__(self, backend: str, device: str) -> None:
        self._lock = threading.Lock()
        self.backend = backend
        self.device = device
        self.frames = {"true": 0, "false": 0}
        self.errors: dict[str, int] = {}
        self.references_prepared = 0
        self.references_evicted = 0
        self.bucket_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_count = 0
        self.latency_sum = 0.0
        self.in_flight = 0

    def frame(self, ok: bool, seconds: float) -> None:
        """Count one registered frame and its registration latency."""
        with self._lock:
            self.frames["true" if ok else "false"] += 1
            self.latency_count += 1
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1

    def error(self, kind: str) -> None:
        """Count one failed request of ``kind``."""
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def add(self, name: str, delta: int = 1) -> None:
        """Add to a plain integer attribute."""
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def render(self, cached: int) -> str:
        """Return the exposition text."""
        with self._lock:
            lines = [
                "# HELP portalign_frames_registered_total Frames registered, by whether the result is ok.",
                "# TYPE portalign_frames_registered_total counter",
            ]
            lines += [f'portalign_frames_registered_total{{ok="{k}"}} {v}' for k, v in self.frames.items()]
            lines += [
                "# HELP portalign_errors_total Failed requests, by kind.",
                "# TYPE portalign_errors_total counter",
            ]
            lines += [f'portalign_errors_total{{kind="{_label(k)}"}} {v}' for k, v in sorted(self.errors.items())]
            lines += [
                "# HELP portalign_registration_latency_seconds Decoding plus registration time of one frame.",
                "# TYPE portalign_registration_latency_seconds histogram",
            ]
            for bound, count in zip(LATENCY_BUCKETS, self.bucket_counts, strict=True):
                lines.append(f'portalign_registration_latency_seconds_bucket{{le="{bound:g}"}} {count}')
            lines.append(f'portalign_registration_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            lines.append(f"portalign_registration_latency_seconds_sum {self.latency_sum:.6f}")
            lines.append(f"portalign_registration_latency_seconds_count {self.latency_count}")
            lines += [
                "# HELP portalign_references_prepared_total References prepared.",
                "# TYPE portalign_references_prepared_total counter",
                f"portalign_references_prepared_total {self.references_prepared}",
                "# HELP portalign_references_evicted_total References dropped from the cache (least recently used).",
                "# TYPE portalign_references_evicted_total counter",
                f"portalign_references_evicted_total {self.references_evicted}",
                "# HELP portalign_references_cached References in the cache now.",
                "# TYPE portalign_references_cached gauge",
                f"portalign_references_cached {cached}",
                "# HELP portalign_registrations_in_flight Frames being decoded or registered now.",
                "# TYPE portalign_registrations_in_flight gauge",
                f"portalign_registrations_in_flight {self.in_flight}",
                "# HELP portalign_backend_info Compute backend of this server.",
                "# TYPE portalign_backend_info gauge",
                f'portalign_backend_info{{backend="{_label(self.backend)}",device="{_label(self.device)}",'
                f'version="{__version__}"}} 1',
            ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --------------------------------------------------------------------------------------------------
# reference cache
# --------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    id: str
    reference: Reference
    meta: dict[str, Any]
    frames: int = 0
    last_used: float = field(default_factory=time.time)
    nbytes: int = 0


#: Bytes a prepared reference is counted as holding per pixel of its image: its float32 pixels and what is prepared
#: from them (pyramid levels, a plan's buffers). A hostile campaign's 40-million-pixel reference held about 153 MB.
REFERENCE_BYTES_PER_PIXEL = 8
#: Default memory budget of the reference cache (MiB).
DEFAULT_CACHE_MB = 1024.0


def reference_nbytes(reference: Reference) -> int:
    """Return the bytes a prepared reference is counted as holding (``REFERENCE_BYTES_PER_PIXEL`` a pixel)."""
    return int(reference.image.pixels.size) * REFERENCE_BYTES_PER_PIXEL


class ReferenceCache:
    """Prepared references by id, at most ``size`` of them and ``max_bytes`` in all; the least recently used go first.

    Without the byte budget, 16 uploads of one 40-million-pixel reference (a 40 MB file) held 2.75 GB (a hostile
    campaign); a reference over the whole budget is refused (413).
    """

    def __init__(self, size: int, metrics: Metrics, max_bytes: int | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._metrics = metrics

    def add(self, reference: Reference, meta: dict[str, Any]) -> _Entry:
        """Store a prepared reference under a new id, evicting the least recently used ones."""
        nbytes = reference_nbytes(reference)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise ApiError(413, "too_large",
                           f"reference: its {reference.image.pixels.size / 1e6:.1f} million pixels would take about "
                           f"{nbytes / 2**20:.0f} MiB of the reference cache's {self.max_bytes / 2**20:.0f} MiB "
                           "(portalign serve --cache-mb); send the image at its imager's pixels, or raise the budget")
        entry = _Entry(uuid.uuid4().hex, reference, meta, nbytes=nbytes)
        with self._lock:
            self._entries[entry.id] = entry
            while len(self._entries) > self.size or (
                    self.max_bytes is not None and len(self._entries) > 1
                    and sum(e.nbytes for e in self._entries.values()) > self.max_bytes):
                self._entries.popitem(last=False)
                self._metrics.add("references_evicted")
        return entry

    def get(self, ref_id: str) -> _Entry:
        """Return the entry (and mark it used) or raise a 404 :class:`ApiError`."""
        with self._lock:
            entry = self._entries.get(ref_id)
            if entry is None:
                raise ApiError(
                    404,
                    "not_found",
                    f"reference {ref_id!r} is not known (never uploaded, deleted, or evicted from the cache of "
                    f"{self.size}); upload it again with POST /v1/references",
                )
            self._entries.move_to_end(ref_id)
            entry.last_used = time.time()
            return entry

    def delete(self, ref_id: str) -> None:
        """Forget a reference or raise a 404 :class:`ApiError`."""
        with self._lock:
            if self._entries.pop(ref_id, None) is None:
                raise ApiError(404, "not_found", f"reference {ref_id!r} is not known; nothing to delete")

    def list(self) -> list[_Entry]:
        """Entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# --------------------------------------------------------------------------------------------------
# the application
# --------------------------------------------------------------------------------------------------


class _Guard:
    """ASGI middleware: API token and declared body size, checked before any route runs."""

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int, metrics: Metrics,
                 journal: Journal | None = None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.journal = journal

    def _journal_refused(self, scope: dict[str, Any], headers: dict[bytes, bytes], error: str) -> None:
        """Journal a frame refused here, before its route (a new user's 413 was missing from the journal)."""
        registered = _REGISTER_PATH.match(str(scope.get("path") or ""))
        if registered is not None:
            frame_id = headers.get(b"x-frame-id", b"").decode("utf-8", "replace")[:200] or "(unnamed: refused on arrival)"
            _journal(self.journal, registered.group(1), frame_id, None, error)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is not None and scope.get("path") != "/health":
            given = headers.get(b"x-api-token")
            if given is None or not hmac.compare_digest(given, self.token):
                self.metrics.error("unauthorized")
                what = "is missing" if given is None else "is wrong"
                await _drain(receive, self.max_body_bytes)
                await _send_error(send, 401, "unauthorized", f"the X-API-Token header {what}; send the server's token")
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                self.metrics.error("bad_request")
                said = f"Content-Length {length[:40]!r} is not a number"
                self._journal_refused(scope, headers, f"bad_request: {said}")
                await _send_error(send, 400, "bad_request", said)
                return
            if declared > self.max_body_bytes:
                self.metrics.error("too_large")
                # a client that waits for "100 Continue" before sending gets the 413 instead: reading would invite
                # the body (the server answers 100 Continue on the first read)
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await _drain(receive, DRAIN_BYTES)
                said = f"request body of {declared} bytes exceeds the server's limit of {self.max_body_bytes} bytes"
                self._journal_refused(scope, headers, f"too_large: {said}")
                await _send_error(send, 413, "too_large", said)
                return
        await self.app(scope, receive, send)


async def _drain(receive: Any, limit: int) -> None:
    """Read and discard up to ``limit`` bytes of a request body that will not be used.

    A server that answers before reading the body and closes the connection makes
    the kernel reset it, and the client sees "connection reset" instead of the
    answer; reading (not storing) what the client is still sending avoids that. It stops after
    ``DRAIN_SECONDS`` whatever has arrived.
    """
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    while seen <= limit:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            return
        if message.get("type") != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _discard_rest(request: Request) -> None:
    """Drain what is left of a request's body before an error answer (see :func:`_drain`)."""
    try:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                return
    except Exception:  # already consumed, or the client went away: nothing left to drain
        return


async def _send_error(send: Any, status: int, kind: str, message: str) -> None:
    body = to_json_line({"detail": message, "error": kind}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cache_size: int = 16,
    cache_mb: float = DEFAULT_CACHE_MB,
    backend: str | Backend = "auto",
    options: RegistrationOptions | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    workers: int | None = None,
    warm_up: bool = False,
    invert: bool | None = None,
) -> FastAPI:
    """Build the portalign HTTP application.

    Parameters
    ----------
    token : str, optional
        When set, every request except ``GET /health`` needs ``X-API-Token: <token>``.
    max_body_bytes : int
        Largest request body; larger bodies (declared or streamed) get 413.
    cache_size : int
        Prepared references kept; the least recently used is evicted beyond it.
    cache_mb : float
        Memory budget of the prepared references (MiB, ``REFERENCE_BYTES_PER_PIXEL`` bytes a pixel of each): the
        least recently used are evicted beyond it, and a reference larger than all of it is refused (413).
    backend : {"auto", "cpu", "gpu"} or Backend
        Chosen once, for every reference.
    options : RegistrationOptions, optional
        Registration options of every reference.
    journal : Journal or path, optional
        Every result (and every failed frame) is appended. A path is opened
        here and closed at shutdown; its folder must exist (``JournalError``
        otherwise, as ``portalign scp`` and ``watch``: a mistyped folder is not made).
    workers : int, optional
        Threads that decode and register (default: the CPU count, at most 8).
    warm_up : bool
        Compile the kernels at startup (one small synthetic registration) so that
        the first real frame is not slow.
    invert : bool, optional
        Force (True) or forbid (False) inverting the pixel values of every image
        received; a request's ``X-Invert`` header overrides it.

    Returns
    -------
    fastapi.FastAPI
    """
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise PortalignError(f"max_body_bytes must be an integer >= 1024; got {max_body_bytes!r}")
    if not isinstance(cache_size, int) or cache_size < 1:
        raise PortalignError(f"cache_size must be an integer >= 1; got {cache_size!r}")
    if not isinstance(cache_mb, (int, float)) or not math.isfinite(cache_mb) or cache_mb < 1:
        raise PortalignError(f"cache_mb must be a number of MiB >= 1; got {cache_mb!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise PortalignError(f"workers must be an integer >= 1 (or None: the CPU count, at most 8); got {workers!r}")
    chosen = backend if isinstance(backend, Backend) else select_backend(backend)
    options = options or RegistrationOptions()
    own_journal = journal is not None and not isinstance(journal, Journal)
    journal_obj: Journal | None = journal if isinstance(journal, Journal) else (
        Journal(journal, make_folders=False) if journal is not None else None)  # a typo in its folder is an error
    metrics = Metrics(chosen.name, chosen.device)
    cache = ReferenceCache(cache_size, metrics, int(cache_mb * 2**20))
    n_workers = workers or min(8, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="portalign-register")
    started = time.time()
    frame_numbers = itertools.count(1)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        if warm_up:
            await asyncio.get_running_loop().run_in_executor(executor, warm_up_kernels, chosen, options)
        try:
            yield
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            if own_journal and journal_obj is not None:
                journal_obj.close()

    app = FastAPI(
        title="portalign",
        version=__version__,
        summary="Real-time registration of radiotherapy portal images against their reference.",
        lifespan=lifespan,
        # every error is {"detail": str, "error": kind}, whatever the route: said so in the schema, where FastAPI's
        # own 422 (a list of validation errors) misled a generated client (a new user's trial)
        responses={status: {"description": said, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
                   for status, said in _ERROR_STATUSES.items()},
    )
    app.state.cache = cache
    app.state.metrics = metrics
    app.state.backend = chosen
    app.state.journal = journal_obj
    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes, metrics=metrics, journal=journal_obj)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.error(exc.kind)
        await _discard_rest(request)
        return JSONResponse({"detail": exc.message, "error": exc.kind}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own checks of the query (?frame=abc), in the service's error form: one line and its kind
        metrics.error("bad_request")
        await _discard_rest(request)
        said = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                         f" (got {str(e.get('input'))[:40]!r})" for e in exc.errors()[:3])
        return JSONResponse({"detail": f"bad query parameter: {said}", "error": "bad_request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own answers (an unknown route, a method a route does not take) in the service's error form:
        # they came as {"detail": "Not Found"} with no "error" (a hostile campaign)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        metrics.error(kind)
        await _discard_rest(request)
        said = (f"no such route: {request.method} {request.url.path}; the service answers /health, /metrics, "
                "/v1/references and /v1/references/{id}[/register] (see /docs)") if exc.status_code == 404 else (
            f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else str(exc.detail))
        return JSONResponse({"detail": said, "error": kind}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - bugs only
        metrics.error("internal")
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}: {exc}); please report it", "error": "internal"},
            status_code=500,
        )

    async def in_pool(fn: Any, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    @app.get("/health", summary="Liveness: answers while frames are being registered; never needs the token")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "backend": chosen.name,
            "device": chosen.device,
            "references": len(cache),
            "uptime_s": round(time.time() - started, 3),
        }

    @app.get("/metrics", summary="Prometheus metrics (text format 0.0.4)", response_class=PlainTextResponse)
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(len(cache)), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/v1/references",
        status_code=201,
        summary="Upload and prepare a reference image (DRR or reference portal image)",
        openapi_extra={"requestBody": _IMAGE_BODY, "parameters": _RAW_HEADERS},
    )
    async def upload_reference(request: Request, response: Response, frame: int | None = None,
                               kind: str | None = None, allow_view_mismatch: bool = False,
                               allow_patient_mismatch: bool = False, mirror_check: str | None = None,
                               aperture_check: str | None = None) -> dict[str, Any]:
        _known_query(request, "reference", _REFERENCE_QUERY)
        if kind is not None and kind not in REFERENCE_KINDS:
            raise ApiError(400, "bad_request", f"reference: kind={kind[:40]!r} is not one of {', '.join(REFERENCE_KINDS)} "
                                               "(a DRR, or an approved portal image)")
        # the overrides a result's reason names belong to the reference: its frames are registered with them
        try:
            chosen_options = dataclasses.replace(options, allow_view_mismatch=allow_view_mismatch or
                                                 options.allow_view_mismatch,
                                                 allow_patient_mismatch=allow_patient_mismatch or
                                                 options.allow_patient_mismatch,
                                                 mirror_check=mirror_check or options.mirror_check,
                                                 aperture_check=aperture_check or options.aperture_check)
        except PortalignError as exc:
            raise ApiError(400, "bad_request", f"reference: {_one_line(exc)}") from None
        image = await _read_image(request, max_body_bytes, "reference", frame, in_pool, invert)
        # what the file cannot say (raw pixels), or says otherwise: the query wins, and says so with every result
        image, kind_note = declared_kind(image, kind, f"?kind={kind}")
        try:
            reference = await in_pool(prepare_reference, image, chosen_options, backend=chosen)
        except (ReferencePreparationError, GeometryError, ValueError) as exc:
            raise ApiError(422, "reference_preparation", f"reference: {_one_line(exc)}") from None
        metrics.add("references_prepared")
        described = _describe(image, request)
        if kind_note:
            described["warnings"].append(kind_note)
        entry = cache.add(reference, described)
        response.headers["Location"] = f"/v1/references/{entry.id}"
        return _entry_json(entry)

    @app.get("/v1/references", summary="List the cached references (least recently used first)")
    async def list_references() -> dict[str, Any]:
        return {"references": [_entry_json(e) for e in cache.list()], "cache_size": cache.size}

    @app.get("/v1/references/{ref_id}", summary="Describe one cached reference")
    async def get_reference(ref_id: str) -> dict[str, Any]:
        return _entry_json(cache.get(ref_id))

    @app.delete("/v1/references/{ref_id}", status_code=204, response_class=Response, response_model=None,
                summary="Forget a reference")
    async def delete_reference(ref_id: str) -> Response:
        cache.delete(ref_id)
        return Response(status_code=204)

    @app.post(
        "/v1/references/{ref_id}/register",
        summary="Register one frame against a cached reference",
        openapi_extra={"requestBody": _IMAGE_BODY, "parameters": _RAW_HEADERS},
    )
    async def register_frame(request: Request, ref_id: str, frame: int | None = None) -> dict[str, Any]:
        given_id = _utf8_header(request.headers.get("x-frame-id"))[:200]
        frame_id = given_id or f"frame-{next(frame_numbers)}"
        frame_name = f"frame {frame_id}" if given_id else frame_id  # "frame-3", not "frame frame-3"
        received = time.perf_counter()
        try:  # an unknown query parameter or reference id is journalled too (a new user found them missing)
            _known_query(request, "register", ("frame",))
            entry = cache.get(ref_id)
        except ApiError as exc:
            _journal(journal_obj, ref_id, frame_id, None, f"{exc.kind}: {exc.message}")
            raise
        try:
            # frame 0 named when none was: a cine sent whole is said below with the query that sends another
            image = await _read_image(request, max_body_bytes, frame_name, 0 if frame is None else frame, in_pool,
                                      invert)
        except ApiError as exc:
            _journal(journal_obj, ref_id, frame_id, None, f"{exc.kind}: {exc.message}")
            raise
        metrics.add("in_flight", 1)
        try:
            started_at = time.perf_counter()
            result = await in_pool(entry.reference.register, image)
        except PortalignError as exc:
            message = _http_hints(_one_line(exc))  # the header to send, not the Python keyword
            if not message.startswith(frame_name):  # the size check names the frame already
                message = f"{frame_name}: {message}"
            _journal(journal_obj, ref_id, frame_id, None, f"invalid_image: {message}")  # as the reading errors' entries
            raise ApiError(422, "invalid_image", message) from None
        finally:
            metrics.add("in_flight", -1)
        done = time.perf_counter()
        metrics.frame(bool(result.ok), done - started_at)
        entry.frames += 1
        body = result.as_dict()
        body["reason"] = _http_hints(body["reason"])
        body["warnings"] = [*entry.meta.get("warnings", []), *_replaced(image),
                            *(_http_hints(w) for w in body["warnings"])]
        frames_held = int(image.info.extra.get("number_of_frames", 1) or 1)
        if frame is None and frames_held > 1:  # a cine sent whole: its first frame only, and said (a trial saw no word)
            body["warnings"].append(f"the file holds {frames_held} frames; frame 0 was registered: send each with "
                                    f"?frame=0..{frames_held - 1}")
        body.update(frame_id=frame_id, reference_id=ref_id, server_ms=(done - received) * 1e3)
        _journal(journal_obj, ref_id, frame_id, body, "")
        return _finite(body)

    return app


def _http_hints(text: str) -> str:
    """Say the overrides a reason names as this API's: query parameters of the reference's upload, headers."""
    text = re.sub(r"\(or pass pixel_spacing_mm(=)?\)", "(or send the X-Pixel-Spacing-Mm header)", text)
    text = re.sub(r"pass pixel_spacing_mm(=)?( \(--pixel-spacing-mm\))?", "send the X-Pixel-Spacing-Mm header", text)
    text = re.sub(r"replaced by pixel_spacing_mm=", "replaced by the X-Pixel-Spacing-Mm header ", text)
    text = re.sub(r"pass a smaller max_shift_mm(=)?", "give the server a smaller search range (its options' max_shift_mm: "
                  "portalign.service.create_app(options=...))", text)
    text = re.sub(r"say so with kind='(drr|portal)' \(--reference-kind \w+\)", r"upload the reference with ?kind=\1",
                  text)
    # no header overrides the distances: the file is what the service has (Python's reader takes them)
    text = re.sub(r"(?:correct the tags? or )?pass (sid_mm|sad_mm)=(?: and (sid_mm|sad_mm)=)?",
                  "correct the file (the service has no override for it; from Python, read_rt_image(..., sid_mm=, "
                  "sad_mm=))", text)
    text = re.sub(r"set (allow_\w+)=True \(--[\w-]+\)", r"upload the reference with ?\1=true", text)
    text = re.sub(r"\((allow_\w+)\)", r"(?\1=true)", text)
    return re.sub(r"set (mirror_check|aperture_check)='(\w+)' \(--[\w-]+ \w+\)", r"upload the reference with ?\1=\2",
                  text)


#: The query parameters of a reference's upload.
_REFERENCE_QUERY = ("frame", "kind", "allow_view_mismatch", "allow_patient_mismatch", "mirror_check", "aperture_check")
#: What ``?kind=`` of a reference's upload may say (``--reference-kind``): raw pixels carry no kind, and a DRR taken for
#: an image of unknown kind had its body outline taken for a radiation field (every frame refused "different scales").
REFERENCE_KINDS = ("drr", "portal")


def _known_query(request: Any, what: str, known: tuple[str, ...]) -> None:
    """Refuse (400) query parameters the endpoint does not take.

    A limit sent as one (``?max_shift_mm=1``) was ignored with a 200, and the client believed it applied.
    """
    unknown = sorted(set(request.query_params.keys()) - set(known))
    if unknown:
        theirs = [name for name in unknown if name in _REFERENCE_QUERY]
        where = (f"; {', '.join(theirs)} belongs to the reference: upload it with ?{theirs[0]}=..." if theirs
                 and what != "reference" else "")
        raise ApiError(400, "bad_request", f"{what}: unknown query parameter(s) {', '.join(unknown)[:200]}; this "
                                           f"endpoint takes {', '.join(known)}{where} (the other registration options "
                                           "are the server's: portalign.service.create_app(options=...) from Python)")


async def _read_body(request: Any, limit: int, name: str, longer: str | None = None) -> bytes:
    """Read the request body, refusing (413) as soon as it passes ``limit`` bytes.

    ``longer``: where ``limit`` is what the request's own headers promise (raw pixels), a body past it does not match
    them: 400 with this message (after "body has more than ``limit`` bytes"), not the server's size limit.
    """
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit and longer is not None:
                raise ApiError(400, "bad_request", f"{name}: body has more than {limit} bytes but {longer}")
            if size > limit:
                raise ApiError(413, "too_large", f"{name}: request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # the client went away mid-body: nothing to register and no one to answer (before: a traceback in the log)
        raise ApiError(400, "client_disconnected", f"{name}: the client disconnected after {size} bytes of the "
                                                   "request body") from None
    return b"".join(chunks)


async def _read_image(request: Any, max_body: int, name: str, frame: int | None, in_pool: Any,
                      invert: bool | None = None) -> Image:
    """Turn the request body into an :class:`Image` (DICOM or raw pixels) or raise :class:`ApiError`."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    invert = _invert_header(request.headers.get("x-invert"), name, invert)
    spacing = _spacing_header(request.headers.get("x-pixel-spacing-mm"), name, required=media == _MEDIA_RAW)
    if media == _MEDIA_DICOM:
        if request.headers.get("x-beam-axis-px") is not None:  # it was ignored with a 200 (a trial sent "abc")
            raise ApiError(400, "bad_request", f"{name}: X-Beam-Axis-Px is for raw pixels; a DICOM file's beam axis "
                                               "is its RTImagePosition (3002,0012): leave the header out, or correct "
                                               "the file")
        body = await _read_body(request, max_body, name)
        if not body:
            raise ApiError(400, "bad_request", f"{name}: the request body is empty; send the RT Image file")
        if frame is not None and frame < 0:
            raise ApiError(400, "bad_request", f"{name}: frame must be >= 0, got {frame}")
        try:
            from .dicom import read_rt_image

            image = await in_pool(lambda: read_rt_image(body, frame=frame, pixel_spacing_mm=spacing, invert=invert))
        except PixelValuesError as exc:  # a well-formed file whose pixels cannot be registered (blank, NaN)
            raise ApiError(422, "invalid_pixels", f"{name}: {_body_said(exc)}") from None
        except PortalignError as exc:
            raise ApiError(422, "invalid_dicom", f"{name}: {_body_said(exc)}") from None
        return _rename(image, name)
    if media == _MEDIA_RAW:
        rows = _int_header(request.headers, "x-rows", name)
        cols = _int_header(request.headers, "x-cols", name)
        dtype_name = (request.headers.get("x-dtype") or "").strip().lower()
        if dtype_name not in RAW_DTYPES:
            raise ApiError(
                400,
                "bad_request",
                f"{name}: X-Dtype {dtype_name!r} is not supported; use one of {', '.join(RAW_DTYPES)} (little-endian)",
            )
        dtype = np.dtype(RAW_DTYPES[dtype_name])
        expected = rows * cols * dtype.itemsize  # Python ints: no overflow, nothing allocated yet
        if expected > max_body:
            raise ApiError(
                413,
                "too_large",
                f"{name}: {rows} x {cols} {dtype_name} pixels would be {expected} bytes, "
                f"over the server's limit of {max_body} bytes",
            )
        axis = _axis_header(request.headers.get("x-beam-axis-px"), name)
        promised = f"X-Rows x X-Cols x {dtype.itemsize} ({rows} x {cols} {dtype_name}) = {expected} bytes"
        body = await _read_body(request, expected, name, longer=promised) if expected else b""
        if len(body) != expected:
            raise ApiError(400, "bad_request", f"{name}: body has {len(body)} bytes but {promised}")
        pixels = np.frombuffer(body, dtype=dtype).reshape(rows, cols)
        if dtype.itemsize > 1 and _byte_swapped(pixels):
            raise ApiError(400, "bad_request", f"{name}: the pixels read as noise, and with their bytes swapped they are "
                                               f"an image: they were sent big-endian; send X-Dtype {dtype_name} "
                                               "little-endian (numpy: array.astype('<" + dtype.str[1:] + "'))")
        if invert:  # higher must mean more radiation: v -> max - v, in float64 (no unsigned wrap-around)
            pixels = float(pixels.max()) - pixels.astype(np.float64)
        try:
            return Image.from_array(pixels, pixel_spacing_mm=spacing, beam_axis_px=axis, name=name)  # type: ignore[arg-type]
        except PortalignError as exc:
            raise ApiError(422, "invalid_pixels", _one_line(exc)) from None
    shown = media or "none"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"{name}: Content-Type {shown!r} is not accepted; send {_MEDIA_DICOM} (an RT Image file) or "
        f"{_MEDIA_RAW} (raw little-endian pixels with X-Rows, X-Cols, X-Dtype and X-Pixel-Spacing-Mm)",
    )


#: Raw pixels whose bytes swapped are this much smoother (neighbours' mean difference over the spread) than as read
#: were sent big-endian: a new user's byte-swapped uint16 frame was refused "frame is blank (beam off?)". An image's
#: neighbours differ by a small part of its spread (0.01-0.2); swapped, they differ by about its spread.
BYTE_SWAP_SMOOTHER = 4.0


def _roughness(sample: np.ndarray) -> float:
    """Mean absolute difference of row neighbours over the standard deviation (inf where not finite or flat)."""
    values = sample.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return math.inf
    spread = float(values.std())
    return float(np.abs(np.diff(values, axis=1)).mean()) / spread if spread > 0 else math.inf


def _byte_swapped(pixels: np.ndarray) -> bool:
    """Whether raw multi-byte pixels look sent big-endian (their swapped bytes far smoother than as read)."""
    if pixels.shape[0] < 8 or pixels.shape[1] < 8:
        return False
    sample = pixels[:: max(1, pixels.shape[0] // 48)]  # a few dozen rows: a fraction of a millisecond
    with np.errstate(all="ignore"):
        as_read, swapped = _roughness(sample), _roughness(sample.byteswap())
    return swapped < 0.5 and swapped * BYTE_SWAP_SMOOTHER < as_read


def _int_header(headers: Any, key: str, name: str) -> int:
    text = headers.get(key)
    label = "-".join(part.capitalize() for part in key.split("-"))
    if text is None:
        raise ApiError(400, "bad_request", f"{name}: header {label} is missing; raw pixels need X-Rows and X-Cols")
    try:
        value = int(text.strip())
    except ValueError:
        message = f"{name}: header {label} must be a positive integer, got {text[:40]!r}"
        raise ApiError(400, "bad_request", message) from None
    if value < 1:
        raise ApiError(400, "bad_request", f"{name}: header {label} must be a positive integer, got {value}")
    if value > MAX_SIDE:
        message = f"{name}: header {label} = {value} exceeds the largest accepted side, {MAX_SIDE} pixels"
        raise ApiError(413, "too_large", message)
    return value


def _floats_header(text: str, name: str, header: str, count: tuple[int, ...]) -> list[float]:
    parts = [p for p in text.replace("\\", ",").replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in count or not all(math.isfinite(v) for v in values):
        raise ApiError(400, "bad_request", f"{name}: header {header} must be {' or '.join(map(str, count))} "
                                           f"finite numbers separated by commas, got {text[:60]!r}")
    return values


def _invert_header(text: str | None, name: str, default: bool | None) -> bool | None:
    if text is None:
        return default
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ApiError(400, "bad_request", f"{name}: header X-Invert must be true or false, got {text[:20]!r}")


def _spacing_header(text: str | None, name: str, *, required: bool) -> Any:
    if text is None:
        if required:
            raise ApiError(400, "bad_request", f"{name}: header X-Pixel-Spacing-Mm is missing; raw pixels need the "
                                               "pixel spacing at the isocentre plane in mm ('0.4' or 'row,col')")
        return None
    values = _floats_header(text, name, "X-Pixel-Spacing-Mm", (1, 2))
    if not all(v > 0 for v in values):
        raise ApiError(400, "bad_request", f"{name}: X-Pixel-Spacing-Mm must be positive, got {text[:60]!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _axis_header(text: str | None, name: str) -> tuple[float, float] | None:
    if text is None:
        return None
    col, row = _floats_header(text, name, "X-Beam-Axis-Px", (2,))
    return col, row


def _body_said(exc: BaseException) -> str:
    """Return the reader's one-line error about a request body in this API's words (the body is named already)."""
    text = _one_line(exc)
    return _http_hints(text[len("<bytes>: "):] if text.startswith("<bytes>: ") else text)


def _rename(image: Image, name: str) -> Image:
    from dataclasses import replace

    if image.info.source in ("", "array", "<bytes>") or image.info.source.startswith("<"):
        return replace(image, info=replace(image.info, source=name))
    return image


def _describe(image: Image, request: Any) -> dict[str, Any]:
    info = image.info
    return {
        "content_type": (request.headers.get("content-type") or "").split(";")[0].strip().lower(),
        "name": _utf8_header(request.headers.get("x-frame-id"))[:200],
        "shape": list(image.shape),
        "spacing_mm": list(image.spacing_mm),
        "beam_axis_px": list(image.beam_axis_px),
        "kind": info.kind,
        "sop_instance_uid": info.sop_instance_uid,
        "gantry_deg": info.gantry_deg,
        "created": datetime.now(timezone.utc).isoformat(),
        # a header that replaced a tag the file has (X-Pixel-Spacing-Mm on a DICOM upload): said with the reference
        # and with every frame's result
        "warnings": _replaced(image),
    }


def _replaced(image: Image) -> list[str]:
    """Say each tag of an uploaded file that a request header replaced (``dicom.replaced_tags``), as this API's header."""
    from .dicom import replaced_tags

    return [_http_hints(f"{image.info.source}: {note}") for note in replaced_tags(image.info)]


def _entry_json(entry: _Entry) -> dict[str, Any]:
    return _finite(
        {
            "id": entry.id,
            **entry.meta,
            "backend": entry.reference.backend.name,
            "frames_registered": entry.frames,
            "last_used": datetime.fromtimestamp(entry.last_used, timezone.utc).isoformat(),
        }
    )


#: The service's error body (every error status).
_ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail", "error"],
    "properties": {
        "detail": {"type": "string", "description": "one line: what is wrong, naming the input and the fix"},
        "error": {"type": "string", "description": "its kind: bad_request, client_disconnected, unauthorized, "
                                                   "not_found, too_large, unsupported_media_type, invalid_image, "
                                                   "invalid_dicom, invalid_pixels, reference_preparation, internal"},
    },
}
_ERROR_STATUSES = {
    400: "a bad header or query parameter", 401: "the X-API-Token header is missing or wrong",
    404: "no such reference", 413: "the body is over the server's limit", 415: "an unsupported Content-Type",
    422: "the image cannot be read or registered (not a result: a refused match is a 200 with ok false)",
    500: "a bug: please report it",
}
def _utf8_header(text: str | None) -> str:
    """Return a header's text as its sender wrote it.

    HTTP gives header bytes as Latin-1 and clients send UTF-8 (a new user's "é" in X-Frame-Id came back "Ã©"); bytes
    that are no UTF-8 stay as they were read.
    """
    if not text:
        return ""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


#: A frame's registration request: its reference id.
_REGISTER_PATH = re.compile(r"^/v1/references/([^/]+)/register$")


def _journal(journal: Journal | None, ref_id: str, frame_id: str, body: dict[str, Any] | None, error: str) -> None:
    if journal is None:
        return
    status = "error" if body is None else ("ok" if body.get("ok") else "not_ok")
    try:
        journal.append(
            {"source": "serve", "status": status, "reference_id": ref_id, "frame_id": frame_id, "result": body,
             "error": error}
        )
    except PortalignError:  # a full disk must not turn a result into a 500; the metrics show it
        pass


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy -> Python."""
    return json_ready(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread on a loopback port (tests, benchmarks).

    Parameters
    ----------
    app : ASGI application
    host : str
    port : int
        0 picks a free port; :attr:`url` tells which.

    Examples
    --------
    >>> with ServerThread(create_app()) as server:  # doctest: +SKIP
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="portalign-http", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 900.0) -> ServerThread:
        """Start serving and wait until the server accepts requests.

        Parameters
        ----------
        timeout : float
            Seconds to wait. An app made with ``warm_up=True`` compiles the kernels before it accepts requests:
            on a cold numba cache that takes minutes on a small machine (220 s on 2 cores), a second on a warm one.

        Raises
        ------
        TimeoutError
            When the server has not started within ``timeout``.
        RuntimeError
            When its thread stopped during startup.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server thread stopped during startup; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the HTTP server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish and wait for its thread."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign serve`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--token", default=os.environ.get("PORTALIGN_TOKEN"),
                        help="require this X-API-Token on every request but /health "
                             "(default: $PORTALIGN_TOKEN)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="compute backend (default auto)")
    parser.add_argument("--journal", metavar="PATH",
                        help="append every result to this JSON-lines file (default: no journal)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20, metavar="MB",
                        help="largest request body in MiB (default %(default)g)")
    parser.add_argument("--cache-size", type=int, default=16, metavar="N", help="prepared references kept (default 16)")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB, metavar="MB",
                        help="memory budget of the prepared references in MiB (8 bytes a pixel of each; the least "
                             "recently used go first; default %(default)g)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="registration threads (default: the CPU count, at most 8)")
    add_warm_up_argument(parser)
    add_invert_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``portalign serve``; returns the exit status."""
    import uvicorn

    if not is_loopback(args.host) and not args.token:
        print(f"portalign serve: refusing to listen on {args.host} without --token; "
              "use --token SECRET (or PORTALIGN_TOKEN) or --host 127.0.0.1", file=sys.stderr)
        return 2
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb * 2**20 >= 1024):
        print(f"portalign serve: --max-body-mb must be at least 0.001 MiB (1 KiB), got {args.max_body_mb:g}",
              file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"portalign serve: --workers must be at least 1 (default: the CPU count, at most 8), got {args.workers}",
              file=sys.stderr)
        return 2
    problem = listen_problem("portalign serve", args.host, args.port)
    if problem:  # before the warm-up: one line, not uvicorn's log of the failed bind and a status of 3
        print(problem, file=sys.stderr)
        return 2
    try:
        app = create_app(
            token=args.token,
            max_body_bytes=int(args.max_body_mb * 2**20),
            cache_size=args.cache_size,
            cache_mb=args.cache_mb,
            backend=args.backend,
            journal=args.journal,
            workers=args.workers,
            warm_up=not args.no_warm_up,
            invert=getattr(args, "invert", None),
        )
    except PortalignError as exc:
        print(f"portalign serve: {as_flags(str(exc), getattr(args, 'subparser', None))}", file=sys.stderr)
        return 2
    if not args.no_warm_up:  # uvicorn says nothing until its startup (the warm-up) ends: a new user waited 45 s unsaid
        print("portalign serve: compiling the kernels before listening (minutes on a fresh install, a few seconds "
              "once numba's cache holds them; --no-warm-up skips)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m portalign.service`` (same options as ``portalign serve``)."""
    parser = argparse.ArgumentParser(prog="portalign serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
