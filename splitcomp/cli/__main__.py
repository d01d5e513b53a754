"""``python -m splitcomp.cli <command> ...`` (same as ``splitcomp <command> ...``)."""

import sys

from . import main

sys.exit(main())
