"""The benchmark report: rows land in the results table of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_bench_rows_go_at_the_end_of_the_results_table():
    from logpipe.bench import MD_HEADER, add_table_row

    doc = f"# Benchmarks\n\nintro\n\n{MD_HEADER}\n| old row |\n\nanalysis after the table\n"
    out = add_table_row(doc, "| new row |")
    assert out.index("| old row |") < out.index("| new row |") < out.index("analysis after the table")
    assert add_table_row("", "| r |") == MD_HEADER + "\n| r |\n"


def _result(pipeline: bool, ok: bool = True, pipeline_ok: bool = True) -> dict:
    seq = {"stage": "end-to-end, one after the other (produce, then stream)", "wall_s": 300.0, "lines": 3000,
           "lines_per_s": 10}
    at_once = {"stage": "end-to-end (produce and stream at once)", "wall_s": 200.0, "lines": 3000, "lines_per_s": 15}
    return {"date": "20261130T000000", "size_bytes": 2_500_000_000, "lines": 3000, "client": "confluent",
            "stages": [{"stage": "produce", "lines_per_s": 1000}, {"stage": "stream", "lines_per_s": 20}],
            "end_to_end": at_once if pipeline else seq, "end_to_end_sequential": seq,
            "ratios": {"stream_vs_batch": 0.5}, "peak_rss_mb_concurrent": 2048.0, "peak_rss_mb_total": 3000.0,
            "verify": {"ok": ok}, "verify_pipeline": {"ok": pipeline_ok} if pipeline else None}


def test_bench_row_shows_both_end_to_end_figures_and_needs_both_runs_exact():
    from logpipe.bench import MD_HEADER, markdown_row, verified_exact

    columns = len(MD_HEADER.splitlines()[0].split("|"))
    row = markdown_row(_result(pipeline=True))
    assert len(row.split("|")) == columns
    assert "| 200.0 s | 15 | 300.0 s | 10 |" in row and row.endswith("| exact |")
    assert "| not run |  | 300.0 s | 10 |" in markdown_row(_result(pipeline=False))
    assert verified_exact(_result(pipeline=False, pipeline_ok=False))  # no pipeline run: only the stream's verify
    assert not verified_exact(_result(pipeline=True, pipeline_ok=False))
    assert not verified_exact(_result(pipeline=True, ok=False))
    assert markdown_row(_result(pipeline=True, pipeline_ok=False)).endswith("| MISMATCH |")


def test_a_result_records_the_versions_and_commit_it_ran_with():
    """Two results can be compared only knowing what differed: the stack's Kafka and Hadoop (from its poms), the
    Java Spark ran on, and the code's commit."""
    import re

    from logpipe.bench import versions
    from logpipe.config import load_settings
    from logpipe.stack import services

    v = versions(load_settings())
    pom = (Path(services.__file__).parent / "poms" / "kafka.xml").read_text()
    assert f"<kafka.version>{v['kafka_broker']}</kafka.version>" in pom
    assert re.fullmatch(r"\d+\.\d+\.\d+", v["hadoop"])
    assert re.match(r"\d+ \(", v["spark_java"]), v["spark_java"]
    assert re.fullmatch(r"[0-9a-f]{40}( \(dirty\))?", v["commit"]), v["commit"]
