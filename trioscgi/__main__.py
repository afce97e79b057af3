"""``python -m trioscgi``: the same command as ``trioscgi``."""

import sys

from ._daemon.cli import main

sys.exit(main())
