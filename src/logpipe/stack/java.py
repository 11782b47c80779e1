"""Which Java runs the stack's services and which runs Spark's JVM (a clear error when none fits)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from logpipe.config import Settings
from logpipe.stack.jars import StackError

MIN_JAVA = 17


def java_binary(settings: Settings) -> str:
    """The `java` to run services with; raises StackError if missing or older than Java 17."""
    home = settings.java_home or os.environ.get("JAVA_HOME")
    # absolute: the services start in run_dir, where a relative JAVA_HOME would point elsewhere
    java = str(Path(home).expanduser().resolve() / "bin" / "java") if home else shutil.which("java")
    if home and not Path(java).exists():
        named = "LOGPIPE_JAVA_HOME" if settings.java_home else "JAVA_HOME"
        raise StackError(f"{named}={home} has no bin/java: point it at a JDK 17+ (a folder holding bin/java), or "
                         "unset it to use the `java` on PATH.")
    if not java or not Path(java).exists():
        raise StackError("Java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless) "
                         "or set LOGPIPE_JAVA_HOME / JAVA_HOME.")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0_..." style
        major = int(m.group(2))
    if major < MIN_JAVA:
        raise StackError(f"{java} is Java {major or '?'}; Kafka 4 and Spark 4 need Java {MIN_JAVA}+. "
                         "Set LOGPIPE_JAVA_HOME to a newer JDK.")
    return java


# Spark 4.2 runs on these Java releases ("Spark runs on Java 17/21/25", its docs)
SPARK_JAVA_RELEASES = (17, 21, 25)
JVM_DIRS = (Path("/usr/lib/jvm"),)  # where Debian and Ubuntu install JDKs (and the Temurin packages)


def java_release(home: Path) -> int | None:
    """The feature release (17, 21, 25, ...) of the Java installed at `home`, from its `release` file; None if
    `home` holds no `bin/java` or no readable release."""
    try:
        if not (home / "bin" / "java").exists():
            return None
        m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?[^"-]*"', (home / "release").read_text(), re.M)
    except OSError:
        return None
    if not m:  # no release file, or a pre-release build ("25-ea")
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def spark_java_home(settings: Settings, jvm_dirs: tuple[Path, ...] = JVM_DIRS) -> tuple[str, int | None]:
    """The Java home Spark's JVM runs on, and its release: LOGPIPE_SPARK_JAVA_HOME if set, else the newest release
    Spark supports (SPARK_JAVA_RELEASES) among LOGPIPE_JAVA_HOME, JAVA_HOME, the `java` on PATH and the JDKs in
    `jvm_dirs` (the first of equals wins), else the services' Java (java_binary: a clear error if none)."""
    supported = "/".join(map(str, SPARK_JAVA_RELEASES))
    if settings.spark_java_home:
        home = Path(settings.spark_java_home)
        if not (home / "bin" / "java").exists():
            raise StackError(f"LOGPIPE_SPARK_JAVA_HOME={home} has no bin/java: point it at a JDK or JRE of Java "
                             f"{supported}.")
        release = java_release(home)
        if release is not None and release not in SPARK_JAVA_RELEASES:
            raise StackError(f"LOGPIPE_SPARK_JAVA_HOME={home} is Java {release}; Spark runs on Java {supported}.")
        return str(home), release
    candidates = [Path(h) for h in (settings.java_home, os.environ.get("JAVA_HOME")) if h]
    if on_path := shutil.which("java"):
        candidates.append(Path(os.path.realpath(on_path)).parent.parent)
    for d in jvm_dirs:
        try:
            candidates.extend(sorted(p for p in d.iterdir() if p.is_dir()))
        except OSError:  # missing or unreadable: nothing to find there
            pass
    best: tuple[int, Path] | None = None
    for home in candidates:
        release = java_release(home)
        if release in SPARK_JAVA_RELEASES and (best is None or release > best[0]):
            best = (release, home)
    if best:
        return str(best[1]), best[0]
    home = Path(os.path.realpath(java_binary(settings))).parent.parent
    return str(home), java_release(home)
