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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import PortalignError

__all__ = ["main", "build_parser"]

#: Subcommands implemented in other modules: name -> (module, help).
PLUGIN_COMMANDS = {
    "couch": ("portalign.couch", "combine views of one setup into a 3-D couch correction"),
    "serve": ("portalign.service", "HTTP backend: prepare references, register frames"),
    "scp": ("portalign.scp", "DICOM C-STORE receiver that registers every RT Image it gets"),
    "watch": ("portalign.watch", "register every RT Image dropped into a folder"),
    "fieldcheck": ("portalign.fieldcheck", "field placement: delivered field edges against the planned aperture"),
    "register3d": ("portalign.register3d", "frames of one setup against the planning CT: 6-DOF couch correction"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``portalign`` command."""
    parser = argparse.ArgumentParser(prog="portalign", description="Real-time portal image registration.")
    parser.add_argument("--version", action="version", version=f"portalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reg = sub.add_parser("register", help="register a portal frame against its reference")
    reg.add_argument("reference", help="reference image: DICOM RT Image (DRR or reference portal image) or .npy")
    reg.add_argument("frame", help="portal frame: DICOM RT Image or .npy")
    reg.add_argument("--json", action="store_true", help="print one JSON object")
    reg.add_argument("--method", choices=("auto", "mi", "edge"), default="auto")
    reg.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto")
    reg.add_argument("--repeat", type=int, default=0, metavar="N",
                     help="register the frame N times after a warm-up; elapsed_ms is the median (JIT excluded)")
    reg.add_argument("--overlay", metavar="PNG", help="write a review picture")
    reg.add_argument("--frame-index", type=int, default=None, help="frame of a multi-frame (cine) RT Image")
    reg.add_argument("--pixel-spacing-mm", type=float, default=None,
                     help="isocentre-plane spacing for .npy inputs or files without one")
    reg.add_argument("--sid-mm", type=float, default=None, help="source-imager distance when the files lack RTImageSID")
    reg.add_argument("--sad-mm", type=float, default=None, help="source-axis distance when the files lack it")
    reg.add_argument("--max-shift-mm", type=float, default=20.0)
    reg.add_argument("--max-rotation-deg", type=float, default=5.0)
    reg.add_argument("--no-rotation", action="store_true", help="estimate translation only")
    reg.add_argument("--field", choices=("auto", "detect", "none"), default="auto",
                     help="radiation-field detection (its edge is excluded from the match)")
    reg.add_argument("--field-margin-mm", type=float, default=3.0)

    info = sub.add_parser("info", help="print what portalign understood of an RT Image")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    info.add_argument("--pixel-spacing-mm", type=float, default=None, help="isocentre-plane spacing if the file has none")
    info.add_argument("--sid-mm", type=float, default=None, help="source-imager distance if the file has none")
    info.add_argument("--sad-mm", type=float, default=None, help="source-axis distance if the file has none")

    demo = sub.add_parser("demo", help="render a phantom DRR and a displaced MV frame, register them, compare with the truth")
    demo.add_argument("--out", default=None, help="folder for the DICOM pair and the overlay (default: a temporary folder)")
    demo.add_argument("--json", action="store_true")

    backends = sub.add_parser("backends", help="which compute backends run here, and which one auto picks (and why)")
    backends.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks against peers (from a source checkout; same as python -m bench)")
    try:
        _bench_cli().add_arguments(bench)
    except PortalignError as exc:
        bench.set_defaults(plugin_error=str(exc))
        bench.add_argument("rest", nargs=argparse.REMAINDER)

    for name, (module, text) in PLUGIN_COMMANDS.items():
        cmd = sub.add_parser(name, help=text)
        cmd.set_defaults(plugin=module)
        try:
            importlib.import_module(module).add_arguments(cmd)
        except ImportError as exc:  # an optional extra (fastapi, pynetdicom) is missing: say so when used
            cmd.set_defaults(plugin_error=f"portalign {name} needs an optional dependency: {exc} "
                                          "(pip install 'portalign[service]')")
            cmd.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "plugin_error", None):
            raise PortalignError(args.plugin_error)
        if getattr(args, "plugin", None):
            return int(importlib.import_module(args.plugin).run(args))
        return int(COMMANDS[args.command](args))
    except BrokenPipeError:  # output piped into `head` and closed: nothing left to say
        return 0
    except PortalignError as exc:
        print(f"portalign: error: {_as_options(str(exc))}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"portalign: error: {exc}", file=sys.stderr)
        return 2


def _as_options(message: str) -> str:
    """Name the command-line options where the engine's message names keyword arguments."""
    for keyword, option in (("pixel_spacing_mm=", "--pixel-spacing-mm"), ("sid_mm=", "--sid-mm"), ("sad_mm=", "--sad-mm")):
        message = message.replace(keyword, option)
    return message


def _bench_cli() -> Any:
    """Return ``bench.cli`` from the source checkout this package runs from (bench/ is not installed)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "bench" / "cli.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from bench import cli as bench_cli  # type: ignore[import-not-found]
    except ImportError:
        raise PortalignError("portalign bench needs a source checkout (bench/ is not installed): "
                             "run python -m bench from the repository root") from None
    return bench_cli


def _run_bench(args: argparse.Namespace) -> int:
    return int(_bench_cli().run(args))


def _load(path: str, args: argparse.Namespace, *, frame_index: int | None = None) -> Any:
    from .image import Image

    if path.endswith(".npy"):
        if args.pixel_spacing_mm is None:
            raise PortalignError(f"{path}: a .npy file has no geometry; pass --pixel-spacing-mm")
        try:
            with open(path, "rb") as handle:
                magic = handle.read(6)
        except OSError as exc:
            raise PortalignError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        if magic != b"\x93NUMPY":
            raise PortalignError(f"{path}: not a .npy file (no NumPy header)")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PortalignError(f"{path}: cannot be read as a .npy array ({exc})") from exc
        return Image.from_array(array, pixel_spacing_mm=args.pixel_spacing_mm, name=Path(path).name)
    from .dicom import read_rt_image

    return read_rt_image(path, frame=frame_index, pixel_spacing_mm=args.pixel_spacing_mm, sid_mm=args.sid_mm,
                         sad_mm=args.sad_mm)


def _register(args: argparse.Namespace) -> int:
    from .options import RegistrationOptions
    from .reference import prepare_reference

    if args.repeat < 0:
        raise PortalignError(f"--repeat must be 0 or more, got {args.repeat}")
    options = RegistrationOptions(
        method=args.method,
        max_shift_mm=args.max_shift_mm,
        max_rotation_deg=args.max_rotation_deg,
        estimate_rotation=not args.no_rotation,
        field=args.field,
        field_margin_mm=args.field_margin_mm,
    )
    reference_image = _load(args.reference, args)
    frame = _load(args.frame, args, frame_index=args.frame_index)
    reference = prepare_reference(reference_image, options, backend=args.backend)
    result = reference.register(frame)
    extra: dict[str, Any] = {"first_frame_ms": result.elapsed_ms}
    if args.repeat:
        times = [reference.register(frame).elapsed_ms for _ in range(args.repeat)]
        ordered = sorted(times)
        extra.update(
            repeat=args.repeat,
            elapsed_ms_p99=ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            elapsed_ms_min=ordered[0],
        )
        from dataclasses import replace

        result = replace(result, elapsed_ms=statistics.median(times))
    if args.overlay:
        from .overlay import write_overlay

        write_overlay(args.overlay, reference_image, frame, result)
        extra["overlay"] = str(args.overlay)
    _print_result(result, extra, args.json)
    return 0


def _print_result(result: Any, extra: dict[str, Any], as_json: bool) -> None:
    payload = result.as_dict()
    payload.update(extra)
    if as_json:
        print(json.dumps(payload, default=_plain))
        return
    status = "ok" if result.ok else f"NOT OK ({result.reason})"
    print(f"dx = {result.dx_mm:+.2f} mm   dy = {result.dy_mm:+.2f} mm   rotation = {result.rotation_deg:+.2f} deg   {status}")
    print(f"score {result.score:.3f}  method {result.method}  backend {result.backend}  {result.elapsed_ms:.2f} ms")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _info(args: argparse.Namespace) -> int:
    from .dicom import describe

    info = describe(args.file, pixel_spacing_mm=args.pixel_spacing_mm, sid_mm=args.sid_mm, sad_mm=args.sad_mm)
    if args.json:
        print(json.dumps(info, default=_plain))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _backends(args: argparse.Namespace) -> int:
    import numba

    from .backend import cpu_backend, select_backend
    from .gpu import gpu_status

    cpu = cpu_backend()
    threads = f"numba {numba.__version__}, {numba.get_num_threads()} threads"
    gpu_ok, gpu_detail = gpu_status()
    auto = select_backend("auto")
    report = {
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
    from .reference import prepare_reference

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="portalign-demo-"))
    out.mkdir(parents=True, exist_ok=True)
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
    from dataclasses import replace

    result = replace(result, elapsed_ms=statistics.median(times))
    overlay = None
    try:
        from .overlay import write_overlay

        overlay = write_overlay(out / "overlay.png", ref_image, frame_image, result)
    except PortalignError:
        pass  # matplotlib not installed: the registration is the point
    truth_2d = {k: truth[k] for k in ("dx_mm", "dy_mm", "rotation_deg")}
    payload = {
        "reference": str(ref_path),
        "frame": str(frame_path),
        "overlay": str(overlay) if overlay else None,
        "truth": truth_2d,
        "error_mm": float(np.hypot(result.dx_mm - truth["dx_mm"], result.dy_mm - truth["dy_mm"])),
        "error_deg": abs(result.rotation_deg - truth["rotation_deg"]),
        "first_frame_ms": first_ms,
        "render_s": render_s,
        "result": result.as_dict(),
    }
    if args.json:
        print(json.dumps(payload, default=_plain))
        return 0
    print(f"phantom pair written to {out}")
    print(f"truth:  dx = {truth['dx_mm']:+.2f} mm   dy = {truth['dy_mm']:+.2f} mm   rotation = {truth['rotation_deg']:+.2f} deg "
          "(at the isocentre plane; anatomy off that plane moves a little more or less: parallax)")
    _print_result(result, {}, False)
    print(f"error {payload['error_mm']:.2f} mm, {payload['error_deg']:.2f} deg; first frame {first_ms:.0f} ms (JIT), "
          f"median of 20 frames {result.elapsed_ms:.2f} ms")
    if overlay:
        print(f"review picture: {overlay}")
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
