"""``python -m benchmarks.fanout``: see :mod:`benchmarks.fanout.driver`."""

import sys

from benchmarks.fanout.driver import main

sys.exit(main())
