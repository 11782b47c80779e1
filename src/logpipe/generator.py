"""Deterministic access-log generator: realistic background traffic plus planted, labelled incidents."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_START = datetime(2004, 5, 18, tzinfo=timezone.utc)
DEFAULT_RATE = 100.0          # average lines per second of log time
DEFAULT_MALFORMED_SHARE = 0.001
DEFAULT_OUT_OF_ORDER_SHARE = 0.0005
MAX_OUT_OF_ORDER_S = 10       # well under the default 30 s watermark: reordered, not late
AVG_LINE_BYTES = {"seed": 118, "clf": 122, "combined": 215}
CHUNK_SECONDS = 600           # log time generated per chunk

STATUSES = np.array([200, 304, 404, 403, 500, 503, 301, 206])
STATUS_P = np.array([0.80, 0.08, 0.05, 0.01, 0.015, 0.005, 0.03, 0.01])
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
          "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
          "curl/8.5.0", "python-requests/2.31.0", "Wget/1.21.4",
          "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
REFERRERS = ["-", "https://www.sec.gov/edgar/search/", "https://www.google.com/", "https://www.sec.gov/"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass
class Incident:
    """One planted incident and the alerts it must raise: [(rule, key), ...]."""

    id: str
    kind: str            # rate_limit | url_scan | outage
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
    out_of_order_lines: int = 0
    first_time: str = ""
    last_time: str = ""
    incidents: list[Incident] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def parse_size(text: str) -> int:
    """'40MB' / '2.5GB' / '1000' -> bytes (decimal units)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 40MB, 2.5GB)")
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
    """Makes the log chunk by chunk (bounded memory). Same seed and arguments -> byte-identical output."""

    def __init__(self, *, seed: int = 0, fmt: str = "seed", start: datetime = DEFAULT_START,
                 rate: float = DEFAULT_RATE, malformed_share: float = DEFAULT_MALFORMED_SHARE,
                 out_of_order_share: float = DEFAULT_OUT_OF_ORDER_SHARE, hosts: int = 50_000) -> None:
        if fmt not in AVG_LINE_BYTES:
            raise ValueError(f"unknown format {fmt!r}: seed, clf or combined")
        self.rng = np.random.default_rng(seed)
        self.fmt, self.rate = fmt, rate
        self.t0 = int(start.timestamp())
        self.malformed_share, self.out_of_order_share = malformed_share, out_of_order_share
        rng = self.rng
        # host population: mostly IPv4, some host names; popularity ~ 1/rank^0.8 (heavy tail, capped head)
        ips = rng.integers(1, 255, size=(hosts, 4))
        names = [f"{a}.{b}.{c}.{d}" for a, b, c, d in ips.tolist()]
        for i in rng.choice(hosts, size=hosts // 20, replace=False).tolist():
            names[i] = f"host{i}.{['example.net', 'isp.example.com', 'crawler.example.org'][i % 3]}"
        self.hosts = np.array(names, dtype=object)
        w = 1.0 / np.arange(1, hosts + 1) ** 0.8
        self.host_cdf = np.cumsum(w / w.sum())
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
        """Daily rhythm: quiet at night (UTC 04:00), busy in the afternoon; mean = self.rate."""
        hour = (t % 86400) / 3600.0
        return self.rate * (1.0 + 0.5 * np.sin(2 * math.pi * (hour - 10.0) / 24.0))

    def _background(self, t_start: int, seconds: int) -> dict[str, np.ndarray]:
        rng = self.rng
        secs = np.arange(t_start, t_start + seconds)
        per_sec = rng.poisson(self._rate_at(secs))
        ts = np.repeat(secs, per_sec)
        n = ts.size
        host = np.searchsorted(self.host_cdf, rng.random(n), side="right").clip(max=len(self.hosts) - 1)
        path = np.searchsorted(self.path_cdf, rng.random(n), side="right").clip(max=len(self.paths) - 1)
        status = STATUSES[np.searchsorted(self.status_cdf, rng.random(n), side="right").clip(max=len(STATUSES) - 1)]
        size = np.exp(rng.normal(8.5, 1.6, n)).astype(np.int64).clip(100, 50_000_000)
        size[status == 304] = 0
        size[(status >= 400)] = (size[status >= 400] % 2000) + 200
        return {"ts": ts, "host": self.hosts[host], "path": self.paths[path], "status": status, "size": size}

    # ---- incidents ------------------------------------------------------------------------------
    def plan_incidents(self, duration_s: int, ceiling: int, surge_min_count: int) -> list[Incident]:
        """Spread incidents over the middle of the log: per ~2 h of log time one of each kind, at least one each."""
        rng = self.rng
        kinds = ["rate_limit", "url_scan", "outage"]
        n_each = max(1, duration_s // 7200)
        slots = n_each * len(kinds)
        lo, hi = int(duration_s * 0.1), int(duration_s * 0.85)
        span = max(1, (hi - lo) // slots)
        out = []
        for i in range(slots):
            kind = kinds[i % 3]
            start = self.t0 + lo + i * span + int(rng.integers(0, max(1, span // 3)))
            if kind == "rate_limit":
                host = f"203.0.113.{int(rng.integers(1, 255))}"
                dur = int(rng.integers(120, 300))
                rate = 3.0 * ceiling / 20.0          # 3x the ceiling in every 20 s window
                exp = [{"rule": "rate_limit", "key": host}]
                out.append(Incident(f"I{i + 1:03d}", kind, [host], 200, _iso(start), _iso(start + dur), rate, exp))
            elif kind == "url_scan":
                host = f"198.51.100.{int(rng.integers(1, 255))}"
                dur = int(rng.integers(90, 180))
                rate = max(3.0 * surge_min_count / 20.0, 1.0 * self.rate)  # 404 share well above a quarter
                exp = [{"rule": "failure_surge", "key": "404"}, {"rule": "rate_limit", "key": host}]
                out.append(Incident(f"I{i + 1:03d}", kind, [host], 404, _iso(start), _iso(start + dur), rate, exp))
            else:
                dur = int(rng.integers(60, 120))
                exp = [{"rule": "failure_surge", "key": "503"}]
                out.append(Incident(f"I{i + 1:03d}", kind, [], 503, _iso(start), _iso(start + dur), 0.7, exp))
        return out

    def _apply_incidents(self, chunk: dict[str, np.ndarray], t_start: int, seconds: int,
                         incidents: list[Incident]) -> dict[str, np.ndarray]:
        rng = self.rng
        t_end = t_start + seconds
        extra = []
        for inc in incidents:
            a = int(datetime.fromisoformat(inc.start.replace("Z", "+00:00")).timestamp())
            b = int(datetime.fromisoformat(inc.end.replace("Z", "+00:00")).timestamp())
            a, b = max(a, t_start), min(b, t_end)
            if a >= b:
                continue
            if inc.kind == "outage":  # a share of ALL requests fail with 503, across many hosts
                sel = (chunk["ts"] >= a) & (chunk["ts"] < b)
                hit = sel & (rng.random(chunk["ts"].size) < inc.rate_per_s)
                chunk["status"][hit] = 503
                chunk["size"][hit] = 0
                continue
            ts = np.repeat(np.arange(a, b), rng.poisson(inc.rate_per_s, b - a))
            n = ts.size
            if inc.kind == "rate_limit":
                paths = self.paths[rng.integers(0, 200, n)]
                status = np.full(n, 200)
                size = np.exp(rng.normal(8.5, 1.0, n)).astype(np.int64)
            else:  # url_scan: distinct non-existent paths
                words = ["admin", "wp-login.php", ".env", "backup", "config", "phpmyadmin", ".git", "old", "test"]
                paths = np.array([f"/{words[j % len(words)]}/{k:x}" for j, k in
                                  zip(rng.integers(0, 9, n).tolist(), rng.integers(0, 2**40, n).tolist())],
                                 dtype=object)
                status = np.full(n, 404)
                size = np.full(n, 209)
            extra.append({"ts": ts, "host": np.full(n, inc.hosts[0], dtype=object), "path": paths,
                          "status": status, "size": size})
        if not extra:
            return chunk
        merged = {k: np.concatenate([chunk[k], *(e[k] for e in extra)]) for k in chunk}
        order = np.argsort(merged["ts"], kind="stable")
        return {k: v[order] for k, v in merged.items()}

    # ---- rendering ------------------------------------------------------------------------------
    def _render(self, c: dict[str, np.ndarray]) -> tuple[list[bytes], list[tuple[int, str]], np.ndarray]:
        """Lines of one chunk, the (index, kind) of malformed ones, and the indices of out-of-order ones."""
        rng = self.rng
        n = c["ts"].size
        ts = c["ts"].copy()
        late = rng.random(n) < self.out_of_order_share
        ts[late] -= rng.integers(1, MAX_OUT_OF_ORDER_S + 1, int(late.sum()))
        stamp, fmt = self.stamp, self.fmt
        size_text = c["size"].astype(str).astype(object)
        size_text[(c["status"] == 304) & (rng.random(n) < 0.5)] = "-"
        status_text = c["status"].astype(str).tolist()
        tsl, hosts, paths, sizes = ts.tolist(), c["host"].tolist(), c["path"].tolist(), size_text.tolist()
        if fmt == "combined":
            refs = [REFERRERS[i] for i in rng.integers(0, len(REFERRERS), n).tolist()]
            agents = [AGENTS[i] for i in rng.integers(0, len(AGENTS), n).tolist()]
            lines = [f'{h} - - [{stamp(t)}] "GET {p} HTTP/1.1" {s} {b} "{r}" "{a}"\n'
                     for h, t, p, s, b, r, a in zip(hosts, tsl, paths, status_text, sizes, refs, agents)]
        else:
            lines = [f'{h} - - [{stamp(t)}] "GET {p} HTTP/1.1" {s} {b}\n'
                     for h, t, p, s, b in zip(hosts, tsl, paths, status_text, sizes)]
        data = [line.encode() for line in lines]
        bad = np.flatnonzero(rng.random(n) < self.malformed_share)
        malformed = []
        for i, kind in zip(bad.tolist(), rng.integers(0, 5, bad.size).tolist()):
            name, data[i] = self._malformed(kind, data[i])
            malformed.append((i, name))
        return data, malformed, np.flatnonzero(late)

    def _malformed(self, kind: int, line: bytes) -> tuple[str, bytes]:
        rng = self.rng
        if kind == 0:   # truncated inside the quoted request: no closing quote
            cut = line.index(b'"') + 1 + int(rng.integers(1, 8))
            return "truncated", line[:cut] + b"\n"
        if kind == 1:   # binary garbage (never valid UTF-8: bytes >= 0x80 without lead bytes)
            return "garbage", bytes(rng.integers(0x80, 0xC0, int(rng.integers(5, 60))).tolist()) + b"\n"
        if kind == 2:   # invalid UTF-8 inside an otherwise good line
            q = line.index(b'"GET ') + 5
            return "invalid_utf8", line[:q] + b"\xff\xfe" + line[q:]
        if kind == 3:   # impossible timestamp (month 13 / day 32)
            text = line.decode()
            text = re.sub(r"\[(\d{4})-\d{2}-", r"[\g<1>-13-", text, count=1) if self.fmt == "seed" else \
                re.sub(r"\[\d{2}/", "[32/", text, count=1)
            return "bad_timestamp", text.encode()
        return "empty", b"\n"

    # ---- driver ---------------------------------------------------------------------------------
    def write(self, out: Path, *, lines: int | None = None, size_bytes: int | None = None, ceiling: int = 200,
              surge_min_count: int = 100, progress: bool | None = None) -> Truth:
        if (lines is None) == (size_bytes is None):
            raise ValueError("give exactly one of lines or size_bytes")
        est_lines = lines if lines is not None else size_bytes // AVG_LINE_BYTES[self.fmt]
        duration = int(est_lines / self.rate) + 1
        incidents = self.plan_incidents(duration, ceiling, surge_min_count)
        truth = Truth(args={"seed": None, "format": self.fmt, "start": _iso(self.t0), "rate": self.rate,
                            "lines": lines, "size_bytes": size_bytes, "malformed_share": self.malformed_share,
                            "out_of_order_share": self.out_of_order_share,
                            "rate_limit_ceiling": ceiling, "surge_min_count": surge_min_count},
                      incidents=incidents)
        target = size_bytes if size_bytes is not None else lines
        show = sys.stderr.isatty() if progress is None else progress
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        written_lines = written_bytes = 0
        first = last = None
        t_clock = time.monotonic()
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        columns = [TextColumn("generate"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                   TransferSpeedColumn(), TimeRemainingColumn()]
        with tmp.open("wb", buffering=8 << 20) as f, Progress(*columns, disable=not show, transient=True) as bar:
            task = bar.add_task("generate", total=size_bytes or (est_lines * AVG_LINE_BYTES[self.fmt]))
            t = self.t0
            while True:
                chunk = self._apply_incidents(self._background(t, CHUNK_SECONDS), t, CHUNK_SECONDS, incidents)
                data, malformed, late = self._render(chunk)
                if first is None and chunk["ts"].size:
                    first = int(chunk["ts"][0])
                done = False
                if lines is not None and written_lines + len(data) >= lines:
                    data, done = data[: lines - written_lines], True
                blob = b"".join(data)
                if size_bytes is not None and written_bytes + len(blob) >= size_bytes:
                    cut = blob.rfind(b"\n", 0, size_bytes - written_bytes) + 1
                    if cut == 0:
                        cut = blob.index(b"\n") + 1
                    kept = blob[:cut].count(b"\n")
                    data, blob, done = data[:kept], blob[:cut], True
                f.write(blob)
                for i, name in malformed:
                    if i < len(data):
                        truth.malformed_by_kind[name] = truth.malformed_by_kind.get(name, 0) + 1
                        truth.malformed_lines += 1
                truth.out_of_order_lines += int((late < len(data)).sum())
                written_lines += len(data)
                written_bytes += len(blob)
                if len(data):
                    last = int(chunk["ts"][len(data) - 1])
                bar.update(task, completed=written_bytes if size_bytes else written_lines * AVG_LINE_BYTES[self.fmt])
                t += CHUNK_SECONDS
                if done:
                    break
        tmp.replace(out)
        truth.total_lines, truth.total_bytes = written_lines, written_bytes
        truth.first_time, truth.last_time = _iso(first or self.t0), _iso(last or self.t0)
        truth.incidents = [i for i in incidents if i.start < truth.last_time]
        secs = time.monotonic() - t_clock
        log.info("generated %s: %d lines, %.1f MB in %.1fs (%.1f MB/s)", out, written_lines, written_bytes / 1e6,
                 secs, written_bytes / 1e6 / max(secs, 1e-9))
        return truth


def recount_malformed(path: Path) -> tuple[int, dict[str, int]]:
    """Count lines the reference parser rejects, by reason (exact, used to finalise the truth file)."""
    from logpipe.logformat import try_parse_line

    total, by = 0, {}
    with path.open("rb") as f:
        for raw in f:
            r = try_parse_line(raw)
            if isinstance(r, str):
                total += 1
                by[r] = by.get(r, 0) + 1
    return total, by


def generate(out: Path, *, lines: int | None = None, size_bytes: int | None = None, seed: int = 0,
             fmt: str = "seed", start: datetime = DEFAULT_START, rate: float = DEFAULT_RATE,
             malformed_share: float = DEFAULT_MALFORMED_SHARE, ceiling: int | None = None,
             surge_min_count: int | None = None, progress: bool | None = None) -> Truth:
    """Write the log and `<out>.truth.json`; return the truth. Thresholds default to the Settings defaults."""
    from logpipe.config import Settings

    defaults = Settings.model_fields
    ceiling = ceiling or defaults["rate_limit_ceiling"].default
    surge_min_count = surge_min_count or defaults["surge_min_count"].default
    gen = LogGenerator(seed=seed, fmt=fmt, start=start, rate=rate, malformed_share=malformed_share)
    truth = gen.write(out, lines=lines, size_bytes=size_bytes, ceiling=ceiling, surge_min_count=surge_min_count,
                      progress=progress)
    truth.args["seed"] = seed
    truth_path(out).write_text(truth.to_json())
    return truth


def truth_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".truth.json")


def ensure_demo_sample(path: Path, size: str = "40MB", seed: int = 42) -> Path:
    """The demo sample log (~40 MB, like the seed project's 40MBFile.log), generated on first use."""
    if not path.exists():
        generate(path, size_bytes=parse_size(size), seed=seed)
    return path
