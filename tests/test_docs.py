"""The README's tables are the documentation of record: they must name every flag and metric."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from millionws import metrics
from millionws.config import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```")[1]
    assert "./scripts/serve" in first_block and "./scripts/test" in first_block
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "scripts/test" in ci


def test_every_option_is_in_the_flag_table():
    for option in OPTIONS:
        assert re.search(rf"\| `{option.flag}` \| `{option.env}` \|", README), option.flag


def test_every_metric_is_in_the_metrics_table():
    shared = metrics.SharedStats(1)
    metrics.WorkerStats(shared, 0)
    names = {f.name for f in text_string_to_metric_families(metrics.render(shared).decode())}
    for name in names:
        exported = name + "_total" if f"{name}_total" in README else name
        assert f"`{exported}" in README, name
