"""Command-line options shared by every subcommand that reads images (no imports above argparse).

Kept at the bottom of the import graph so that ``couch``, ``fieldcheck``, ``watch`` and
``scp`` can add the same options as ``register`` without importing the CLI.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["add_invert_argument", "as_flags", "HelpFormatter"]

#: RegistrationOptions / reader keywords whose command-line flag is not the keyword with dashes.
_FLAG_FOR_KEYWORD = {"estimate_rotation": "--no-rotation", "frame": "--frame-index"}

INVERT_HELP = ("force (--invert) or forbid (--no-invert) inverting the pixel values of every image read "
               "(Elekta iView files are stored inverted without an intensity sign tag: use --invert); "
               "default: the DICOM PixelIntensityRelationshipSign decides")


def add_invert_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--invert`` / ``--no-invert`` (``args.invert``: True, False or None) to a parser."""
    parser.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None, help=INVERT_HELP)


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--pixel-spacing-mm``, ``--sid-mm`` and ``--sad-mm``: geometry for files that lack it (errors name them)."""
    parser.add_argument("--pixel-spacing-mm", metavar="MM", type=float, default=None,
                        help="isocentre-plane spacing for .npy inputs or files without one (default: from the files)")
    parser.add_argument("--sid-mm", metavar="MM", type=float, default=None,
                        help="source-imager distance when the files lack RTImageSID (default: from the files)")
    parser.add_argument("--sad-mm", metavar="MM", type=float, default=None,
                        help="source-axis distance when the files lack RadiationMachineSAD (default: from the files)")


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
        if "_" in keyword:
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=True(?![\w])", flag, message)  # a switch
            message = re.sub(rf"(?<![\w-]){re.escape(keyword)}=?(?![\w])", flag, message)
    # "set allow_view_mismatch=True (--allow-view-mismatch)" has become "--allow-view-mismatch (--allow-view-mismatch)"
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", message)
