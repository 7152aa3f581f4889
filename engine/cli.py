"""The ``portalign`` command line.

``portalign register REF FRAME --json`` prints one JSON object (DESIGN.md):
exit status 0 on a result, ok or not; 2 with a one-line error on unusable
input. Other subcommands live in their own modules, each with
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from ._cli_options import (
    HelpFormatter,
    add_geometry_arguments,
    add_invert_argument,
    add_mismatch_arguments,
    as_flags,
    command_error,
    failure_payload,
    patient_position_argument,
    rotation_text,
    shift_spread,
    shown,
)
from .errors import GeometryError, MissingDependencyError, PortalignError
from .image import declared_kind
from .registration._views import VIEW_TAGS

__all__ = ["main", "build_parser", "as_flags", "PLUGIN_COMMANDS"]

#: Subcommands implemented in other modules: name -> (module, help).
PLUGIN_COMMANDS = {
    "couch": ("portalign.couch", "combine views of one setup into a 3-D couch correction"),
    "serve": ("portalign.service", "HTTP backend: prepare references, register frames"),
    "scp": ("portalign.scp", "DICOM C-STORE receiver that registers every RT Image it gets"),
    "watch": ("portalign.watch", "register every RT Image dropped into a folder"),
    "fieldcheck": ("portalign.fieldcheck", "field placement: delivered field edges against the planned aperture"),
    "archive": ("portalign.archive._cli", "re-register a department's archive on Dask: setup errors and margins"),
    "register3d": ("portalign.register3d", "frames of one setup against the planning CT: 6-DOF couch correction"),
}

#: The source checkout this package runs from (bench/ lives there; it is not installed).
SOURCE_ROOT = Path(__file__).resolve().parents[1]

#: Exit status of ``register`` when the result was printed but a requested output file
#: (``--overlay``, ``--reg``) could not be written; the same as unusable input.
EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser that names a mistyped option before a missing required one.

    argparse checks the required arguments before it reports unrecognised words, so
    ``portalign watch --onec DIR`` said "--results is required" and hid the typo.
    The subcommands' parsers are of this class too (``add_subparsers`` copies it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no abbreviated options: "scp --ae X" started a listener, "--ae" taken for "--ae-title" (a new user's trial)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _unknown_options(self) -> list[str]:
        unknown = []
        for word in getattr(self, "_words", []):
            if word == "--":
                break
            if not word.startswith("-") or word == "-" or self._negative_number_matcher.match(word):
                continue
            name = word.split("=", 1)[0]
            if name in self._option_string_actions:
                continue
            if self.allow_abbrev and name.startswith("--") and any(
                    option.startswith(name) for option in self._option_string_actions):
                continue
            unknown.append(word)
        return unknown

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            unknown = self._unknown_options()
            if unknown:
                message = f"unrecognized arguments: {' '.join(unknown)}"
        if message.startswith("unrecognized arguments: "):
            message += self._suggestions(message[len("unrecognized arguments: "):].split())
        chosen = re.match(r"argument COMMAND: invalid choice: '([^']*)'", message)
        if chosen:  # a mistyped subcommand: the one it is closest to, as for a mistyped option
            import difflib

            commands = [name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                        for name in action.choices]
            close = difflib.get_close_matches(chosen.group(1), commands, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
        words = getattr(self, "_words", [])
        # a mistyped subcommand's --json is no option of the top level, but the caller still parses stdout
        if "--json" in words and ("--json" in self._option_string_actions or chosen is not None):
            # a caller parsing stdout gets one JSON object here too (as for unusable input); usage and error on stderr
            print(json.dumps(failure_payload("usage", f"{self.prog}: {message}", self.prog.endswith(" register"))),
                  flush=True)
        super().error(message)

    def _suggestions(self, words: list[str]) -> str:
        """Return `` (did you mean --method?)`` for the unrecognised options close to one of this parser's, else ""."""
        import difflib

        options = sorted(name for name in self._option_string_actions if name.startswith("--"))
        said = []
        for word in words:
            name = word.split("=", 1)[0]
            if not name.startswith("--") or name in self._option_string_actions:
                continue
            # a word that begins exactly one option is that option cut short (options are never abbreviated):
            # "scp --ae X" was told "did you mean --backend?", the closest spelling, not --ae-title
            begun = [option for option in options if option.startswith(name)] if len(name) > 3 else []
            close = begun if len(begun) == 1 else difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            if close:
                said.append((name, close[0]))
        if len(said) == 1:
            return f" (did you mean {said[0][1]}?)"
        return f" (did you mean {', '.join(f'{close} for {name}' for name, close in said)}?)" if said else ""


def build_parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the ``portalign`` command.

    Parameters
    ----------
    command_name : str, optional
        The subcommand about to run: only its plugin module is imported to add its options
        (importing every plugin costs over a second: FastAPI, pynetdicom, Dask). None imports all.
    """
    parser = _Parser(prog="portalign", description="Real-time portal image registration.",
                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"portalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        cmd.set_defaults(subparser=cmd)
        return cmd

    reg = command("register", "register a portal frame against its reference")
    reg.epilog = ("exit status: 0 when a result was printed, ok or not (a refused match is a result:\n"
                  "read its ok and reason, or the JSON's \"ok\"); 2 when an input could not be used\n"
                  "or an output (--overlay, --reg) could not be written (the error names it; the JSON\n"
                  "says why in overlay_not_written / reg_not_written). A refused match gets no REG:\n"
                  "said on stderr and in reg_not_written, exit 0")
    reg.add_argument("reference", help="reference image: DICOM RT Image (DRR or reference portal image) or .npy")
    reg.add_argument("frame", help="portal frame: DICOM RT Image or .npy")
    reg.add_argument("--json", action="store_true",
                     help='print one JSON object; on unusable input too: {"ok": false, "error": KIND, "detail": '
                          'MESSAGE}, exit 2')
    reg.add_argument("--method", choices=("auto", "mi", "edge"), default="auto",
                     help="similarity of the final refinement: edges, mutual information, or both (auto: they must agree)")
    reg.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto",
                     help="compute backend (auto: the GPU when one works here, else the CPU)")
    reg.add_argument("--repeat", type=int, default=0, metavar="N",
                     help="register the frame N more times after the first; elapsed_ms is their median (compilation "
                          "and plan building excluded)")
    reg.add_argument("--overlay", metavar="PNG", help="write a review picture to this .png file (another suffix "
                     "matplotlib knows, .jpg, .pdf or .svg, writes that format), or into this existing folder as "
                     "FRAME_review.png (FRAME: the frame file's name; default: none)")
    reg.add_argument("--reg", metavar="OUT.dcm",
                     help="write the result as a DICOM Spatial Registration (REG) object, when it is ok (default: none)")
    reg.add_argument("--patient-position", default=None, metavar="POS", type=patient_position_argument,
                     help="HFS, FFS, HFP or FFP for --reg (default: the images' PatientPosition)")
    reg.add_argument("--frame-index", metavar="K", type=int, default=None,
                     help="0-based frame of a multi-frame (cine) RT Image (default: the first)")
    add_geometry_arguments(reg)
    add_invert_argument(reg)
    reg.add_argument("--reference-kind", choices=("drr", "portal"), default=None,
                     help="what the reference is where its file cannot say: drr (rendered from the CT: no radiation "
                          "field in it, none looked for) or portal (a reference portal image: its field is detected); "
                          "needed for a .npy DRR, whose body outline is otherwise taken for a field (default: the "
                          "DICOM header's ImageType / RTImageLabel; unknown for .npy)")
    reg.add_argument("--max-shift-mm", metavar="MM", type=float, default=20.0, help="capture range of the translation (mm)")
    reg.add_argument("--max-rotation-deg", metavar="DEG", type=float, default=5.0,
                     help="capture range of the in-plane rotation (deg); a rotation found beyond it is refused "
                          "(for translation only use --no-rotation, not 0)")
    reg.add_argument("--no-rotation", action="store_true",
                     help="estimate translation only (rotation_deg is then null: not estimated)")
    reg.add_argument("--field", choices=("auto", "detect", "none"), default="auto",
                     help="radiation-field detection; its edge is excluded from the match (auto: in portal images, "
                          "not in DRRs)")
    reg.add_argument("--field-margin-mm", metavar="MM", type=float, default=3.0,
                     help="band each side of the field edge left out of the match (mm)")
    reg.add_argument("--agreement-mm", metavar="MM", type=float, default=1.5,
                     help="--method auto: largest distance between the edge and the mutual-information optima before "
                          "the pair is refused as disagreeing (mm; against a DRR, whose edges' optimum is reported, "
                          "1 mm more)")
    reg.add_argument("--no-fine-polish", action="store_true",
                     help="skip the last, full-resolution polish that --method auto gives two portal images in "
                          "near-perfect agreement (a phantom imaged twice, windows of one image): such a frame then "
                          "takes a third to a half of the time and is about 0.01 mm less precise (a cine loop with a "
                          "tight frame interval); other pairs are not affected")
    add_mismatch_arguments(reg)

    info = command("info", "print what portalign understood of an RT Image")
    info.add_argument("file", help="DICOM RT Image (or CR/DX projection image)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--frame-index", metavar="K", type=int, default=None,
                      help="0-based frame of a multi-frame (cine) RT Image (default: the first)")
    add_geometry_arguments(info)
    add_invert_argument(info)

    demo = command("demo", "render a phantom DRR and a displaced MV frame, register them, compare with the truth")
    demo.add_argument("--out", default=None, help="folder for the DICOM pair and the overlay (default: a temporary folder)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")

    backends = command("backends", "which compute backends run here, and which one auto picks (and why)")
    backends.add_argument("--json", action="store_true", help="print one JSON object")

    bench = command("bench", "benchmarks against peers (from a source checkout; same as python -m bench)")
    try:
        _bench_cli().add_arguments(bench)
    except PortalignError as exc:
        bench.set_defaults(plugin_error=str(exc))
        bench.epilog = f"its options (--quick, --out DIR, ...) are listed where it can run: {exc}"
    except ImportError as exc:  # a peer library imported at parser time: never let it break the other commands
        missing = str(MissingDependencyError.for_module(exc.name or "", "portalign bench"))
        bench.set_defaults(plugin_error=missing)
        bench.epilog = f"its options (--quick, --out DIR, ...) are listed where it can run: {missing}"

    for name, (module, text) in PLUGIN_COMMANDS.items():
        cmd = command(name, text)
        cmd.set_defaults(plugin=module)
        if command_name is not None and command_name != name:
            continue  # not the one that runs: its options are not needed
        try:
            importlib.import_module(module).add_arguments(cmd)
        except ImportError as exc:  # an optional extra (fastapi, pynetdicom) is missing: say which, whatever the arguments
            missing = exc.name or module
            message = str(MissingDependencyError.for_module(missing, f"portalign {name}"))
            cmd.set_defaults(plugin_error=message)
            # --help too: without the extra its options cannot be listed, and a bare "[-h]" usage hid why
            cmd.description = f"{text}. {message}; its options are listed once it is installed."
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    # the subcommand is the first word that is not an option (`--version` / `--help` have none)
    chosen = next((word for word in words if not word.startswith("-")), "")
    parser = build_parser(chosen)
    args, unknown = parser.parse_known_args(words)
    subparser = getattr(args, "subparser", parser)
    if getattr(args, "plugin_error", None):  # before the arguments: they cannot be checked without the module
        print(f"portalign: error: {args.plugin_error}", file=sys.stderr)
        return 2
    if unknown:  # a typo in a subcommand's option: that subcommand's usage, not the top level's
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "plugin", None):
            return int(importlib.import_module(args.plugin).run(args))
        return int(COMMANDS[args.command](args))
    except BrokenPipeError:  # output piped into `head` and closed: nothing left to say
        return 0
    except (PortalignError, OSError, MemoryError) as exc:
        # ``portalign register: error: ...``, as every command's own errors begin (``_cli_options.command_error``)
        return command_error(getattr(args, "command", None), args, exc, parser)


def _bench_cli() -> Any:
    """Return ``bench.cli`` from the source checkout this package runs from (bench/ is not installed)."""
    root = SOURCE_ROOT
    if not (root / "bench" / "cli.py").is_file():
        raise PortalignError("portalign bench needs a source checkout of portalign (bench/ is not installed) and "
                             'the bench extra: in the checkout, pip install -e ".[bench]" and run python -m bench')
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from bench import cli as bench_cli  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MissingDependencyError.for_module(exc.name or "", "portalign bench") from None
    return bench_cli


def _run_bench(args: argparse.Namespace) -> int:
    return int(_bench_cli().run(args))


def _check_npy_size(path: str) -> None:
    """Refuse a .npy file whose header declares more data than the file holds, before anything is allocated."""
    import os

    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError) as exc:
        raise PortalignError(f"{path}: cannot be read as a .npy array ({' '.join(str(exc).split())[:200]})") from exc
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle=False) with its own message
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if declared > size - offset:
        raise PortalignError(
            f"{path}: its header declares a {' x '.join(str(n) for n in shape)} {dtype} array ({declared:,} bytes) "
            f"but the file holds {size - offset:,} bytes of data: the file is truncated or damaged; save it again "
            "(numpy.save)")


def _load(path: str, args: argparse.Namespace, *, frame_index: int | None = None) -> Any:
    from .image import Image

    if path.endswith(".npy"):
        if args.pixel_spacing_mm is None:
            raise GeometryError(f"{path}: a .npy file has no geometry; pass --pixel-spacing-mm (its spacing at the "
                                "isocentre, mm)")
        try:
            with open(path, "rb") as handle:
                magic = handle.read(6)
        except OSError as exc:
            raise PortalignError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        if magic != b"\x93NUMPY":
            raise PortalignError(f"{path}: not a .npy file (no NumPy header)")
        _check_npy_size(path)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PortalignError(f"{path}: cannot be read as a .npy array ({exc})") from exc
        if args.invert and np.ndim(array) == 2 and np.issubdtype(np.asarray(array).dtype, np.number):
            array = np.max(array) - np.asarray(array, dtype=np.float64)
        return Image.from_array(array, pixel_spacing_mm=args.pixel_spacing_mm, name=Path(path).name)
    from .dicom import read_rt_image

    return read_rt_image(path, frame=frame_index, pixel_spacing_mm=args.pixel_spacing_mm, sid_mm=args.sid_mm,
                         sad_mm=args.sad_mm, invert=args.invert)


def _load_named(path: str, args: argparse.Namespace, other: str, *, frame_index: int | None = None) -> Any:
    """``_load``, whose error names ``path`` as given where ``other`` has the same file name.

    A reading error names the file alone: two files of one name, reference and frame, could not be told apart.
    """
    try:
        return _load(path, args, frame_index=frame_index)
    except PortalignError as exc:
        name = Path(path).name
        text = str(exc)
        if Path(other).name != name or not text.startswith(f"{name}:") or name == path:
            raise
        raise PortalignError(f"{path}{text[len(name):]}") from exc


#: Most repeats ``register --repeat`` times: a billion ran on past any timeout with no output (a new user's trial).
MAX_REPEAT = 10000


def _register(args: argparse.Namespace) -> int:
    from .options import RegistrationOptions
    from .registration import prepare_reference_for

    if not 0 <= args.repeat <= MAX_REPEAT:
        raise PortalignError(f"--repeat must be 0 to {MAX_REPEAT} (a timing's median settles within a few hundred "
                             f"registrations), got {args.repeat}")
    if args.patient_position is not None and not args.reg:
        raise PortalignError(f"--patient-position {args.patient_position} is used only by the REG object: pass "
                             "--reg OUT.dcm too, or leave --patient-position out (the shift itself does not depend on it)")
    options = RegistrationOptions(
        method=args.method,
        max_shift_mm=args.max_shift_mm,
        max_rotation_deg=args.max_rotation_deg,
        estimate_rotation=not args.no_rotation,
        field=args.field,
        field_margin_mm=args.field_margin_mm,
        agreement_mm=args.agreement_mm,
        allow_view_mismatch=args.allow_view_mismatch,
        allow_patient_mismatch=args.allow_patient_mismatch,
        mirror_check=args.mirror_check,
        aperture_check=args.aperture_check,
        fine_polish=not args.no_fine_polish,
    )
    if args.overlay:  # a missing matplotlib is said before the registration, not after it
        from .overlay import require_matplotlib

        require_matplotlib()
    reference_image = _load_named(args.reference, args, args.frame)
    # the header said otherwise: the flag wins, and says so with the result
    reference_image, kind_note = declared_kind(reference_image, args.reference_kind, "--reference-kind")
    frame = _load_named(args.frame, args, args.reference, frame_index=args.frame_index)
    if args.reg:  # what the REG needs of the images (SOP Instance UIDs, a patient position), before registering
        from .reg import check_registration_inputs

        check_registration_inputs(reference_image, frame, args.patient_position)
    reference = prepare_reference_for(reference_image, frame, options, backend=args.backend)
    result = reference.register(frame)
    extra: dict[str, Any] = {"first_frame_ms": result.elapsed_ms, "frames_timed": 1}
    if args.repeat:
        times = [reference.register(frame).elapsed_ms for _ in range(args.repeat)]
        ordered = sorted(times)
        extra.update(
            repeat=args.repeat,
            frames_timed=args.repeat,
            elapsed_ms_p99=ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            elapsed_ms_min=ordered[0],
        )
        result = replace(result, elapsed_ms=statistics.median(times))
    # a geometry flag that replaced a tag the file has (a wrong header) is said with the result, not only by `info`
    from .dicom import replaced_tags

    replaced = [f"{image.info.source}: {note}" for image in (reference_image, frame)
                for note in replaced_tags(image.info)] + ([kind_note] if kind_note else [])
    from .image import beam_kind

    taken_by = beam_kind(frame.info)
    if taken_by.startswith("kV"):  # (``info`` says so too): registered as a frame all the same
        replaced.append(f"{frame.info.source}: a {taken_by}, taken through the imaging beam, not the treatment beam; "
                        "registered as a frame all the same")
    # CLI users read flags, not Python keywords
    result = replace(result, reason=as_flags(result.reason, args.subparser),
                     warnings=[as_flags(w, args.subparser) for w in [*replaced, *result.warnings]])
    failures: list[str] = []
    notes: list[str] = []
    if args.overlay:
        extra["overlay"] = None
        try:
            from .overlay import write_overlay

            shown_frame = frame
            if args.patient_position:  # the picture's patient directions are the REG's (--patient-position)
                shown_frame = replace(frame, info=replace(frame.info, patient_position=args.patient_position))
            extra["overlay"] = str(write_overlay(args.overlay, reference_image, shown_frame, result))
        except (PortalignError, OSError, ValueError) as exc:
            extra["overlay_not_written"] = _one_line(exc)
            failures.append(f"--overlay {args.overlay}: not written: {_one_line(exc)}")
    if args.reg:
        extra["reg"] = None
        if not result.ok:  # a refused match is no registration to record: said, and exit 0 as for any result
            extra["reg_not_written"] = f"the result is not ok ({result.reason})"
            notes.append(f"--reg {args.reg}: not written: the result is not ok ({result.reason})")
        else:
            try:
                from .reg import write_spatial_registration

                ds = write_spatial_registration(args.reg, result, reference_image, frame,
                                                patient_position=args.patient_position)
                extra["reg"] = str(args.reg)
                extra["reg_warnings"] = [as_flags(w, args.subparser) for w in ds.portalign_warnings]
            except (PortalignError, OSError, ValueError) as exc:
                extra["reg_not_written"] = as_flags(_one_line(exc), args.subparser)
                failures.append(f"--reg {args.reg}: not written: {extra['reg_not_written']}")
    _print_result(result, extra, args.json)
    for note in notes:
        print(f"portalign register: {note}", file=sys.stderr)
    for failure in failures:
        print(f"portalign register: error: {failure}", file=sys.stderr)
    return EXIT_ERROR if failures else 0


def _print_result(result: Any, extra: dict[str, Any], as_json: bool) -> None:
    payload = result.as_dict()
    payload.update(extra)
    if as_json:
        print(json.dumps(payload, default=_plain))
        return
    status = "ok" if result.ok else f"NOT OK ({result.reason})"
    rotation = rotation_text(result.rotation_deg, result.details)
    if result.dx_mm is None or result.dy_mm is None:
        # the verdict first, as for any refused match (the README's "NOT OK: <reason>")
        print(f"NOT OK: {result.reason}" if not result.ok else status)
        print(f"dx, dy not measured   {rotation}")
    elif not result.ok:
        # a refused match: the verdict first, so that nobody reads its numbers as a shift to apply (a new user's trial)
        print(f"NOT OK: {result.reason}")
        print(f"dx = {shown(result.dx_mm):+.2f} mm   dy = {shown(result.dy_mm):+.2f} mm   {rotation}   "
              "(the refused match: not a shift to apply)")
    else:
        spread = shift_spread(result.details)
        print(f"dx = {shown(result.dx_mm):+.2f}{spread} mm   dy = {shown(result.dy_mm):+.2f}{spread} mm   {rotation}   "
              f"{status}")
        # what the numbers are, on screen (a new user's trial found it only in docs/conventions.md)
        print(f"  the patient's displacement as the imager sees it: mm at the isocentre plane, +x along the image's "
              f"columns, +y down its rows{'; ± one standard uncertainty' if spread else ''}; the correction is the "
              "opposite (portalign couch combines views into a couch shift)")
    # auto's reason for the CPU belongs with the backend, not among the warnings about this frame
    fallback = (result.details or {}).get("backend_fallback")
    backend = f"{result.backend} (auto: {fallback})" if fallback else result.backend
    # say what the score is: auto's and mi's is normalised MI - 1, which two copies of one resampled image do not
    # bring near 1 (a new user's trial read 0.44 on a self-match as poor); the edge correlation is given beside it
    edge = (result.details or {}).get("edge_score")
    if result.score is None:  # nothing was measured (the reason says why)
        score = "score not measured"
    elif result.method == "edge":
        score = f"score {result.score:.3f} (edge correlation, 1 = every edge matched)"
    else:
        score = f"score {result.score:.3f} (normalised MI - 1)"
        if isinstance(edge, float):
            score += f"  edge correlation {edge:.3f}"
    print(f"{score}  method {result.method}  backend {backend}")
    why = (result.details or {}).get("final_metric_why")
    fine = (result.details or {}).get("fine_polish") or {}
    fitted = fine.get("intensity") if fine.get("kept") else None
    if fitted:  # the last polish moved the pose: say what it did (--no-fine-polish skips it)
        turned = ", rotation" if fitted.get("rotation_fitted") else ""
        print(f"optimum: polished by a least-squares fit of the intensities (translation{turned}, gain, offset) on "
              f"{fitted['pixels']} pixels of pyramid level {fitted['level']}, {fine['moved_mm']:.3f} mm from the "
              "working levels' pose (two images of one kind in near-perfect agreement; --no-fine-polish skips it)")
    elif result.method == "auto" and why and result.dx_mm is not None:  # auto reported the MI optimum: say so, and why
        mi_check = (result.details or {}).get("mi_check_mm") or [None, None, None]
        held = why == "portal reference" and result.rotation_deg is not None and mi_check[2] is None
        what = "the mutual-information translation, the edge rotation" if held else "mutual information"
        print(f"optimum: {what} ({why}; the edge optimum is its check)")
    print(f"time: {_timing_text(result.elapsed_ms, extra)}")
    for warning in result.warnings:
        if warning != fallback:
            print(f"warning: {warning}")
    if extra.get("overlay"):
        print(f"review picture: {extra['overlay']}")
    if extra.get("reg"):
        print(f"DICOM REG: {extra['reg']}")
        for warning in extra.get("reg_warnings", []):
            print(f"REG warning: {warning}")


def _timing_text(elapsed_ms: float, extra: dict[str, Any]) -> str:
    first = extra.get("first_frame_ms", elapsed_ms)
    frames = extra.get("frames_timed", 1)
    if frames > 1:
        return (f"{elapsed_ms:.2f} ms, median of {frames} frames; first frame {first:.0f} ms "
                "(compile / cache load and plan building)")
    return (f"{first:.0f} ms for the only frame, the first of its geometry (includes compile / cache load and plan "
            "building; --repeat N gives the steady-state median)")


#: ``info``'s one-line notes (``_understood``): printed after the values; ``null`` in ``--json`` where there is none.
_NOTES = ("angles_note", "intensity_note", "detector_lines_note")


def _info(args: argparse.Namespace) -> int:
    from .dicom import describe

    image = _load(args.file, args, frame_index=args.frame_index)
    info = describe(image)
    info.update(_understood(image))
    if args.json:
        for key in _NOTES:  # nothing to note: null, as elsewhere
            info[key] = info.get(key) or None
        print(json.dumps(info, default=_plain))
        return 0
    for key, value in info.items():
        if key in ("notes", "dicom_warnings", *_NOTES):
            continue
        if key == "dead_detector_lines":  # null in --json: none found (not "unknown": they were looked for)
            from .registration._frame import part_lines_said

            # the JSON key holds hot lines too (clients read it): the text says faulty, and which are which
            print("faulty detector lines (dead or hot, left out of a match): none" if value is None else
                  "faulty detector lines (left out of a match): " + "; ".join(
                      f"{kind} {axis} {lines}" for kind, axis, lines in (
                          ("dead", "rows", [r for r in value["rows"] if r not in value["hot_rows"]]),
                          ("dead", "columns", [c for c in value["columns"] if c not in value["hot_columns"]]),
                          ("hot", "rows", value["hot_rows"]), ("hot", "columns", value["hot_columns"])) if lines)
                  + part_lines_said(value))
            continue
        if key == "likely_inverted" and value is None:  # looked at, and nothing to judge by: its note says why
            print("likely_inverted: not judged")
            continue
        if key == "kvp" and isinstance(value, (int, float)):  # the tag as stored, and what it means
            print(f"kvp: {value:g} ({value / 1000:g} MV: the KVP tag holds an MV beam's energy in kV)"
                  if value >= 1000 else f"kvp: {value:g} (kV)")
            continue
        if key == "acquisition_date" and isinstance(value, str) and len(value) == 8 and value.isdigit():
            print(f"acquisition_date: {value[:4]}-{value[4:6]}-{value[6:]}")  # DICOM's YYYYMMDD, as ISO 8601
            continue
        # angles to 0.01 deg: a collimator at 0.000142 deg is at 0
        print(f"{key}: {_rounded(_angle_text(value) if key.endswith('_deg') and isinstance(value, float) else value)}")
    for key in _NOTES:
        if info.get(key):
            print(f"note: {info[key]}")
    for key in ("notes", "dicom_warnings"):
        for line in info.get(key) or []:
            print(f"note: {line}")
    return 0


def _understood(image: Any) -> dict[str, Any]:
    """Return what ``info`` adds to the header: the image's nature, its field, a likely inversion, null angles."""
    from .field import NO_FIELD, box_reduce, find_field, likely_inverted
    from .image import beam_kind

    info = image.info
    kind = beam_kind(info)  # the overlay's title says the same
    if kind == "DRR":
        nature = "DRR (rendered from the planning CT)"
    elif kind.startswith("kV"):
        nature = f"{kind} through the imaging beam, not the treatment beam"
    elif kind.startswith("portal"):
        kvp = info.extra.get("kvp")  # beam_kind's MV figure is this KVP / 1000
        if not kvp:
            nature = "portal image (beam energy not recorded: no KVP)"
        elif kvp / 1000 < IMAGING_MV_BELOW:  # TrueBeam's and Halcyon's 2.5 MV imaging beam
            nature = kind.replace(" MV)", " MV imaging beam: treatment beams are 4 MV and above)")
        else:
            nature = kind.replace(" MV)", " MV treatment beam)")
    else:
        nature = "projection image of unknown kind"
    small, factor = box_reduce(image.pixels, 256)
    drr = info.kind == "drr"
    # as registration finds it: planned jaws and intensity sign taken into account; a DRR has no radiation field
    # (registration does not look for one: what a split finds there is the body's outline)
    # (its detector's own lines screened too, as a reference's are when prepared: info reads one image once)
    field = NO_FIELD if drr else find_field(image, small, thorough=True)
    out: dict[str, Any] = {"image": nature, "field_detected": field.detected, "field_box_mm": None}
    if nature.startswith("kV"):
        out["kind"] = "kv"  # registered like a portal image (its field is detected), but not called one
    if field.detected and field.box_px is not None:
        c0, c1, r0, r1 = field.box_px
        x0, y0 = image.pixel_to_mm(c0 * factor + (factor - 1) / 2, r0 * factor + (factor - 1) / 2)
        x1, y1 = image.pixel_to_mm(c1 * factor + (factor - 1) / 2, r1 * factor + (factor - 1) / 2)
        out["field_box_mm"] = [float(x0), float(x1), float(y0), float(y1)]
        out["field"] = (f"x {float(x0):.1f}..{float(x1):.1f} mm, y {float(y0):.1f}..{float(y1):.1f} mm "
                        "from the beam axis at the isocentre plane")
        if field.doubt:
            out["field_doubt"] = field.doubt
    elif field.note:
        out["field"] = field.note
    elif drr:
        out["field"] = "not looked for: a DRR has no radiation field (registration uses the whole DRR)"
    else:
        out["field"] = "no field edge found (the field covers the image)"
    # the dead (or hot) detector lines registration leaves out of the match, and why an image has too many to
    out["dead_detector_lines"] = None
    if field.dead_rows or field.dead_cols:
        from .registration._frame import dead_detector_lines, faulty_lines

        out["dead_detector_lines"] = faulty_lines(image.pixels, *dead_detector_lines(field, factor))
    out["detector_lines_note"] = (f"{field.striped}: registration refuses this image (as a reference when it is "
                                  "prepared; as a frame, its result is not ok)") if field.striped else ""
    # a field darker than around it: True; brighter: False; no field edge either way (or no radiation field): not
    # judged, null (a picket fence stored inverted by iView was said False)
    out["likely_inverted"] = None if drr else likely_inverted(image, small, field)
    reason = str(info.extra.get("intensity_sign_reason") or "")
    if out["likely_inverted"]:
        out["intensity_note"] = ("the radiation field is darker than its surroundings: the pixel values are likely "
                                 "inverted; try --invert (or --no-invert to keep them)")
    elif out["likely_inverted"] is None and not reason.startswith("invert="):
        # (where --invert or --no-invert set the sign, the user has decided: nothing to add)
        out["intensity_note"] = ("likely_inverted not judged (null): " + (
            "a DRR has no radiation field to judge by" if drr else "a kV image's sign is not judged"
            if info.kind != "portal" else "no field edge in the image to compare the field with its surroundings"))
    else:
        out["intensity_note"] = ""
    if (out["likely_inverted"] is None and info.kind == "portal"
            and "elekta" in str(info.extra.get("manufacturer") or "").lower()
            and reason.startswith("no PixelIntensityRelationshipSign")):
        # no field edge to judge by (a picket fence, an open field): the maker's habit is all there is to go on
        out["intensity_note"] += ("; an Elekta image without PixelIntensityRelationshipSign: iView stores its images "
                                  "inverted without saying so; if the radiation shows dark, read it with --invert")
    missing = [name for name in ANGLE_TAGS if getattr(info, name) is None]
    one = len(missing) == 1
    out["angles_note"] = (
        f"{', '.join(missing)} unknown (null in --json): the file does not carry {'it' if one else 'them'} "
        f"({', '.join(ANGLE_TAGS[name] for name in missing)}); views are then not compared on "
        f"{'it' if one else 'them'}" if missing else "")
    return out


def _angle_text(value: float) -> float:
    """Return an angle as ``info``'s text shows it: to 0.01 deg, in [0, 360) (359.9998 deg is 0)."""
    shown = round(value, 2) + 0.0  # + 0.0: no "-0"
    return 0.0 if shown == 360.0 else shown


#: The RT Image angles ``info`` reports, and the tag each is read from (``_views.VIEW_TAGS``' angles).
ANGLE_TAGS = {name: keyword for name, keyword in VIEW_TAGS.items() if name.endswith("_deg")}
#: A portal image's beam below this energy (MV) is an imaging beam (TrueBeam's and Halcyon's 2.5 MV), not a treatment one.
IMAGING_MV_BELOW = 3.5


def _rounded(value: Any) -> Any:
    """Values as a reader wants them: 3 decimals at most, None (or an empty text) as 'unknown'."""
    if value is None or value == "":
        return "unknown"
    if isinstance(value, float):
        # 3 decimals, but never a small value rounded to 0 (a rescale slope of 0.000226 is not "0")
        return f"{round(value, 3):g}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(_rounded(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_rounded(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not value.isprintable():
        from .dicom import escaped

        # a tag's text from the file: a terminal escape or a newline in it is shown, not acted on (--json escapes too)
        return escaped(value)
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _backends(args: argparse.Namespace) -> int:
    import numba

    from .backends import cpu_backend, gpu_status, select_backend

    cpu = cpu_backend()
    threads = f"numba {numba.__version__}, {numba.get_num_threads()} threads"
    gpu_ok, gpu_detail = gpu_status()
    auto = select_backend("auto")
    report: dict[str, dict[str, Any]] = {
        "cpu": {"available": True, "device": f"{cpu.device}; {threads}"},
        "gpu": {"available": gpu_ok, "device" if gpu_ok else "reason": gpu_detail},
        "auto": {"backend": auto.name, "reason": auto.fallback_reason or auto.device},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"cpu   available    {report['cpu']['device']}")
    print(f"gpu   {'available  ' if gpu_ok else 'unavailable'}  {gpu_detail}")
    print(f"auto  picks {auto.name}: {report['auto']['reason']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import make_demo_pair, write_rt_image
    from .dicom import read_rt_image
    from .registration import prepare_reference

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="portalign-demo-"))
    if out.exists() and not out.is_dir():
        raise PortalignError(f"--out {out}: is a file, not a folder; give a folder for the pair (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PortalignError(f"--out {out}: cannot make the folder ({exc.strerror or exc})") from None
    if not args.json:  # the first run is silent for minutes otherwise (a new user's trial: 2.5 min, no word)
        print("rendering the phantom pair and registering it (a first run compiles the kernels first: minutes on a "
              "fresh install, once)", flush=True)
    start = time.perf_counter()
    reference, frame, truth = make_demo_pair()
    ref_path = write_rt_image(reference, out / "reference_drr.dcm", label="DRR", image_type="DRR")
    frame_path = write_rt_image(frame, out / "portal_frame.dcm", label="MV portal", image_type="PORTAL")
    render_s = time.perf_counter() - start
    ref_image, frame_image = read_rt_image(ref_path), read_rt_image(frame_path)
    prepared = prepare_reference(ref_image)
    result = prepared.register(frame_image)  # first frame: includes compilation unless cached
    first_ms = result.elapsed_ms
    times = [prepared.register(frame_image).elapsed_ms for _ in range(20)]
    result = replace(result, elapsed_ms=statistics.median(times))
    overlay, overlay_error = None, None
    try:
        from .overlay import write_overlay

        overlay = write_overlay(out / "overlay.png", ref_image, frame_image, result)
    except PortalignError as exc:  # matplotlib not installed: the registration is the point, but say so
        overlay_error = str(exc)
    truth_2d = {k: truth[k] for k in ("dx_mm", "dy_mm", "rotation_deg")}
    payload = {
        "reference": str(ref_path),
        "frame": str(frame_path),
        "overlay": str(overlay) if overlay else None,
        "overlay_error": overlay_error,
        "truth": truth_2d,
        "error_mm": float(np.hypot(result.dx_mm - truth["dx_mm"], result.dy_mm - truth["dy_mm"])),
        "error_deg": None if result.rotation_deg is None else abs(result.rotation_deg - truth["rotation_deg"]),
        "first_frame_ms": first_ms,
        "render_s": render_s,
        "result": result.as_dict(),
    }
    if args.json:
        print(json.dumps(payload, default=_plain))
        return 0
    # a folder of its own making is said to be kept (a new user found one left in /tmp after each run)
    kept = "" if args.out else " (a new temporary folder, kept for you to look at: remove it when done; --out DIR chooses it)"
    print(f"phantom pair written to {out}{kept}: {ref_path.name} (the DRR), {frame_path.name} (the portal frame)")
    print(f"truth:  dx = {truth['dx_mm']:+.2f} mm   dy = {truth['dy_mm']:+.2f} mm   rotation = {truth['rotation_deg']:+.2f} deg "
          "(at the isocentre plane; anatomy off that plane moves a little more or less: parallax)")
    _print_result(result, {"first_frame_ms": first_ms, "frames_timed": len(times)}, False)
    error_deg = "rotation not estimated" if payload["error_deg"] is None else f"{payload['error_deg']:.2f} deg"
    # each axis's error beside the total: the stated uncertainty is each axis's (a new user compared the total with it)
    print(f"error {payload['error_mm']:.2f} mm (dx {abs(result.dx_mm - truth['dx_mm']):.2f}, dy "
          f"{abs(result.dy_mm - truth['dy_mm']):.2f}), {error_deg}")
    if overlay:
        print(f"review picture: {overlay}")
    else:  # the demo draws one when matplotlib is there; without it, say how to get it
        print("no review picture (needs matplotlib: pip install \"portalign[overlay]\")")
    print(f"next: portalign register {ref_path} {frame_path}  (add --json for one JSON object; README, 'Command line')")
    return 0


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


COMMANDS = {"register": _register, "info": _info, "demo": _demo, "bench": _run_bench, "backends": _backends}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
