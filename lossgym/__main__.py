"""``python -m lossgym``: the ``lossgym`` command (see :mod:`lossgym.cli`)."""

import sys

from lossgym.cli import main

sys.exit(main())
