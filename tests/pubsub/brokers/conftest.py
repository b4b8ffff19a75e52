"""The ``harness`` fixture: Bridges on real Reactors, closed after the test."""

from __future__ import annotations

import pytest

from tests.pubsub.brokers.harness import Harness


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(url: str, **kwargs) -> Harness:
        h = Harness(url, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
