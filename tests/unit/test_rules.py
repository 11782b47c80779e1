"""Alert rules: evaluate on hand-made windows; the streaming job's alerts from its grains agree with evaluate."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta

import pytest

from logpipe.config import load_settings
from logpipe.rules import (FAILURE_SURGE, RATE_LIMIT, AlertRules, FailureSurgeRule, HostCount, RateLimitRule,
                           WindowCount, alert_id)

pytestmark = pytest.mark.unit

W0 = datetime(2004, 5, 18, 5, 58, 40)
W1 = W0 + timedelta(seconds=20)


def rows(*items: tuple[str, int, int], start: datetime = W0) -> list[WindowCount]:
    return [WindowCount(start, start + timedelta(seconds=20), h, st, n) for h, st, n in items]


def test_rate_limit_fires_at_the_ceiling_not_below():
    rule = RateLimitRule(ceiling=10)
    alerts = rule.evaluate(rows(("a", 200, 6), ("a", 404, 4), ("b", 200, 9)))
    assert [(a.rule, a.key, a.count, a.top_hosts) for a in alerts] == [(RATE_LIMIT, "a", 10, ("a",))]
    assert alerts[0].share is None and alerts[0].threshold == 10


def test_rate_limit_is_per_window():
    rule = RateLimitRule(ceiling=10)
    alerts = rule.evaluate(rows(("a", 200, 5)) + rows(("a", 200, 5), start=W0 + timedelta(seconds=10)))
    assert alerts == []


def test_surge_needs_both_count_and_share_and_names_top_hosts():
    rule = FailureSurgeRule(min_count=10, min_share=0.25, top_hosts=2)
    # 503: 12 of 40 requests = 30% -> alert; 404: 10 of 40 = 25% -> alert (>=); 500: 3 -> count too low
    w = rows(("x", 503, 5), ("y", 503, 5), ("z", 503, 2), ("x", 404, 10), ("q", 500, 3), ("q", 200, 15))
    got = {a.key: a for a in rule.evaluate(w)}
    assert set(got) == {"503", "404"}
    assert got["503"].count == 12 and got["503"].share == pytest.approx(12 / 40)
    assert got["503"].top_hosts == ("x", "y")  # tie on 5 broken by host name, z (2) left out
    assert got["404"].rule == FAILURE_SURGE and got["404"].threshold == 10
    # a big window dilutes the share below the rule
    assert rule.evaluate(w + rows(("bg", 200, 1000))) == []


def test_success_statuses_never_surge():
    assert FailureSurgeRule(1, 0.0, 5).evaluate(rows(("a", 200, 100), ("a", 399, 100))) == []


def test_failed_requests_start_at_400():
    """A failed request is a 4xx or 5xx response: 400 is the first (the job, verify and the README share this)."""
    got = FailureSurgeRule(1, 0.0, 5).evaluate(rows(("a", 399, 100), ("a", 400, 100), ("a", 599, 100)))
    assert sorted(a.key for a in got) == ["400", "599"]


def test_rules_from_settings_and_validation():
    s = load_settings().with_overrides(rate_limit_ceiling=7, surge_min_count=3, surge_min_share=0.5, surge_top_hosts=1)
    r = AlertRules.from_settings(s)
    assert r.rate_limit.ceiling == 7 and r.failure_surge == FailureSurgeRule(3, 0.5, 1)
    with pytest.raises(ValueError):
        RateLimitRule(0)
    with pytest.raises(ValueError):
        FailureSurgeRule(1, 1.5, 1)


def test_alert_id_is_stable_per_rule_key_window():
    # a fixed value: ids on a results root and on the alerts topic must stay the same across versions (an id that
    # changed would raise every alert of a continued root again). sha256("rate_limit|a|2004-05-18 05:58:40")[:20]
    assert alert_id(RATE_LIMIT, "a", W0) == "608b399a41fb49c56e92"
    assert len({alert_id(RATE_LIMIT, "a", W0), alert_id(RATE_LIMIT, "a", W1), alert_id(FAILURE_SURGE, "a", W0)}) == 3



def test_the_jobs_alerts_from_its_grains_agree_with_evaluate(local_spark):
    """job.alerts_of_running_counts, given random window counts at the job's grains as the micro-batch holds them
    (final host windows over the ceiling as gathered, open host windows, per-status and failed per-(host, status)
    frames), = AlertRules.evaluate on the same counts at the finest grain (ids, counts, shares, top hosts)."""
    from logpipe.streaming.job import alerts_of_running_counts

    rnd = random.Random(5)
    hosts = [f"10.0.0.{i}" for i in range(8)]
    items = []
    for w in range(6):
        ws = W0 + timedelta(seconds=10 * w)
        for _ in range(rnd.randint(20, 120)):
            host = rnd.choice(hosts[: 2 + w])
            status = rnd.choice([200, 200, 200, 404, 500, 503])
            items.append((ws, ws + timedelta(seconds=20), host, status))
    rules = AlertRules(RateLimitRule(15), FailureSurgeRule(8, 0.2, 3))
    fine = Counter(items)
    per_host = Counter()
    per_status = Counter()
    for (ws, we, host, status), n in fine.items():
        per_host[(ws, we, host)] += n
        per_status[(ws, we, status)] += n
    final_end = W0 + timedelta(seconds=40)  # windows ending by then are final, the later ones open
    final_over = [HostCount(*k, n) for k, n in per_host.items() if k[1] <= final_end and n >= 15]
    open_host = local_spark.createDataFrame([(*k, n) for k, n in per_host.items() if k[1] > final_end],
                                            "window_start TIMESTAMP, window_end TIMESTAMP, host STRING, count BIGINT")
    by_status = local_spark.createDataFrame(
        [(*k, n, k[1] <= final_end) for k, n in per_status.items()],
        "window_start TIMESTAMP, window_end TIMESTAMP, http_response INT, count BIGINT, _final BOOLEAN")
    failed = local_spark.createDataFrame(
        [(*k, n, k[1] <= final_end) for k, n in fine.items() if k[3] >= 400],
        "window_start TIMESTAMP, window_end TIMESTAMP, host STRING, http_response INT, count BIGINT, _final BOOLEAN")
    got = alerts_of_running_counts(rules, final_over, open_host, by_status, failed)
    expected = rules.evaluate(WindowCount(*k, n) for k, n in fine.items())
    assert {e.rule for e in expected} == {RATE_LIMIT, FAILURE_SURGE}
    assert {e.window_end <= final_end for e in expected if e.rule == RATE_LIMIT} == {True, False}  # both paths
    assert len({e.top_hosts for e in expected if e.rule == FAILURE_SURGE}) >= 2
    assert sorted(got, key=lambda a: a.alert_id) == sorted(expected, key=lambda a: a.alert_id)
