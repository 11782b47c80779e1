"""The generator: deterministic, realistic lines our parser accepts, incidents that clearly cross the alert rules,
background that never does, malformed share and truth file honest (checked by counting the file independently)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from logpipe.config import Settings
from logpipe.generator import (MAX_OUT_OF_ORDER_S, LogGenerator, Truth, _cut_at_line_end, generate, parse_size,
                               truth_path)
from logpipe.logformat import REASONS, LogRecord, try_parse_line

pytestmark = pytest.mark.unit

LINES = 150_000  # ~27 min of log time at 100 lines/s: one incident of each kind
WINDOW, SLIDE = 20, 10


def _sec(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


class WindowCounts:
    """Counts per sliding window (epoch-aligned, 20 s every 10 s unless said), computed here from the parsed lines."""

    def __init__(self, path: Path, window: int = WINDOW, slide: int = SLIDE) -> None:
        self.by_host: Counter[tuple[int, str]] = Counter()
        self.by_status: Counter[tuple[int, int]] = Counter()
        self.total: Counter[int] = Counter()
        self.hosts_of_503: dict[int, set[str]] = {}  # window start -> hosts that got a 503 in it
        self.rejected: Counter[str] = Counter()
        self.lines = 0
        self.times: list[int] = []
        with path.open("rb") as f:
            for raw in f:
                self.lines += 1
                r = try_parse_line(raw)
                if isinstance(r, str):
                    self.rejected[r] += 1
                    continue
                assert isinstance(r, LogRecord)
                t = int(r.timestamp.timestamp())
                self.times.append(t)
                last = t - t % slide
                for start in range(last, t - window, -slide):
                    self.by_host[start, r.host] += 1
                    self.by_status[start, r.http_response] += 1
                    self.total[start] += 1
                    if r.http_response == 503:
                        self.hosts_of_503.setdefault(start, set()).add(r.host)

    def implied_alerts(self, s: Settings) -> set[tuple[str, str, int]]:
        """(rule, key, window_start) the rules imply, from these counts."""
        out = {("rate_limit", h, w) for (w, h), n in self.by_host.items() if n >= s.rate_limit_ceiling}
        out |= {("failure_surge", str(st), w) for (w, st), n in self.by_status.items()
                if st >= 400 and n >= s.surge_min_count and n / self.total[w] >= s.surge_min_share}
        return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict, WindowCounts]:
    out = tmp_path_factory.mktemp("gen") / "a.log"
    generate(out, lines=LINES, seed=3, progress=False)
    return out, json.loads(truth_path(out).read_text()), WindowCounts(out)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    for path, seed in ((a, 9), (b, 9), (c, 10)):
        generate(path, lines=30_000, seed=seed, progress=False)
    assert _sha(a) == _sha(b) != _sha(c)
    assert truth_path(a).read_text() == truth_path(b).read_text() != truth_path(c).read_text()


def test_truth_counts_match_the_file(sample):
    _, truth, counts = sample
    assert counts.lines == truth["total_lines"] == LINES
    # every line the generator did not deliberately break parses: the rejected ones are exactly the planted ones
    assert sum(counts.rejected.values()) == truth["malformed_lines"] == sum(truth["malformed_by_kind"].values())
    assert dict(counts.rejected) == truth["malformed_by_reason"]
    assert set(truth["malformed_by_reason"]) <= set(REASONS)
    assert 0.0005 < truth["malformed_lines"] / LINES < 0.002  # default share 0.1 %
    assert {i["kind"] for i in truth["incidents"]} == {"rate_limit", "url_scan", "outage"}
    assert _sec(truth["first_time"]) == min(counts.times) and _sec(truth["last_time"]) > max(counts.times)


def test_truth_schema(sample):
    _, truth, _ = sample
    assert {"args", "total_lines", "malformed_lines", "malformed_by_kind", "out_of_order_lines", "incidents"} <= set(truth)
    for inc in truth["incidents"]:
        assert {"id", "kind", "rule", "key", "hosts", "status", "start", "end", "expected_alerts"} <= set(inc)
        assert {"rule": inc["rule"], "key": inc["key"]} in inc["expected_alerts"]
        assert inc["key"] == (inc["hosts"][0] if inc["rule"] == "rate_limit" else str(inc["status"]))
        assert _sec(inc["start"]) < _sec(inc["end"]) <= _sec(truth["last_time"])


def test_out_of_order_lines_are_a_few_seconds_late(sample):
    _, truth, counts = sample
    newest, behind = 0, []
    for t in counts.times:
        if t < newest:
            behind.append(newest - t)
        newest = max(newest, t)
    assert 0 < len(behind) <= truth["out_of_order_lines"]
    assert max(behind) <= MAX_OUT_OF_ORDER_S


def test_seed_format_looks_like_the_seed(sample):
    log, _, _ = sample
    first = log.read_text(errors="replace").splitlines()[0]
    rec = try_parse_line(first)
    assert isinstance(rec, LogRecord) and first.startswith(f"{rec.host} - - [2004-05-18 00:00:")
    assert rec.request.startswith("GET /") and rec.protocol == "HTTP/1.1"


def test_every_incident_clearly_crosses_its_rule(sample):
    """In at least one window overlapping the incident: 2x the ceiling, or 2x the minimum count and share."""
    _, truth, counts = sample
    s = Settings()
    for inc in truth["incidents"]:
        a, b = _sec(inc["start"]), _sec(inc["end"])
        windows = [w for w in counts.total if w < b and w + WINDOW > a]
        if inc["rule"] == "rate_limit":
            peak = max(counts.by_host[w, inc["key"]] for w in windows)
            assert peak >= 2 * s.rate_limit_ceiling, inc
        else:
            status = int(inc["key"])
            assert any(counts.by_status[w, status] >= 2 * s.surge_min_count
                       and counts.by_status[w, status] / counts.total[w] >= 2 * s.surge_min_share for w in windows), inc
        if inc["kind"] == "outage":  # across many hosts, not one
            w = max(windows, key=lambda w: counts.by_status[w, 503])
            assert len(counts.hosts_of_503[w]) > 50, inc


def test_background_never_crosses_the_rules(sample):
    """The alerts the rules imply are exactly the planted ones, inside their incidents; the rest stays far below."""
    _, truth, counts = sample
    s = Settings()
    implied = counts.implied_alerts(s)
    planted = {(e["rule"], e["key"]): inc for inc in truth["incidents"] for e in inc["expected_alerts"]}
    assert {(rule, key) for rule, key, _ in implied} == set(planted)
    for rule, key, w in implied:  # and only in windows overlapping the incident
        inc = planted[rule, key]
        assert w < _sec(inc["end"]) + MAX_OUT_OF_ORDER_S and w + WINDOW > _sec(inc["start"]) - MAX_OUT_OF_ORDER_S
    incident_hosts = {h for i in truth["incidents"] for h in i["hosts"]}
    busiest = max(n for (_, h), n in counts.by_host.items() if h not in incident_hosts)
    assert busiest < s.rate_limit_ceiling / 2
    spans = [(_sec(i["start"]) - WINDOW, _sec(i["end"]) + WINDOW) for i in truth["incidents"]]
    quiet = [w for w in counts.total if not any(a <= w < b for a, b in spans)]
    worst_share = max(counts.by_status[w, st] / counts.total[w] for w in quiet for st in (403, 404, 500, 503)
                      if counts.total[w] >= s.surge_min_count)
    assert worst_share < s.surge_min_share / 2


def test_fast_background_stays_under_the_ceiling(tmp_path):
    """Ten times the default rate: the host population's head is capped, no host nears the ceiling."""
    out = tmp_path / "fast.log"
    truth = generate(out, lines=60_000, seed=5, rate=1000.0, malformed_share=0.0, progress=False)
    counts = WindowCounts(out)
    assert truth.incidents == [] and counts.implied_alerts(Settings()) == set()
    assert max(counts.by_host.values()) < Settings().rate_limit_ceiling / 2


def test_malformed_share_is_honoured(tmp_path):
    out = tmp_path / "m.log"
    truth = generate(out, lines=40_000, seed=4, malformed_share=0.02, progress=False)
    rejected = sum(1 for raw in out.open("rb") if isinstance(try_parse_line(raw), str))
    assert rejected == truth.malformed_lines
    assert abs(rejected / 40_000 - 0.02) < 0.004  # binomial sd ~0.0007
    assert set(truth.malformed_by_kind) == {"truncated", "garbage", "invalid_utf8", "bad_timestamp",
                                            "out_of_range", "empty"}


@pytest.mark.parametrize("fmt", ["seed", "clf"])
def test_planted_reasons_are_the_parsers_on_a_leap_day(tmp_path, fmt):
    """An out_of_range line keeps its month and day: on Feb 29 its year must be a leap year too, or the parser
    finds an impossible date (bad_timestamp) where the truth says timestamp_out_of_range."""
    out = tmp_path / "leap.log"
    truth = generate(out, lines=20_000, seed=1, fmt=fmt, start=datetime(2024, 2, 29, tzinfo=timezone.utc),
                     malformed_share=0.05, progress=False)
    found = Counter(r for r in map(try_parse_line, out.read_bytes().split(b"\n")[:-1]) if isinstance(r, str))
    assert truth.malformed_by_kind["out_of_range"] > 50
    assert dict(found) == truth.malformed_by_reason


def test_out_of_order_lines_of_a_log_starting_at_the_parsers_first_time_parse(tmp_path):
    out = tmp_path / "first.log"
    truth = generate(out, lines=3_000, seed=3, start=datetime(1990, 1, 1, tzinfo=timezone.utc),
                     malformed_share=0.0, out_of_order_share=0.3, progress=False)
    records = [try_parse_line(ln) for ln in out.read_bytes().split(b"\n")[:-1]]
    assert truth.out_of_order_lines > 500 and truth.malformed_lines == 0
    assert [r for r in records if not isinstance(r, LogRecord)] == []


@pytest.mark.parametrize("fmt", ["seed", "clf", "combined"])
def test_every_format_parses(tmp_path, fmt):
    out = tmp_path / f"{fmt}.log"
    truth = generate(out, lines=5_000, seed=1, fmt=fmt, malformed_share=0.0, progress=False)
    records = [try_parse_line(ln) for ln in out.read_bytes().split(b"\n")[:-1]]
    assert len(records) == truth.total_lines == 5_000
    assert all(isinstance(r, LogRecord) for r in records) and truth.malformed_lines == 0
    assert records[0].timestamp == datetime(2004, 5, 18, tzinfo=timezone.utc)
    line = out.read_text().splitlines()[0]
    assert ("/May/2004:" in line) == (fmt != "seed") and line.endswith('"') == (fmt == "combined")


def test_size_is_honoured(tmp_path):
    out = tmp_path / "s.log"
    truth = generate(out, size_bytes=parse_size("3MB"), seed=2, progress=False)
    assert 2_990_000 <= out.stat().st_size == truth.total_bytes <= 3_000_000
    assert out.read_bytes().endswith(b"\n")


def test_a_size_cut_keeps_whole_lines_and_at_least_one():
    blob = b"aaa\nbb\ncccc\n"
    assert _cut_at_line_end(blob, 8) == (b"aaa\nbb\n", 2)
    assert _cut_at_line_end(blob, 7) == (b"aaa\nbb\n", 2)  # the room ends on a newline: that line fits
    assert _cut_at_line_end(blob, 6) == (b"aaa\n", 1)
    assert _cut_at_line_end(blob, 2) == (b"aaa\n", 1)  # no room for a whole line: the first one all the same
    assert _cut_at_line_end(blob, 100) == (blob, 3)


def test_a_chunk_cut_short_counts_only_the_lines_kept():
    import numpy as np

    truth = Truth(args={})
    truth.count_written(3, 40, {1: ("garbage", b"x"), 4: ("empty", b"")}, np.array([0, 1, 2, 5]))
    assert (truth.total_lines, truth.total_bytes, truth.malformed_lines) == (3, 40, 1)
    assert truth.malformed_by_kind == {"garbage": 1} and truth.malformed_by_reason == {"invalid_utf8": 1}
    assert truth.out_of_order_lines == 2  # lines 0 and 2: line 1 is malformed, line 5 was not written
    truth.count_written(2, 10, {0: ("truncated", b"y")}, np.array([], dtype=int))
    assert (truth.total_lines, truth.total_bytes, truth.malformed_lines, truth.out_of_order_lines) == (5, 50, 2, 2)


def test_parse_size():
    assert parse_size("40MB") == 40_000_000 and parse_size("2.5GB") == 2_500_000_000 and parse_size("1000") == 1000
    assert parse_size(".5GB") == 500_000_000 and parse_size(" 4 kb ") == 4_000
    for bad in ("lots", "1..2MB", "..", "", "MB", "1GiB", "1e3"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


def test_a_long_sparse_log_takes_its_whole_days_at_once():
    """A slow --rate makes a log of many days: its duration is summed day by day (no array of every second),
    and comes out as the second-by-second sum does."""
    import numpy as np

    from logpipe.generator import LogGenerator

    for rate, lines in ((0.01, 100_000), (0.3, 2_000_000), (100.0, 21_000_000)):
        gen = LogGenerator(rate=rate)
        secs = np.arange(gen.t0, gen.t0 + int(lines / (0.5 * rate)) + 2)
        assert gen._duration_for(lines) == int(np.searchsorted(np.cumsum(gen._rate_at(secs)), lines)) + 1


def test_a_log_of_weeks_plans_its_incidents(tmp_path):
    """Over 254 incidents of a kind (a log of more than three weeks of log time) take every address of their
    documentation range: then the addresses are used again (the planning looped for ever before)."""
    from logpipe.generator import LogGenerator

    incidents = LogGenerator(seed=4).plan_incidents(300 * 7200)
    abusers = [i for i in incidents if i.kind == "rate_limit"]
    assert len(abusers) == 300 and len({i.key for i in abusers}) == 254
    assert all(a.end < b.start for a, b in zip(incidents, incidents[1:]))  # a host used again is never at once


def test_a_log_too_short_for_incidents_says_so(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="logpipe.generator"):
        truth = generate(tmp_path / "short.log", lines=5_000, seed=1, progress=False)
    assert truth.incidents == [] and "no incidents planted" in caplog.text and "8.0 min at least" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="logpipe.generator"):
        truth = generate(tmp_path / "long.log", lines=120_000, seed=1, progress=False)
    assert truth.incidents and "no incidents planted" not in caplog.text


@pytest.mark.parametrize("start", [datetime(1989, 12, 31, 23, 59, tzinfo=timezone.utc),
                                   datetime(2100, 1, 1, tzinfo=timezone.utc),
                                   datetime(2099, 12, 31, 23, 0, tzinfo=timezone.utc)])
def test_a_log_outside_the_parsers_times_is_refused(tmp_path, start):
    """Every line of it would be quarantined as timestamp_out_of_range: refused before a line is written."""
    with pytest.raises(ValueError, match="parser accepts"):
        generate(tmp_path / "x.log", lines=1_000_000, seed=1, start=start, progress=False)  # 2099: ~3 h of log
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "x.log").mkdir()  # --out names a folder: the rename at the end fails
    with pytest.raises(OSError):
        generate(tmp_path / "x.log", lines=1_000, seed=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.log"]


def test_sigterm_leaves_no_partial_file_either(tmp_path, sigterm_once_writing):
    """Ctrl-C removed the half-written `<out>.partial`; SIGTERM (`kill`, `timeout`) left it (123 MB in one try)."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "big.log"
    proc = subprocess.Popen([sys.executable, "-m", "logpipe", "generate", "--size", "5GB", "--out", str(out),
                             "--no-progress"], stderr=subprocess.PIPE, text=True)
    _, err = sigterm_once_writing(proc, out.with_name("big.log.partial"))
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == [] and "Traceback" not in err, err


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_rate_that_is_no_positive_number_is_refused(rate):
    with pytest.raises(ValueError, match=f"rate must be > 0 lines per second, not {rate}"):
        LogGenerator(rate=rate)


def test_a_sample_of_a_size_comes_with_its_truth(tmp_path):
    out = tmp_path / "demo.log"
    generate(out, size_bytes=parse_size("200KB"), seed=42, settings=Settings())
    assert truth_path(out).exists() and 190_000 <= out.stat().st_size <= 200_000


@pytest.mark.parametrize("ceiling", [290, 310, 600])
def test_a_url_scanners_rate_is_clearly_on_one_side_of_the_ceiling(ceiling):
    """The scanner's own rate (3 x the surge count per window, 300 here) must not sit near the rate-limit
    ceiling: chance would then decide whether a window crosses it, and the truth would list an alert that is
    not raised, or miss one that is."""
    gen = LogGenerator(seed=3, rate=5.0, ceiling=ceiling, surge_min_count=100, window_s=20)  # a quiet site
    scans = [i for i in gen.plan_incidents(6 * 3600) if i.kind == "url_scan"]
    assert scans
    for inc in scans:
        per_window = inc.rate_per_s * 20
        assert per_window >= 1.5 * ceiling or per_window < 0.6 * ceiling, (ceiling, per_window)
        assert ({"rule": "rate_limit", "key": inc.hosts[0]} in inc.expected_alerts) == (per_window >= ceiling)


def test_the_truth_file_example_in_data_readme_is_the_demo_sample(tmp_path):
    """data/README.md shows the demo sample's truth file (`--size 40MB --seed 42`); the generator promises the same
    bytes for the same seed and arguments, so the example must be what it makes (it drifted once, unnoticed)."""
    import re

    from logpipe.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "data" / "README.md").read_text()
    example = readme[readme.index("```jsonc"):]
    shown = {k: v for k, v in re.findall(r'"(total_lines|total_bytes|malformed_lines|out_of_order_lines|last_time)"'
                                         r':\s*"?([\w:-]+)"?', example)}
    assert len(shown) == 5, shown
    out = tmp_path / "access.log"
    generate(out, size_bytes=40_000_000, seed=42)
    truth = json.loads(truth_path(out).read_text())
    assert {k: str(truth[k]) for k in shown} == shown
    scan = next(i for i in truth["incidents"] if i["kind"] == "url_scan")
    assert f'"start": "{scan["start"]}"' in example and f'"hosts": ["{scan["hosts"][0]}"]' in example


def _planted_and_implied(out: Path, truth, s: Settings, window: int = WINDOW, slide: int = SLIDE):
    implied = {(rule, key) for rule, key, _ in WindowCounts(out, window, slide).implied_alerts(s)}
    return {(e["rule"], e["key"]) for i in truth.incidents for e in i.expected_alerts}, implied


@pytest.mark.parametrize("lines,seed", [(6440, 20), (5413, 29)])
def test_a_slow_log_plants_only_incidents_it_can_hold(tmp_path, caplog, lines, seed):
    """At 1 line/s an incident's own lines outweigh the background's, and the log ended before its incidents did:
    the truth kept a scan cut to 1 s, still expecting its alerts (re-planned 5 times at most, then given up on
    silently). Now re-planned until they fit: the alerts the truth expects are exactly those the lines imply."""
    out = tmp_path / "slow.log"
    with caplog.at_level("WARNING", logger="logpipe.generator"):
        truth = generate(out, lines=lines, seed=seed, rate=1.0, progress=False)
    planted, implied = _planted_and_implied(out, truth, Settings())
    assert planted == implied
    assert "past the end of the log" not in caplog.text
    if not truth.incidents:
        assert "their own lines would outnumber the log's other lines" in caplog.text


@pytest.mark.parametrize("window,rate", [("5 minutes", 20.0), ("10 minutes", 10.0)])
def test_long_windows_get_incidents_that_cross_their_rules(tmp_path, window, rate):
    """A 10-minute window got no incident in a log of any length (slots shorter than 6 windows), and a 5-minute one
    outages of 1-2 minutes, whose 503s never reached the surge share in a window: incidents now last two windows
    at least, and fewer fit in a log."""
    from logpipe.windows import duration_seconds

    s = Settings(window=window, slide="60 seconds")
    out = tmp_path / "long-windows.log"
    truth = generate(out, lines=160_000, seed=3, rate=rate, settings=s, progress=False)
    assert {i.kind for i in truth.incidents} == {"rate_limit", "url_scan", "outage"}
    planted, implied = _planted_and_implied(out, truth, s, duration_seconds(s.window), duration_seconds(s.slide))
    assert planted == implied


def test_a_high_surge_count_keeps_ordinary_hosts_under_the_ceiling(tmp_path):
    """An outage adds retries from the host population to reach its count; at a surge count of 5,000 they took
    the busiest ordinary hosts over the rate-limit ceiling, alerts the truth did not expect. The population's head
    is now capped for the background and the retries together."""
    s = Settings(surge_min_count=5000)
    out = tmp_path / "high-surge-count.log"
    truth = generate(out, lines=200_000, seed=3, settings=s, progress=False)
    assert any(i.kind == "outage" for i in truth.incidents)
    planted, implied = _planted_and_implied(out, truth, s)
    assert planted == implied


@pytest.mark.parametrize(("setting", "value", "says"), [("surge_min_share", 0.65, "above 0.5"),
                                                        ("ceiling", 29, "under 30"),
                                                        ("surge_min_count", 9, "under 10")])
def test_rules_the_planted_incidents_cannot_meet_are_refused(setting, value, says):
    """A surge share above what the planted surges reach at their peak (~0.6), or a ceiling or surge count the
    background meets by chance (a review found a ceiling of 10 crossed in every 30,000-line log at the daily peak),
    would make a truth file the log does not hold: refused. The bounds themselves work."""
    with pytest.raises(ValueError, match=says):
        LogGenerator(**{setting: value})
    gen = LogGenerator(surge_min_share=0.5, ceiling=30, surge_min_count=10)
    assert (gen.ceiling, gen.surge_min_count) == (30, 10)
