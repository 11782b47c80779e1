"""The Spark SQL parse agrees with the reference parser (logformat.parse_line) on good and bad lines."""

from __future__ import annotations

from datetime import timezone

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from logpipe import logformat as lf

pytestmark = pytest.mark.unit

GOOD = [
    b'168.178.113.108 - - [2004-05-18 05:58:48] "GET /Archives/edgar/data/0001439124/000129281422000854/ HTTP/1.0" 500 14101',
    b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
    b'127.0.0.1 - John Doe [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 2326',  # a user with a space
    b'127.0.0.1 - - [10/Oct/2000:13:55:36 +0530] "GET /a HTTP/1.1" 200 2326 "http://x.example/start" "Mozilla/4.08 [en] (Win98; I ;Nav)"',
    b'2001:db8::1 - - [2004-05-18 05:58:48] "POST /login HTTP/1.1" 403 -',
    b'crawler.example.org - - [2004-05-18 05:58:48] "GET /q?a=\\"b\\" HTTP/1.1" 304 0',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /no-protocol" 200 5\r\n',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "weird request with many words" 200 5',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "" 400 0',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /caf\xc3\xa9 HTTP/1.1" 200 2147483647',
    b'1.2.3.4 - - [29/Feb/2004:23:59:59 -1800] "GET / HTTP/1.1" 599 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 100 0\r',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\\\r HTTP/1.1" 200 1',  # backslash + CR (Java `.` trap)
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /a HTTP/1.1\n" 200 1',  # request parts: no (Python `$` trap)
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /a\r" 200 1',
    # any run of CR/LF at the end is trimmed: the regex allows it rather than matching a trimmed copy
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 5\n\r\n',
    b'127.0.0.1 - - [10/Oct/2000:13:55:36 +0530] "GET /a HTTP/1.1" 200 2326 "-" "curl/8"\r\r',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 -\n',
    # seed times read by a cast: a leap day, the ends of the accepted range
    b'1.2.3.4 - - [2004-02-29 23:59:59] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [1990-01-01 00:00:00] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2099-12-31 23:59:59] "GET / HTTP/1.1" 200 1',
    # a UTF-8 byte order mark (a log's first line) is not part of the host
    b'\xef\xbb\xbf1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1',
    # a remote user of 20,000 words: Java's regex recursed once per word of a lazy loop (StackOverflowError, the
    # JVM's executor killed, the job meeting the line again at every restart); a fuzz of both parsers found it
    b'1.2.3.4 - ' + b'a ' * 20_000 + b'[2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1',
    # fields servers append to Combined: nginx's `main`, Apache's `combinedio`, Traefik's
    b'172.17.0.1 - - [07/Dec/2026:13:30:00 +0000] "GET / HTTP/1.1" 200 615 "-" "curl/8.5.0" "203.0.113.1, 10.0.0.1"',
    b'172.17.0.1 - - [07/Dec/2026:13:30:00 +0000] "GET / HTTP/1.1" 200 615 "-" "curl/8.5.0" 431 5120\r\n',
    b'172.17.0.1 - - [07/Dec/2026:13:30:00 +0000] "GET / HTTP/1.1" 200 615 "-" "curl/8" 1 "web@docker" '
    b'"http://10.0.0.2:80" 5ms',
    # a user holding brackets (a basic-auth user is logged as the client sent it, also when the login failed)
    b'1.2.3.4 - x [ [10/Oct/2000:13:55:36 -0700] "GET /admin HTTP/1.1" 401 381',
    b'1.2.3.4 - a [b [10/Oct/2000:13:55:36 -0700] "GET /admin HTTP/1.1" 401 381',
    b'1.2.3.4 - a [b] [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - [admin] [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1',
    # spaces or tabs after the last field, before a CR/LF or not
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 5 \r\n',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1 "-" "curl/8" \t',
    # request lines: spaces in the path, a last word that is no protocol, HTTP/2.0; bytes with leading zeros
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /my file.pdf" 200 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /a b HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/2.0" 200 000000000000000000000000042',
    # fields after the bytes that hold a protocol but no status after its quote stay fields
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1 "http://x/ HTTP/1.1" "curl/8" 431 5120',
]
BAD = [
    b"", b"\r\n", b"   ", b"\t", b"\xff\xfe garbage", b"\x80\x81\x82", b"just some text", b" \t\r\n\r",
    b"w " * 50_000,  # text of many words: the same recursion, 3,000 words were enough (see GOOD)
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /' + b'a ' * 20_000 + b'HTTP/1.1" 200 x',
    # the user is the words up to the one that looks like the time (`[...] "`): two lines joined by a lost newline
    # are not one event with the second's time and request; a user `-` is followed by the time, so `- [x]` is no user
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /a HTTP/1.1" 200 1 5.6.7.8 - - [2004-05-18 05:58:49] "GET /b HTTP/1.1" 404 2',
    b'1.2.3.4 - - [x] [2099-12-31 23:59:59] "GET / HTTP/1.1" 200 1',
    # a request holding a quote its server did not escape, so that the line reads as another status (unescaped_quote):
    # the real end of the request line after the bytes, in more fields, in the user agent, after a forged protocol
    b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /x" 200 1 "-" "-" "y HTTP/1.1" 404 5',
    b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /x" 200 1 "-" " HTTP/1.1" 401 5 "-" "curl/8"',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /x HTTP/1.1" 200 99999 "-" "-" "y HTTP/1.0" 500 14101\r\n',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /x" 200 1 "-" "-" "y HTTP/2.0" 404 -',
    # bytes past a BIGINT, with and without leading zeros
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 12884901888',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 ' + b"9" * 6000,
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 0000000000' + b"9" * 30,
    b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n",  # a byte order mark alone
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 5\r\n ',  # a space after the CR/LF
    b'1.2.3.4 - - [2004-13-18 05:58:48] "GET / HTTP/1.1" 200 1',     # month 13
    b'1.2.3.4 - - [2004-02-30 05:58:48] "GET / HTTP/1.1" 200 1',     # Feb 30
    b'1.2.3.4 - - [2004-05-18 25:58:48] "GET / HTTP/1.1" 200 1',     # hour 25
    b'1.2.3.4 - - [18/Mai/2004:05:58:48 +0000] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [18/May/2004:05:58:48 +1900] "GET / HTTP/1.1" 200 1',  # offset beyond 18:00
    b'1.2.3.4 - - [18/May/2004:05:58:48 +0075] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004/05/18 05:58:48] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [1969-12-31 23:59:59] "GET / HTTP/1.1" 200 1',     # before 1990
    b'1.2.3.4 - - [2999-01-01 00:00:00] "GET / HTTP/1.1" 200 1',     # far future
    b'1.2.3.4 - - [2004-05-18 05:58:60] "GET / HTTP/1.1" 200 1',     # leap second (make_timestamp: next minute)
    b'1.2.3.4 - - [18/May/2004:05:58:60 +0000] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [0000-01-01 00:00:00] "GET / HTTP/1.1" 200 1',     # year 0: a Java date, not a Python one
    b'1.2.3.4 - - [0000-02-30 00:00:00] "GET / HTTP/1.1" 200 1',
    # seed times are read by a cast once their pattern holds: impossible leap days, just out of range, other
    # layouts a cast would accept; lines of blanks and line ends
    b'1.2.3.4 - - [2003-02-29 00:00:00] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [1900-02-29 00:00:00] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [0000-02-29 00:00:00] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [1989-12-31 23:59:59] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2100-01-01 00:00:00] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004-05-18T05:58:48] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48Z] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004-5-18 05:58:48] "GET / HTTP/1.1" 200 1',
    b' \t \r\n\r', b'\r\n \n', b'\x0b\x0c',
    b'1.2.3.4 - - [18/May/0000:05:58:48 +0000] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [01/Jan/0001:00:30:00 +0100] "GET / HTTP/1.1" 200 1',  # UTC before year 1
    b'1.2.3.4 - - [31/Dec/9999:23:59:59 -0100] "GET / HTTP/1.1" 200 1',  # UTC after year 9999
    b'1.2.3.4 - - [2004-05-18 05:58:48\n] "GET / HTTP/1.1" 200 1',   # Python `$` trap
    b'1.2.3.4 - - [18/May/2004:05:58:48 +0000\n] "GET / HTTP/1.1" 200 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 999 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 000 1',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 9999999999',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200',       # missing field
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1 200 1',      # unclosed quote
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1 extra',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\x00 HTTP/1.1" 200 1',  # NUL
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1\xc2\x85',  # NEL at the end (Java $ trap)
    b'1.2.3.4  - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1',    # double space
    # bytes Python's strict UTF-8 decoder refuses: the JVM's check must refuse them too
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\xed\xa0\x80 HTTP/1.1" 200 1',  # a UTF-16 surrogate (CESU-8)
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\xc0\x80 HTTP/1.1" 200 1',      # overlong NUL (modified UTF-8)
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\xe0\x80\xaf HTTP/1.1" 200 1',  # overlong '/'
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\xf4\x90\x80\x80 HTTP/1.1" 200 1',  # past U+10FFFF
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /\xe2\x82 HTTP/1.1" 200 1',      # a truncated sequence
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1' + b"x" * 1_000_000,
    # something before the host (its first word would be the host): vhost_combined, with a user, a forwarded-for
    # list, a Kubernetes (CRI) prefix, a syslog prefix
    b'www.example.com:443 203.0.113.9 - - [07/Dec/2026:15:33:45 +0100] "GET / HTTP/1.1" 200 5 "-" "curl/8"',
    b'www.example.com:443 203.0.113.9 - alice [07/Dec/2026:15:33:45 +0100] "GET / HTTP/1.1" 200 5',
    b'203.0.113.1, 10.0.0.1 - - [07/Dec/2026:15:33:45 +0100] "GET / HTTP/1.1" 200 5',
    b'2026-12-07T13:30:00.000000123Z stdout F 198.51.100.7 - - [07/Dec/2026:13:30:00 +0000] "GET / HTTP/1.1" 401 2',
    b'Nov 30 13:00:00 web1 nginx: 203.0.113.1 - - [30/Nov/2026:13:00:00 +0000] "GET / HTTP/1.1" 200 1',
    # after Combined: an unclosed quote, a second line joined by a space
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET / HTTP/1.1" 200 1 "-" "curl/8" "x',
    b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /a HTTP/1.1" 200 1 "-" "curl/8" 5.6.7.8 - - [2004-05-18 05:58:49] '
    b'"GET /b HTTP/1.1" 404 2 "-" "curl/8"',
]


def _reference(raw: bytes) -> tuple:
    r = lf.try_parse_line(raw)
    if isinstance(r, str):
        return (r,)
    return (None, r.host, r.timestamp.astimezone(timezone.utc).replace(tzinfo=None), r.request, r.http_response,
            r.bytes_sent, r.method, r.path, r.protocol)


def _spark_parse(spark, lines: list[bytes]) -> list[tuple]:
    from pyspark.sql import functions as F

    from logpipe.streaming.parse import parse_columns

    df = spark.createDataFrame([(i, bytearray(v)) for i, v in enumerate(lines)], "i INT, value BINARY")
    # a quarantined line's fields are not compared (nor collected: a year-0 timestamp is no Python datetime)
    rows = parse_columns(df).withColumn("timestamp", F.expr("CASE WHEN reason IS NULL THEN timestamp END")) \
        .orderBy("i").collect()
    out = []
    for r in rows:
        if r.reason is not None:
            out.append((r.reason,))
        else:
            out.append((None, r.host, r.timestamp, r.request, r.http_response, r.bytes_sent, r.method, r.path,
                        r.protocol))
    return out



def test_good_lines_parse_identically(local_spark):
    got = _spark_parse(local_spark, GOOD)
    assert len(got) == len(GOOD), "a line was dropped or added by the parse"
    for raw, g in zip(GOOD, got):
        assert g[0] is None, (raw, g)
        assert g == _reference(raw), raw


def test_the_jvm_parse_gives_the_fields_written_here_by_hand(local_spark):
    """The job's parse and verify's recount share logformat's patterns, so their agreement cannot catch a wrong
    rule in both (a field taken from the wrong group, a zone offset applied the wrong way): these lines' fields
    are written here by hand, in UTC."""
    from datetime import datetime

    lines = {
        b'168.178.113.108 - - [2004-05-18 05:58:48] "GET /Archives/edgar/data/0001439124/ HTTP/1.0" 500 14101':
            ("168.178.113.108", datetime(2004, 5, 18, 5, 58, 48), "GET /Archives/edgar/data/0001439124/ HTTP/1.0",
             500, 14101, "GET", "/Archives/edgar/data/0001439124/", "HTTP/1.0"),
        b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326':  # 7 h behind UTC
            ("127.0.0.1", datetime(2000, 10, 10, 20, 55, 36), "GET /apache_pb.gif HTTP/1.0", 200, 2326, "GET",
             "/apache_pb.gif", "HTTP/1.0"),
        b'10.0.0.2 - - [31/Dec/2003:23:30:00 +0530] "POST /login HTTP/1.1" 401 12 "http://r.example/" "curl/8"':
            ("10.0.0.2", datetime(2003, 12, 31, 18, 0, 0), "POST /login HTTP/1.1", 401, 12, "POST", "/login",
             "HTTP/1.1"),
        b'2001:db8::7 - - [2004-05-18 00:00:00] "HEAD / HTTP/2.0" 404 -':  # no body: 0 bytes
            ("2001:db8::7", datetime(2004, 5, 18, 0, 0, 0), "HEAD / HTTP/2.0", 404, 0, "HEAD", "/", "HTTP/2.0"),
    }
    got = _spark_parse(local_spark, list(lines))
    assert [g[1:] for g in got] == list(lines.values())
    assert all(g[0] is None for g in got), got


def test_bad_lines_quarantined_with_the_same_reason(local_spark):
    got = _spark_parse(local_spark, BAD)
    assert len(got) == len(BAD), "a line was dropped or added by the parse"
    for raw, g in zip(BAD, got):
        ref = _reference(raw)
        assert ref[0] is not None, f"reference parser accepts {raw[:80]!r}"
        assert g == ref, raw[:80]


def _two(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map("{:02d}".format)


# timestamps with every field near or past its limits, in both formats
_seed_times = st.builds("{}-{}-{} {}:{}:{}".format,
                        st.sampled_from([0, 1, 1989, 1990, 2000, 2004, 2099, 2100, 9999]).map("{:04d}".format),
                        _two(0, 13), _two(0, 32), _two(0, 25), _two(0, 61), _two(0, 61))
_clf_times = st.builds("{}/{}/{}:{}:{}:{} {}{}{}".format, _two(0, 32),
                       st.sampled_from(["Jan", "Feb", "Apr", "Dec", "Foo", "may"]),
                       st.sampled_from([0, 1, 1989, 1990, 2000, 2004, 2099, 2100, 9999]).map("{:04d}".format),
                       _two(0, 25), _two(0, 61), _two(0, 61), st.sampled_from("+-"), _two(0, 19), _two(0, 61))
_timed_lines = st.builds(lambda t, nl: f'1.2.3.4 - - [{t}{nl}] "GET / HTTP/1.1" 200 1'.encode(),
                         st.one_of(_seed_times, _clf_times), st.sampled_from(["", "", "", "\n", "\r"]))


_line_chars = st.sampled_from(list(b' -"[]:/\\+\t\r\n\x0b\x0c\x00\x85\xc2\xff0123456789aZ.')) 


# each example is one Spark job (0.3-0.6 s): fewer examples of more lines each (25 x up to 100: 15 s; 80 x up to 30:
# 26 s) try as many lines, and a failure still shrinks to the one line that differs
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.lists(_line_chars, max_size=60).map(bytes),
    _timed_lines,
    st.builds(lambda h, s, b: f'{h} - - [2004-05-18 05:58:48] "GET / HTTP/1.1" {s} {b}'.encode(),
              st.text(alphabet="ab1:.-", min_size=1, max_size=8), st.integers(0, 1200), st.integers(0, 2**33)),
), min_size=1, max_size=100))
def test_parsers_agree_on_arbitrary_input(local_spark, lines):
    assert _spark_parse(local_spark, lines) == [_reference(x) for x in lines]


def test_a_too_large_record_is_quarantined_as_too_large(local_spark):
    """The producer's stand-in for a line over the Kafka limit (verify counts a log line of that form as too_large
    too); a line that merely starts with a NUL, or with the stand-in's prefix alone, is malformed, as the Python
    parser says."""
    import re

    from logpipe.record import TOO_LARGE_PATTERN, too_large_value

    line = b'1.2.3.4 - - [2004-05-18 05:58:48] "GET /' + b"\xff" * 30_000 + b' HTTP/1.1" 200 1'
    values = [too_large_value(line, len(line)), too_large_value(b"", 5_000_000), b"\x00logpipe:too_large:12\x00ab",
              b"\x00logpipe:too_larg", b"\x00logpipe:too_large:\x00ab", b"\x00" + line[:40]]
    got = [g[0] for g in _spark_parse(local_spark, values)]
    assert got == ["too_large"] * 3 + ["malformed"] * 3
    assert [bool(re.match(TOO_LARGE_PATTERN.encode(), v)) for v in values] == [True] * 3 + [False] * 3
    assert [_reference(v)[0] for v in values[3:]] == ["malformed"] * 3
    assert len(values[0]) < 17_000


def test_source_columns_read_the_producers_key_and_agree_with_python(local_spark):
    """src, off, src_key from the record key `lp:<src>:<off>` as logpipe.record reads it; any other key (another
    producer's, a malformed one, none) gives the Kafka position."""
    from logpipe.record import parse_record_key, record_key
    from logpipe.streaming.parse import source_columns

    keys = [record_key(b"2049:1234", 0), record_key(b"2049:1234:2", 118), record_key(b"a.log", 17), None,
            b"10.0.0.1", b"lp:", b"lp:5", b"lp::5", b"lp:a.log:", b"lp:a.log:x", b"lp:a.log:-3", b"LP:a.log:3",
            b"lp:a.log:99999999999999999999", b"lp:a.log:007", b"lp:a.log: 7", b"lp:a.log:+7", b"\xff\xfe",
            record_key(b"b.log", 2**63 - 1)]
    df = local_spark.createDataFrame([(k, 0, i) for i, k in enumerate(keys)], "key BINARY, partition INT, offset BIGINT")
    got = [(r["src"], r["off"], r["src_key"]) for r in source_columns(df.selectExpr("*", "'t' AS topic"))
           .orderBy("offset").collect()]
    want = []
    for i, k in enumerate(keys):
        pos = parse_record_key(k)
        want.append((pos[0], pos[1], f"{pos[0]}:{pos[1]}") if pos else (None, None, f"kafka:t:0:{i}"))
    assert got == want
    assert want[:3] == [("2049:1234", 0, "2049:1234:0"), ("2049:1234:2", 118, "2049:1234:2:118"),
                        ("a.log", 17, "a.log:17")]
    assert all(w[0] is None for w in want[3:-1]) and want[-1][1] == 2**63 - 1


def test_the_parse_refuses_a_session_outside_utc(local_spark):
    """Seed times are UTC and make_timestamp reads them in the session time zone: another zone is an error."""
    from logpipe.streaming.parse import parse_columns

    df = local_spark.createDataFrame([(GOOD[0],)], "value BINARY")
    local_spark.conf.set("spark.sql.session.timeZone", "Europe/Berlin")
    try:
        with pytest.raises(ValueError, match="timeZone=UTC"):
            parse_columns(df)
    finally:
        local_spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert parse_columns(df).first()["reason"] is None


def test_the_batch_reference_splits_lines_as_the_producer_does(local_spark, tmp_path):
    """The batch reference reads the log's lines as the producer sends them: ended by LF only. A lone CR is part of
    its line (Spark's default splitting would make two lines of it); CRLF keeps its CR; a last line without LF
    counts."""
    from logpipe.streaming.batch import read_lines

    log = tmp_path / "crlf.log"
    log.write_bytes(b"a\rb\nc\r\nd")
    got = [bytes(r["value"]) for r in read_lines(local_spark, log).collect()]
    assert got == [b"a\rb", b"c\r", b"d"]
