"""Static checks of docker-compose.yml, .env and the Dockerfiles (no Docker engine needed)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from logpipe.config import COMPOSE_ONLY, NOT_SETTINGS, PROJECT_ROOT, Settings

pytestmark = pytest.mark.unit

ROOT = PROJECT_ROOT
COMPOSE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
DOCKERFILES = [ROOT / "hdfs_service" / "Dockerfile", ROOT / "python_service" / "Dockerfile",
               ROOT / "pyspark_service" / "Dockerfile"]
SERVICES = {"kafka", "namenode", "datanode", "hdfs-ready", "producer", "streaming", "notebook"}
LOGPIPE_SERVICES = ("hdfs-ready", "producer", "streaming", "notebook")
# Settings that compose sets per container (addresses inside the compose network), not from .env
CONTAINER_OVERRIDES = {"kafka_bootstrap", "hdfs_url", "webhdfs_url", "hdfs_user", "run_dir"}
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _tool(name: str) -> str:
    """A linter/compose binary installed by the dev extras into this venv (or on PATH)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is missing: install the dev extras (`pip install -e '.[dev]'`)")
    return found


def _default(field: str):
    return Settings.model_fields[field].default


def _pom_property(pom: str, name: str) -> str:
    tree = ET.parse(ROOT / "src" / "logpipe" / "stack" / "poms" / pom)
    node = tree.getroot().find(f"m:properties/m:{name}", POM_NS)
    assert node is not None and node.text, f"{pom} has no <{name}>"
    return node.text.strip()


def _compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(_compose_text())


# what compose interpolates from the shell: none of the caller's own values, so the checks see .env's
_COMPOSE_VARS = re.compile(r"(LOGPIPE_|LOG_|DEMO_SIZE$|COMPOSE_)")


def _compose_config(shell: dict[str, str] | None = None, *args: str) -> subprocess.CompletedProcess:
    """`docker-compose config` as `docker compose` would resolve the file, run from a shell that sets `shell`."""
    env = {k: v for k, v in os.environ.items() if not _COMPOSE_VARS.match(k)} | (shell or {})
    return subprocess.run([_tool("docker-compose"), "-f", str(COMPOSE), "--project-directory", str(ROOT), *args,
                           "config", "--format", "json"], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose model after interpolation and env_file merging, from `docker-compose config` itself."""
    proc = _compose_config()
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---- the file is a valid Compose file -----------------------------------------------------------------
def _compose_schema_errors(doc: dict) -> list[str]:
    import jsonschema

    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def test_compose_file_validates_against_the_compose_specification_schema(raw_compose: dict) -> None:
    assert _compose_schema_errors(raw_compose) == []
    # the validator does reject what Compose rejects: a misspelt key and a port of the wrong type
    broken = json.loads(json.dumps(raw_compose))
    broken["services"]["kafka"]["healthchek"] = broken["services"]["kafka"].pop("healthcheck")
    broken["services"]["namenode"]["ports"] = {"9870": 9870}
    errors = _compose_schema_errors(broken)
    assert any("healthchek" in e for e in errors) and any(e.startswith("services/namenode/ports") for e in errors)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    compose = _tool("docker-compose")
    ok = subprocess.run([compose, "-f", str(COMPOSE), "--project-directory", str(ROOT), "config", "--quiet"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    # and it does catch a dangling dependency (the check is real, not a no-op)
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(_compose_text().replace("      namenode:\n        condition: service_healthy",
                                           "      name-node:\n        condition: service_healthy", 1))
    proc = subprocess.run([compose, "-f", str(bad), "--project-directory", str(ROOT), "config", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "name-node" in proc.stderr


# ---- Dockerfiles and entry scripts ---------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    proc = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hdfs_entry_script_passes_shellcheck() -> None:
    script = ROOT / "hdfs_service" / "start-hadoop.sh"
    proc = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_producer_start_script_passes_shellcheck(resolved: dict, tmp_path: Path) -> None:
    script = tmp_path / "producer.sh"
    script.write_text("#!/bin/sh\n" + " ".join(resolved["services"]["producer"]["command"]).replace("$$", "$") + "\n")
    proc = subprocess.run([_tool("shellcheck"), "--shell=sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_files_the_images_copy_exist() -> None:
    """Every COPY source and container entry point is in the build context (the repository root)."""
    missing = []
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line.strip())
            if m:
                missing += [f"{dockerfile.parent.name}: {src}" for src in m.group(1).split()
                            if not (ROOT / src).exists()]
    for entry in ("python_service/app.py", "pyspark_service/app.py", "hdfs_service/start-hadoop.sh",
                  "notebooks/Section_A_Log_Analytics_Demo.ipynb"):
        if not (ROOT / entry).is_file():
            missing.append(entry)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"src", "pyproject.toml", "README.md", "notebooks"} & set(ignored)
    assert missing == []


# ---- agreement with logpipe's Settings ------------------------------------------------------------------
def _env_file() -> dict[str, str]:
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def test_env_file_names_and_defaults_match_settings() -> None:
    env = _env_file()
    logpipe = {k: v for k, v in env.items() if k.startswith("LOGPIPE_") and k not in NOT_SETTINGS}
    assert set(env) >= COMPOSE_ONLY  # compose's own names, with their values for the demo
    fields = {k.removeprefix("LOGPIPE_").lower(): v for k, v in logpipe.items()}
    unknown = set(fields) - set(Settings.model_fields)
    assert unknown == set(), f".env names no Settings field: {unknown}"
    # the pipeline's knobs are all there (every field that has a plain default and is no container address)
    expected = {name for name, f in Settings.model_fields.items()
                if name not in CONTAINER_OVERRIDES and f.default is not None and not name.endswith(("_port", "_heap"))
                and name not in {"bind_host", "java_home", "stack_timeout_s", "spark_kafka_jars"}}
    assert expected - set(fields) == set(), f".env lacks {sorted(expected - set(fields))}"
    parsed = Settings(**fields)  # the same coercion the containers apply to these strings
    differing = {k: (getattr(parsed, k), _default(k)) for k in fields if getattr(parsed, k) != _default(k)}
    assert differing == {}, f".env values differ from config.py defaults: {differing}"


def test_every_env_setting_reaches_every_logpipe_container(resolved: dict) -> None:
    """With nothing in the shell, each logpipe container gets every LOGPIPE_* value of .env unchanged."""
    env = {k: v for k, v in _env_file().items() if k.startswith("LOGPIPE_")}
    for name in LOGPIPE_SERVICES:
        got = resolved["services"][name]["environment"]
        assert {k: got.get(k) for k in env} == env, name


def test_a_shell_value_overrides_env_file_in_every_container() -> None:
    """Compose interpolates ${...} from the shell before .env, but `env_file: .env` passes the file only: each
    LOGPIPE_* name of .env must reach the containers by interpolation, so that a value set in the shell wins for
    the logpipe containers as it does for Kafka (before, LOGPIPE_TOPIC_PARTITIONS=3 gave Kafka 3 partitions and
    the producer and the job 1). The container addresses stay fixed whatever the shell holds."""
    names = sorted(k for k in _env_file() if k.startswith("LOGPIPE_") and k not in COMPOSE_ONLY)  # see below
    shell = {k: str(41000 + i) for i, k in enumerate(names)}  # distinct, and a valid port for the Spark UI's
    native = {"LOGPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "LOGPIPE_HDFS_URL": "hdfs://127.0.0.1:8020",
              "LOGPIPE_WEBHDFS_URL": "http://127.0.0.1:9870", "LOGPIPE_HDFS_USER": "someone",
              "LOGPIPE_RUN_DIR": "/home/someone/.logpipe"}
    proc = _compose_config(shell | native)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    for name in LOGPIPE_SERVICES:
        env = services[name]["environment"]
        stale = {k: env.get(k) for k in names if env.get(k) != shell[k]}
        assert stale == {}, f"{name}: .env's value, not the shell's: {stale}"
        assert {k: env[k] for k in native} == {"LOGPIPE_KAFKA_BOOTSTRAP": "kafka:19092",
                                               "LOGPIPE_HDFS_URL": "hdfs://namenode:8020",
                                               "LOGPIPE_WEBHDFS_URL": "http://namenode:9870",
                                               "LOGPIPE_HDFS_USER": "hadoop", "LOGPIPE_RUN_DIR": "/var/lib/logpipe"}
    assert services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] == shell["LOGPIPE_TOPIC_PARTITIONS"]
    ui_port = shell["LOGPIPE_SPARK_UI_PORT"]  # the job's UI: the port it binds, publishes and health-checks
    assert [(p["published"], str(p["target"])) for p in services["streaming"]["ports"]] == [(ui_port, ui_port)]
    # the healthcheck (logpipe health spark) reads the port from the container's settings, as the job does
    assert services["streaming"]["healthcheck"]["test"][:4] == ["CMD", "logpipe", "health", "spark"]
    assert services["streaming"]["environment"]["LOGPIPE_SPARK_UI_PORT"] == ui_port


def test_the_log_is_chosen_by_compose_only_names_not_by_a_shells_log_dir_or_log_file() -> None:
    """Which log the producer follows was set by LOG_DIR, LOG_FILE and DEMO_SIZE: names a shell may hold for
    another program, and a shell's value beats .env's (a LOG_DIR exported for another tool became the producer's
    /data). Now only the LOGPIPE_COMPOSE_* names choose it, and a shell's value of those does."""
    def log_choice(services: dict) -> list:
        return [(name, sorted((v["source"], v["target"]) for v in services[name]["volumes"] if v["target"] == "/data"),
                 {k: services[name]["environment"].get(k) for k in sorted(COMPOSE_ONLY)})
                for name in ("producer", "notebook")]

    base = _compose_config()
    assert base.returncode == 0, base.stderr
    default = log_choice(json.loads(base.stdout)["services"])
    assert default[0][1] == [("logdata", "/data")], default
    assert default[0][2] == {"LOGPIPE_COMPOSE_DEMO_SIZE": "40MB", "LOGPIPE_COMPOSE_LOG_DIR": "logdata",
                             "LOGPIPE_COMPOSE_LOG_FILE": "/data/access.log"}, default
    other = _compose_config({"LOG_DIR": "/var/log/someapp", "LOG_FILE": "/var/log/someapp/app.log",
                             "DEMO_SIZE": "5GB"})
    assert other.returncode == 0, other.stderr
    assert log_choice(json.loads(other.stdout)["services"]) == default
    own = _compose_config({"LOGPIPE_COMPOSE_LOG_DIR": "/srv/logs", "LOGPIPE_COMPOSE_LOG_FILE": "/data/big.log",
                           "LOGPIPE_COMPOSE_DEMO_SIZE": "1GB"})
    assert own.returncode == 0, own.stderr
    chosen = log_choice(json.loads(own.stdout)["services"])
    for name, mounts, env in chosen:
        assert mounts == [("/srv/logs", "/data")], name
        assert env["LOGPIPE_COMPOSE_LOG_FILE"] == "/data/big.log" and env["LOGPIPE_COMPOSE_DEMO_SIZE"] == "1GB", name


def test_the_compose_broker_runs_with_the_native_brokers_settings(tmp_path: Path) -> None:
    """Every line of the server.properties `stack up` writes, but the addresses and the data folder (which differ
    by design: two listeners in a container network), is set the same way in compose's kafka service (the image
    turns KAFKA_X_Y into x.y), and the JVM gets the native options the image does not already give it."""
    from logpipe.stack.configs import write_configs
    from logpipe.stack.layout import Layout

    lay = Layout(tmp_path)
    write_configs(Settings(), lay)
    native = dict(line.split("=", 1) for line in (lay.conf / "kafka" / "server.properties").read_text().splitlines()
                  if line and not line.startswith("#"))
    addresses = {"controller.quorum.voters", "listeners", "advertised.listeners", "inter.broker.listener.name",
                 "listener.security.protocol.map", "log.dirs"}
    env = yaml.safe_load(_compose_text())["services"]["kafka"]["environment"]
    compose = {k.removeprefix("KAFKA_").lower().replace("_", "."): str(v) for k, v in env.items()
               if k.startswith("KAFKA_") and not k.endswith("_OPTS")}
    compose["num.partitions"] = str(_default("topic_partitions"))  # ${LOGPIPE_TOPIC_PARTITIONS:-1} in the file
    differ = {k: (v, compose.get(k)) for k, v in native.items() if k not in addresses and compose.get(k) != v}
    assert differ == {}, differ
    assert set(native) - addresses, native  # the comparison compared something
    assert "-Djava.net.preferIPv4Stack=true" in env["KAFKA_OPTS"].split()
    # no GC log (kafka-server-start.sh adds -loggc unless EXTRA_ARGS is set), as the native broker writes none
    assert "-loggc" not in env["EXTRA_ARGS"].split() and "kafkaServer" in env["EXTRA_ARGS"].split()


def test_the_compose_hdfs_runs_with_the_native_hdfs_settings(tmp_path: Path) -> None:
    """The core-site and hdfs-site properties hdfs_service/start-hadoop.sh writes in the containers and those
    `stack up` writes: the same names and values, but for addresses, folders and host names (which differ by
    design) and the few each side needs for its own network, named here with the reason."""
    from logpipe.spark import spark_conf
    from logpipe.stack.configs import write_configs
    from logpipe.stack.layout import Layout

    lay = Layout(tmp_path)
    s = Settings()
    write_configs(s, lay)
    native = {prop.findtext("name"): prop.findtext("value") for f in ("core-site.xml", "hdfs-site.xml")
              for prop in ET.parse(lay.conf / "hadoop" / f).getroot().iter("property")}
    script = (PROJECT_ROOT / "hdfs_service" / "start-hadoop.sh").read_text()
    compose = {name: value.strip('"') for name, value in re.findall(r"^\s*property (\S+) (.+)$", script, re.M)}
    by_design = {"fs.defaultFS", "hadoop.tmp.dir", "dfs.namenode.name.dir", "dfs.datanode.data.dir",
                 "dfs.datanode.hostname"}
    placed = {k for k in native.keys() | compose.keys() if k in by_design or "address" in k or "bind-host" in k}
    compose_only = {
        # clients reach the DataNode by its compose host name, not a container IP; no reverse DNS to check
        "dfs.client.use.datanode.hostname", "dfs.datanode.use.datanode.hostname",
        "dfs.namenode.datanode.registration.ip-hostname-check",
        # for `hdfs dfs` in the containers; the job sets it on its own client (below) in both stacks
        "dfs.client.block.write.replace-datanode-on-failure.policy",
    }
    assert set(compose) - set(native) - placed == compose_only
    assert set(native) - set(compose) - placed == set(), "a native HDFS setting compose does not make"
    differ = {k: (v, compose[k]) for k, v in native.items() if k in compose and k not in placed and compose[k] != v}
    assert differ == {}, differ
    assert {"dfs.replication", "dfs.webhdfs.enabled", "dfs.namenode.safemode.extension"} <= set(native) - placed
    policy = "dfs.client.block.write.replace-datanode-on-failure.policy"
    assert spark_conf(s)[f"spark.hadoop.{policy}"] == compose[policy]


def test_a_setting_missing_from_the_env_file_stops_compose(tmp_path: Path) -> None:
    """Without a value (in .env or the shell), compose names the setting instead of passing an empty string."""
    env_file = tmp_path / "env"
    env_file.write_text("".join(line + "\n" for line in ENV_FILE.read_text().splitlines()
                                if not line.startswith("LOGPIPE_SURGE_TOP_HOSTS=")))
    proc = _compose_config(None, "--env-file", str(env_file))
    assert proc.returncode != 0 and "LOGPIPE_SURGE_TOP_HOSTS" in proc.stderr, proc.stderr


def test_services_healthchecks_and_dependencies(resolved: dict) -> None:
    services = resolved["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        if name == "hdfs-ready":  # a one-shot check: it ends, with 0 once HDFS is ready
            # ... and has no healthcheck: not the producer image's, a producer's heartbeat
            assert svc.get("healthcheck") == {"disable": True}, "hdfs-ready inherits the image's healthcheck"
            assert set(svc["depends_on"]) == {"datanode"}
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for dep, spec in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dep == "hdfs-ready" else "service_healthy"
            assert spec["condition"] == want, f"{name} -> {dep}"
    # HDFS as the native stack waits for it: logpipe's own probe (every block reported), before the job and notebook
    hdfs_ready = services["hdfs-ready"]["entrypoint"]
    # ... and the DataNode itself, by its service name, as the native stack asks it after starting one
    assert hdfs_ready[:3] == ["logpipe", "health", "hdfs"]
    assert hdfs_ready[hdfs_ready.index("--datanode") + 1] == "datanode"
    # Docker's init as PID 1 in every logpipe container: SIGTERM reaches logpipe before its handlers are set
    assert {name: services[name].get("init") for name in LOGPIPE_SERVICES} == dict.fromkeys(LOGPIPE_SERVICES, True)
    assert services["hdfs-ready"]["depends_on"]["datanode"]["condition"] == "service_healthy"
    for name in ("streaming", "notebook"):
        assert services[name]["depends_on"]["hdfs-ready"]["condition"] == "service_completed_successfully", name
    # the JVMs get the heaps of the native stack's settings, the HDFS ones its collector too (Kafka's start script
    # picks G1 itself)
    heap = {"kafka": ("KAFKA_HEAP_OPTS", "kafka_heap", ""),
            "namenode": ("HDFS_NAMENODE_OPTS", "namenode_heap", " -XX:+UseG1GC"),
            "datanode": ("HDFS_DATANODE_OPTS", "datanode_heap", " -XX:+UseG1GC")}
    for name, (var, field, gc) in heap.items():
        assert services[name]["environment"][var] == f"-Xmx{_default(field)}{gc}", name
    assert set(services["streaming"]["depends_on"]) == {"kafka", "namenode", "datanode", "hdfs-ready"}
    assert set(services["producer"]["depends_on"]) == {"kafka"}
    # verify runs in the notebook image (docs/compose.md) and reads the alerts topic
    assert set(services["notebook"]["depends_on"]) == {"kafka", "namenode", "datanode", "hdfs-ready"}
    assert services["datanode"]["depends_on"] == {"namenode": {"condition": "service_healthy", "required": True}}
    # logpipe's own readiness probes where the image has the package; Kafka's own script in the kafka image
    assert services["producer"]["healthcheck"]["test"][1:4] == ["logpipe", "health", "producer"]
    assert "/opt/kafka/bin/" in " ".join(services["kafka"]["healthcheck"]["test"])
    # the checks that start a JVM run often only while their service starts (docs/compose.md)
    for name in ("kafka", "namenode", "datanode"):
        check = services[name]["healthcheck"]
        assert (check["interval"], check["start_interval"]) == ("1m0s", "5s"), name
    for name in ("kafka", "namenode", "datanode", "streaming", "notebook"):
        assert services[name]["restart"] == "unless-stopped", name


def test_published_ports_are_loopback_and_match_settings(resolved: dict) -> None:
    expected = {
        "kafka": {_default("kafka_port")},
        "namenode": {_default("namenode_http_port")},
        "datanode": {_default("datanode_http_port")},
        "streaming": {_default("spark_ui_port")},
        "notebook": {8888},
    }
    for name, svc in resolved["services"].items():
        ports = svc.get("ports", [])
        published = {int(p["published"]) for p in ports}
        assert published == expected.get(name, set()), name
        for p in ports:
            assert p["host_ip"] == "127.0.0.1", f"{name} publishes {p['published']} on {p['host_ip']}"
            assert int(p["target"]) == int(p["published"]), name


def test_container_addresses_point_at_the_services(resolved: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from logpipe import config

    monkeypatch.setattr(config, "in_streaming_image", lambda: True)  # the streaming container's Spark UI host
    services = resolved["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["HOST"] == f"127.0.0.1:{_default('kafka_port')}"  # what the native default points at
    assert int(kafka_env["KAFKA_NUM_PARTITIONS"]) == _default("topic_partitions")
    # as the native broker: topics are made by logpipe (producer, job), never by a client naming one
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    hdfs_defaults = (ROOT / "hdfs_service" / "start-hadoop.sh").read_text()
    script_port = {m.group(1): int(m.group(2)) for m in re.finditer(r"\$\{HDFS_(\w+_PORT):-(\d+)\}", hdfs_defaults)}
    assert script_port == {"NAMENODE_RPC_PORT": _default("namenode_rpc_port"),
                           "NAMENODE_HTTP_PORT": _default("namenode_http_port"),
                           "DATANODE_DATA_PORT": _default("datanode_data_port"),
                           "DATANODE_HTTP_PORT": _default("datanode_http_port"),
                           "DATANODE_IPC_PORT": _default("datanode_ipc_port")}
    for name in LOGPIPE_SERVICES:
        env = services[name]["environment"]
        s = Settings(**{k.removeprefix("LOGPIPE_").lower(): v for k, v in env.items()
                        if k.startswith("LOGPIPE_") and k not in NOT_SETTINGS})
        assert s.kafka_address == advertised["INTERNAL"], name
        hdfs, web = urlparse(s.hdfs_address), urlparse(s.webhdfs_address)
        assert (hdfs.hostname, hdfs.port) == ("namenode", _default("namenode_rpc_port")), name
        assert (web.hostname, web.port) == ("namenode", _default("namenode_http_port")), name
        # everything else is the native default: same topics, same HDFS layout, same windows and thresholds
        for field in ("topic", "alerts_topic", "hdfs_root", "window", "slide", "watermark",
                      "rate_limit_ceiling", "surge_min_count", "surge_min_share"):
            assert getattr(s, field) == _default(field), (name, field)
        assert s.hdfs_path("windows", "by_host") == Settings.model_fields["hdfs_root"].default + "/windows/by_host"


def test_volumes_hold_the_state(resolved: dict) -> None:
    services = resolved["services"]

    def mounts(name: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in services[name].get("volumes", []) if v["type"] == "volume"}

    assert set(resolved["volumes"]) >= {"kafka-data", "hdfs-name", "hdfs-data", "logdata"}
    kafka_dir = services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert mounts("kafka") == {kafka_dir: "kafka-data"}
    hdfs_env = dict(re.findall(r"(HDFS_\w+_DIR)=(\S+)", (ROOT / "hdfs_service" / "Dockerfile").read_text()))
    assert mounts("namenode") == {hdfs_env["HDFS_NAME_DIR"]: "hdfs-name"}
    assert mounts("datanode") == {hdfs_env["HDFS_DATA_DIR"]: "hdfs-data"}
    # the producer reads the log (and its demo sample) from the same volume the notebook reads the truth file from
    log_file = services["producer"]["environment"]["LOGPIPE_COMPOSE_LOG_FILE"]
    assert mounts("producer")[str(Path(log_file).parent)] == mounts("notebook")[str(Path(log_file).parent)]
    # ... and generates the demo sample there when the file is missing, then follows it with the producer, in the
    # one process `sh` execs (so SIGTERM reaches the generate step too)
    script = " ".join(services["producer"]["command"]).replace("$$", "$")  # compose's escape for a literal $
    assert services["producer"]["entrypoint"] == ["/bin/sh", "-c"]
    assert script.startswith("exec python /opt/logpipe/python_service/app.py ") and ";" not in script, script
    assert 'app.py "$LOGPIPE_COMPOSE_LOG_FILE" --follow --generate-if-missing "$LOGPIPE_COMPOSE_DEMO_SIZE"' in script


def test_each_built_image_has_a_tag_of_its_own(resolved: dict) -> None:
    """Compose builds all services' images at once (Buildx Bake); two builds exporting one tag fail on the
    containerd image store ("image ... already exists"), so a service that builds names its own image."""
    built = {name: svc.get("image") for name, svc in resolved["services"].items() if "build" in svc}
    assert all(built.values()), f"a built service without an image name: {built}"
    tags = list(built.values())
    assert len(set(tags)) == len(tags), f"services share an image tag: {built}"
    # our own names are built, never pulled (without it `up` first asks a registry for them, `pull` fails)
    policies = {name: resolved["services"][name].get("pull_policy") for name in built}
    assert set(policies.values()) == {"build"}, policies
    # the pairs built from one Dockerfile and target still build the same image
    for a, b in (("namenode", "datanode"), ("hdfs-ready", "producer")):
        assert resolved["services"][a]["build"] == resolved["services"][b]["build"], (a, b)


def test_images_match_the_native_stack_versions() -> None:
    compose = yaml.safe_load(_compose_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{_pom_property('kafka.xml', 'kafka.version')}"
    hdfs_from = re.search(r"^FROM\s+(\S+)", (ROOT / "hdfs_service" / "Dockerfile").read_text(), re.M)
    assert hdfs_from and hdfs_from.group(1) == f"apache/hadoop:{_pom_property('hdfs.xml', 'hadoop.version')}"
    # our images are tagged with the versions they hold: Hadoop's for HDFS, the package's for logpipe's own
    hadoop = _pom_property("hdfs.xml", "hadoop.version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in compose["services"].items():
        image = svc["image"]
        if image.startswith("logpipe-hdfs-") and name != "hdfs-ready":
            assert image == f"logpipe-hdfs-{name}:{hadoop}", name
        elif image.startswith("logpipe-"):
            assert image.endswith(f":{version}"), name
    # the Spark Kafka connector is the version of pyproject.toml's pyspark pin (the installed one is checked below)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["spark"] == [f"pyspark=={_pom_property('spark-kafka.xml', 'spark.version')}"]
    assert not any(d.startswith("pyspark") for d in project["dependencies"])  # not in the producer's image
    # both Python images on the same base
    bases = {re.search(r"^FROM\s+(python:\S+)", (ROOT / d / "Dockerfile").read_text(), re.M).group(1)
             for d in ("python_service", "pyspark_service")}
    assert len(bases) == 1, bases
    cluster_id = compose["services"]["kafka"]["environment"]["CLUSTER_ID"]
    assert not cluster_id.startswith("-") and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_streaming_image_bakes_the_connector_jars_of_the_pom() -> None:
    import pyspark

    text = (ROOT / "pyspark_service" / "Dockerfile").read_text()
    assert "COPY src/logpipe/stack/poms/spark-kafka.xml" in text and "-Dmdep.stripVersion=true" in text
    from logpipe.stack.jars import COPY_DEPENDENCIES_GOAL  # the plugin version the native stack pins

    assert re.findall(r"\bmvn .*?(\S+:copy-dependencies)", text) == [COPY_DEPENDENCIES_GOAL]
    jars = re.search(r"LOGPIPE_SPARK_KAFKA_JARS=(\S+)", text).group(1).split(",")
    pom = ET.parse(ROOT / "src" / "logpipe" / "stack" / "poms" / "spark-kafka.xml").getroot()
    artifacts = {d.findtext("m:artifactId", namespaces=POM_NS) for d in pom.iterfind("m:dependencies/m:dependency",
                                                                                      POM_NS)}
    assert {Path(j).name for j in jars} == {f"{a}.jar" for a in artifacts}
    assert {str(Path(j).parent) for j in jars} == {"/opt/logpipe/jars/spark-kafka"}
    assert "COPY --from=connector-jars /jars /opt/logpipe/jars/spark-kafka" in text
    assert _pom_property("spark-kafka.xml", "spark.version") == pyspark.__version__
    # a Java 25 build pinned to its patch level (a floating tag would change the JVM under the same image tag)
    assert re.search(r"^COPY --from=eclipse-temurin:25\.\d+\.\d+_\d+-jre /opt/java/openjdk /opt/java$", text, re.M)
    assert "JAVA_HOME=/opt/java" in text
    assert "PATH=/opt/java/bin:$PATH" in text  # `java -version` at build time finds it
    # the package is installed from the context, never fetched by name; with the spark extra (its pinned
    # pyspark) only in the streaming image
    installs = {d.parent.name: re.findall(r"^RUN pip install [^\n]*", d.read_text(), re.M) for d in DOCKERFILES[1:]}
    assert installs == {"python_service": ["RUN pip install --no-cache-dir -c constraints.txt . \\",
                                           'RUN pip install --no-cache-dir -c constraints.txt ".[notebook]"'],
                        "pyspark_service": ['RUN pip install --no-cache-dir -c constraints.txt ".[spark]" \\']}


def test_the_images_own_healthchecks_check_what_compose_checks(resolved: dict) -> None:
    """An image run without this compose file keeps a healthcheck that fits it: the streaming image checks the UI
    port the job binds (`logpipe health spark` reads LOGPIPE_SPARK_UI_PORT, as compose's check; not a fixed 4040),
    the HDFS image checks as often as compose's NameNode (each check starts a JVM)."""
    def seconds(text: str | int) -> int:  # "1m0s" (compose's model), "60s" (a Dockerfile), or a count
        if isinstance(text, int):
            return text
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        assert parts and text, text
        h, m, s = (int(g or 0) for g in parts.groups())
        return h * 3600 + m * 60 + s

    def image_check(dockerfile: Path) -> str:
        text = dockerfile.read_text().replace("\\\n", " ")
        (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK")]
        return line

    streaming = image_check(ROOT / "pyspark_service" / "Dockerfile")
    assert '"logpipe", "health", "spark"' in streaming and "4040" not in streaming
    assert resolved["services"]["streaming"]["healthcheck"]["test"][1:] == json.loads(streaming.split("CMD", 1)[1])
    hdfs = dict(re.findall(r"--([a-z-]+)=(\S+)", image_check(ROOT / "hdfs_service" / "Dockerfile")))
    compose = resolved["services"]["namenode"]["healthcheck"]
    for option in ("interval", "start_interval", "timeout", "start_period", "retries"):
        mine = hdfs.get(option.replace("_", "-"))
        assert mine is not None and seconds(mine if option != "retries" else int(mine)) == seconds(compose[option]), \
            (option, mine, compose[option])


def test_the_streaming_image_carries_the_mark_that_lets_its_spark_ui_off_loopback(resolved: dict) -> None:
    """compose sets LOGPIPE_SPARK_UI_HOST=0.0.0.0 for the streaming container, which the settings refuse outside
    logpipe's streaming image (config.STREAMING_IMAGE_MARK): the image must write that mark."""
    from logpipe.config import STREAMING_IMAGE_MARK

    assert resolved["services"]["streaming"]["environment"]["LOGPIPE_SPARK_UI_HOST"] == "0.0.0.0"
    assert f"> {STREAMING_IMAGE_MARK}" in (ROOT / "pyspark_service" / "Dockerfile").read_text()


def _go_duration_s(text: str) -> float:
    """A duration as compose prints it (`2m30s`, `30s`, `1h`, `500ms`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_the_streaming_container_is_given_longer_to_stop_than_its_batches(resolved: dict) -> None:
    """On SIGTERM the job lets its running micro-batch finish for LOGPIPE_STOP_GRACE_S; docker kills the container
    after its stop_grace_period (10 s by default), so that period must be longer, or `docker compose stop` cuts
    the batch short (it is redone at the next start, but the stop is not the clean one documented). After the
    batch the stop waits up to CALLBACK_WAIT_S for its callback, then sends its alerts (up to ALERTS_SEND_MAX_S
    when Kafka does not take them) and writes the metrics."""
    from logpipe.streaming.job import ALERTS_SEND_MAX_S
    from logpipe.streaming.run import CALLBACK_WAIT_S

    streaming = resolved["services"]["streaming"]
    grace_s = float(streaming["environment"]["LOGPIPE_STOP_GRACE_S"])
    need_s = grace_s + CALLBACK_WAIT_S + ALERTS_SEND_MAX_S + 15
    assert _go_duration_s(streaming.get("stop_grace_period", "10s")) >= need_s, (
        streaming.get("stop_grace_period"), grace_s)


def test_every_container_rotates_its_log_and_the_long_running_ones_come_back(resolved: dict) -> None:
    """Docker keeps a json-file log whole by default (a continuous stack's Kafka and HDFS logs grow without end);
    the services that run for good, the following producer among them, restart after a host or Docker restart
    (on-failure does not: the producer stayed down and appended lines went unread without a word)."""
    services = resolved["services"]
    for name, svc in services.items():
        logging = svc.get("logging", {})
        assert logging.get("driver") == "json-file" and logging.get("options", {}).get("max-size"), name
    for name in ("kafka", "namenode", "datanode", "producer", "streaming", "notebook"):
        assert services[name]["restart"] == "unless-stopped", name
    assert "--follow" in " ".join(services["producer"]["command"])
