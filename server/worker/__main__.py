"""`python -m server.worker MEMORY_MB`: how the pool starts a worker."""

import sys

from server.worker.main import main

sys.exit(main())
