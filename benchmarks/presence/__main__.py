"""``python -m benchmarks.presence``: see :mod:`benchmarks.presence.driver`."""

import sys

from benchmarks.presence.driver import main

sys.exit(main())
