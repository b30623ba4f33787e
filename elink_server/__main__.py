"""``python -m elink_server`` and the ``elink-server`` script."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
