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


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_what_the_tests_run_with_and_agree_with_pyproject() -> None:
    """constraints.txt (pip -c, natively and in the images) holds the versions installed here, where the tests
    run, and pyproject.toml's own pins; both installs use it."""
    import tomllib
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _constraints()
    assert {"pyspark", "kafka-python", "pandas", "pyarrow", "py4j", "pydantic"} <= set(pins)
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]:
        req = Requirement(spec)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            assert pins.get(canonicalize_name(req.name)) == exact[0], f"{req.name}: pyproject {exact[0]}, " \
                f"constraints {pins.get(canonicalize_name(req.name))}: run `make constraints`"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    stale = {n: (v, installed[n]) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not stale, f"constraints.txt differs from what is installed (pinned, installed): {stale}; " \
                      "run `make constraints` after changing a version"
    assert "-c constraints.txt" in (PROJECT_ROOT / "Makefile").read_text()
    for dockerfile in ("python_service/Dockerfile", "pyspark_service/Dockerfile"):
        text = (PROJECT_ROOT / dockerfile).read_text()
        installs = re.findall(r"^RUN pip install [^\n]*", text, re.M)
        assert installs and all("-c constraints.txt" in i for i in installs), (dockerfile, installs)
        assert re.search(r"COPY [^\n]*constraints\.txt", text), dockerfile


def test_the_tests_the_docs_cite_exist() -> None:
    """docs/reliability.md proves each recovery by naming tests (`tests/<file>.py::<test>`, `::<test>` for another
    test of the file named before it, or a bare `test_<name>`): each must be a test function there."""
    tests = PROJECT_ROOT / "tests"
    defined = {p: set(re.findall(r"^(?:async )?def (test_\w+)", p.read_text(), re.M))
               for p in tests.rglob("test_*.py")}
    everywhere = set().union(*defined.values())
    cited, missing = 0, []
    for doc in ("docs/reliability.md", "README.md"):
        last = None
        text = (PROJECT_ROOT / doc).read_text()
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::)?test_\w+|tests/[\w/]+\.py)`", text):
            if "::" in ref:
                path, _, name = ref.partition("::")
            else:
                path, name = (ref, "") if ref.endswith(".py") else ("", ref)
            if path:
                last = PROJECT_ROOT / path
                if not last.is_file():
                    missing.append((doc, ref))
                    continue
            if not name:
                continue
            cited += 1
            where = defined.get(last, set()) if ref.startswith("::") or path else everywhere
            if name not in where:
                missing.append((doc, ref))
    assert cited > 20 and not missing, (cited, missing)
