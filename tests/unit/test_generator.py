"""The generator: deterministic, realistic lines our parser accepts, incidents that cross the alert rules,
background that never does, malformed share and truth file honest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from logpipe.config import Settings
from logpipe.generator import generate, parse_size, truth_path
from logpipe.logformat import try_parse_line
from logpipe.verify import count_log, expected_alerts

pytestmark = pytest.mark.unit

LINES = 150_000  # ~27 min of log time at 100 lines/s: one incident of each kind


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "a.log"
    generate(out, lines=LINES, seed=3)
    return out, json.loads(truth_path(out).read_text())


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, sample):
    a, b, c = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    generate(a, lines=20_000, seed=9)
    generate(b, lines=20_000, seed=9)
    generate(c, lines=20_000, seed=10)
    assert _sha(a) == _sha(b) != _sha(c)
    assert truth_path(a).read_text() == truth_path(b).read_text()


def test_truth_counts_match_the_file(sample):
    log, truth = sample
    lines = log.read_bytes().split(b"\n")[:-1]
    assert len(lines) == truth["total_lines"] == LINES
    rejected = [r for r in map(try_parse_line, lines) if isinstance(r, str)]
    assert len(rejected) == truth["malformed_lines"] == sum(truth["malformed_by_kind"].values())
    assert 0.0005 < len(rejected) / LINES < 0.002  # default share 0.1 %
    assert {i["kind"] for i in truth["incidents"]} == {"rate_limit", "url_scan", "outage"}


def test_seed_format_looks_like_the_seed(sample):
    log, _ = sample
    first = log.read_text(errors="replace").splitlines()[0]
    rec = try_parse_line(first)
    assert not isinstance(rec, str) and first.startswith(f"{rec.host} - - [2004-05-18 ")
    assert rec.request.startswith("GET /") and rec.protocol == "HTTP/1.1"


def test_incidents_cross_the_rules_and_background_does_not(sample):
    """Independent count over the file: the alerts the rules imply are exactly the planted ones."""
    log, truth = sample
    s = Settings()
    counts = count_log(log, 20, 10)
    implied = expected_alerts(counts, s)
    planted = {(e["rule"], e["key"]) for i in truth["incidents"] for e in i["expected_alerts"]}
    assert set(zip(implied.rule, implied.key)) == planted
    # and clearly: each planted rate-limit host reaches at least twice the ceiling in some window
    for inc in truth["incidents"]:
        if inc["kind"] == "rate_limit":
            peak = counts.by_host[counts.by_host.host == inc["hosts"][0]]["count"].max()
            assert peak >= 2 * s.rate_limit_ceiling
    background = counts.by_host[~counts.by_host.host.isin([h for i in truth["incidents"] for h in i["hosts"]])]
    assert background["count"].max() < s.rate_limit_ceiling / 2


@pytest.mark.parametrize("fmt", ["clf", "combined"])
def test_other_formats_parse(tmp_path, fmt):
    out = tmp_path / f"{fmt}.log"
    truth = generate(out, lines=5_000, seed=1, fmt=fmt, malformed_share=0.0)
    bad = [ln for ln in out.read_bytes().split(b"\n")[:-1] if isinstance(try_parse_line(ln), str)]
    assert bad == [] and truth.malformed_lines == 0
    line = out.read_text().splitlines()[0]
    assert "/May/2004:" in line and (line.endswith('"') if fmt == "combined" else not line.endswith('"'))


def test_size_is_honoured(tmp_path):
    out = tmp_path / "s.log"
    generate(out, size_bytes=parse_size("3MB"), seed=2)
    assert 2_900_000 <= out.stat().st_size <= 3_000_000
