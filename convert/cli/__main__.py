"""`python -m convert.cli` (torchrun launches it this way)."""

import sys

from convert.cli import main

__all__: list[str] = []

sys.exit(main())
