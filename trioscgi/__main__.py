"""``python -m trioscgi``: the same command as ``trioscgi``."""

import sys

from ._cli import main

sys.exit(main())
