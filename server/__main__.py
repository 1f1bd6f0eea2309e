"""`python -m server [options]`: the same as `convert serve [options]`."""

import sys

from server.cli import main

sys.exit(main())
