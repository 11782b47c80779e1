"""The reference parser: a table of the three formats and edge cases, and property tests (round trip of valid
records; arbitrary bytes give a record or a ParseError with a known reason, never another exception)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from logpipe.logformat import (BAD_BYTES, BAD_STATUS, BAD_TIMESTAMP, EMPTY, INVALID_UTF8, NO_MATCH, REASONS,
                               TIMESTAMP_OUT_OF_RANGE, UNESCAPED_QUOTE, LogRecord, ParseError, format_line, parse_line, try_parse_line)

pytestmark = pytest.mark.unit

UTC = timezone.utc
SEED = b'168.178.113.108 - - [2004-05-18 05:58:48] "GET /Archives/edgar/data/0001439124/000129281422000854/ HTTP/1.0" 500 14101'
T = datetime(2004, 5, 18, 5, 58, 48, tzinfo=UTC)
REQ = "GET /a HTTP/1.0"


def _line(time_text: str = "2004-05-18 05:58:48", host: str = "1.2.3.4", request: str = REQ,
          status: str = "200", size: str = "10", tail: str = "") -> bytes:
    return f'{host} - - [{time_text}] "{request}" {status} {size}{tail}'.encode()


# (id, raw line, expected fields of the record)
VALID = [
    ("seed sample", SEED, dict(host="168.178.113.108", timestamp=T, http_response=500, bytes_sent=14101,
                               method="GET", path="/Archives/edgar/data/0001439124/000129281422000854/",
                               protocol="HTTP/1.0")),
    ("clf utc", _line("18/May/2004:05:58:48 +0000"), dict(timestamp=T)),
    ("clf -0700 to utc", _line("17/May/2004:22:58:48 -0700"), dict(timestamp=T)),
    ("clf +0530 to utc", _line("18/May/2004:11:28:48 +0530"), dict(timestamp=T)),
    ("clf crosses a year", _line("31/Dec/2004:23:30:00 -0100"), dict(timestamp=datetime(2005, 1, 1, 0, 30, tzinfo=UTC))),
    ("clf +1800 is the limit", _line("18/May/2004:23:58:48 +1800"), dict(timestamp=T)),
    ("combined", _line("18/May/2004:05:58:48 +0000", tail=' "https://x.example/?q=\\"a\\"" "Mozilla/5.0 (X11)"'),
     dict(timestamp=T, request=REQ)),
    ("combined dashes", _line(tail=' "-" "-"'), dict(bytes_sent=10)),
    ("crlf", _line() + b"\r\n", dict(bytes_sent=10, protocol="HTTP/1.0")),
    ("lf", _line() + b"\n", dict(bytes_sent=10)),
    ("dash bytes is 0", _line(size="-"), dict(bytes_sent=0)),
    ("int32 max bytes", _line(size="2147483647"), dict(bytes_sent=2**31 - 1)),
    ("ipv6 host", _line(host="2001:db8::8a2e:370:7334"), dict(host="2001:db8::8a2e:370:7334")),
    ("hostname host", _line(host="crawl-66-249-66-1.googlebot.com"), dict(host="crawl-66-249-66-1.googlebot.com")),
    ("remote user with a space", b'127.0.0.1 - John Doe [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 2326',
     dict(host="127.0.0.1", http_response=200, bytes_sent=2326)),
    ("escaped quotes in request", _line(request='GET /a\\"b\\" HTTP/1.1'),
     dict(request='GET /a\\"b\\" HTTP/1.1', path='/a\\"b\\"', protocol="HTTP/1.1")),
    ("request without protocol", _line(request="GET /old"), dict(method="GET", path="/old", protocol=None)),
    ("request not method-path", _line(request="-"), dict(request="-", method=None, path=None)),
    ("empty request", _line(request=""), dict(request="", method=None)),
    ("newline ends the request", _line(request="GET /a HTTP/1.1\n"),
     dict(request="GET /a HTTP/1.1\n", method=None, path=None, protocol=None)),
    ("non-ascii path", _line(request="GET /caf\u00e9 HTTP/1.1"), dict(path="/caf\u00e9")),
    ("status 100", _line(status="100"), dict(http_response=100)),
    ("status 599", _line(status="599"), dict(http_response=599)),
    ("leap day", _line("2004-02-29 00:00:00"), dict(timestamp=datetime(2004, 2, 29, tzinfo=UTC))),
    ("first valid second", _line("1990-01-01 00:00:00"), dict(timestamp=datetime(1990, 1, 1, tzinfo=UTC))),
    ("last valid second", _line("2099-12-31 23:59:59"), dict(timestamp=datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC))),
    ("2100 local is 2099 utc", _line("01/Jan/2100:00:30:00 +0100"),
     dict(timestamp=datetime(2099, 12, 31, 23, 30, tzinfo=UTC))),
    ("1 MB line", _line(request="GET /" + "x" * 1_000_000 + " HTTP/1.1"), dict(http_response=200)),
    ("str input", _line().decode(), dict(host="1.2.3.4")),
    ("byte order mark before the host", b"\xef\xbb\xbf" + _line(), dict(host="1.2.3.4")),
    ("user a single word", b'127.0.0.1 - alice [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 2326',
     dict(host="127.0.0.1")),
    ("nginx main: combined and a forwarded-for", _line(tail=' "-" "curl/8.5.0" "203.0.113.1, 10.0.0.1"'),
     dict(host="1.2.3.4", bytes_sent=10)),
    ("apache combinedio: combined and bytes in and out", _line(tail=' "-" "curl/8.5.0" 431 5120'),
     dict(bytes_sent=10)),
    ("traefik: combined and four more fields", _line(tail=' "-" "curl/8" 1 "web@docker" "http://10.0.0.2:80" 5ms'),
     dict(http_response=200)),
    ("combined and a blank", _line(tail=' "-" "curl/8" '), dict(bytes_sent=10)),
    ("blanks after the bytes", _line(tail=" \t ") + b"\r\n", dict(bytes_sent=10, protocol="HTTP/1.0")),
    # a basic-auth user is logged as the client sent it (Apache escapes neither spaces nor brackets), also when
    # the login failed: a user "x [" made every line of a brute-force client bad_timestamp
    ("a user holding a bracket", b'1.2.3.4 - x [ [10/Oct/2000:13:55:36 -0700] "GET /admin HTTP/1.1" 401 381',
     dict(host="1.2.3.4", http_response=401, path="/admin")),
    ("a user in brackets", b'1.2.3.4 - [admin] [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 401 381',
     dict(http_response=401)),
    ("spaces in the path", _line(request="GET /my file.pdf"), dict(method="GET", path="/my file.pdf", protocol=None)),
    ("spaces in the path and a protocol", _line(request="GET /a b HTTP/1.1"), dict(path="/a b", protocol="HTTP/1.1")),
    ("three words, no protocol", _line(request="foo bar baz"), dict(method="foo", path="bar baz", protocol=None)),
    ("http/2.0", _line(request="GET / HTTP/2.0"), dict(protocol="HTTP/2.0")),
    ("bytes with leading zeros", _line(size="0" * 20 + "42"), dict(bytes_sent=42)),
    ("a protocol in a referrer is a field",
     _line(tail=' "http://x/ HTTP/1.1" "curl/8" 431 5120'), dict(http_response=200, bytes_sent=10)),
]

# (id, raw line, quarantine reason)
INVALID = [
    ("empty", b"", EMPTY),
    ("newline only", b"\n", EMPTY),
    ("crlf only", b"\r\n", EMPTY),
    ("blanks", b"  \t \r\n", EMPTY),
    ("a byte order mark and blanks", b"\xef\xbb\xbf \r\n", EMPTY),
    ("invalid utf-8", _line(request="GET /a HTTP/1.0").replace(b"/a", b"/\xff\xfe"), INVALID_UTF8),
    ("lone continuation bytes", bytes(range(0x80, 0xA0)), INVALID_UTF8),
    ("truncated utf-8 at end", _line() + b"\xe2\x82", INVALID_UTF8),
    ("binary garbage ascii", b"\x00\x01\x02\x03 \x04", NO_MATCH),
    ("nul inside a good line", _line(request="GET /a\x00b HTTP/1.0"), NO_MATCH),
    ("truncated in request", b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /Arch', NO_MATCH),
    ("missing bytes", b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200', NO_MATCH),
    ("missing request", b"1.2.3.4 - - [2004-05-18 05:58:48] 200 10", NO_MATCH),
    ("missing host", b' - - [2004-05-18 05:58:48] "GET / HTTP/1.0" 200 10', NO_MATCH),
    ("missing brackets", b'1.2.3.4 - - 2004-05-18 05:58:48 "GET / HTTP/1.0" 200 10', NO_MATCH),
    ("unescaped quote in request", _line(request='GET /a"b HTTP/1.0'), NO_MATCH),
    ("escaped closing quote", _line(request="GET /a\\"), NO_MATCH),
    ("four digit status", _line(status="2000"), NO_MATCH),
    ("letters in bytes", _line(size="12k"), NO_MATCH),
    ("eleven digit bytes", _line(size="12345678901"), BAD_BYTES),
    ("bytes past a bigint", _line(size="9" * 6000), BAD_BYTES),
    ("negative bytes", _line(size="-5"), NO_MATCH),
    ("only one combined field", _line(tail=' "-"'), NO_MATCH),
    # something before the host: its first word would be taken for the host (a wrong rate-limit key)
    ("apache vhost_combined", b'www.example.com:443 203.0.113.9 - - [07/Dec/2026:15:33:45 +0100] "GET / HTTP/1.1" '
     b'200 5 "-" "curl/8"', NO_MATCH),
    ("vhost_combined with a user", b'www.example.com:443 203.0.113.9 - alice [07/Dec/2026:15:33:45 +0100] '
     b'"GET / HTTP/1.1" 200 5', NO_MATCH),
    ("a forwarded-for list as the host", b'203.0.113.1, 10.0.0.1 - - [07/Dec/2026:15:33:45 +0100] "GET / HTTP/1.1" '
     b'200 5', NO_MATCH),
    ("kubernetes cri prefix", b'2026-12-07T13:30:00.000000123Z stdout F 198.51.100.7 - - [07/Dec/2026:13:30:00 '
     b'+0000] "POST /login HTTP/1.1" 401 20 "-" "python-requests/2.31"', NO_MATCH),
    ("syslog prefix", b'Nov 30 13:00:00 web1 nginx: 203.0.113.1 - - [30/Nov/2026:13:00:00 +0000] "GET / HTTP/1.1" '
     b'200 1', NO_MATCH),
    ("clf and a field more", _line(tail=" 0.123"), NO_MATCH),
    ("combined and an unclosed quote", _line(tail=' "-" "curl/8" "x'), NO_MATCH),
    ("two combined lines joined by a space", _line(tail=' "-" "curl/8" ') + _line(tail=' "-" "curl/8"'), NO_MATCH),
    ("unicode digits in status", _line(status="\u0662\u0660\u0660"), NO_MATCH),
    # a request with a quote its server did not escape (Express/morgan, nginx escape=none), so that the line reads
    # as another status: the real end of the request line comes after the bytes
    ("a 404 forged as 200 by an unescaped quote",
     _line("10/Oct/2000:13:55:36 -0700", request='GET /x" 200 1 "-" "-" "y HTTP/1.1', status="404", size="5"),
     UNESCAPED_QUOTE),
    ("a 401 forged as 200, its end in the user agent",
     _line(request='GET /x" 200 1 "-" " HTTP/1.1', status="401", size="5", tail=' "-" "curl/8"'), UNESCAPED_QUOTE),
    ("a 500 forged with a protocol",
     _line(request='GET /x HTTP/1.1" 200 99999 "-" "-" "y HTTP/1.0', status="500", size="-"), UNESCAPED_QUOTE),
    ("a 404 forged as 200, its end in a word", _line(request='GET /x" 200 1 "-" "-" y HTTP/1.1', status="404", size="5"),
     UNESCAPED_QUOTE),
    ("status 999", _line(status="999"), BAD_STATUS),
    ("status 000", _line(status="000"), BAD_STATUS),
    ("status 99", _line(status="99"), BAD_STATUS),
    ("bytes over int32", _line(size="2147483648"), BAD_BYTES),
    ("feb 30", _line("2004-02-30 00:00:00"), BAD_TIMESTAMP),
    ("feb 29 non leap", _line("2003-02-29 00:00:00"), BAD_TIMESTAMP),
    ("month 13", _line("2004-13-18 05:58:48"), BAD_TIMESTAMP),
    ("hour 25", _line("2004-05-18 25:58:48"), BAD_TIMESTAMP),
    ("second 60", _line("2004-05-18 05:58:60"), BAD_TIMESTAMP),
    ("year 0 invalid date", _line("0000-02-30 00:00:00"), BAD_TIMESTAMP),
    ("clf second 60", _line("18/May/2004:05:58:60 +0000"), BAD_TIMESTAMP),
    ("newline ends the seed time", _line("2004-05-18 05:58:48\n"), BAD_TIMESTAMP),
    ("newline ends the clf time", _line("18/May/2004:05:58:48 +0000\n"), BAD_TIMESTAMP),
    ("t separator", _line("2004-05-18T05:58:48"), BAD_TIMESTAMP),
    ("seed with zone", _line("2004-05-18 05:58:48 +0000"), BAD_TIMESTAMP),
    ("clf without zone", _line("18/May/2004:05:58:48"), BAD_TIMESTAMP),
    ("clf unknown month", _line("18/Foo/2004:05:58:48 +0000"), BAD_TIMESTAMP),
    ("clf lowercase month", _line("18/may/2004:05:58:48 +0000"), BAD_TIMESTAMP),
    ("clf day 32", _line("32/May/2004:05:58:48 +0000"), BAD_TIMESTAMP),
    ("clf offset minutes 60", _line("18/May/2004:05:58:48 +0060"), BAD_TIMESTAMP),
    ("clf offset over 18h", _line("18/May/2004:05:58:48 +1801"), BAD_TIMESTAMP),
    ("garbage timestamp", _line("yesterday"), BAD_TIMESTAMP),
    ("far past", _line("1970-01-01 00:00:00"), TIMESTAMP_OUT_OF_RANGE),
    ("just before 1990", _line("1989-12-31 23:59:59"), TIMESTAMP_OUT_OF_RANGE),
    ("2100 utc", _line("2100-01-01 00:00:00"), TIMESTAMP_OUT_OF_RANGE),
    ("far future", _line("9999-12-31 23:59:59"), TIMESTAMP_OUT_OF_RANGE),
    ("year 0", _line("0000-01-01 00:00:00"), TIMESTAMP_OUT_OF_RANGE),
    ("year 0 leap day", _line("0000-02-29 00:00:00"), TIMESTAMP_OUT_OF_RANGE),
    ("clf year 0", _line("18/May/0000:05:58:48 +0000"), TIMESTAMP_OUT_OF_RANGE),
    ("clf offset moves before year 1", _line("01/Jan/0001:00:30:00 +0100"), TIMESTAMP_OUT_OF_RANGE),
    ("clf offset moves past year 9999", _line("31/Dec/9999:23:59:59 -0100"), TIMESTAMP_OUT_OF_RANGE),
    ("clf 1990 local is 1989 utc", _line("01/Jan/1990:00:30:00 +0100"), TIMESTAMP_OUT_OF_RANGE),
]


@pytest.mark.parametrize("raw, expected", [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_lines(raw, expected):
    rec = parse_line(raw)
    for name, value in expected.items():
        assert getattr(rec, name) == value, name
    assert rec.timestamp.tzinfo is not None and rec.timestamp.utcoffset() == timedelta(0)
    assert try_parse_line(raw) == rec


@pytest.mark.parametrize("raw, reason", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_lines(raw, reason):
    with pytest.raises(ParseError) as exc:
        parse_line(raw)
    assert exc.value.reason == reason
    assert try_parse_line(raw) == reason


def test_reasons_are_distinct_strings():
    assert len(set(REASONS)) == len(REASONS) and all(isinstance(r, str) and r for r in REASONS)


def test_format_line_renders_each_format():
    assert format_line("168.178.113.108", T, "GET /Archives/edgar/data/0001439124/000129281422000854/ HTTP/1.0",
                       500, 14101).encode() == SEED
    minus7 = timezone(timedelta(hours=-7))
    assert format_line("h", T.astimezone(minus7), REQ, 304, None, "clf") == \
        'h - - [17/May/2004:22:58:48 -0700] "GET /a HTTP/1.0" 304 -'
    assert format_line("h", T, REQ, 200, 1, "combined", "r", "a") == \
        'h - - [18/May/2004:05:58:48 +0000] "GET /a HTTP/1.0" 200 1 "r" "a"'
    with pytest.raises(ValueError):
        format_line("h", T, REQ, 200, 1, "json")


def test_format_line_takes_a_naive_time_as_utc_in_every_format(monkeypatch):
    """Not as the machine's local time (the seed format took it so, the CLF ones as UTC)."""
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        naive = T.replace(tzinfo=None)
        for fmt in ("seed", "clf", "combined"):
            assert format_line("h", naive, REQ, 200, 1, fmt) == format_line("h", T, REQ, 200, 1, fmt), fmt
    finally:
        monkeypatch.undo()
        time.tzset()


# ---- properties ---------------------------------------------------------------------------------
_token_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters='"\\[]')
hosts = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}\Z"),
)
timestamps = st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2099, 12, 30),
                          timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))
offsets = st.integers(-18 * 60, 18 * 60).map(lambda m: timezone(timedelta(minutes=m)))
requests = st.tuples(st.sampled_from(["GET", "POST", "HEAD", "PROPFIND"]), st.text(_token_chars, min_size=1),
                     st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"])).map(" ".join)
quoted_free_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'))


@given(host=hosts, ts=timestamps, tz=offsets, request=requests, status=st.integers(100, 599),
       size=st.one_of(st.none(), st.integers(0, 2**31 - 1)), fmt=st.sampled_from(["seed", "clf", "combined"]),
       referrer=quoted_free_text, agent=quoted_free_text, newline=st.sampled_from(["", "\n", "\r\n"]))
@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_format_then_parse_round_trips(host, ts, tz, request, status, size, fmt, referrer, agent, newline):
    line = format_line(host, ts.astimezone(tz), request, status, size, fmt, referrer, agent) + newline
    rec = parse_line(line.encode())
    method, path, protocol = request.split(" ")
    assert rec == LogRecord(host, ts, request, status, size or 0, method, path, protocol)


@given(st.binary(max_size=300))
@hsettings(max_examples=500, deadline=None)
def test_arbitrary_bytes_give_a_record_or_a_known_reason(raw):
    try:
        rec = parse_line(raw)
    except ParseError as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(rec, LogRecord) and 100 <= rec.http_response <= 599


@given(st.data())
@hsettings(max_examples=500, deadline=None)
def test_mutated_valid_lines_give_a_record_or_a_known_reason(data):
    """Mutations of a valid line reach deeper into the parser than random bytes do."""
    raw = bytearray(SEED)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        b = data.draw(st.binary(min_size=1, max_size=3))
        if op == "insert":
            raw[pos:pos] = b
        elif op == "delete":
            del raw[pos:pos + len(b)]
        else:
            raw[pos:pos + len(b)] = b
    result = try_parse_line(bytes(raw))
    assert isinstance(result, LogRecord) or result in REASONS
