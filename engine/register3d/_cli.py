"""``portalign register3d``: frames of one setup against the planning CT, six degrees of freedom."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``portalign register3d`` arguments to a parser."""
    parser.add_argument("ct_dir", metavar="CT_DIR", help="folder of the planning CT's axial DICOM series")
    parser.add_argument("frames", nargs="+", metavar="FRAME", help="RT Image(s) of one setup (two or more for 6 DOF)")


def run(args: argparse.Namespace) -> int:
    """Run ``portalign register3d``."""
    raise NotImplementedError
