"""``python -m tidings``: the command line (see ``tidings --help``)."""

from __future__ import annotations

import sys

from ._cli import main

sys.exit(main())
