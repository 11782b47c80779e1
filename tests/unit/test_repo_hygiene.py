"""The repository holds no credentials (no private keys, cloud keys or passwords in tracked files), and its Python
passes the linter."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

SECRET_PATTERNS = {
    "private key": re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH )?PRIVATE KEY-----"),
    "AWS access key": re.compile(rb"\bAKIA[0-9A-Z]{16}\b"),
    "password assignment": re.compile(rb"(?i)\b(?:password|passwd|secret|api[_-]?key)\s*[:=]\s*['\"]?[^\s'\"$<{]{6,}"),
    "token in URL": re.compile(rb"://[^/\s:@]+:[^/\s@]{6,}@"),
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def test_no_credentials_in_tracked_files() -> None:
    files = tracked_files()
    assert len(files) > 50, "git ls-files found too few files: not a checkout?"
    found = []
    for rel in files:
        data = (PROJECT_ROOT / rel).read_bytes()
        found += [(rel, name) for name, pattern in SECRET_PATTERNS.items() if pattern.search(data)]
    assert not found, f"possible credentials: {found}"


# built from pieces, so this file does not hold what it looks for
SAMPLES = {"private key": b"-----BEGIN " + b"PRIVATE KEY-----", "AWS access key": b"AKIA" + b"ABCDEFGHIJKLMNOP",
           "password assignment": b"pass" + b'word = "hunter22"', "token in URL": b"https://user:" + b"s3cr3tpass@example.org/"}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_patterns_catch_credentials(name: str) -> None:
    assert SECRET_PATTERNS[name].search(SAMPLES[name])


def test_python_passes_ruff() -> None:
    """pyflakes and bugbear rules ([tool.ruff] in pyproject.toml): unused imports, undefined names, mutable
    defaults and the like."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=PROJECT_ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
