"""Alert rules (rate limit, failed-request surge) built from Settings: where the streaming job decides its alerts.

The streaming job keeps its window counts at three grains (per host, per status, per host and status of failed
requests) and hands the rules those sums (RateLimitRule.alerts_of, FailureSurgeRule.surges and alerts_of);
`evaluate` takes counts at the finest grain (WindowCount) and sums them the same way, for tests. `logpipe verify`
takes only the alert id's formula and the failed statuses from here: which alerts must fire, with which figures,
it works out with code of its own, so that a mistake in these rules cannot hide in both."""

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


class HostCount(NamedTuple):
    """Requests of `host` in one window (summed over statuses)."""

    window_start: datetime
    window_end: datetime
    host: str
    count: int


class StatusCount(NamedTuple):
    """Requests answered `http_response` in one window (summed over hosts)."""

    window_start: datetime
    window_end: datetime
    http_response: int
    count: int


class Surge(NamedTuple):
    """A failed status over the surge rule in one window: its count and share of the window's requests."""

    window_start: datetime
    window_end: datetime
    http_response: int
    count: int
    share: float


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
    """Stable id of (rule, key, window): the first 20 hex digits of the SHA-256 of `rule|key|window start`
    (`YYYY-MM-DD HH:MM:SS`, as Spark casts a timestamp to a string; results roots made when the job computed it in
    Spark keep the same ids)."""
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
        return self.alerts_of(HostCount(*k, n) for k, n in per_host.items())

    def alerts_of(self, counts: Iterable[HostCount]) -> list[Alert]:
        """The alerts of per-host window counts (each (window, host) once, summed over statuses)."""
        return sorted((Alert(self.name, c.host, c.window_start, c.window_end, c.count, None, self.ceiling, (c.host,))
                       for c in counts if c.count >= self.ceiling),
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
        rows = list(rows)
        per_status: dict[tuple[datetime, datetime, int], int] = defaultdict(int)
        for r in rows:
            per_status[(r.window_start, r.window_end, r.http_response)] += r.count
        return self.alerts_of(self.surges(StatusCount(*k, n) for k, n in per_status.items()), rows)

    def surges(self, counts: Iterable[StatusCount]) -> list[Surge]:
        """The failed statuses over the rule, from per-status window counts (each (window, status) once, summed
        over hosts; every status of a window is needed, for its total)."""
        counts = list(counts)
        totals: dict[tuple[datetime, datetime], int] = defaultdict(int)
        for c in counts:
            totals[(c.window_start, c.window_end)] += c.count
        out = []
        for c in counts:
            if c.http_response >= FAILED_STATUS and c.count >= self.min_count:
                share = c.count / totals[(c.window_start, c.window_end)]
                if share >= self.min_share:
                    out.append(Surge(c.window_start, c.window_end, c.http_response, c.count, share))
        return out

    def alerts_of(self, surges: Iterable[Surge], failed: Iterable[WindowCount]) -> list[Alert]:
        """The alerts of `surges`, each naming its top hosts from `failed`: per-(host, status) window counts of
        failed requests, at least those of the surging windows and statuses (others are ignored)."""
        hosts: dict[tuple[datetime, datetime, int], dict[str, int]] = {
            (s.window_start, s.window_end, s.http_response): defaultdict(int) for s in surges}
        for r in failed:
            if (per_host := hosts.get((r.window_start, r.window_end, r.http_response))) is not None:
                per_host[r.host] += r.count
        out = []
        for s in surges:
            ranked = sorted(hosts[(s.window_start, s.window_end, s.http_response)].items(),
                            key=lambda kv: (-kv[1], kv[0]))
            out.append(Alert(self.name, str(s.http_response), s.window_start, s.window_end, s.count, s.share,
                             self.min_count, tuple(h for h, _ in ranked[: self.top_hosts])))
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
