"""``python -m portalign``: the ``portalign`` command."""

import sys

from .cli import main

sys.exit(main())
