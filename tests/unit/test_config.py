"""Settings: defaults, LOGPIPE_* environment, CLI overrides on top, frozen, derived addresses."""

from __future__ import annotations

import pydantic
import pytest

from logpipe.cli import build_parser, main, settings_from_args
from logpipe.config import Settings, load_settings

pytestmark = pytest.mark.unit


def test_defaults_are_loopback(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("LOGPIPE_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.kafka_address == "127.0.0.1:9092"
    assert s.hdfs_address == "hdfs://127.0.0.1:8020"
    assert s.webhdfs_address == "http://127.0.0.1:9870"
    assert s.hdfs_path("windows", "by_host") == "/logpipe/windows/by_host"
    assert s.hdfs_uri("alerts") == "hdfs://127.0.0.1:8020/logpipe/alerts"


def test_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("LOGPIPE_KAFKA_PORT", "19092")
    monkeypatch.setenv("LOGPIPE_TOPIC", "from-env")
    monkeypatch.setenv("LOGPIPE_RATE_LIMIT_CEILING", "42")
    s = load_settings(topic="from-flag", kafka_bootstrap=None)
    assert s.kafka_address == "127.0.0.1:19092"
    assert s.topic == "from-flag"          # flag beats env
    assert s.rate_limit_ceiling == 42      # env beats default, typed
    t = s.with_overrides(hdfs_root="/x/", topic=None)
    assert t.hdfs_path("events") == "/x/events" and t.topic == "from-flag"


def test_frozen_and_validated(monkeypatch):
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.topic = "other"  # type: ignore[misc]
    monkeypatch.setenv("LOGPIPE_KAFKA_PORT", "not-a-port")
    with pytest.raises(pydantic.ValidationError):
        load_settings()


@pytest.mark.parametrize("speed", ["max", "realtime", "10", "0.5"])
def test_known_speeds_are_accepted(speed):
    assert Settings(speed=speed).speed == speed


@pytest.mark.parametrize("speed", ["abc", "0", "-2", "", "fast", "nan", "inf"])
def test_a_bad_speed_is_rejected_when_the_settings_load(speed):
    with pytest.raises(pydantic.ValidationError, match="max, realtime or a positive, finite factor"):
        Settings(speed=speed)


def test_a_bad_value_is_one_clear_line_and_exit_2(monkeypatch, capsys):
    """A bad flag or LOGPIPE_* value names the setting, its value and both ways to set it: no traceback."""
    from logpipe.cli import main

    assert main(["stack", "status", "--kafka-port", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("logpipe: invalid setting kafka_port = 'abc' (flag --kafka-port or LOGPIPE_KAFKA_PORT)")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("LOGPIPE_SPEED", "fast")
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    # `stack status` has no --speed flag: only the variable is named
    assert err.startswith("logpipe: invalid setting speed = 'fast' (LOGPIPE_SPEED): "), err
    monkeypatch.setenv("LOGPIPE_SPEED", "realtime")
    monkeypatch.setenv("LOGPIPE_TRIGGER_INTERVAL", "soon")
    assert main(["stack", "status"]) == 2
    assert "'500 milliseconds'" in capsys.readouterr().err  # the examples show every form it takes
    # a flag whose name is not the setting's: `produce --client` sets producer_client (no --producer-client)
    monkeypatch.delenv("LOGPIPE_TRIGGER_INTERVAL")
    monkeypatch.setenv("LOGPIPE_PRODUCER_CLIENT", "fastest")
    assert main(["produce", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("logpipe: invalid setting producer_client = 'fastest' (flag --client or "
                          "LOGPIPE_PRODUCER_CLIENT): "), err


def test_a_misspelt_logpipe_variable_is_warned_about_not_ignored_silently(monkeypatch, capsys):
    from logpipe.cli import main
    from logpipe.config import unknown_environment

    env = {"LOGPIPE_WINDOWS": "1 minute", "LOGPIPE_WINDOW": "20 seconds", "LOGPIPE_KEEP_STACK": "1",
           "LOGPIPE_NOTHING_LIKE_IT": "x", "PATH": "/bin"}
    assert unknown_environment(env) == [("LOGPIPE_NOTHING_LIKE_IT", None), ("LOGPIPE_WINDOWS", "LOGPIPE_WINDOW")]
    monkeypatch.setenv("LOGPIPE_SURGE_MIN_SHAR", "0.5")
    assert main(["stack", "status", "--kafka-port", "abc"]) == 2
    assert ("logpipe: warning: LOGPIPE_SURGE_MIN_SHAR is not a setting: it is ignored (did you mean "
            "LOGPIPE_SURGE_MIN_SHARE?)") in capsys.readouterr().err


@pytest.mark.parametrize(("values", "shown"), [
    ({"rate_limit_ceiling": 0}, "rate_limit_ceiling"),
    ({"surge_min_count": 0}, "surge_min_count"),
    ({"surge_min_share": 1.5}, "surge_min_share"),
    ({"surge_top_hosts": 0}, "surge_top_hosts"),
    ({"shuffle_partitions": 0}, "shuffle_partitions"),
    ({"max_offsets_per_trigger": 0}, "max_offsets_per_trigger"),
    ({"kafka_port": 70000}, "kafka_port"),
    ({"connect_timeout_s": 0}, "connect_timeout_s"),
    # a review's: inf crashed in the clients' millisecond settings (OverflowError, a traceback), and a delivery
    # timeout past Kafka's 32-bit milliseconds wrapped to a negative one that librdkafka refused
    ({"connect_timeout_s": float("inf")}, "connect_timeout_s"),
    ({"producer_delivery_timeout_s": float("nan")}, "producer_delivery_timeout_s"),
    ({"producer_delivery_timeout_s": 3_000_000}, "producer_delivery_timeout_s"),
    ({"linger_ms": 1_000_000}, "linger_ms"),
])
def test_values_out_of_range_are_refused_when_the_settings_load(values, shown):
    """A ceiling of 0 or a share above 1 would make every window an alert, or none: refused with the name."""
    with pytest.raises(pydantic.ValidationError, match=shown):
        Settings(**values)


@pytest.mark.parametrize("root", ["logpipe", "", "/", "//", "results/x"])
def test_the_hdfs_root_must_be_an_absolute_folder_below_the_top(root, monkeypatch, capsys):
    """A relative root would be resolved under /user/<user> by the WebHDFS readers but not by Spark; '/' would put
    the tables at the top of the file system."""
    from logpipe.cli import main

    with pytest.raises(pydantic.ValidationError, match="must be an absolute HDFS path below /"):
        Settings(hdfs_root=root)
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", root)
    if not root:  # an empty variable is an unset one: the default root
        assert load_settings().hdfs_root == "/logpipe"
        return
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert err == (f"logpipe: invalid setting hdfs_root = {root!r} (LOGPIPE_HDFS_ROOT): must be an absolute HDFS "
                   "path below / (e.g. /logpipe)\n")  # one line, without pydantic's "Value error, " prefix
    assert Settings(hdfs_root="/a/b/").hdfs_path("events") == "/a/b/events"


@pytest.mark.parametrize("root", ["//results", "/a//b", "/a/./b", "/a/..", "/a:b"])
def test_the_hdfs_root_must_be_a_path_hdfs_takes(root):
    """Paths HDFS refuses as names (empty, '.' or '..' parts, ':'): Spark's Hadoop Path read `//results` as
    /results, while verify and the notebook, over WebHDFS, failed on it with a traceback."""
    with pytest.raises(pydantic.ValidationError, match="without empty, '.' or '..' parts"):
        Settings(hdfs_root=root)
    assert Settings(hdfs_root="/a/b.c/d-e_f/").hdfs_root == "/a/b.c/d-e_f/"


@pytest.mark.parametrize("root", ["/results/run[1]", "/run{a}", "/r*", "/r?", "/a\\b"])
def test_the_hdfs_root_has_no_glob_characters(root):
    """Spark writes /results/run[1] as it is but reads it back as a pattern that does not match it: the job's
    first batch failed with PATH_NOT_FOUND on its own staged files. Refused up front, naming the characters."""
    with pytest.raises(pydantic.ValidationError, match="without Hadoop's glob characters"):
        Settings(hdfs_root=root)


@pytest.mark.parametrize("topic", ["", "bad topic!", "a/b", ".", "..", "x" * 250, "läuft"])
def test_topic_names_follow_kafkas_rule(topic):
    with pytest.raises(pydantic.ValidationError, match="a Kafka topic name"):
        Settings(topic=topic)
    with pytest.raises(pydantic.ValidationError, match="a Kafka topic name"):
        Settings(alerts_topic=topic)
    assert Settings(topic="Access_logs.v2-" + "x" * 234).topic.startswith("Access_logs")


@pytest.mark.parametrize("topic", ["__consumer_offsets", "__transaction_state", "__mine"])
def test_kafkas_internal_topics_are_refused(topic):
    """`produce --topic __consumer_offsets` created Kafka's offsets topic with one partition and failed in the
    client's partitioner with a traceback."""
    for field in ("topic", "alerts_topic"):
        with pytest.raises(pydantic.ValidationError, match="names starting with '__' are Kafka's internal topics"):
            Settings(**{field: topic})
    assert Settings(topic="_one_underscore").topic == "_one_underscore"


@pytest.mark.parametrize(("window", "slide"), [("0 seconds", "10 seconds"), ("20 seconds", "0 seconds"),
                                               ("20 seconds", "30 seconds")])
def test_slide_must_be_within_the_window(window, slide, monkeypatch, capsys):
    """Window assignment needs 0 < slide <= window; the CLI says so in one line naming both settings."""
    from logpipe.cli import main

    with pytest.raises(pydantic.ValidationError, match="need 0 < slide <= window"):
        Settings(window=window, slide=slide)
    monkeypatch.setenv("LOGPIPE_WINDOW", window)
    monkeypatch.setenv("LOGPIPE_SLIDE", slide)
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("logpipe: invalid settings: window (") and len(err.strip().splitlines()) == 1
    assert Settings(window="20 seconds", slide="20 seconds").slide == "20 seconds"  # tumbling windows are fine


def test_a_slide_that_puts_each_event_in_too_many_windows_is_refused(monkeypatch, capsys):
    """A day sliding every second would count each event in 86,400 windows: refused at start, with the number; a
    slide that does not divide the window rounds up; an hour sliding every 10 s (360) is still taken."""
    from logpipe.cli import main
    from logpipe.config import MAX_WINDOWS_PER_EVENT

    with pytest.raises(pydantic.ValidationError, match="every event in 86,400 windows, more than 1,000"):
        Settings(window="1 day", slide="1 second")
    assert Settings(window="1 hour", slide="10 seconds").slide == "10 seconds"
    assert Settings(window=f"{MAX_WINDOWS_PER_EVENT} seconds", slide="1 second").window == "1000 seconds"
    with pytest.raises(pydantic.ValidationError, match="1,001 windows"):
        Settings(window="1001 seconds", slide="1 second")
    with pytest.raises(pydantic.ValidationError, match="1,001 windows"):  # 2001 / 2, rounded up
        Settings(window="2001 seconds", slide="2 seconds")
    monkeypatch.setenv("LOGPIPE_WINDOW", "1 day")
    monkeypatch.setenv("LOGPIPE_SLIDE", "1 second")
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert "Use a longer slide" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("name", "default"), [("RUN_DIR", None), ("KAFKA_PORT", 9092), ("TOPIC", "access-logs"),
                                               ("RATE_LIMIT_CEILING", 200)])
def test_an_empty_variable_is_the_same_as_an_unset_one(name, default, monkeypatch):
    """`LOGPIPE_X=` (compose passes `${X:-}` through as an empty string) means the default: before, an empty run
    folder was the current one and an empty port 'not a valid integer'."""
    monkeypatch.delenv(f"LOGPIPE_{name}", raising=False)
    unset = getattr(load_settings(), name.lower())
    monkeypatch.setenv(f"LOGPIPE_{name}", "")
    assert getattr(load_settings(), name.lower()) == unset
    if default is not None:
        assert unset == default
    else:
        assert unset.name == ".logpipe"


def test_a_trigger_interval_may_be_milliseconds_and_generate_takes_a_slide():
    """Spark's processingTime takes milliseconds; the window settings do not (whole seconds). `generate` offers
    --slide beside --window, so a window under the default 10 s slide can be given with its slide."""
    from logpipe.windows import interval_seconds

    assert Settings(trigger_interval="500 milliseconds").trigger_interval == "500 milliseconds"
    assert interval_seconds("500 milliseconds") == 0.5 and interval_seconds("2 minutes") == 120
    with pytest.raises(pydantic.ValidationError, match="unsupported duration"):
        Settings(window="500 milliseconds")
    args = build_parser().parse_args(["generate", "--lines", "10", "--window", "5 seconds", "--slide", "5 seconds"])
    assert (settings_from_args(args).window, settings_from_args(args).slide) == ("5 seconds", "5 seconds")


def test_unknown_setting_is_rejected():
    with pytest.raises(pydantic.ValidationError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_cli_flags_override_settings(monkeypatch):
    monkeypatch.setenv("LOGPIPE_KAFKA_PORT", "1111")
    args = build_parser().parse_args(["stack", "status", "--kafka-port", "2222"])
    assert settings_from_args(args).kafka_port == 2222
    args = build_parser().parse_args(["stack", "status"])
    assert settings_from_args(args).kafka_port == 1111


def test_every_command_prints_its_help(capsys):
    """`--help` of every subcommand works (setting descriptions become help text: a bare % once broke it)."""
    import pkgutil

    import logpipe.commands

    parser = build_parser()
    commands = [m.name for m in pkgutil.iter_modules(logpipe.commands.__path__)]  # as build_parser finds them
    assert {"demo", "stream", "bench", "verify"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0, name
        out = capsys.readouterr().out
        assert "usage: logpipe " + name in out
        # the help opens with the command's summary (the line `logpipe --help` lists it with)
        assert out.split("\n\n")[1].strip(), (name, out)


def test_setting_flags_say_their_default_and_refuse_values_outside_a_fixed_set(capsys):
    """A setting flag's help gives what applies when neither it nor its LOGPIPE_* variable is set, and a setting
    with a fixed set of values lists them; argparse refuses another value before any work starts."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["stream", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert "(default: 20 seconds) [env LOGPIPE_WINDOW]" in out and "(default: access-logs) [env LOGPIPE_TOPIC]" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["produce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--compression {lz4,gzip,zstd,snappy,none}" in out and "(default: lz4)" in out
    assert "--client {kafka-python,confluent}" in out and "(default: kafka-python)" in out
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["produce", "x.log", "--compression", "brotli"])
    assert exit_.value.code == 2 and "invalid choice: 'brotli'" in capsys.readouterr().err


def test_a_setting_flags_help_shows_the_value_its_variable_holds_now(capsys, monkeypatch):
    """With LOGPIPE_WINDOW set, `--help` said only "(default: 20 seconds)", which was not what the command would
    use: the variable's value is shown beside it; an empty variable counts as unset, as in the settings."""
    monkeypatch.setenv("LOGPIPE_WINDOW", "30 seconds")
    monkeypatch.setenv("LOGPIPE_SLIDE", "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stream", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 20 seconds) [env LOGPIPE_WINDOW, set now: 30 seconds]" in out
    assert "[env LOGPIPE_SLIDE]" in out and "LOGPIPE_SLIDE, set now" not in out


@pytest.mark.parametrize("name", ["window", "slide", "watermark", "trigger_interval"])
def test_durations_must_be_spark_intervals_of_whole_units(name):
    """'30s' or '1.5 minutes' would reach the job's window and horizon arithmetic and fail there: refused up front
    with the setting's name."""
    from pydantic import ValidationError

    from logpipe.config import load_settings

    good = {"window": "2 minutes"} if name == "slide" else {}  # slide may not exceed the window
    assert getattr(load_settings(**good, **{name: "2 minutes"}), name) == "2 minutes"
    # "20seconds" and Arabic-Indic digits were taken here, and Spark refused them at the first micro-batch
    for bad in ("30s", "1.5 minutes", "soon", "20seconds", "500millisecond", "\u0662\u0660 seconds"):
        with pytest.raises(ValidationError, match=f"(?s){name}.*unsupported (duration|interval)"):
            load_settings(**{name: bad})


def test_a_stack_that_cannot_start_is_one_line_and_exit_1(monkeypatch, capsys):
    """`make demo` and `logpipe bench` start the stack: Java or Maven missing, a port taken, a service that dies
    or times out gives one line with what to do, as `logpipe stack up` does, not a traceback."""
    from logpipe import cli
    from logpipe.health import ServiceDied
    from logpipe.stack import services
    from logpipe.stack.jars import StackError

    for exc in (StackError("Java not found: install a JDK 17+"), ServiceDied("Kafka died while starting: port")):
        def fail(*_a, exc=exc, **_k):
            raise exc

        monkeypatch.setattr(services, "up", fail)
        assert cli.main(["demo"]) == 1
        err = capsys.readouterr().err
        assert f"logpipe demo: {exc}" in err and "Traceback" not in err


@pytest.mark.parametrize("args, shown", [(["--size", "abc"], "--size: not a size: 'abc'"),
                                         (["--lines", "5", "--start", "nope"], "--start: not an ISO date"),
                                         (["--lines", "5", "--rate", "-1"], "rate must be > 0"),
                                         (["--size", "1..2MB"], "--size: not a size: '1..2MB'"),
                                         (["--lines", "5", "--out-of-order-share", "-1"], "out-of-order share must"),
                                         (["--lines", "5", "--start", "2150-01-01"], "outside the times the parser")])
def test_generate_arguments_out_of_range_are_one_line_and_exit_2(tmp_path, capsys, args, shown):
    from logpipe import cli

    assert cli.main(["generate", *args, "--out", str(tmp_path / "x.log")]) == 2
    assert shown in capsys.readouterr().err
    assert not (tmp_path / "x.log").exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_generate_into_a_folder_says_to_give_a_file_name_with_or_without_force(tmp_path, capsys, force):
    """It said "exists: give --force", and with --force failed on its scratch file instead."""
    from logpipe import cli

    assert cli.main(["generate", "--lines", "5", "--out", str(tmp_path), *force]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} is a folder: give the log's file name" in err and "--force" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_generate_never_overwrites_without_force_and_names_what_it_cannot_write(tmp_path, capsys):
    """An existing --out may be a real log, or the one a topic was produced from: replaced only with --force. A
    path that cannot be written is one line, exit 2, and no `.partial` file is left."""
    from logpipe import cli

    log = tmp_path / "access.log"
    log.write_text("a real log\n")
    assert cli.main(["generate", "--lines", "5", "--out", str(log)]) == 2
    assert "exists: give --force to replace it" in capsys.readouterr().err and log.read_text() == "a real log\n"
    assert cli.main(["generate", "--lines", "5", "--out", str(log), "--force", "--no-progress"]) == 0
    assert sum(1 for _ in log.open()) == 5
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "x.log"  # (a folder as --out: the test above)
    assert cli.main(["generate", "--lines", "5", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the warning that 5 lines hold no incidents
    assert err == f"logpipe generate: cannot write {out}: File exists ({out.parent})", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log", "access.log.truth.json", "dir", "file"]


def test_the_native_stack_binds_to_loopback_only(capsys):
    """The services have no authentication: LOGPIPE_BIND_HOST / --bind-host must be a loopback address (before,
    0.0.0.0 or a LAN address put WebHDFS and Kafka on every interface)."""
    from pydantic import ValidationError

    for ok in ("127.0.0.1", "127.0.0.2", "localhost"):
        assert load_settings(bind_host=ok).bind_host == ok
    for bad in ("0.0.0.0", "192.168.1.10", "::", "::1", "example.org"):  # the JVMs run IPv4-only
        with pytest.raises(ValidationError, match="not a loopback address"):
            load_settings(bind_host=bad)
    assert main(["stack", "status", "--bind-host", "0.0.0.0"]) == 2
    assert "invalid setting bind_host = '0.0.0.0'" in capsys.readouterr().err


def test_the_spark_ui_binds_to_loopback_natively_and_anywhere_in_a_container(monkeypatch):
    """LOGPIPE_SPARK_UI_HOST=0.0.0.0 is the compose container's (its port published on 127.0.0.1 only); natively
    it put the Spark UI on every interface, where LOGPIPE_BIND_HOST refuses the same address."""
    from pydantic import ValidationError

    from logpipe import config

    monkeypatch.setattr(config, "in_streaming_image", lambda: False)
    assert load_settings(spark_ui_host="127.0.0.1").spark_ui_host == "127.0.0.1"
    monkeypatch.setenv("LOGPIPE_SPARK_UI_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match="not a loopback address.*compose streaming container"):
        load_settings()
    monkeypatch.setattr(config, "in_streaming_image", lambda: True)
    assert load_settings().spark_ui_host == "0.0.0.0"


@pytest.mark.parametrize(("name", "value"), [("kafka_bootstrap", "127.0.0.1:abc"), ("kafka_bootstrap", " "),
                                             ("kafka_bootstrap", "127.0.0.1"), ("kafka_bootstrap", "k:9092,k2:0"),
                                             ("hdfs_url", "namenode:8020"), ("hdfs_url", "hdfs://"),
                                             ("webhdfs_url", "127.0.0.1:9870"), ("webhdfs_url", "hdfs://nn:9870"),
                                             ("webhdfs_url", "http://nn:port"),
                                             # more than scheme, host and port: Spark wrote below the path, the
                                             # WebHDFS readers read the root at the top (a review's finding)
                                             ("hdfs_url", "hdfs://127.0.0.1:8020/data"), ("hdfs_url", "hdfs://nn:8020?x"),
                                             ("webhdfs_url", "http://nn:9870/gateway"),
                                             ("webhdfs_url", "http://user@nn:9870"),
                                             # no port: the readers took 9870, the demo's hdfs client http's 80
                                             ("webhdfs_url", "http://nn"), ("webhdfs_url", "https://nn/")])
def test_a_malformed_service_address_is_refused_at_once(monkeypatch, capsys, name, value):
    """A client address that cannot be one is an invalid setting (exit 2, naming it), not a wait for a service
    that times out after a minute."""
    monkeypatch.setenv(f"LOGPIPE_{name.upper()}", value)
    assert main(["stack", "status"]) == 2
    assert f"invalid setting {name}" in capsys.readouterr().err


def test_well_formed_service_addresses_are_taken():
    s = load_settings(kafka_bootstrap="kafka:9092,[::1]:9093, 10.0.0.1:19092", hdfs_url="hdfs://namenode:8020",
                      webhdfs_url="https://namenode:9871")
    assert s.kafka_address == "kafka:9092,[::1]:9093, 10.0.0.1:19092" and s.hdfs_uri("x") == "hdfs://namenode:8020/logpipe/x"
    assert load_settings(hdfs_url="file://").hdfs_url == "file://"  # a local root (the unit tests' results roots)
    assert load_settings(hdfs_url="hdfs://nn:8020/", webhdfs_url="http://nn:9870/").hdfs_uri("x") == \
        "hdfs://nn:8020/logpipe/x"


def test_the_webhdfs_readers_reach_the_address_the_setting_names_ipv6_too():
    """verify, the notebook and the demo's summary read over fsspec's WebHDFS, which writes host:port into its URLs
    as given: an IPv6 address lost its brackets (`http://::1:9870`, refused by requests)."""
    from logpipe.results import webhdfs_fs

    assert webhdfs_fs(load_settings(webhdfs_url="http://[::1]:9870")).url == "http://[::1]:9870/webhdfs/v1"
    assert webhdfs_fs(load_settings(webhdfs_url="https://nn.example:9871")).url == "https://nn.example:9871/webhdfs/v1"
    assert webhdfs_fs(load_settings(webhdfs_url=None)).url.endswith(":9870/webhdfs/v1")


def test_java_defaults_for_spark_are_asked_for_by_name(monkeypatch):
    """An empty LOGPIPE_* variable counts as unset (compose passes `${VAR:-}` as ""), so an empty
    LOGPIPE_SPARK_DRIVER_JAVA_OPTIONS kept logpipe's options; `none` gives Java's defaults."""
    monkeypatch.setenv("LOGPIPE_SPARK_DRIVER_JAVA_OPTIONS", "none")
    assert load_settings().spark_driver_java_options == ""
    monkeypatch.setenv("LOGPIPE_SPARK_DRIVER_JAVA_OPTIONS", "")
    assert load_settings().spark_driver_java_options == Settings().spark_driver_java_options != ""


def test_relative_folders_are_made_absolute(tmp_path, monkeypatch):
    """The services start in run_dir and the demo's steps in the project's folder: a relative JDK or producer
    state folder named from elsewhere pointed at nothing (a traceback from the first service start)."""
    monkeypatch.chdir(tmp_path)
    s = load_settings(java_home="jdk", spark_java_home="~/jdk25", producer_state_dir="state")
    assert s.java_home == str(tmp_path / "jdk") and s.producer_state_dir == tmp_path / "state"
    assert s.spark_java_home is not None and "~" not in s.spark_java_home and s.spark_java_home.startswith("/")


def test_verbose_is_taken_before_or_after_the_command():
    """`logpipe health kafka -v` was refused (`unrecognized arguments: -v`): users put it after the command. Every
    command and subcommand takes it; one given before the command's name is not reset by the command's parser."""
    from logpipe.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["health", "kafka", "-v"]).verbose == 1
    assert parser.parse_args(["stack", "down", "--verbose"]).verbose == 1
    assert parser.parse_args(["-v", "produce", "a.log"]).verbose == 1
    assert parser.parse_args(["produce", "a.log"]).verbose == 0
    required = {"generate": ["--lines", "10"], "produce": ["a.log"], "verify": ["--log", "a.log"]}
    for name in ("generate", "produce", "stream", "verify", "demo", "bench"):
        assert parser.parse_args([name, "-v", *required.get(name, [])]).verbose == 1, name


def test_every_flag_of_every_command_says_what_it_does() -> None:
    """`logpipe COMMAND --help` explains each flag (a bare `--malformed-share MALFORMED_SHARE` left users guessing)."""
    import argparse

    from logpipe.cli import build_parser

    bare = [(name, act.option_strings) for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
            for name, sub in a.choices.items() for act in sub._actions if act.option_strings and not act.help]
    assert bare == []
