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


def _flag_rows() -> dict[str, tuple[str, str]]:
    """README Flags table: flag -> (environment variable, default column)."""
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_the_flag_table_names_only_real_options_with_their_defaults():
    """The other direction: a row for an option that no longer exists, or a default that drifted, fails."""
    options = {option.flag: option for option in OPTIONS}
    rows = _flag_rows()
    assert set(rows) == set(options), set(rows) ^ set(options)
    for flag, (env, default) in rows.items():
        option = options[flag]
        assert env == option.env, flag
        value = option.default
        if isinstance(value, bool) or value in ("", None) or option.name in ("workers", "backlog"):
            continue  # described in words: "false", "none", "CPUs usable", "net.core.somaxconn"
        shown = default.split()[0]
        assert float(shown) == float(value) if isinstance(value, (int, float)) else shown == str(value), \
            (flag, default, value)


def test_the_module_table_names_every_module():
    package = Path(__file__).resolve().parent.parent / "millionws"
    table = README[README.index("| layer / module |"):README.index("The layers and the one-way import rule")]
    for path in package.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py", "cli.py") or path.parent.name == "brokers":
            continue  # the entry point; brokers/ is one row (its __init__ maps its modules)
        assert f"`{path.name}`" in table, path.relative_to(package)
