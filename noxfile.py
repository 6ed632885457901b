"""Developer sessions: ``nox -s tests lint typecheck protos``; ``nox -s bench`` on demand."""

from __future__ import annotations

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
    session.install("ruff")
    session.run("ruff", "check", "pmlb", "tests", "examples", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "pmlb", "tests", "examples", "tools", "noxfile.py")


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
    """pmlb beside a plain echo server and HAProxy (never in CI; see tools/bench/run.py).

    Needs gcc and Debian's haproxy (``apt-get install haproxy``); takes ~5 minutes.
    """
    session.install("-e", ".")
    session.run("python", "tools/bench/run.py", *session.posargs)
