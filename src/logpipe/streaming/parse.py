"""The log parse as Spark SQL expressions (JVM only, one regex pass per line), mirroring logpipe.logformat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from logpipe import logformat as lf
from logpipe.record import KEY_PREFIX, TOO_LARGE_PATTERN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

SEP = "char(0)"  # NUL, in Spark SQL: never in a parsed line (logformat rejects NUL), so safe as a field separator
_MONTHS = ", ".join(f"'{m}'" for m in lf.MONTHS)


def _sql_str(text: str) -> str:
    """A Spark SQL string literal (raw: backslashes are kept for the regex engine)."""
    return "r'" + text.replace("'", "\\'") + "'" if "'" not in text else "'" + text.replace("\\", "\\\\").replace(
        "'", "\\'") + "'"


def parse_columns(df: "DataFrame", value_col: str = "value", *, request_parts: bool = True) -> "DataFrame":
    """Add the parsed columns and a quarantine `reason` (null when the line parsed) to a frame with a binary
    `value` column. Columns added: line, host, timestamp, request, http_response, bytes_sent, reason, and (with
    `request_parts`) method, path, protocol. The rules and reasons are those of logformat.parse_line (tests
    check they agree)."""
    from pyspark.sql import functions as F

    # seed times are UTC: make_timestamp reads them in the session time zone, which logpipe.spark sets to UTC (a
    # zone argument would be parsed again for every line: ~8 % of the parse)
    zone = df.sparkSession.conf.get("spark.sql.session.timeZone")
    if zone not in ("UTC", "Etc/UTC", "GMT", "Z"):
        raise ValueError(f"the log parse needs spark.sql.session.timeZone=UTC (logpipe.spark.build_spark sets it), "
                         f"not {zone!r}")
    # the line pattern, and the empty-line test, allow the trailing CR/LF that `line` trims (nothing they match
    # ends in one), so they run on the text as read. Nothing in the parse reads `line`: a job that keeps it only
    # for quarantined lines (`CASE WHEN reason IS NOT NULL THEN line END`) trims only those (the trim of every
    # line was ~10 % of the parse)
    assert lf.JAVA_LINE_PATTERN.endswith(r"\z")
    line_pat = _sql_str(lf.JAVA_LINE_PATTERN[:-2] + r"[\r\n]*\z")
    lax_pat = _sql_str(lf.JAVA_LAX_LINE_PATTERN[:-2] + r"[\r\n]*\z")
    seed_t = _sql_str(lf.SEED_TIME_PATTERN[:-1] + r"\z")
    clf_t = _sql_str(lf.CLF_TIME_PATTERN[:-1] + r"\z")
    sep = SEP
    # the producer's stand-in for a line too large for Kafka (logpipe.record.too_large_value); it holds a NUL, so it
    # never parses, and only lines that did not parse are tested for it
    too_large = _sql_str(TOO_LARGE_PATTERN)
    # one regex pass: a matching line is rewritten to its five fields joined by NUL; a non-matching one is unchanged.
    # A line holding a NUL is never taken as parsed (its own NULs could split it into five): `contains` finds one
    # at a third of instr's cost, which also counted characters.
    fields = F.expr(f"split(regexp_replace(_text, {line_pat}, concat_ws({sep}, '$1', '$4', '$5', '$6', '$7')), "
                    f"{sep})")
    out = (df
           .withColumn("_text", F.expr(f"CAST({value_col} AS STRING)"))
           .withColumn("_utf8", F.expr("is_valid_utf8(_text)"))
           .withColumn("line", F.expr("TRIM(TRAILING '\\r\\n' FROM _text)"))
           .withColumn("_f", F.when(F.expr(f"NOT contains(_text, {sep})"), fields))
           .withColumn("_ok", F.expr("coalesce(size(_f) = 5, false)"))
           .withColumn("host", F.expr("CASE WHEN _ok THEN _f[0] END"))
           .withColumn("_t", F.expr("CASE WHEN _ok THEN _f[1] END"))
           .withColumn("_seed", F.expr(f"_t RLIKE {seed_t}"))
           .withColumn("_clf", F.expr(f"_t RLIKE {clf_t}"))
           # a seed time, once its pattern holds, is exactly what a cast to timestamp reads (in the session zone;
           # an impossible date such as Feb 30 gives NULL), without the copies of six substrings. A CLF time:
           # make_timestamp from fixed positions, ~3x cheaper than parsing with a datetime pattern
           .withColumn("timestamp", F.expr(
               "CASE WHEN _seed THEN try_cast(_t AS TIMESTAMP) "
               "WHEN _clf THEN try_make_timestamp(int(substr(_t, 8, 4)), "
               f"array_position(array({_MONTHS}), substr(_t, 4, 3)), int(substr(_t, 1, 2)), "
               "int(substr(_t, 13, 2)), int(substr(_t, 16, 2)), int(substr(_t, 19, 2)), "
               "concat(substr(_t, 22, 3), ':', substr(_t, 25, 2))) END"))
           .withColumn("request", F.expr("CASE WHEN _ok THEN _f[2] END"))
           .withColumn("http_response", F.expr("CASE WHEN _ok THEN CAST(_f[3] AS INT) END"))
           # more digits than a BIGINT holds: NULL, BAD_BYTES as any count over INT32_MAX
           .withColumn("_bytes", F.expr("CASE WHEN _ok THEN CASE WHEN _f[4] = '-' THEN 0L "
                                        f"ELSE coalesce(try_cast(_f[4] AS BIGINT), {lf.INT32_MAX + 1}L) END END"))
           .withColumn("reason", F.expr(f"""
               CASE WHEN NOT _ok AND _text RLIKE {too_large} THEN '{lf.TOO_LARGE}'
                    WHEN NOT _utf8 THEN '{lf.INVALID_UTF8}'
                    WHEN NOT _ok AND _text RLIKE '^\\\\uFEFF?[ \\\\t\\\\f\\\\x0B]*[\\\\r\\\\n]*\\\\z' THEN '{lf.EMPTY}'
                    WHEN NOT _ok AND _f IS NOT NULL AND _text RLIKE {lax_pat} THEN '{lf.UNESCAPED_QUOTE}'
                    WHEN NOT _ok THEN '{lf.NO_MATCH}'
                    WHEN timestamp IS NULL THEN '{lf.BAD_TIMESTAMP}'
                    WHEN timestamp < TIMESTAMP'{lf.MIN_TIME:%Y-%m-%d %H:%M:%S}'
                      OR timestamp >= TIMESTAMP'{lf.MAX_TIME:%Y-%m-%d %H:%M:%S}' THEN '{lf.TIMESTAMP_OUT_OF_RANGE}'
                    WHEN http_response < 100 OR http_response > 599 THEN '{lf.BAD_STATUS}'
                    WHEN _bytes > {lf.INT32_MAX} THEN '{lf.BAD_BYTES}'
               END"""))
           .withColumn("bytes_sent", F.expr("CASE WHEN reason IS NULL THEN CAST(_bytes AS INT) END"))
           .drop("_text", "_utf8", "_f", "_ok", "_t", "_seed", "_clf", "_bytes"))
    return request_columns(out) if request_parts else out


def request_columns(df: "DataFrame") -> "DataFrame":
    """Add method, path, protocol from `request` (null when the request is not `METHOD PATH [PROTOCOL]` or the
    line did not parse). Separate from parse_columns so that a job can derive them only where it writes them."""
    from pyspark.sql import functions as F

    req_pat = _sql_str(lf.JAVA_REQUEST_PATTERN)
    sep = SEP
    return (df
            .withColumn("_r", F.expr(f"split(regexp_replace(request, {req_pat}, concat_ws({sep}, '$1', '$2', '$3')), "
                                     f"{sep})"))
            .withColumn("method", F.expr("CASE WHEN reason IS NULL AND size(_r) = 3 THEN _r[0] END"))
            .withColumn("path", F.expr("CASE WHEN reason IS NULL AND size(_r) = 3 THEN _r[1] END"))
            .withColumn("protocol", F.expr("CASE WHEN reason IS NULL AND size(_r) = 3 THEN nullif(_r[2], '') END"))
            .drop("_r"))


def quarantine_in_future(df: "DataFrame", not_after: str = "_not_after") -> "DataFrame":
    """Parsed rows dated after the `not_after` column (a TIMESTAMP; NULL: no bound) get the reason
    TIMESTAMP_IN_FUTURE: quarantined, they cannot move the late horizon. The bound is a moment after the job read
    the line (logformat.TIMESTAMP_IN_FUTURE), so it is applied on top of parse_columns, not in it."""
    from pyspark.sql import functions as F

    return df.withColumn("reason", F.expr(
        f"CASE WHEN reason IS NULL AND timestamp > {not_after} THEN '{lf.TIMESTAMP_IN_FUTURE}' ELSE reason END"))


REQUEST_PARTS = ("method", "path", "protocol")
EVENT_COLUMNS = ["host", "timestamp", "request", "http_response", "bytes_sent", *REQUEST_PARTS]


def source_columns(df: "DataFrame", topic: "Column | None" = None) -> "DataFrame":
    """src, off, `src_key` (unique per source line) and its `key_hash`, from the record key `lp:<src>:<off>` that
    logpipe's producer sets (see logpipe.record); a record from another producer (no key, another format) gets
    src and off NULL and the src_key `kafka:<topic>:<partition>:<offset>`. `topic`: default the column."""
    from pyspark.sql import functions as F

    topic = F.col("topic") if topic is None else topic
    key = F.col("key").cast("string")
    off_text = F.substring_index(key, ":", -1)
    off = off_text.try_cast("bigint")
    body_len = F.length(key) - len(KEY_PREFIX)  # src:off
    src_len = body_len - F.length(off_text) - 1
    # ours: the prefix, a non-empty src, and off a canonical non-negative long (as logpipe.record requires)
    ours = F.coalesce(key.startswith(KEY_PREFIX) & (off >= 0) & (off.cast("string") == off_text) & (src_len > 0),
                      F.lit(False))
    position = F.concat(F.lit("kafka:"), topic, F.lit(":"), F.col("partition").cast("string"), F.lit(":"),
                        F.col("offset").cast("string"))
    start = F.lit(len(KEY_PREFIX) + 1)
    return (df
            .withColumn("src", F.when(ours, key.substr(start, src_len)))
            .withColumn("off", F.when(ours, off))
            .withColumn("src_key", F.when(ours, key.substr(start, body_len)).otherwise(position))
            .withColumn("key_hash", F.xxhash64("src_key")))
