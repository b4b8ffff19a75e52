"""Broadcast fan-out benchmark (issue 4, method of seed 002): ``python -m benchmarks.fanout``.

``driver``: the CLI and one run; ``subscriber``: a subscriber process (epoll, SO_TIMESTAMPNS);
``floor.py``: the bare ``sock.send`` loop every server is compared with.
"""
