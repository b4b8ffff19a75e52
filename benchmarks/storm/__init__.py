"""Reconnect storm (issue 12, target 4): a node holding N subscribers drains; they come back on another node.

``driver.py`` runs it (``python -m benchmarks.storm``), ``fleet.py`` is one load-generator process,
``fleet_pool.py`` the driver's handle on them, ``publisher.py`` the backend that publishes throughout,
``report.py`` the figures and the plot.
"""
