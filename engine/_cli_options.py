"""Command-line options shared by every subcommand that reads images (no imports above argparse).

Kept at the bottom of the import graph so that ``couch``, ``fieldcheck``, ``watch`` and
``scp`` can add the same options as ``register`` without importing the CLI.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

__all__ = ["add_invert_argument", "add_mismatch_arguments", "as_flags", "command_error", "error_kind", "export_reg",
           "failure_payload", "file_line", "listen_problem", "mismatch_options", "print_file_line", "print_json_error",
           "HelpFormatter", "RegExport"]

#: RegistrationOptions / reader keywords whose command-line flag is not the keyword with dashes.
_FLAG_FOR_KEYWORD = {"estimate_rotation": "--no-rotation", "frame": "--frame-index", "poll_s": "--poll",
                     "connect_timeout_s": "--connect-timeout"}

INVERT_HELP = ("force (--invert) or forbid (--no-invert) inverting the pixel values of every image read "
               "(Elekta iView files are stored inverted without an intensity sign tag: use --invert); "
               "default: the DICOM PixelIntensityRelationshipSign decides")


def shown(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` decimals without a negative zero: printed, ``-0.001`` reads ``+0.00``, not ``-0.00``."""
    return round(float(value), digits) + 0.0


def plus_minus(uncertainty: float | None) -> str:
    """`` ± 0.12``: a standard uncertainty as printed after its value (before the unit); ``""`` where unknown."""
    return "" if uncertainty is None else f" ± {shown(uncertainty):.2f}"


def rotation_text(rotation_deg: float | None, details: dict | None, equals: str = " =") -> str:
    """``rotation = +1.25 ± 0.43 deg`` (its standard uncertainty where known), or ``rotation not estimated``.

    ``details`` is a result's (``details["rotation_uncertainty_deg"]``, :func:`~portalign.registration._quality.
    rotation_uncertainty_deg`); ``equals`` is what stands between the word and the value.
    """
    if rotation_deg is None:
        return "rotation not estimated"
    return f"rotation{equals} {shown(rotation_deg):+.2f}{plus_minus((details or {}).get('rotation_uncertainty_deg'))} deg"


def shift_spread(details: dict | None) -> str:
    """`` ± 0.12``: a measured shift's standard uncertainty (mm, each of dx and dy) where known, else ``""``.

    Printed after each axis's value, before its unit: ``dx = +3.99 ± 0.15 mm   dy = -2.57 ± 0.15 mm``.
    """
    return plus_minus((details or {}).get("shift_uncertainty_mm"))


def patient_position_argument(value: str) -> str:
    """``--patient-position``: one of the positions the couch axes are defined for (any case), else a usage error.

    A typo was taken silently (``register``), or refused only after the registration and without the flag's name
    (``--reg``), or turned into a warning (``couch``).
    """
    from .couch import PATIENT_TO_IEC

    position = value.strip().upper()
    if position not in PATIENT_TO_IEC:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not supported; use one of {', '.join(PATIENT_TO_IEC)} (the IEC 61217 couch axes are "
            "defined for these; decubitus and sitting positions are not)")
    return position


def listen_problem(command: str, host: str, port: int) -> str:
    """Return the one-line error of a server that cannot listen on ``host:port``, or ``""`` where it can.

    Checked before a server opens its results file or compiles its kernels (``serve``, ``scp``): a port outside
    0..65535 (``socket.bind`` raises ``OverflowError``, which left a traceback and an empty journal), an unknown host,
    or a port another program holds (probed as the servers bind: with address reuse).
    """
    if not 0 <= port <= 65535:
        return f"{command}: --port must be within 0..65535, got {port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"{command}: cannot listen on {host}:{port} ({exc.strerror or exc}); check --host"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                return (f"{command}: cannot listen on {host}:{port} ({why}); another program holds the port: choose "
                        "another with --port")
            if exc.errno == errno.EACCES:
                return (f"{command}: cannot listen on {host}:{port} ({why}); ports below 1024 need administrator "
                        "rights: choose another with --port")
            return f"{command}: cannot listen on {host}:{port} ({why}); check --host and --port"
    return ""


def add_invert_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--invert`` / ``--no-invert`` (``args.invert``: True, False or None) to a parser."""
    parser.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None, help=INVERT_HELP)


def add_warm_up_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-warm-up`` (``args.no_warm_up``) to a receiver's parser (``serve``, ``scp``).

    Without it the receiver compiles the kernels (``portalign.registration.warm_up_kernels``) before it accepts
    anything, so that a sender's first frame is not answered minutes late.
    """
    parser.add_argument("--no-warm-up", action="store_true",
                        help="start at once, without compiling the kernels first (on a cold numba cache a first "
                             "frame then waits minutes for the compiler, past a DICOM sender's DIMSE timeout or an "
                             "HTTP client's)")


def add_mismatch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the switches a refusal's advice names.

    ``--allow-view-mismatch``, ``--allow-patient-mismatch``, ``--mirror-check`` and ``--aperture-check``.
    """
    parser.add_argument("--allow-view-mismatch", action="store_true",
                        help="register a frame whose gantry, collimator or couch angle (or SAD) differs from the "
                             "reference's, when intended; without it such a result is not ok")
    parser.add_argument("--allow-patient-mismatch", action="store_true",
                        help="register images whose PatientID differs (a phantom under two names, files anonymised "
                             "differently), when intended; without it such a result is not ok")
    parser.add_argument("--mirror-check", choices=("first", "always", "never"), default="first",
                        help="also register the frame flipped (left-right, up-down, 180 deg) and refuse it when a flip "
                             "matches clearly better (a mirrored image): on the first frame of each geometry, every "
                             "frame, or never (anatomy that matches as well mirrored)")
    parser.add_argument("--aperture-check", choices=("strict", "warn"), default="strict",
                        help="two portal images through one fixed aperture matched within 2 mm of its own position, "
                             "where too little of the field lies deep inside its edges to confirm the match by the "
                             "anatomy (a cone, a narrow or split field; anywhere in a field with no deep interior at "
                             "all): strict refuses such a match (the edges place it there whether or not the patient "
                             "moved); warn keeps it ok with a warning")


def mismatch_options(args: argparse.Namespace) -> Any:
    """Return the :class:`RegistrationOptions` of :func:`add_mismatch_arguments`' switches (the rest at defaults)."""
    from .options import RegistrationOptions

    return RegistrationOptions(allow_view_mismatch=bool(getattr(args, "allow_view_mismatch", False)),
                               allow_patient_mismatch=bool(getattr(args, "allow_patient_mismatch", False)),
                               mirror_check=getattr(args, "mirror_check", "first"),
                               aperture_check=getattr(args, "aperture_check", "strict"))


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--pixel-spacing-mm``, ``--sid-mm`` and ``--sad-mm``: geometry for files that lack it (errors name them)."""
    parser.add_argument("--pixel-spacing-mm", metavar="MM", type=float, default=None,
                        help="isocentre-plane spacing for .npy inputs or files without one; given for files that have "
                             "one, it replaces theirs (said in the output) (default: from the files)")
    parser.add_argument("--sid-mm", metavar="MM", type=float, default=None,
                        help="source-imager distance when the files lack RTImageSID; given for files that have it, "
                             "it replaces theirs (said in the output) (default: from the files)")
    parser.add_argument("--sad-mm", metavar="MM", type=float, default=None,
                        help="source-axis distance when the files lack RadiationMachineSAD; given for files that have "
                             "it, it replaces theirs (said in the output) (default: from the files)")


def geometry_keywords(args: argparse.Namespace) -> dict:
    """Return the reader keywords of :func:`add_geometry_arguments`' flags (and ``--invert``)."""
    return {"pixel_spacing_mm": getattr(args, "pixel_spacing_mm", None), "sid_mm": getattr(args, "sid_mm", None),
            "sad_mm": getattr(args, "sad_mm", None), "invert": getattr(args, "invert", None)}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that states every option's default: ``(default: X)`` unless the text already says it.

    Flags (``store_true``) are off by default and options whose default is ``None``
    say in their own words what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or isinstance(action, argparse.BooleanOptionalAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def as_flags(message: str, parser: argparse.ArgumentParser | None = None) -> str:
    """Name the command-line flags where the engine's message names Python keywords.

    ``field_margin_mm`` becomes ``--field-margin-mm`` and ``pass patient_position=``
    ``pass --patient-position``: every option of ``parser`` (and the keywords of
    :data:`_FLAG_FOR_KEYWORD`) whose keyword has an underscore, as a whole word.
    """
    flags = dict(_FLAG_FOR_KEYWORD)
    if parser is not None:
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs:
                flags.setdefault(action.dest, longs[0])
    for keyword, flag in flags.items():
        if "_" not in keyword and keyword in _FLAG_FOR_KEYWORD:  # a plain word: only in its keyword form, "frame=3"
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=", f"{flag} ", message)
        elif "_" not in keyword:  # a plain word of the parser's: only with a quoted value, "planned='reference'"
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}='([\w.-]*)'", rf"{flag} \1", message)
        if "_" in keyword:
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=True(?![\w])", flag, message)  # a switch
            # a word's value: "mirror_check='never'" is "--mirror-check never"
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}='([\w.-]*)'", rf"{flag} \1", message)
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=?(?![\w])", flag, message)
    # "set allow_view_mismatch=True (--allow-view-mismatch)" has become "--allow-view-mismatch (--allow-view-mismatch)"
    return re.sub(r"(--[\w-]+(?: [\w.-]+)?) \(\1\)", r"\1", message)


@dataclass
class RegExport:
    """What became of ``--reg-out``: the JSON fields that say so, and the lines to print after the result.

    ``fields``: ``reg`` (the path written, or ``None``), ``reg_not_written`` (why not, or ``None``) and
    ``reg_warnings`` (what the REG had to assume); ``status``: 0, or 2 when the file could not be written.
    """

    status: int = 0
    fields: dict[str, Any] = dataclass_field(default_factory=dict)
    stdout: list[str] = dataclass_field(default_factory=list)
    stderr: list[str] = dataclass_field(default_factory=list)

    def emit(self) -> None:
        """Print the lines, after the result (a failed export never hides a measurement)."""
        for line in self.stdout:
            print(line)
        for line in self.stderr:
            print(line, file=sys.stderr)


def export_reg(command: str, args: argparse.Namespace, ok: bool, reason: str, write: Callable[[], Any]) -> RegExport:
    """Write ``--reg-out`` for a result about to be printed; return what became of it (:class:`RegExport`).

    A result that is not ok gets no REG (said on stderr and in ``reg_not_written``; status 0: a refused match is a
    result). ``write()`` writes the file and returns the dataset, whose ``portalign_warnings`` (what the REG had to
    assume) are printed on stderr. A REG that cannot be written is one line naming the flag and the reason, status
    2 (``reg_not_written`` in the JSON too): the result still stands.
    """
    from .errors import PortalignError

    path = args.reg_out
    parser = getattr(args, "subparser", None)
    export = RegExport(fields={"reg": None, "reg_not_written": None, "reg_warnings": []})
    if not ok:
        why = f"the result is not ok ({reason})"
        export.fields["reg_not_written"] = why
        export.stderr.append(f"portalign {command}: --reg-out {path}: not written: {why}")
        return export
    try:
        ds = write()
    except (PortalignError, OSError) as exc:
        message = as_flags(" ".join(str(exc).split()), parser)
        export.status = 2
        export.fields["reg_not_written"] = message
        export.stderr.append(f"portalign {command}: error: --reg-out {path}: not written: {message}")
        return export
    export.fields["reg"] = str(path)
    export.fields["reg_warnings"] = [as_flags(w, parser) for w in ds.portalign_warnings]
    export.stderr.extend(f"portalign {command}: --reg-out {path}: {w}" for w in export.fields["reg_warnings"])
    if not getattr(args, "json", False):
        export.stdout.append(f"REG written to {path}")
    return export


def error_kind(exc: BaseException) -> str:
    """Return the ``error`` of a ``--json`` failure: the same words as the service's 4xx answers."""
    from .errors import (
        BackendUnavailableError,
        GeometryError,
        ImagePathError,
        MissingDependencyError,
        OptionValueError,
        PixelValuesError,
        PortalImageError,
        ReferencePreparationError,
    )

    for cls, kind in ((PixelValuesError, "invalid_pixels"), (ImagePathError, "invalid_path"),
                      (GeometryError, "invalid_geometry"),
                      (ReferencePreparationError, "reference_preparation"),
                      (PortalImageError, "invalid_image"), (MissingDependencyError, "missing_dependency"),
                      (BackendUnavailableError, "backend_unavailable"),
                      (OSError, "os_error"), (MemoryError, "out_of_memory"),
                      # a flag's value that parses but is out of range (--agreement-mm -1): a usage error, as one that
                      # does not parse is (``_Parser.error``); it was "error", which says nothing
                      (OptionValueError, "usage")):
        if isinstance(exc, cls):
            return kind
    return "error"


def failure_payload(kind: str, message: str, register: bool) -> dict[str, Any]:
    """Return ``--json``'s failure object: ``{"ok": false, "error": kind, "detail": message}``.

    ``register``'s has its measured quantities too, ``null`` (nothing was measured), and the message as its ``reason``.
    """
    payload: dict[str, Any] = {"ok": False, "error": kind, "detail": message}
    if register:
        payload.update(dx_mm=None, dy_mm=None, rotation_deg=None, score=None, reason=message)
    return payload


def print_json_error(args: argparse.Namespace, exc: BaseException, message: str) -> None:
    """With ``--json``, a failure is one JSON object on stdout too, so a caller parsing stdout is never left empty.

    ``{"ok": false, "error": "<kind>", "detail": "<the one-line message>"}``; ``register`` adds its measured
    quantities as ``null`` (nothing was measured). The exit status stays 2 and stderr still has the message.
    """
    import json

    if not getattr(args, "json", False):
        return
    payload = failure_payload(error_kind(exc), message, getattr(args, "command", None) == "register")
    try:
        print(json.dumps(payload), flush=True)
    except OSError:  # stdout itself failed (a full disk, a closed pipe): stderr still says why
        pass


def command_error(command: str | None, args: argparse.Namespace, exc: BaseException,
                  parser: argparse.ArgumentParser | None = None) -> int:
    """Report a command's unusable input: the JSON failure object with ``--json``, one line on stderr; return 2.

    ``command`` is the subcommand's name (``"couch"``; None: the top level, ``portalign: error: ...``); the engine's
    keywords in the message are named as the subcommand's flags (``parser``'s where ``args`` names no subcommand).
    Every command's errors come through here (``cli.main`` too), so they read alike: one line, whitespace collapsed.
    """
    message = as_flags(" ".join(str(exc).split()), getattr(args, "subparser", parser))
    print_json_error(args, exc, message)
    print(f"portalign {command}: error: {message}" if command else f"portalign: error: {message}", file=sys.stderr)
    return 2


def file_line(name: str, lines: list[dict[str, Any]]) -> str:
    """One line saying what became of a file or a received instance (``name``): its result(s), reference, or error."""
    parts = []
    for line in lines:
        status = line.get("status")
        result = line.get("result") or {}
        if status == "error":
            parts.append(f"FAILED ({line.get('error', '')})")
        elif status == "reference":
            parts.append("kept as the reference of its beam")
        elif status in ("ok", "not_ok"):
            rot = rotation_text(result.get("rotation_deg"), result.get("details"), equals="")
            frame = f"frame {line.get('frame_index')}: " if len(lines) > 1 else ""
            dx, dy = result.get("dx_mm"), result.get("dy_mm")
            spread = shift_spread(result.get("details"))
            shift = ("dx, dy not measured" if dx is None or dy is None
                     else f"dx {shown(dx):+.2f}{spread} mm, dy {shown(dy):+.2f}{spread} mm")
            if status == "ok":
                parts.append(f"{frame}{shift}, {rot}, ok")
            elif dx is None or dy is None:
                parts.append(f"{frame}NOT OK ({result.get('reason', '')}); {shift}")
            else:  # the verdict first, its numbers marked as register's text marks them (a log read as a shift)
                parts.append(f"{frame}NOT OK ({result.get('reason', '')}); the refused match, not a shift to apply: "
                             f"{shift}, {rot}")
    return f"{name}: " + ("; ".join(parts) if parts else "handled")


def print_file_line(name: str, lines: list[dict[str, Any]], parser: argparse.ArgumentParser | None = None) -> None:
    """Print :func:`file_line` to stdout at once (a log reader follows the files or instances as they come).

    The engine's keywords in its reasons are named as ``parser``'s flags (``--allow-view-mismatch``).
    """
    print(as_flags(file_line(name, lines), parser), flush=True)
