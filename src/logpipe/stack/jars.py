"""Resolves the JVM classpaths of the native stack (Kafka, HDFS, Spark's Kafka connector) from Maven Central, once."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shlex
import shutil
import subprocess
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

# name -> (pom file in logpipe/stack/poms, transitive?)
CLASSPATHS: dict[str, tuple[str, bool]] = {
    "kafka": ("kafka.xml", True),
    "hdfs": ("hdfs.xml", True),
    # only the four jars the pyspark wheel lacks; the rest is in pyspark/jars
    "spark-kafka": ("spark-kafka.xml", False),
}


class StackError(RuntimeError):
    """A native-stack operation failed; the message says what to do."""


def pom_path(name: str) -> Path:
    return Path(str(resources.files("logpipe.stack") / "poms" / CLASSPATHS[name][0]))


# the Maven plugin that copies the jars, pinned: a bare `dependency:copy-dependencies` takes whichever version
# the installed Maven defaults to (2.8 with Debian's Maven 3.8, another in the image's). The same jars either way
# (checked for the three poms); pyspark_service/Dockerfile runs this goal too (a unit test holds them equal)
COPY_DEPENDENCIES_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


MVN_LOCK = ".mvn.lock"  # one lock for every classpath under a jars folder (resolve)
MVN_TIMEOUT_S = 30 * 60  # one mvn run; a first run downloads ~380 MB of jars and Maven's own plugins


def _digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def is_resolved(name: str, jars_root: Path) -> bool:
    """Whether the jars of classpath `name` under jars_root were resolved from its present pom."""
    marker = jars_root / name / ".resolved"
    return marker.is_file() and marker.read_text().strip() == _digest(pom_path(name))


def resolve(name: str, jars_root: Path) -> Path:
    """The folder holding the jars of classpath `name`, resolving them with `mvn` the first time.

    A marker with the pom's digest makes this a no-op until the pom changes. One exclusive flock on
    <jars_root>/.mvn.lock for every classpath makes concurrent callers into one jars folder (`stack up` in the
    background, a test's Spark session) wait for one another's mvn run: they would otherwise delete each other's
    jars, or, on a fresh machine, download the same plugins and poms into ~/.m2 at once (Maven 3.8 does not lock
    its local repository).
    """
    pom = pom_path(name)
    target = jars_root / name
    marker = target / ".resolved"
    digest = _digest(pom)
    if marker.is_file() and marker.read_text().strip() == digest:
        return target
    jars_root.mkdir(parents=True, exist_ok=True)
    with (jars_root / MVN_LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process running Maven into %s (seconds once ~/.m2 holds the jars, "
                        "minutes on a first run; logpipe stops a run after %d s) before resolving the %s jars ...",
                        jars_root, MVN_TIMEOUT_S, name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text().strip() == digest:  # the other process did it
            return target
        return _resolve_locked(name, pom, target, marker, digest)


def _resolve_locked(name: str, pom: Path, target: Path, marker: Path, digest: str) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("`mvn` (Apache Maven 3.6.3+) is not on PATH: it resolves the Kafka/HDFS/Spark jars. "
                         "Install it (Debian: apt-get install maven) or use docker compose.")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    cmd = [mvn, "-B", "-q", "-f", str(pom), COPY_DEPENDENCIES_GOAL,
           f"-DoutputDirectory={target}", "-DincludeScope=runtime"]
    if not CLASSPATHS[name][1]:
        cmd.append("-DexcludeTransitive=true")
    log.info("resolving %s jars with Maven (first time only) ...", name)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MVN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        watch = shlex.join(c for c in cmd if c != "-q")
        raise StackError(f"resolving the {name} jars took over {MVN_TIMEOUT_S:,} s (pom: {pom}): Maven "
                         "Central, or a mirror in ~/.m2/settings.xml, answers too slowly or not at all. Run "
                         f"`{watch}` to watch what it waits for.") from None
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(out[-15:])
        hint = ("Maven Central looks unreachable: check the network or a mirror in ~/.m2/settings.xml."
                if any(w in tail for w in ("Unknown host", "transfer failed", "Could not transfer")) else
                "See Maven's output above.")
        raise StackError(f"resolving the {name} jars failed (pom: {pom}).\n{tail}\n{hint}")
    marker.write_text(digest + "\n")
    return target


def classpath(folder: Path, *extra: Path) -> str:
    """A java -cp string: extra folders first (config), then every jar in `folder`, sorted."""
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    return ":".join([*(str(e) for e in extra), *jars])


def spark_kafka_jars(jars_root: Path) -> list[str]:
    """Paths of the Spark Kafka connector jars (resolved if needed), for `spark.jars`."""
    folder = resolve("spark-kafka", jars_root)
    return sorted(str(p) for p in folder.glob("*.jar"))
