"""Resolves the JVM classpaths of the native stack (Kafka, HDFS, Spark's Kafka connector) from Maven Central, once."""

from __future__ import annotations

import fcntl
import hashlib
import logging
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


def _digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def is_resolved(name: str, jars_root: Path) -> bool:
    """Whether the jars of classpath `name` under jars_root were resolved from its present pom."""
    marker = jars_root / name / ".resolved"
    return marker.is_file() and marker.read_text().strip() == _digest(pom_path(name))


def resolve(name: str, jars_root: Path) -> Path:
    """The folder holding the jars of classpath `name`, resolving them with `mvn` the first time.

    A marker with the pom's digest makes this a no-op until the pom changes. An exclusive flock on
    <jars_root>/.<name>.lock makes concurrent callers (`stack up`, a Spark session) wait for one another's mvn run
    instead of deleting each other's jars.
    """
    pom = pom_path(name)
    target = jars_root / name
    marker = target / ".resolved"
    digest = _digest(pom)
    if marker.is_file() and marker.read_text().strip() == digest:
        return target
    jars_root.mkdir(parents=True, exist_ok=True)
    with (jars_root / f".{name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process resolving the %s jars into %s ...", name, target)
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
    proc = subprocess.run(cmd, capture_output=True, text=True)
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
