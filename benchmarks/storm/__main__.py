import sys

from benchmarks.storm.driver import main

sys.exit(main())
