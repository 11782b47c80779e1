"""The benchmark report: rows land in the results table of docs/benchmarks.md."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_bench_rows_go_at_the_end_of_the_results_table():
    from logpipe.bench import MD_HEADER, add_table_row

    doc = f"# Benchmarks\n\nintro\n\n{MD_HEADER}\n| old row |\n\nanalysis after the table\n"
    out = add_table_row(doc, "| new row |")
    assert out.index("| old row |") < out.index("| new row |") < out.index("analysis after the table")
    assert add_table_row("", "| r |") == MD_HEADER + "\n| r |\n"
