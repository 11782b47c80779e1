"""The access-log formats and the parsed-record schema; `parse_line` is the pure-Python reference parser.

Formats (one line each; the three share the CLF layout and differ in the timestamp and trailing fields):
- seed:     `host ident user [YYYY-mm-dd HH:MM:SS] "request" status bytes`   (no zone: UTC)
- clf:      `host ident user [dd/Mon/YYYY:HH:MM:SS +zzzz] "request" status bytes`
- combined: clf + ` "referrer" "user agent"`, then any more fields a server appends (nginx's `main`: a quoted
  X-Forwarded-For; Apache's `combinedio`: bytes in and out), which are not kept

Rules (the Spark job implements the same rules as SQL expressions; tests check they agree):
- the line is UTF-8; a trailing CR/LF and a leading byte order mark (U+FEFF) are ignored; anything else that
  does not fit is quarantined with a reason;
- `bytes` of `-` means no body was sent and is stored as 0; spaces or tabs after the last field are ignored;
- status must be 100..599; bytes must fit a signed 32-bit int;
- a line whose fields after `bytes` hold what ends a request line (`HTTP/1.1" 404 5`) is quarantined as
  UNESCAPED_QUOTE: a server that does not escape `"` in the request (Express/morgan, nginx `escape=none`) writes a
  request holding `x" 200 1 "-" "-" "y` so that the line reads as status 200 instead of the real status after it;
- timestamps are converted to UTC and must lie in [1990-01-01, 2100-01-01): a forged far-future timestamp
  would otherwise push the event-time watermark and make all real traffic "late". The job also quarantines a
  line dated more than LOGPIPE_FUTURE_TOLERANCE after it read it (TIMESTAMP_IN_FUTURE: not a rule of the line
  alone, so not parse_line's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# The schema of a parsed line (the seed's five columns first, then extras).
SCHEMA_DDL = ("host STRING, timestamp TIMESTAMP, request STRING, http_response INT, bytes_sent INT, "
              "method STRING, path STRING, protocol STRING")

INT32_MAX = 2**31 - 1
MIN_TIME = datetime(1990, 1, 1, tzinfo=timezone.utc)
MAX_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc)

# Quarantine reasons (stable strings: they are stored in the quarantine table).
EMPTY = "empty"
INVALID_UTF8 = "invalid_utf8"
NO_MATCH = "malformed"
BAD_TIMESTAMP = "bad_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
# not decided by the line alone: the job quarantines a line dated more than LOGPIPE_FUTURE_TOLERANCE after the moment
# it read it (its micro-batch's start), which one wrong clock would otherwise let move the late horizon
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
BAD_STATUS = "bad_status"
BAD_BYTES = "bad_bytes"
# the line reads two ways: its request holds a quote the server did not escape, followed by what looks like a
# status and bytes (see _FORGED_TAIL)
UNESCAPED_QUOTE = "unescaped_quote"
# not a parse outcome: the producer sends a line over the Kafka message limit as a too_large record (logpipe.record)
TOO_LARGE = "too_large"
REASONS = (EMPTY, INVALID_UTF8, NO_MATCH, BAD_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, TIMESTAMP_IN_FUTURE, BAD_STATUS,
           BAD_BYTES, UNESCAPED_QUOTE, TOO_LARGE)

# A quoted field: anything but an unescaped quote (backslash escapes allowed, as Apache writes them).
# `[^\n]` rather than `.` after a backslash: Java's `.` also refuses \r, \u0085, \u2028, \u2029; Python's does not.
# Possessive quantifiers (Python 3.11+, Java): the two alternatives never start alike, so no backtracking is
# needed, and Java's regex engine runs this 2-3x faster than with plain `*`.
_QUOTED = r'"((?:[^"\\]++|\\[^\n])*+)"'
# Shared line layout. Group order: host, ident, user, time, request, status, bytes, referrer, agent.
# The same pattern is used by the Spark job through Java's regex engine (compatible syntax).
# A UTF-8 byte order mark before the host (a log written by a Windows tool starts with one) is not part of it.
# The remote user (%u) may hold spaces and brackets (Apache escapes only quotes, backslashes and control characters
# in it: a basic-auth user "John Doe" or "x [" is logged as is, also when the login failed, so a client picks it):
# words up to the first that looks like the time field (`[...] "`, no bracket inside), taken possessively. (Up to
# the first word starting with `[`, before: a user "x [" made every line of a brute-force client bad_timestamp,
# out of its host's windows.) A lazy `(?: \S++)*?`
# let the user grow word by word until the rest of the line matched: a line of two joined by a lost newline was
# one event with the second's time, and Java's regex recursed once per word, so a line of a few thousand words
# overflowed the JVM's stack (StackOverflowError kills Spark's executor, and the job met the line again at every
# restart). The possessive loop runs without recursion (100,000 words in Java: no overflow).
# No word of a user of several words is `-`, and a user `-` is one word: a line with something before the host
# (Apache's `vhost_combined` `www.example.com:443 203.0.113.9 - - [`, a syslog or Kubernetes (CRI) prefix
# `2026-12-07T13:30:00Z stdout F 198.51.100.7 - - [`, a forwarded-for list `203.0.113.1, 10.0.0.1 - - [`) would
# otherwise parse with its first word as the host (a wrong rate-limit key, which verify, using the same rules,
# cannot see): such lines are `malformed`, as a line of another format is.
# `-` (no user, nearly every line) is tried first, with one look at the time after it.
_TIME_AHEAD = r'\[[^\[\]]*+\] "'
_USER = r'(-(?= ' + _TIME_AHEAD + r')|(?!- )\S++(?: (?!' + _TIME_AHEAD + r'|- )\S++)*+)'
# After Combined's referrer and user agent, more fields as servers append them are allowed and not kept: nginx's
# stock `main` format (`"$http_x_forwarded_for"`), Apache's `combinedio` (`%I %O`), a request time, Traefik's
# `1 "router" "http://url" 5ms`: each a quoted field or a word that starts with neither a quote nor `[` (two
# lines joined by a space where a newline was lost stay `malformed`: the second's time is a word `[dd/Mon/...`).
_MORE_FIELDS = r'(?: (?:"(?:[^"\\]++|\\[^\n])*+"|[^\s"\[]\S*+))*+'
# Nothing after `bytes` may end like a request line followed by a status and bytes (`HTTP/1.1" 404 5`): where a
# server does not escape `"` in the request, a client that asks for `/x" 200 1 "-" "-" "y` gets the line
# `"GET /x" 200 1 "-" "-" "y HTTP/1.1" 404 5`, which the fields above read as status 200, bytes 1 and the real
# rest as more fields: a forged status (a 404 surge, a 401 brute force hidden as 200s). Such a line is
# UNESCAPED_QUOTE (LAX_LINE_PATTERN, without this guard, tells it from a malformed one). A server that escapes the
# quote (Apache: `\"`, nginx: `\x22`) never writes it. A request without a protocol (HTTP/0.9) is not caught.
_FORGED_TAIL = r'(?![\s\S]*?HTTP/\d(?:\.\d)?" \d{3} (?:\d++|-)(?!\S))'


def _line_pattern(after_bytes: str) -> str:
    # bytes: any run of digits (more than a 32-bit int is BAD_BYTES, not malformed); then spaces or tabs may end it
    return (r'^\uFEFF?+(\S+) (\S+) ' + _USER + r' \[([^\]]+)\] ' + _QUOTED + r' (\d{1,3}) (\d++|-)' + after_bytes
            + r'(?: ' + _QUOTED + r' ' + _QUOTED + _MORE_FIELDS + r')?[ \t]*+$')


LINE_PATTERN = _line_pattern(_FORGED_TAIL)
LAX_LINE_PATTERN = _line_pattern("")
# Seconds are 00-59: Spark's make_timestamp would turn a leap second `:60` into the next minute, Python's datetime
# refuses it; the pattern refuses it for both (bad_timestamp).
SEED_TIME_PATTERN = r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):([0-5]\d)$"
CLF_TIME_PATTERN = r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):([0-5]\d) ([+-])(\d{2})(\d{2})$"
# The request line: method, path (words, a space between: a server that does not escape spaces logs
# `GET /my file.pdf`), and a protocol when the last word is one (`HTTP/1.1`, `HTTP/2.0`); `GET /my file.pdf` was
# method GET, path /my and protocol file.pdf
REQUEST_PATTERN = r"^(\S++) (\S++(?: \S++)*?)(?: ([A-Za-z]++/\d++(?:\.\d++)?))?$"
# Java's `$` also matches before a final \r, \u0085, \u2028 or \u2029, and Python's before a final \n: the Spark
# job uses `\z` (the true end), Python uses fullmatch.
JAVA_LINE_PATTERN = LINE_PATTERN[:-1] + r"\z"
JAVA_LAX_LINE_PATTERN = LAX_LINE_PATTERN[:-1] + r"\z"
JAVA_REQUEST_PATTERN = REQUEST_PATTERN[:-1] + r"\z"

_LINE = re.compile(LINE_PATTERN, re.ASCII)  # \S, \d as in Java regex
_LAX_LINE = re.compile(LAX_LINE_PATTERN, re.ASCII)
_SEED_TIME = re.compile(SEED_TIME_PATTERN, re.ASCII)
_CLF_TIME = re.compile(CLF_TIME_PATTERN, re.ASCII)
_REQUEST = re.compile(REQUEST_PATTERN, re.ASCII)
MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One parsed access-log line."""

    host: str
    timestamp: datetime  # timezone-aware, UTC
    request: str
    http_response: int
    bytes_sent: int
    method: str | None = None
    path: str | None = None
    protocol: str | None = None


class ParseError(ValueError):
    """A line that cannot be parsed; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse_timestamp(text: str) -> datetime:
    """`2004-05-18 05:58:48` (UTC) or `18/May/2004:05:58:48 -0700` -> aware UTC datetime. Raises ParseError.

    Like the Spark job's make_timestamp (proleptic Gregorian, year 0 included): a valid date outside the
    accepted range, however far (year 0, or moved past year 1 or 9999 by its offset), is out of range, not bad."""
    if m := _SEED_TIME.fullmatch(text):
        y, mo, d, hh, mm, ss = map(int, m.groups())
        offset = 0
    elif m := _CLF_TIME.fullmatch(text):
        d_text, mon, y_text, hh_text, mm_text, ss_text, sign, zh, zm = m.groups()
        if mon not in MONTHS or int(zm) > 59 or int(zh) * 60 + int(zm) > 18 * 60:  # java.time offsets: <= 18:00
            raise ParseError(BAD_TIMESTAMP, text)
        y, mo, d, hh, mm, ss = int(y_text), MONTHS[mon], int(d_text), int(hh_text), int(mm_text), int(ss_text)
        offset = (int(zh) * 60 + int(zm)) * (1 if sign == "+" else -1)
    else:
        raise ParseError(BAD_TIMESTAMP, text)
    try:  # year 0 (a leap year, as 2000 is) is not a Python date, and lies before MIN_TIME anyway
        local = datetime(y or 2000, mo, d, hh, mm, ss)
    except ValueError as exc:  # day 31 in April, hour 25 ...
        raise ParseError(BAD_TIMESTAMP, text) from exc
    try:
        ts = (local - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)
    except OverflowError:  # before year 1 or after 9999 in UTC
        raise ParseError(TIMESTAMP_OUT_OF_RANGE, text) from None
    if y == 0 or not MIN_TIME <= ts < MAX_TIME:
        raise ParseError(TIMESTAMP_OUT_OF_RANGE, text)
    return ts


def parse_line(raw: bytes | str) -> LogRecord:
    """Parse one line (bytes as read from the file or Kafka, or str). Raises ParseError with a reason."""
    if isinstance(raw, bytes):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(INVALID_UTF8) from exc
    else:
        line = raw
    line = line.rstrip("\r\n")
    if not line.removeprefix("\ufeff").strip(" \t\f\v"):  # blanks, after a byte order mark or not
        raise ParseError(EMPTY)
    if "\x00" in line:  # NUL never occurs in a real log line (and the Spark parse uses it as a separator)
        raise ParseError(NO_MATCH)
    m = _LINE.fullmatch(line)
    if m is None:
        raise ParseError(UNESCAPED_QUOTE if _LAX_LINE.fullmatch(line) else NO_MATCH)
    host, _ident, _user, time_text, request, status_text, bytes_text = m.groups()[:7]
    ts = parse_timestamp(time_text)
    status = int(status_text)
    if not 100 <= status <= 599:
        raise ParseError(BAD_STATUS, status_text)
    digits = bytes_text.lstrip("0")  # (int() refuses more than 4,300 digits)
    size = 0 if bytes_text == "-" else INT32_MAX + 1 if len(digits) > 10 else int(bytes_text)
    if size > INT32_MAX:
        raise ParseError(BAD_BYTES, bytes_text)
    rm = _REQUEST.fullmatch(request)
    method, path, protocol = rm.groups() if rm else (None, None, None)
    return LogRecord(host, ts, request, status, size, method, path, protocol)


def try_parse_line(raw: bytes | str) -> LogRecord | str:
    """The record, or the quarantine reason (a str) when the line does not parse."""
    try:
        return parse_line(raw)
    except ParseError as exc:
        return exc.reason


SEED_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
CLF_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


def format_line(host: str, ts: datetime, request: str, status: int, size: int | None, fmt: str = "seed",
                referrer: str = "-", agent: str = "-") -> str:
    """Render one line in `fmt` (seed, clf, combined), without the newline. size None renders `-`; a naive `ts`
    is UTC (not the machine's local time) in every format."""
    size_text = "-" if size is None else str(size)
    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    if fmt == "seed":
        stamp = ts.astimezone(timezone.utc).strftime(SEED_TIME_FORMAT)
    elif fmt in ("clf", "combined"):
        stamp = ts.strftime(CLF_TIME_FORMAT)
    else:
        raise ValueError(f"unknown log format {fmt!r} (seed, clf, combined)")
    line = f'{host} - - [{stamp}] "{request}" {status} {size_text}'
    if fmt == "combined":
        line += f' "{referrer}" "{agent}"'
    return line
