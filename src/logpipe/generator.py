"""Deterministic access-log generator: realistic background traffic plus planted, labelled incidents."""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.random import PCG64, Generator

from logpipe import logformat as lf

if TYPE_CHECKING:
    from logpipe.config import Settings

log = logging.getLogger(__name__)

DEFAULT_START = datetime(2004, 5, 18, tzinfo=timezone.utc)
DEFAULT_RATE = 100.0          # average lines per second of log time
DEFAULT_MALFORMED_SHARE = 0.001
DEFAULT_OUT_OF_ORDER_SHARE = 0.0005
OUT_OF_RANGE_YEAR = 2152      # the year of the planted out_of_range lines (see LogGenerator._malformed)
MAX_OUT_OF_ORDER_S = 10       # well under the default 30 s watermark: reordered, not late
AVG_LINE_BYTES = {"seed": 117, "clf": 123, "combined": 195}  # measured averages
CHUNK_SECONDS = 600           # log time generated per chunk

STATUSES = np.array([200, 304, 404, 403, 500, 503, 301, 206])
STATUS_P = np.array([0.80, 0.08, 0.05, 0.01, 0.015, 0.005, 0.03, 0.01])
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
          "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
          "curl/8.5.0", "python-requests/2.31.0", "Wget/1.21.4",
          "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
REFERRERS = ["-", "https://www.sec.gov/edgar/search/", "https://www.google.com/", "https://www.sec.gov/"]
MALFORMED_REASON = {"truncated": "malformed", "garbage": "invalid_utf8", "invalid_utf8": "invalid_utf8",
                    "bad_timestamp": "bad_timestamp", "out_of_range": "timestamp_out_of_range", "empty": "empty"}
MALFORMED_KINDS = tuple(MALFORMED_REASON)
INCIDENT_KINDS = ("rate_limit", "url_scan", "outage")
INCIDENT_SPAN = (0.1, 0.85)    # incidents lie within these fractions of the log's time
INCIDENT_MIN_WINDOWS = 6       # each incident's slot spans at least this many windows, or none is planted
HEADROOM = 0.3                # background: a host's expected count in a window at the peak rate <= 0.3 x ceiling
# the rules the planted incidents are made to meet: a URL scan at 1.5x the traffic around it and an outage failing
# 60 % of requests reach about 0.6 of a window at their peak (at least 0.5 in some window: test_generator), and
# the background's busiest hosts cross a ceiling by chance (Poisson tails of HEADROOM x ceiling): about 190
# (window, host) crossings per day of log time at 10, 0.2 at 20, 6e-4 at 30; and one failing status of a quiet
# window (20 lines at 1 line/s) meets a surge rule by chance about 4 times a day at a count of 5, 0.01 at 10
MAX_SURGE_MIN_SHARE = 0.5
MIN_CEILING = 30
MIN_SURGE_COUNT = 10
MONTHS = list(lf.MONTHS)  # month names in order, as CLF writes them


@dataclass
class Incident:
    """One planted incident and the alerts it must raise: [(rule, key), ...]."""

    id: str
    kind: str            # rate_limit | url_scan | outage
    rule: str            # the primary alert rule: rate_limit | failure_surge
    key: str             # what that alert carries: the host (rate_limit) or the status as a string (failure_surge)
    hosts: list[str]
    status: int | None
    start: str           # ISO UTC, inclusive
    end: str             # ISO UTC, exclusive
    rate_per_s: float
    expected_alerts: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Truth:
    """Ground truth written next to the log as `<log>.truth.json`."""

    args: dict
    total_lines: int = 0
    total_bytes: int = 0
    malformed_lines: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    malformed_by_reason: dict[str, int] = field(default_factory=dict)  # quarantine reasons the parser gives
    out_of_order_lines: int = 0
    first_time: str = ""
    last_time: str = ""
    incidents: list[Incident] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def count_written(self, kept: int, nbytes: int, malformed: dict[int, tuple[str, bytes]],
                      late: np.ndarray) -> None:
        """Tally a written chunk: its first `kept` lines (`nbytes` bytes), the malformed ones among them by kind and
        by the reason the parser gives, and its out-of-order events (`late`: line numbers; a malformed line is no
        event)."""
        for i, (name, _) in malformed.items():
            if i < kept:
                self.malformed_by_kind[name] = self.malformed_by_kind.get(name, 0) + 1
                reason = MALFORMED_REASON[name]
                self.malformed_by_reason[reason] = self.malformed_by_reason.get(reason, 0) + 1
                self.malformed_lines += 1
        self.out_of_order_lines += len(set(late[late < kept].tolist()) - set(malformed))
        self.total_lines += kept
        self.total_bytes += nbytes


def parse_size(text: str) -> int:
    """'40MB' / '2.5GB' / '1000' -> bytes (decimal units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMG]?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (a number of bytes, or of KB, MB or GB: decimal units, e.g. 40MB, "
                         "2.5GB; not MiB or GiB)")
    return int(float(m.group(1)) * {"KB": 1e3, "MB": 1e6, "GB": 1e9}.get(m.group(2) or "", 1))


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Stamps:
    """Formats epoch seconds as the log's timestamp text, cached (many lines share a second)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.cache: dict[int, str] = {}

    def __call__(self, t: int) -> str:
        s = self.cache.get(t)
        if s is None:
            d = datetime.fromtimestamp(t, timezone.utc)
            if self.fmt == "seed":
                s = d.strftime("%Y-%m-%d %H:%M:%S")
            else:
                s = f"{d.day:02d}/{MONTHS[d.month - 1]}/{d.year}:{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000"
            if len(self.cache) > 100_000:
                self.cache.clear()
            self.cache[t] = s
        return s


class LogGenerator:
    """Makes the log chunk by chunk (bounded memory). Same seed and arguments -> byte-identical output.

    The background is shaped by the alert thresholds so it never crosses them: no host's expected count in a
    window exceeds HEADROOM x ceiling at the peak rate, and no failing status has more than a few % of traffic.
    """

    def __init__(self, *, seed: int = 0, fmt: str = "seed", start: datetime = DEFAULT_START,
                 rate: float = DEFAULT_RATE, malformed_share: float = DEFAULT_MALFORMED_SHARE,
                 out_of_order_share: float = DEFAULT_OUT_OF_ORDER_SHARE, hosts: int = 50_000,
                 ceiling: int = 200, surge_min_count: int = 100, surge_min_share: float = 0.25,
                 window_s: int = 20) -> None:
        if fmt not in AVG_LINE_BYTES:
            raise ValueError(f"unknown format {fmt!r}: seed, clf or combined")
        if not 0 < rate < math.inf:  # NaN too
            raise ValueError(f"rate must be > 0 lines per second, not {rate}")
        if not 0.0 <= malformed_share < 0.5:
            raise ValueError("malformed share must be in [0, 0.5)")
        if not 0.0 <= out_of_order_share < 0.5:
            raise ValueError("out-of-order share must be in [0, 0.5)")
        if not lf.MIN_TIME <= start < lf.MAX_TIME:  # the parser's range: every line would be quarantined
            raise ValueError(f"start {start:%Y-%m-%d %H:%M:%S%z} is outside the times the parser accepts "
                             f"({lf.MIN_TIME:%Y-%m-%d} to {lf.MAX_TIME:%Y-%m-%d}, UTC)")
        if surge_min_share > MAX_SURGE_MIN_SHARE:
            raise ValueError(f"surge_min_share {surge_min_share} is above {MAX_SURGE_MIN_SHARE}: the planted surges "
                             "reach about 0.6 of a window's requests at their peak, so some would raise no alert "
                             "and the truth file would not hold")
        if ceiling < MIN_CEILING:
            raise ValueError(f"a rate-limit ceiling of {ceiling} is under {MIN_CEILING}: background hosts would "
                             "cross it by chance, and raise alerts the truth file does not expect")
        if surge_min_count < MIN_SURGE_COUNT:
            raise ValueError(f"a surge count of {surge_min_count} is under {MIN_SURGE_COUNT}: a failing status of the "
                             "background would meet the surge rule by chance in quiet windows, and raise alerts the "
                             "truth file does not expect")
        failing_share = STATUS_P[STATUSES >= 400].max() / STATUS_P.sum()
        if failing_share * 2 >= surge_min_share:
            raise ValueError(f"surge_min_share {surge_min_share} is too close to the background's "
                             f"{failing_share:.1%} share of one failing status")
        self.rng = rng = Generator(PCG64(seed))
        self.seed = seed
        self.fmt, self.rate = fmt, rate
        self.t0 = int(start.timestamp())
        self.malformed_share, self.out_of_order_share = malformed_share, out_of_order_share
        self.ceiling, self.surge_min_count, self.surge_min_share = ceiling, surge_min_count, surge_min_share
        self.window_s = window_s
        # host population: mostly IPv4, some host names; popularity ~ 1/rank^0.8 (heavy tail), the head capped
        # so that the busiest host stays far below the rate-limit ceiling even at the daily peak
        ips = rng.integers(1, 255, size=(hosts, 4))
        names = [f"{a}.{b}.{c}.{d}" for a, b, c, d in ips.tolist()]
        for i in rng.choice(hosts, size=hosts // 20, replace=False).tolist():
            names[i] = f"host{i}.{['example.net', 'isp.example.com', 'crawler.example.org'][i % 3]}"
        self.hosts = np.array(names, dtype=object)
        # an outage's retries come from the same population (plan_incidents): with them, too, a host stays there
        retries = outage_retry_rate(rate, surge_min_count, window_s)
        p_max = HEADROOM * ceiling / ((1.5 * rate + retries) * window_s)
        if p_max * hosts < 1.2:
            raise ValueError(f"rate {rate}/s is too high for {hosts} hosts under a ceiling of {ceiling}"
                             + (f" (with an outage's {retries:.0f} retries/s, to reach {2.5 * surge_min_count:.0f} "
                                "failed requests a window: a lower surge_min_count)" if retries else ""))
        self.host_p = _cap_shares(1.0 / np.arange(1, hosts + 1) ** 0.8, p_max)
        self.host_cdf = np.cumsum(self.host_p)
        # EDGAR-like documents, popularity ~ 1/rank
        ndocs = 20_000
        ciks = rng.integers(1000, 2_000_000, size=ndocs)
        accs = rng.integers(10**15, 10**18, size=ndocs)
        kinds = rng.integers(0, 4, size=ndocs)
        self.paths = np.array([
            f"/Archives/edgar/data/{c:010d}/{a:018d}/" if k == 0 else
            f"/Archives/edgar/data/{c}/{a:018d}-index.htm" if k == 1 else
            f"/Archives/edgar/data/{c}/{a:018d}.txt" if k == 2 else
            f"/cgi-bin/browse-edgar?action=getcompany&CIK={c:010d}"
            for c, a, k in zip(ciks.tolist(), accs.tolist(), kinds.tolist())], dtype=object)
        wd = 1.0 / np.arange(1, ndocs + 1)
        self.path_cdf = np.cumsum(wd / wd.sum())
        self.status_cdf = np.cumsum(STATUS_P / STATUS_P.sum())
        self.stamp = _Stamps(fmt)

    # ---- traffic model --------------------------------------------------------------------------
    def _rate_at(self, t: np.ndarray) -> np.ndarray:
        """Daily rhythm: quiet at night (UTC 04:00), busy in the afternoon; mean = self.rate, 0.5x .. 1.5x."""
        hour = (t % 86400) / 3600.0
        return self.rate * (1.0 + 0.5 * np.sin(2 * math.pi * (hour - 10.0) / 24.0))

    def _duration_for(self, lines: float) -> int:
        """Seconds of log time the background needs for `lines` lines (following the daily rhythm)."""
        span = int(lines / (0.5 * self.rate)) + 2  # the rate is 0.5x its mean at least
        days = 0
        if span > 30 * 86400:  # a long log (a slow --rate): whole days first, without an array of every second
            day = float(self._rate_at(np.arange(self.t0, self.t0 + 86400)).sum())
            days = int(lines // day) - 1
            lines -= days * day
            span = 2 * 86400
        secs = np.arange(self.t0, self.t0 + span)
        return days * 86400 + int(np.searchsorted(np.cumsum(self._rate_at(secs)), lines)) + 1

    def _pick_hosts(self, n: int) -> np.ndarray:
        idx = np.searchsorted(self.host_cdf, self.rng.random(n), side="right")
        return self.hosts[idx.clip(max=len(self.hosts) - 1)]

    def _background(self, t_start: int, seconds: int) -> dict[str, np.ndarray]:
        rng = self.rng
        secs = np.arange(t_start, t_start + seconds)
        per_sec = rng.poisson(self._rate_at(secs))
        ts = np.repeat(secs, per_sec)
        n = ts.size
        host = self._pick_hosts(n)
        path = np.searchsorted(self.path_cdf, rng.random(n), side="right").clip(max=len(self.paths) - 1)
        status = STATUSES[np.searchsorted(self.status_cdf, rng.random(n), side="right").clip(max=len(STATUSES) - 1)]
        size = np.exp(rng.normal(8.5, 1.6, n)).astype(np.int64).clip(100, 50_000_000)
        size[status == 304] = 0
        size[(status >= 400)] = (size[status >= 400] % 2000) + 200
        return {"ts": ts, "host": host, "path": self.paths[path], "status": status, "size": size}

    # ---- incidents ------------------------------------------------------------------------------
    def plan_incidents(self, duration_s: int) -> list[Incident]:
        """Spread incidents over the middle of the log: per ~2 h of log time one of each kind, at least one each,
        each in a slot of INCIDENT_MIN_WINDOWS windows at least and lasting two windows at least.

        Rates are set so each incident crosses its rule about 2-3x in its windows: an abuser sends 3x the ceiling
        per window; a scan sends 1.5x the local background rate of 404s (share ~0.6) and at least 3x the minimum
        count; an outage fails 60 % of all requests with 503 and adds failing requests from the host population
        so the count is at least 2.5x the minimum.
        """
        rng = Generator(PCG64([self.seed, 1]))  # its own stream: planning twice gives the same plan
        w = self.window_s
        kinds = list(INCIDENT_KINDS)
        lo, hi = int(duration_s * INCIDENT_SPAN[0]), int(duration_s * INCIDENT_SPAN[1])
        # no more than fit in slots of INCIDENT_MIN_WINDOWS windows each (long windows, a long log)
        n_each = max(1, min(duration_s // 7200, (hi - lo) // (len(kinds) * INCIDENT_MIN_WINDOWS * w)))
        slots = n_each * len(kinds)
        span = max(1, (hi - lo) // slots)
        if span < INCIDENT_MIN_WINDOWS * w:  # too short a log for incidents that last several windows
            return []
        longest = span * 2 // 3  # an incident never runs into the next slot
        shortest = 2 * w  # so that one window at least lies wholly inside it (a slide is at most a window)
        out = []
        used: set[str] = set()
        for i in range(slots):
            kind = kinds[i % len(kinds)]
            start = self.t0 + lo + i * span + int(rng.integers(0, max(1, span // 3)))
            local_rate = float(self._rate_at(np.array([start]))[0])
            iid = f"I{i + 1:03d}"
            if kind in ("rate_limit", "url_scan"):
                net = "203.0.113" if kind == "rate_limit" else "198.51.100"  # documentation ranges (RFC 5737)
                host = f"{net}.{int(rng.integers(1, 255))}"
                if sum(h.startswith(f"{net}.") for h in used) >= 254:  # all taken (a log of weeks): used again, as
                    used -= {h for h in used if h.startswith(f"{net}.")}  # incidents never overlap in time
                while host in used:
                    host = f"{net}.{int(rng.integers(1, 255))}"
                used.add(host)
            if kind == "rate_limit":
                dur = min(longest, max(shortest, int(rng.integers(120, 300))))
                rate = 3.0 * self.ceiling / w
                exp = [{"rule": "rate_limit", "key": host}]
                out.append(Incident(iid, kind, "rate_limit", host, [host], 200, _iso(start), _iso(start + dur),
                                    rate, exp))
            elif kind == "url_scan":
                dur = min(longest, max(shortest, int(rng.integers(90, 180))))
                rate = max(3.0 * self.surge_min_count / w, 1.5 * local_rate)
                if 0.6 * self.ceiling <= rate * w < 1.5 * self.ceiling:
                    # near the ceiling, chance would decide whether some windows cross it: clearly over it instead
                    rate = 1.5 * self.ceiling / w
                exp = [{"rule": "failure_surge", "key": "404"}]
                if rate * w >= self.ceiling:  # a scanner this fast is also a rate-limit abuser
                    exp.append({"rule": "rate_limit", "key": host})
                out.append(Incident(iid, kind, "failure_surge", "404", [host], 404, _iso(start),
                                    _iso(start + dur), rate, exp))
            else:
                dur = min(longest, max(shortest, int(rng.integers(60, 120))))
                extra = outage_retry_rate(self.rate, self.surge_min_count, w)
                exp = [{"rule": "failure_surge", "key": "503"}]
                out.append(Incident(iid, kind, "failure_surge", "503", [], 503, _iso(start), _iso(start + dur),
                                    extra, exp))
        return out

    def _apply_incidents(self, chunk: dict[str, np.ndarray], t_start: int, seconds: int,
                         incidents: list[Incident]) -> dict[str, np.ndarray]:
        rng = self.rng
        t_end = t_start + seconds
        extra = []
        for inc in incidents:
            a, b = _seconds(inc.start), _seconds(inc.end)
            a, b = max(a, t_start), min(b, t_end)
            if a >= b:
                continue
            if inc.kind == "outage":  # 60 % of ALL requests fail with 503, across many hosts
                sel = (chunk["ts"] >= a) & (chunk["ts"] < b)
                hit = sel & (rng.random(chunk["ts"].size) < 0.6)
                chunk["status"][hit] = 503
                chunk["size"][hit] = 0
            ts = np.repeat(np.arange(a, b), rng.poisson(inc.rate_per_s, b - a))
            n = ts.size
            if inc.kind == "rate_limit":
                paths = self.paths[rng.integers(0, 200, n)]
                status = np.full(n, 200)
                size = np.exp(rng.normal(8.5, 1.0, n)).astype(np.int64)
                hosts = np.full(n, inc.hosts[0], dtype=object)
            elif inc.kind == "outage":  # extra failing requests (retries) from the whole population
                paths = self.paths[rng.integers(0, len(self.paths), n)]
                status = np.full(n, 503)
                size = np.zeros(n, dtype=np.int64)
                hosts = self._pick_hosts(n)
            else:  # url_scan: distinct non-existent paths
                words = ["admin", "wp-login.php", ".env", "backup", "config", "phpmyadmin", ".git", "old", "test"]
                paths = np.array([f"/{words[j]}/{k:x}" for j, k in
                                  zip(rng.integers(0, 9, n).tolist(), rng.integers(0, 2**40, n).tolist())],
                                 dtype=object)
                status = np.full(n, 404)
                size = np.full(n, 209)
                hosts = np.full(n, inc.hosts[0], dtype=object)
            extra.append({"ts": ts, "host": hosts, "path": paths, "status": status, "size": size})
        if not extra:
            return chunk
        merged = {k: np.concatenate([chunk[k], *(e[k] for e in extra)]) for k in chunk}
        order = np.argsort(merged["ts"], kind="stable")
        return {k: v[order] for k, v in merged.items()}

    # ---- rendering ------------------------------------------------------------------------------
    def _render(self, c: dict[str, np.ndarray]) -> tuple[list[str], dict[int, tuple[str, bytes]], np.ndarray]:
        """Lines of one chunk (str, newline included), the malformed replacements {index: (kind, bytes)},
        and the indices of out-of-order lines. Timestamp strings are formatted once per distinct second."""
        rng = self.rng
        n = c["ts"].size
        ts = c["ts"].copy()
        late = rng.random(n) < self.out_of_order_share
        # never before the parser's first time: a log starting there would turn its first late lines into
        # timestamp_out_of_range ones, which the truth counts as events
        ts[late] = np.maximum(ts[late] - rng.integers(1, MAX_OUT_OF_ORDER_S + 1, int(late.sum())),
                              int(lf.MIN_TIME.timestamp()))
        seconds, inverse = np.unique(ts, return_inverse=True)
        stamps = np.array([self.stamp(t) for t in seconds.tolist()], dtype=object)[inverse].tolist()
        sizes = c["size"].tolist()
        for i in np.flatnonzero((c["status"] == 304) & (rng.random(n) < 0.5)).tolist():
            sizes[i] = "-"
        statuses, hosts, paths = c["status"].tolist(), c["host"].tolist(), c["path"].tolist()
        if self.fmt == "combined":
            refs = [REFERRERS[i] for i in rng.integers(0, len(REFERRERS), n).tolist()]
            agents = [AGENTS[i] for i in rng.integers(0, len(AGENTS), n).tolist()]
            lines = [f'{h} - - [{t}] "GET {p} HTTP/1.1" {s} {b} "{r}" "{a}"\n'
                     for h, t, p, s, b, r, a in zip(hosts, stamps, paths, statuses, sizes, refs, agents)]
        else:
            lines = [f'{h} - - [{t}] "GET {p} HTTP/1.1" {s} {b}\n'
                     for h, t, p, s, b in zip(hosts, stamps, paths, statuses, sizes)]
        bad = np.flatnonzero(rng.random(n) < self.malformed_share)
        malformed = {}
        for i, kind in zip(bad.tolist(), rng.integers(0, len(MALFORMED_KINDS), bad.size).tolist()):
            malformed[i] = self._malformed(MALFORMED_KINDS[kind], lines[i].encode())
        return lines, malformed, np.flatnonzero(late)

    def _malformed(self, kind: str, line: bytes) -> tuple[str, bytes]:
        rng = self.rng
        if kind == "truncated":  # cut inside the quoted request: no closing quote
            cut = line.index(b'"') + 1 + int(rng.integers(1, 8))
            return kind, line[:cut] + b"\n"
        if kind == "garbage":  # binary garbage (never valid UTF-8: continuation bytes without a lead byte)
            return kind, bytes(rng.integers(0x80, 0xC0, int(rng.integers(5, 60))).tolist()) + b"\n"
        if kind == "invalid_utf8":  # invalid UTF-8 inside an otherwise good line
            q = line.index(b'"GET ') + 5
            return kind, line[:q] + b"\xff\xfe" + line[q:]
        if kind == "bad_timestamp":  # impossible date (month 13 / day 32)
            text = line.decode()
            text = re.sub(r"\[(\d{4})-\d{2}-", r"[\g<1>-13-", text, count=1) if self.fmt == "seed" else \
                re.sub(r"\[\d{2}/", "[32/", text, count=1)
            return kind, text.encode()
        if kind == "out_of_range":  # a well-formed but absurd year (would push the watermark if accepted)
            # a leap year past lf.MAX_TIME: the line's Feb 29, if it is one, stays a real date (bad_timestamp else)
            text = line.decode()
            text = re.sub(r"\[\d{4}-", f"[{OUT_OF_RANGE_YEAR}-", text, count=1) if self.fmt == "seed" else \
                re.sub(r"/\d{4}:", f"/{OUT_OF_RANGE_YEAR}:", text, count=1)
            return kind, text.encode()
        return "empty", b"\n"

    # ---- driver ---------------------------------------------------------------------------------
    def write(self, out: Path, *, lines: int | None = None, size_bytes: int | None = None,
              progress: bool | None = None) -> Truth:
        """Write the log to `out` (via `<out>.partial`, renamed at the end) and its ground truth to
        `<out>.truth.json` (before the rename: a log that has its name has its truth), and return the truth."""
        t_clock = time.monotonic()
        est_lines, incidents, planned = self._plan(lines, size_bytes)
        truth = Truth(args={"seed": self.seed, "format": self.fmt, "start": _iso(self.t0), "rate": self.rate,
                            "lines": lines, "size_bytes": size_bytes, "malformed_share": self.malformed_share,
                            "out_of_order_share": self.out_of_order_share, "rate_limit_ceiling": self.ceiling,
                            "surge_min_count": self.surge_min_count, "surge_min_share": self.surge_min_share,
                            "window_s": self.window_s},
                      incidents=incidents)
        show = sys.stderr.isatty() if progress is None else progress
        tmp, truth_file = out.with_name(out.name + ".partial"), truth_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        truth_written = False
        try:
            first, last = self._write_chunks(tmp, truth, lines=lines, size_bytes=size_bytes, est_lines=est_lines,
                                             show=show)
            self._end_truth(truth, first, last)
            truth_file.write_text(truth.to_json())
            truth_written = True
            tmp.replace(out)
        except BaseException:  # no half-written log left behind (a full disk, Ctrl-C, SIGTERM, --out a folder)
            tmp.unlink(missing_ok=True)
            if truth_written:  # nor the truth of a log that did not take its name
                truth_file.unlink(missing_ok=True)
            raise
        self._warn_if_no_incidents(truth, planned, est_lines, last)
        secs = time.monotonic() - t_clock
        log.info("generated %s: %d lines, %.1f MB in %.1fs (%.1f MB/s)", out, truth.total_lines,
                 truth.total_bytes / 1e6, secs, truth.total_bytes / 1e6 / max(secs, 1e-9))
        return truth

    def _plan(self, lines: int | None, size_bytes: int | None) -> tuple[int, list[Incident], list[Incident]]:
        """Check the requested length and plan the incidents: (the estimated line count, the incidents that fit in
        the log, the first plan)."""
        if (lines is None) == (size_bytes is None):
            raise ValueError("give exactly one of lines or size_bytes")
        if (lines is not None and lines <= 0) or (size_bytes is not None and size_bytes <= 0):
            raise ValueError("lines / size must be positive")
        est_lines = lines if lines is not None else size_bytes // AVG_LINE_BYTES[self.fmt]
        too_long = ValueError(f"the log would run past {lf.MAX_TIME:%Y-%m-%d} (the end of the times the parser "
                              "accepts): start earlier, or give a higher --rate")
        if self.t0 + est_lines / (1.5 * self.rate) >= lf.MAX_TIME.timestamp():  # the shortest it can be: checked
            raise too_long                                                     # before the exact, longer, sum
        duration = self._duration_for(est_lines)
        if self.t0 + duration >= lf.MAX_TIME.timestamp():
            raise too_long
        incidents = planned = self.plan_incidents(duration)
        # incidents add lines, so the log ends sooner: re-planned on a shorter duration until they fit in it (a
        # slow --rate, where their own lines outweigh the background's), or none is left
        while incidents:
            extra = _incident_lines(incidents)
            if extra < 0.8 * est_lines:  # else their own lines would be most of the log: fewer or shorter ones
                shorter = self._duration_for(est_lines - extra)
                if max(_seconds(i.end) for i in incidents) < self.t0 + 0.9 * shorter:
                    break
            duration = int(duration * 0.8)
            incidents = self.plan_incidents(duration)
        return est_lines, incidents, planned

    def _write_chunks(self, tmp: Path, truth: Truth, *, lines: int | None, size_bytes: int | None, est_lines: int,
                      show: bool) -> tuple[int | None, int | None]:
        """Write chunk after chunk of log time to `tmp` until `lines` or `size_bytes` is reached, tallying every
        written line into `truth`; returns the first and the last written event's second (None if none)."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        first = last = None
        columns = [TextColumn("generate"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                   TransferSpeedColumn(), TimeRemainingColumn()]
        incidents = truth.incidents
        # incidents lie in slots one after the other, so the few a chunk overlaps are found by bisection (a long,
        # sparse log has thousands, and testing every one for every chunk took hours)
        starts, ends = [_seconds(i.start) for i in incidents], [_seconds(i.end) for i in incidents]
        assert starts == sorted(starts) and ends == sorted(ends)
        with tmp.open("wb") as f, Progress(*columns, disable=not show, transient=True) as bar:
            task = bar.add_task("generate", total=size_bytes or est_lines * AVG_LINE_BYTES[self.fmt])
            t = self.t0
            done = False
            while not done:
                near = incidents[bisect.bisect_right(ends, t):bisect.bisect_left(starts, t + CHUNK_SECONDS)]
                chunk = self._apply_incidents(self._background(t, CHUNK_SECONDS), t, CHUNK_SECONDS, near)
                t += CHUNK_SECONDS
                text, malformed, late = self._render(chunk)
                if lines is not None and truth.total_lines + len(text) >= lines:
                    text, done = text[: lines - truth.total_lines], True
                blob = _assemble(text, malformed)
                kept = len(text)
                if size_bytes is not None and truth.total_bytes + len(blob) >= size_bytes:
                    blob, kept = _cut_at_line_end(blob, size_bytes - truth.total_bytes)
                    done = True
                f.write(blob)
                truth.count_written(kept, len(blob), malformed, late)
                if kept:
                    first = int(chunk["ts"][0]) if first is None else first
                    last = int(chunk["ts"][kept - 1])
                bar.update(task, completed=truth.total_bytes if size_bytes
                           else truth.total_lines * AVG_LINE_BYTES[self.fmt])
        return first, last

    def _end_truth(self, truth: Truth, first: int | None, last: int | None) -> None:
        """Set the log's time span and end the incidents at its last second (drop those that had not begun)."""
        truth.first_time, truth.last_time = _iso(first or self.t0), _iso((last or self.t0) + 1)
        cut = [inc.id for inc in truth.incidents if inc.end > truth.last_time]
        if cut:  # only when the size estimate was far off: the truth tells what the file holds
            log.warning("%d incident(s) (%s) planned past the end of the log: ended at the log's end, those that "
                        "had not begun left out", len(cut), ", ".join(cut[:5]) + (", ..." if len(cut) > 5 else ""))
        for inc in truth.incidents:
            inc.end = min(inc.end, truth.last_time)
        truth.incidents = [i for i in truth.incidents if i.start < truth.last_time]

    def _warn_if_no_incidents(self, truth: Truth, planned: list[Incident], est_lines: int, last: int | None) -> None:
        """Say why no incident was planted: verify then has nothing to score its alerts against."""
        if truth.incidents:
            return
        if planned:
            log.warning("no incidents planted: at %s lines/s their own lines would outnumber the log's other lines "
                        "(about %d of %d): give more lines (--lines, --size) or a higher --rate", f"{self.rate:g}",
                        _incident_lines(planned), est_lines)
        else:
            need_s = (INCIDENT_MIN_WINDOWS * self.window_s * len(INCIDENT_KINDS)  # a slot per kind at least
                      / (INCIDENT_SPAN[1] - INCIDENT_SPAN[0]))
            log.warning("no incidents planted: the log covers %.1f min of log time, and incidents need %.1f min at "
                        "least: make it longer (--lines, --size) or its pace slower (--rate)",
                        ((last or self.t0) + 1 - self.t0) / 60, need_s / 60)


def _cut_at_line_end(blob: bytes, room: int) -> tuple[bytes, int]:
    """The whole lines of `blob` that fit in `room` bytes (at least its first line) and how many they are."""
    cut = blob.rfind(b"\n", 0, room) + 1
    if cut == 0:
        cut = blob.index(b"\n") + 1
    return blob[:cut], blob.count(b"\n", 0, cut)


def outage_retry_rate(rate: float, surge_min_count: int, window_s: int) -> float:
    """Failed requests per second an outage adds to its 503s (60 % of the background, about half its mean rate at
    the quiet hour) so that a window holds 2.5 x the surge's minimum count."""
    return max(0.0, 2.5 * surge_min_count / window_s - 0.6 * 0.5 * rate)


def _incident_lines(incidents: list[Incident]) -> float:
    """About how many lines the incidents add to the log."""
    return sum((_seconds(i.end) - _seconds(i.start)) * i.rate_per_s for i in incidents)


def _seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def _cap_shares(weights: np.ndarray, p_max: float) -> np.ndarray:
    """Normalise weights to shares, none above p_max (the excess is spread over the others proportionally)."""
    p = weights / weights.sum()
    for _ in range(100):
        over = p > p_max
        if not over.any():
            break
        excess = (p[over] - p_max).sum()
        p[over] = p_max
        p[~over] += excess * p[~over] / p[~over].sum()
    return p / p.sum()


def _assemble(lines: list[str], malformed: dict[int, tuple[str, bytes]]) -> bytes:
    """One bytes block of the lines, malformed ones replaced by their bytes (one encode per run of good lines)."""
    if not malformed:
        return "".join(lines).encode()
    parts, prev = [], 0
    for i in sorted(malformed):
        if i >= len(lines):
            break
        parts.append("".join(lines[prev:i]).encode())
        parts.append(malformed[i][1])
        prev = i + 1
    parts.append("".join(lines[prev:]).encode())
    return b"".join(parts)


def generate(out: Path, *, lines: int | None = None, size_bytes: int | None = None, seed: int = 0,
             fmt: str = "seed", start: datetime = DEFAULT_START, rate: float = DEFAULT_RATE,
             malformed_share: float = DEFAULT_MALFORMED_SHARE, out_of_order_share: float = DEFAULT_OUT_OF_ORDER_SHARE,
             settings: Settings | None = None, ceiling: int | None = None, surge_min_count: int | None = None,
             progress: bool | None = None) -> Truth:
    """Write the log and `<out>.truth.json`; return the truth. Thresholds and window come from `settings`
    (default: the Settings defaults); `ceiling` / `surge_min_count` override them."""
    from logpipe.config import Settings
    from logpipe.windows import duration_seconds

    s = settings or Settings()
    gen = LogGenerator(seed=seed, fmt=fmt, start=start, rate=rate, malformed_share=malformed_share,
                       out_of_order_share=out_of_order_share, ceiling=ceiling or s.rate_limit_ceiling,
                       surge_min_count=surge_min_count or s.surge_min_count, surge_min_share=s.surge_min_share,
                       window_s=duration_seconds(s.window))
    return gen.write(out, lines=lines, size_bytes=size_bytes, progress=progress)


def truth_path(log_path: Path) -> Path:
    """Where the ground truth of a log lives: `<log>.truth.json`."""
    return log_path.with_name(log_path.name + ".truth.json")

