"""One frozen settings object for every part of logpipe, read from `LOGPIPE_*` environment variables."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _project_root() -> Path:
    """The checkout this package was installed from (editable install), else the working directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "logpipe").is_dir():
            return parent
    return Path.cwd()


PROJECT_ROOT = _project_root()

Port = Annotated[int, Field(ge=1, le=65535)]
# windows one event may fall in (window / slide, rounded up): the per-host window rows are about the events times
# this; the default is 2. A day sliding every second (86,400) would make the job's work 43,200 times the default's
MAX_WINDOWS_PER_EVENT = 1000
# The Spark JVM's options. ParallelGC: 5 % faster than G1 (docs/benchmarks.md). The Tier4 thresholds, 10x Java's
# defaults, keep the C2 compiler for code that is really hot: a micro-batch runs much code only a few thousand
# times (planning, each small job's generated classes), which C2 compiled at Java's thresholds, taking CPU from the
# two task threads on a 2-core machine. Per-row loops still reach C2 within milliseconds. 1 GB topic, runs
# alternating: compiler threads 33 CPU s instead of 49, the machine's CPU 223 s instead of 244, total_s 115 s
# instead of 122 s (8 and 10 runs); the batch reference 47-57 s instead of 55-65 s. NewRatio=1: a young generation
# as large as the old one (ParallelGC's default is half of it). The stream's Tungsten pages, shuffle buffers and
# Parquet writers' pages live for a task and were copied from young generation to young generation, then promoted:
# 2.5 GB topic, runs alternating, GC threads 12.7-13.0 CPU s instead of 19.4-21.3, GC pauses 7.3-7.6 s instead of
# 11.1-12.8 s, total_s 154.2-156.4 s (3 runs) against 160.0-168.4 s (5 runs); peak RSS unchanged (4.6 GB). The
# batch reference did not change (84.9 and 88.9 s against 84.6 and 85.1 s); -Xmn2560m was slower (175.3 s).
SPARK_JAVA_OPTIONS = ("-XX:+UseParallelGC -XX:NewRatio=1 -XX:Tier4InvocationThreshold=50000 "
                      "-XX:Tier4MinInvocationThreshold=6000 -XX:Tier4CompileThreshold=150000 "
                      "-XX:Tier4BackEdgeThreshold=400000")


def require_loopback(address: str, note: str = "") -> str:
    """`address` if it is a loopback one (IPv4: the JVMs run IPv4-only), else ValueError."""
    import ipaddress

    try:
        loopback = address == "localhost" or ipaddress.IPv4Address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{address!r} is not a loopback address: the native stack's services have no authentication "
                         f"and listen on this machine only (127.0.0.1, another 127.x.y.z, or localhost){note}")
    return address


# the mark of logpipe's streaming image (pyspark_service/Dockerfile writes it): not Docker's own /.dockerenv, which
# any container has, also one that runs the native stack
STREAMING_IMAGE_MARK = Path("/etc/logpipe/streaming-image")


def in_streaming_image() -> bool:
    """Whether this process runs in logpipe's streaming container image (see STREAMING_IMAGE_MARK)."""
    return STREAMING_IMAGE_MARK.exists()


# Kafka's millisecond settings are 32-bit ints (librdkafka refuses more; a larger value wrapped to a negative one)
KAFKA_MAX_MS = 2**31 - 1

ProducerClient = Literal["kafka-python", "confluent"]  # the producer's Kafka clients (`--client`)
PRODUCER_CLIENTS: tuple[str, ...] = get_args(ProducerClient)


class Settings(BaseSettings):
    """All settings. Environment variables `LOGPIPE_<FIELD>` set them; CLI flags override the environment.

    The native stack and docker-compose read the same names (see `.env` for compose).
    """

    # an empty LOGPIPE_* variable is the same as an unset one (compose passes `${VAR:-}` through as ""): before,
    # LOGPIPE_RUN_DIR= meant the current folder and LOGPIPE_KAFKA_PORT= was "not a valid integer"
    # allow_inf_nan: an infinite timeout crashed in the Kafka clients' millisecond settings (OverflowError)
    model_config = SettingsConfigDict(env_prefix="LOGPIPE_", frozen=True, extra="forbid", env_ignore_empty=True,
                                      allow_inf_nan=False)

    # ---- native stack --------------------------------------------------------------------------
    run_dir: Path = Field(PROJECT_ROOT / ".logpipe", description="jars, data, logs and pids of the native stack")
    bind_host: str = Field("127.0.0.1", description="loopback address every native service binds to")
    java_home: str | None = Field(None, description="JDK for the native services (default: JAVA_HOME or java on PATH)")
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    kafka_heap: str = "1g"
    namenode_rpc_port: Port = 8020
    namenode_http_port: Port = 9870
    datanode_http_port: Port = 9864
    datanode_data_port: Port = 9866
    datanode_ipc_port: Port = 9867
    namenode_heap: str = "768m"
    datanode_heap: str = "768m"
    stack_timeout_s: float = Field(180.0, gt=0, description="how long `stack up` waits for a service to be ready")

    # ---- addresses clients use (compose points these at container names) ------------------------
    kafka_bootstrap: str | None = Field(None, description="host:port; default bind_host:kafka_port")
    hdfs_url: str | None = Field(None, description="hdfs://host:port; default hdfs://bind_host:namenode_rpc_port")
    webhdfs_url: str | None = Field(None, description="http://host:port of the NameNode UI/WebHDFS")
    hdfs_user: str | None = Field(None, description="user for WebHDFS calls (default: the OS user)")

    # ---- topics and paths -------------------------------------------------------------------------
    topic: str = Field("access-logs", description="Kafka topic of the log lines (one record per line)")
    alerts_topic: str = Field("alerts", description="Kafka topic the job publishes its alerts to, as JSON")
    # The producer sends every record of one log to one partition (a hash of its path), in order: with several
    # partitions, several logs spread over them. Spark reads a partition with several tasks (kafka_read_tasks
    # splits the offset range).
    topic_partitions: int = Field(1, ge=1, description="partitions of a topic the producer creates")
    topic_replication: int = Field(1, ge=1, description="replication factor of a topic the producer creates")
    hdfs_root: str = Field("/logpipe", description="HDFS folder holding events/, windows/, alerts/, quarantine/")
    # the job's files (results, checkpoints, commits) get this many replicas: Spark's HDFS client does not read the
    # NameNode's dfs.replication, and with its default of 3 every block of a one-DataNode cluster stayed
    # under-replicated (the NameNode log and `fsck` say so for ever)
    hdfs_replication: int = Field(1, ge=1, le=512, description="replicas of each file the job writes to HDFS (the "
                                  "native and compose stacks have one DataNode; 3 is usual on a cluster)")

    # ---- producer ---------------------------------------------------------------------------------
    producer_client: ProducerClient = Field(
        "kafka-python", description="Kafka client library of the producer (confluent: librdkafka, ~18x faster on the 2.5 GB benchmark)")
    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        "lz4", description="compression of the producer's record batches")
    batch_size: int = Field(512 * 1024, gt=0, description="producer batch size in bytes")
    linger_ms: int = Field(20, ge=0, le=900_000, description="how long the producer waits to fill a batch")
    speed: str = Field("max", description="max | realtime | <factor> (x the log's own pace)")
    max_message_bytes: int = Field(
        1_000_000, gt=0, le=64 << 20,  # at most the longest line the producer holds (producer.source.LINE_CAP_BYTES)
        description="a longer line is sent as a too_large record (its first 16 KB), which the job quarantines")
    producer_state_dir: Path | None = Field(None, description="producer position files (default run_dir/producer)")
    producer_connect_timeout_s: float = Field(30.0, gt=0, description="give up reaching the broker after this long")
    producer_delivery_timeout_s: float = Field(
        120.0, ge=1, le=KAFKA_MAX_MS / 1000, description="give up on lines the broker has not confirmed after this long (a hung broker): "
        "the producer exits 1, and its next run sends them again from the saved position")
    producer_checkpoint_s: float = Field(1.0, ge=0, description="flush and save the position at least this often")
    rotate_grace_s: float = Field(
        300.0, gt=0, description="--follow: a log rotated away is still read, beside the new one, until it has had "
        "no new bytes this long (its writer appends to it until it reopens the log); then its unterminated last "
        "line, if any, is sent as a line")

    # ---- streaming job ----------------------------------------------------------------------------
    connect_timeout_s: float = Field(60.0, gt=0, description="the job gives up waiting for Kafka or HDFS after this "
                                     "long; readers of the results, for an answer from WebHDFS")
    stop_grace_s: float = Field(120.0, ge=0, description="on SIGTERM/Ctrl-C, let running micro-batches finish this long")
    spark_master: str = Field("local[2]", description="Spark master URL (local[N]: N task threads in the job's JVM)")
    spark_driver_memory: str = Field("4g", description="heap of Spark's JVM (the whole job in local mode)")
    spark_driver_java_options: str = Field(
        SPARK_JAVA_OPTIONS, description="JVM options of the Spark driver (the whole job in local mode): the "
        "throughput collector (5% faster than G1) with its young generation half the heap, and C2 compile "
        "thresholds 10x Java's (see SPARK_JAVA_OPTIONS). "
        "`none`: Java's defaults (an empty variable counts as unset, as every LOGPIPE_* one). Replaces "
        "spark.driver.extraJavaOptions from spark-defaults.conf; do not also pick a collector in JAVA_TOOL_OPTIONS")
    spark_aot_cache: bool = Field(
        True, description="on Java 25+, `stack up` trains an ahead-of-time cache for Spark's JVM once (1-2 "
        "minutes) and every Spark start then uses it: a stream run over 500 lines took 41-43 s instead of 48-54 s "
        "(run_dir/aot)")
    spark_java_home: str | None = Field(
        None, description="JDK for Spark's JVM (the whole job in local mode). Default: the newest JDK Spark supports "
        "(25, 21, 17) among LOGPIPE_JAVA_HOME, JAVA_HOME, java on PATH and /usr/lib/jvm: the 1 GB stream took "
        "134-147 s on Java 25 against 172-187 s on Java 17 (docs/benchmarks.md)")
    spark_ui_port: int = Field(4040, ge=0, le=65535, description="0: any free port")
    spark_ui_host: str | None = Field(
        None, description="address the Spark UI listens on (Spark reads it from SPARK_LOCAL_IP, which logpipe sets "
        "from this); default bind_host. The compose streaming container sets 0.0.0.0 (its port is published on "
        "127.0.0.1 only)")
    shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions of the window counts")
    spark_kafka_jars: str | None = Field(None, description="comma-separated connector jars (default: resolved by mvn)")
    window: str = Field("20 seconds", description="length of the sliding windows (a duration: '20 seconds', '1 minute')")
    slide: str = Field("10 seconds", description="how often a new window starts (at most the window's length)")
    watermark: str = Field("30 seconds", description="allowed lateness of events (event time)")
    future_tolerance: str = Field(
        "5 minutes", description="how far after the moment the job reads a line its time may lie: a line dated later "
        "is quarantined (timestamp_in_future), so that a wrong clock cannot move the late horizon ahead of the traffic")
    max_offsets_per_trigger: int = Field(10_000_000, ge=1, description="records per micro-batch at most (catch-up); "
                                         "bigger batches cost less per line (measured: 1 M -> 2.5 M, ~10%; "
                                         "2.5 M -> 5 M, 9% on 1 GB; 5 M -> 10 M, 1-8% on 2.5 GB, Spark's peak RSS "
                                         "4.5 GB either way) but give a backlog's first results later")
    trigger_interval: str = Field("0 seconds", description="time between micro-batch starts (0 seconds: as soon as one ends)")
    kafka_read_tasks: int = Field(2, ge=1, description="Spark tasks reading the topic per micro-batch (minPartitions)")
    parquet_codec: Literal["zstd", "snappy", "lz4_raw", "gzip", "none"] = Field(
        "zstd", description="compression of the Parquet files the jobs write")
    events_request_parts: bool = Field(
        False, description="also store method, path, protocol (split from request) in events/ and late/; they are "
        "derived from request at read time otherwise (measured: a third of the cost of writing events)")

    # ---- alert rules ------------------------------------------------------------------------------
    rate_limit_ceiling: int = Field(200, ge=1, description="requests by one host in one window that trigger a block")
    surge_min_count: int = Field(100, ge=1, description="failed requests of one status in one window")
    surge_min_share: float = Field(0.25, ge=0, le=1, description="that status's share of all requests in the window")
    surge_top_hosts: int = Field(5, ge=1, description="hosts named in a surge alert")

    # ---- validation -------------------------------------------------------------------------------
    @field_validator("bind_host")
    @classmethod
    def _bind_host_is_loopback(cls, v: str) -> str:
        # the native services have no authentication (WebHDFS takes any user.name, Kafka any client): they listen
        # on this machine only. Other hosts reach the pipeline through compose, whose ports are published as set
        return require_loopback(v)

    @field_validator("spark_ui_host")
    @classmethod
    def _spark_ui_host_is_loopback(cls, v: str | None) -> str | None:
        # natively the Spark UI is held to this machine like every service; the compose container sets 0.0.0.0,
        # its port published on 127.0.0.1 only
        if v is not None and not in_streaming_image():
            require_loopback(v, " (0.0.0.0 is for the compose streaming container)")
        return v

    @field_validator("run_dir", "producer_state_dir")
    @classmethod
    def _path_absolute(cls, v: Path | None) -> Path | None:
        # the services start with cwd=run_dir and get paths inside it, and the demo's steps run in the project's
        # folder: a relative path would point elsewhere for each process
        return None if v is None else v.expanduser().resolve()

    @field_validator("java_home", "spark_java_home")
    @classmethod
    def _java_home_absolute(cls, v: str | None) -> str | None:
        # the services start with cwd=run_dir: a relative JDK folder would be looked up there
        return None if v is None else str(Path(v).expanduser().resolve())

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, v: str | None) -> str | None:
        for server in [] if v is None else v.split(","):
            m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\],]+):(\d{1,5})", server.strip())
            if not m or not 0 < int(m.group(2)) <= 65535:
                raise ValueError(f"{server.strip()!r} is not host:port: give Kafka's bootstrap servers as "
                                 "host:port[,host:port...] (e.g. 127.0.0.1:9092 or kafka:9092)")
        return v

    @field_validator("hdfs_url", "webhdfs_url")
    @classmethod
    def _url_has_scheme_and_host(cls, v: str | None, info: Any) -> str | None:
        from urllib.parse import urlsplit

        if v is None:
            return v
        url = urlsplit(v)
        schemes = ("http", "https") if info.field_name == "webhdfs_url" else None
        example = "http://127.0.0.1:9870" if schemes else "hdfs://127.0.0.1:8020"
        if "://" not in v or not url.scheme or (schemes and url.scheme not in schemes) or (
                url.scheme in ("http", "https", "hdfs") and not url.hostname):
            raise ValueError(f"{v!r} is not a URL with a scheme and host (e.g. {example})")
        if url.path.strip("/") or url.query or url.fragment or url.username is not None:
            # Spark would write below its path while verify, the notebook and the health checks read the root at
            # the top over WebHDFS (which keeps only host and port): the root is LOGPIPE_HDFS_ROOT's alone
            raise ValueError(f"{v!r} holds more than a scheme, host and port (e.g. {example}): give the results' "
                             "folder as LOGPIPE_HDFS_ROOT")
        try:
            port = url.port  # raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc} (e.g. {example})") from None
        if schemes and port is None:  # http's 80 is not WebHDFS's 9870 (https: 9871), and clients differ on it
            raise ValueError(f"{v!r} has no port: give the NameNode's HTTP port (e.g. {example}; Hadoop's default "
                             "9870, 9871 for https)")
        return v

    @field_validator("spark_driver_java_options")
    @classmethod
    def _java_options_none(cls, v: str) -> str:
        return "" if v.strip().lower() == "none" else v

    @field_validator("hdfs_root")
    @classmethod
    def _hdfs_root_is_a_folder(cls, v: str) -> str:
        # Spark puts the NameNode address in front (hdfs_uri) while the WebHDFS readers resolve a relative path
        # under /user/<user>: a relative root would send the job and its readers to different places, and "/"
        # would make the job's tables and the demo's clean-up the whole file system
        if not v.startswith("/") or not v.strip("/"):
            raise ValueError("must be an absolute HDFS path below / (e.g. /logpipe)")
        # what HDFS refuses as a path name (DFSUtil.isValidName): the job, which goes through Hadoop's Path, would
        # read `//x` as /x, while the WebHDFS readers (verify, the notebook) fail on it
        if any(part in ("", ".", "..") or ":" in part for part in v[1:].rstrip("/").split("/")):
            raise ValueError("must be an HDFS path without empty, '.' or '..' parts and without ':' (e.g. /logpipe "
                             "or /results/run-1)")
        # Hadoop's glob characters: Spark writes such a path as it is, but reads it back (the job's staged
        # batches and state) as a pattern, which does not match the folder: the first batch would fail
        if glob := sorted(set(v) & set("*?[]{}\\")):
            raise ValueError(f"must be an HDFS path without Hadoop's glob characters ({' '.join(glob)}): Spark "
                             "reads such a path back as a pattern (e.g. /results/run-1)")
        return v

    @field_validator("topic", "alerts_topic")
    @classmethod
    def _topic_is_a_kafka_name(cls, v: str) -> str:
        # Kafka's own rule (org.apache.kafka.common.internals.Topic): checked here, not at the first send
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", v) or v in (".", ".."):
            raise ValueError("a Kafka topic name: 1-249 letters, digits, '.', '_' or '-' (not '.' or '..')")
        if v.startswith("__"):  # __consumer_offsets, __transaction_state, __share_group_state: the broker's own
            raise ValueError("a topic of logpipe's own: names starting with '__' are Kafka's internal topics "
                             "(__consumer_offsets, __transaction_state, ...)")
        return v

    @field_validator("window", "slide", "watermark", "future_tolerance")  # the job's time arithmetic reads them
    @classmethod
    def _duration_is_an_interval(cls, v: str) -> str:
        from logpipe.windows import duration_seconds

        duration_seconds(v)  # ValueError: "unsupported duration ..." with examples
        return v

    @field_validator("trigger_interval")
    @classmethod
    def _trigger_is_an_interval(cls, v: str) -> str:
        from logpipe.windows import interval_seconds

        interval_seconds(v)  # whole seconds (minutes, ...) or milliseconds, as Spark's processingTime takes them
        return v

    @field_validator("speed")
    @classmethod
    def _speed_is_known(cls, v: str) -> str:
        if v in ("max", "realtime"):
            return v
        try:
            ok = 0 < float(v) < math.inf  # NaN too
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("must be max, realtime or a positive, finite factor (e.g. 10)")
        return v

    @model_validator(mode="after")
    def _windows_slide_within(self) -> "Settings":
        from logpipe.windows import duration_seconds

        size, slide = duration_seconds(self.window), duration_seconds(self.slide)
        if size <= 0 or slide <= 0 or slide > size:
            raise ValueError(f"window ({self.window!r}) and slide ({self.slide!r}) need 0 < slide <= window: "
                             "every event falls in window/slide windows")
        per_event = -(-size // slide)
        if per_event > MAX_WINDOWS_PER_EVENT:
            raise ValueError(f"window ({self.window!r}) and slide ({self.slide!r}) put every event in {per_event:,} "
                             f"windows, more than {MAX_WINDOWS_PER_EVENT:,}: the job counts each event once per window "
                             "it falls in, so its work and its window tables grow that many times. Use a longer slide")
        return self

    @model_validator(mode="after")
    def _alerts_not_into_the_log_topic(self) -> "Settings":
        if self.alerts_topic == self.topic:
            raise ValueError(f"alerts_topic and topic are both {self.topic!r}: the job would read its own alerts back "
                             "as log lines (and quarantine them). Give the alerts their own topic")
        return self

    @model_validator(mode="after")
    def _delivery_outlasts_linger(self) -> "Settings":
        if self.producer_delivery_timeout_s * 1000 < 2 * self.linger_ms:
            raise ValueError(f"producer_delivery_timeout_s ({self.producer_delivery_timeout_s:g} s) must be at least "
                             f"twice linger_ms ({self.linger_ms} ms): a batch waits linger_ms before it is sent, and "
                             "its request needs time of its own within the delivery timeout")
        return self

    # ---- derived ----------------------------------------------------------------------------------
    @cached_property
    def kafka_address(self) -> str:
        return self.kafka_bootstrap or f"{self.bind_host}:{self.kafka_port}"

    @cached_property
    def hdfs_address(self) -> str:
        return self.hdfs_url or f"hdfs://{self.bind_host}:{self.namenode_rpc_port}"

    @cached_property
    def webhdfs_address(self) -> str:
        return self.webhdfs_url or f"http://{self.bind_host}:{self.namenode_http_port}"

    @cached_property
    def hdfs_user_name(self) -> str:
        import getpass

        return self.hdfs_user or getpass.getuser()

    @property
    def producer_positions_dir(self) -> Path:
        """Where the producer keeps its saved positions: producer_state_dir, or run_dir/producer."""
        return self.producer_state_dir or self.run_dir / "producer"

    def hdfs_path(self, *parts: str) -> str:
        """A path under hdfs_root, e.g. hdfs_path("windows", "by_host") -> /logpipe/windows/by_host."""
        return "/".join([self.hdfs_root.rstrip("/"), *(p.strip("/") for p in parts)])

    def hdfs_uri(self, *parts: str) -> str:
        """Like hdfs_path, with the NameNode address in front (for Spark)."""
        return self.hdfs_address.rstrip("/") + self.hdfs_path(*parts)

    def with_overrides(self, **overrides: Any) -> "Settings":
        """A copy with the given fields replaced; None values (unset CLI flags) are ignored."""
        data = {k: v for k, v in overrides.items() if v is not None}
        return Settings(**{**self.model_dump(), **data}) if data else self


# LOGPIPE_* variables of docker-compose.yml alone (.env): which log the producer and notebook containers read.
# Prefixed so that a LOG_DIR or LOG_FILE the shell holds for something else does not move the producer's input.
COMPOSE_ONLY = frozenset({"LOGPIPE_COMPOSE_LOG_DIR", "LOGPIPE_COMPOSE_LOG_FILE", "LOGPIPE_COMPOSE_DEMO_SIZE"})
# LOGPIPE_* variables that are not settings: switches of the test suite, and compose's own
NOT_SETTINGS = frozenset({"LOGPIPE_E2E_LINES", "LOGPIPE_KEEP_RESULTS", "LOGPIPE_KEEP_STACK"}) | COMPOSE_ONLY


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The LOGPIPE_* variables of `environ` (default: the process's) that name no setting, each with the setting it
    may have meant (or None): a misspelt name would otherwise be ignored without a word."""
    import difflib
    import os

    fields = list(Settings.model_fields)
    out = []
    for key in sorted(os.environ if environ is None else environ):
        name = key.removeprefix("LOGPIPE_").lower()
        if key.startswith("LOGPIPE_") and name not in fields and key not in NOT_SETTINGS:
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
            out.append((key, f"LOGPIPE_{close[0].upper()}" if close else None))
    return out


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then CLI overrides (None = flag not given)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
