"""Developer sessions: ``nox -s tests lint typecheck protos``; bench, fuzz, soak on demand."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit and end to end)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff", "import-linter>=2.1")
    session.run("ruff", "check", "pmlb", "tests", "examples", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "pmlb", "tests", "examples", "tools", "noxfile.py")
    # the layers and no-loop contracts of [tool.importlinter] in pyproject.toml
    session.run("lint-imports", "--no-cache")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "pmlb")


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate pmlb/_proto from protos/ (commit the result)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pmlb._proto.generate")


@nox.session
def bench(session: nox.Session) -> None:
    """pmlb beside a plain echo server and HAProxy (never in CI; see tools/bench/run.py),
    then ``--workers 2`` beside one process (tools/bench/workers.py) and what
    crossing cluster nodes costs (tools/cluster_cost.py).

    Needs gcc, OpenSSL's headers (``apt-get install libssl-dev``: the load
    generator's TLS; without them the TLS scenarios are skipped), the
    ``openssl`` command (the throwaway certificate) and Debian's haproxy
    (``apt-get install haproxy``), and redis-server for the cluster part
    (skipped without it); ~9 minutes. Writes bench-results.json, the README's
    table beside it (.md) and a chart (.png, by matplotlib, installed here
    only: never a dependency of pmlb).
    The cluster part uses the grpc-js upstream once its node_modules exist
    (``npm ci --prefix tests/upstreams/grpcjs``), the grpclib one else.
    """
    import shutil
    from pathlib import Path

    session.install("-e", ".")
    session.install("matplotlib")  # the chart of tools/bench/run.py, nothing else
    session.run("python", "tools/bench/run.py", *session.posargs)
    session.run("python", "tools/bench/workers.py")  # --workers 2 beside one process
    if shutil.which("redis-server") is None:
        session.log("cluster costs skipped: redis-server is not installed")
        return
    grpcjs = Path("tests/upstreams/grpcjs/node_modules").is_dir() and shutil.which("node")
    upstream = "grpcjs" if grpcjs else "grpclib"
    session.run("python", "tools/cluster_cost.py", "--upstream", upstream)


@nox.session
def fuzz(session: nox.Session) -> None:
    """The property tests of tests/test_fuzz.py with a large budget (not in CI).

    ``PMLB_FUZZ_EXAMPLES`` (default 10,000 here) is the examples per test: with
    the 11 tests that is over 100,000 generated cases. Prints how many ran.
    """
    import json
    import tempfile
    import time
    from pathlib import Path

    session.install("-e", ".[test]")
    examples = os.environ.get("PMLB_FUZZ_EXAMPLES", "10000")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "counts.json"
        started = time.monotonic()
        session.run(
            "pytest",
            "tests/test_fuzz.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=3600",
            *session.posargs,
            env={"PMLB_FUZZ_EXAMPLES": examples, "PMLB_FUZZ_REPORT": str(report)},
        )
        elapsed = time.monotonic() - started
        counts: dict[str, int] = json.loads(report.read_text())
    width = max(map(len, counts))
    for name, count in counts.items():
        session.log(f"{name:<{width}}  {count:>9,}")
    session.log(
        f"{'total':<{width}}  {sum(counts.values()):>9,} examples in {elapsed:.0f} s"
        f" (PMLB_FUZZ_EXAMPLES={examples} per test)"
    )


@nox.session
def soak(session: nox.Session) -> None:
    """pmlb under 1,000 churning clients while its upstreams restart (not in CI; ~5 minutes).

    ``nox -s soak -- --duration 60 --json soak.json``; see tools/soak.py.
    """
    session.install("-e", ".")
    session.run("python", "tools/soak.py", *session.posargs)
