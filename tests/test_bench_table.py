"""benchmarks/table.py: the README's performance table is the one rendered from the committed results."""

from __future__ import annotations

from benchmarks import table


def test_the_readme_table_is_rendered_from_the_committed_results():
    # After a new run: python -m benchmarks.table --write
    assert table.readme_block() == table.render()


def test_ratios_say_how_many_times_better_millionws_is():
    assert table.ratio(250.0, 500.0, lower_is_better=True) == "2.00" + table.TIMES  # half the bytes
    assert table.ratio(300.0, 150.0, lower_is_better=False) == "2.00" + table.TIMES  # twice the rate
    assert table.ratio(None, 150.0, lower_is_better=False) == ""  # a server missing from the run: no ratio


def test_a_row_names_its_file_and_marks_missing_servers():
    line = table.row("x", {"millionws": 10.0, "picows": 5.0}, "f.json")
    assert line == f"| x | **10** | 5 | {table.DASH} | {table.DASH} | 2.00{table.TIMES} |  | `f.json` |"
