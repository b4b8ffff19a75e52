"""Entry point: ``python -m benchmarks.loadgen MODE ...`` (see ``--help``)."""

from benchmarks.loadgen.cli import main

raise SystemExit(main())
