"""Alert rules (rate limit, failed-request surge) built from Settings, with a pure-Python `evaluate` for checks."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from logpipe.config import Settings

RATE_LIMIT = "rate_limit"
FAILURE_SURGE = "failure_surge"
FAILED_STATUS = 400  # a response with this status or above is a failed request (4xx client, 5xx server)


class WindowCount(NamedTuple):
    """One row at the job's aggregation grain: requests of `host` answered `http_response` in one window."""

    window_start: datetime
    window_end: datetime
    host: str
    http_response: int
    count: int


@dataclass(frozen=True)
class Alert:
    """An alert, with the fields of the alerts table (alert_id is derived, detected_at is set by the job)."""

    rule: str
    key: str
    window_start: datetime
    window_end: datetime
    count: int
    share: float | None
    threshold: int
    top_hosts: tuple[str, ...]

    @property
    def alert_id(self) -> str:
        return alert_id(self.rule, self.key, self.window_start)


def alert_id(rule: str, key: str, window_start: datetime) -> str:
    """Stable id of (rule, key, window): the job computes the same with Spark's
    `substr(sha2(concat_ws('|', rule, key, CAST(window_start AS STRING)), 256), 1, 20)`."""
    text = f"{rule}|{key}|{window_start:%Y-%m-%d %H:%M:%S}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class RateLimitRule:
    """A host whose request count in one window reaches `ceiling`."""

    ceiling: int
    name: str = RATE_LIMIT

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError(f"rate limit ceiling must be >= 1, got {self.ceiling}")

    def evaluate(self, rows: Iterable[WindowCount]) -> list[Alert]:
        per_host: dict[tuple[datetime, datetime, str], int] = defaultdict(int)
        for r in rows:
            per_host[(r.window_start, r.window_end, r.host)] += r.count
        return sorted((Alert(self.name, host, ws, we, n, None, self.ceiling, (host,))
                       for (ws, we, host), n in per_host.items() if n >= self.ceiling),
                      key=lambda a: (a.window_start, a.key))


@dataclass(frozen=True)
class FailureSurgeRule:
    """A 4xx/5xx status with at least `min_count` requests and `min_share` of all requests in one window;
    the alert names up to `top_hosts` hosts behind it (most requests first, ties by host name)."""

    min_count: int
    min_share: float
    top_hosts: int
    name: str = FAILURE_SURGE

    def __post_init__(self) -> None:
        if self.min_count < 1 or not 0.0 <= self.min_share <= 1.0 or self.top_hosts < 1:
            raise ValueError(f"invalid failure surge rule {self}")

    def evaluate(self, rows: Iterable[WindowCount]) -> list[Alert]:
        totals: dict[tuple[datetime, datetime], int] = defaultdict(int)
        failed: dict[tuple[datetime, datetime, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in rows:
            totals[(r.window_start, r.window_end)] += r.count
            if r.http_response >= FAILED_STATUS:
                failed[(r.window_start, r.window_end, r.http_response)][r.host] += r.count
        out = []
        for (ws, we, status), hosts in failed.items():
            n = sum(hosts.values())
            share = n / totals[(ws, we)]
            if n >= self.min_count and share >= self.min_share:
                top = sorted(hosts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_hosts]
                out.append(Alert(self.name, str(status), ws, we, n, share, self.min_count, tuple(h for h, _ in top)))
        return sorted(out, key=lambda a: (a.window_start, a.key))


@dataclass(frozen=True)
class AlertRules:
    """Both rules, as configured."""

    rate_limit: RateLimitRule
    failure_surge: FailureSurgeRule

    @classmethod
    def from_settings(cls, s: Settings) -> "AlertRules":
        return cls(RateLimitRule(s.rate_limit_ceiling),
                   FailureSurgeRule(s.surge_min_count, s.surge_min_share, s.surge_top_hosts))

    def evaluate(self, rows: Iterable[WindowCount]) -> list[Alert]:
        """The alerts of final window counts (the job may also fire a surge whose share later falls below
        the rule: it alerts as soon as both thresholds hold at some point of the stream)."""
        rows = list(rows)
        return self.rate_limit.evaluate(rows) + self.failure_surge.evaluate(rows)
