"""Nox sessions for procsup: ``nox -s tests``, ``nox -s lint docs``, and friends.

Every session runs on the interpreter nox itself runs on (no pinned
versions), and uses uv to build its virtualenv when uv is available.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "docs"]

ROOT = Path(__file__).parent
LINT_PATHS = [
    p for p in ("procsup", "tests", "benchmarks", "examples", "noxfile.py") if (ROOT / p).exists()
]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint and format check) and mypy."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.run("mypy")  # files and options come from pyproject.toml


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning fails the build."""
    session.install("-e", ".[dev]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (extra arguments go to benchmarks/run.py)."""
    session.install("-e", ".[bench,test]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The long chaos run (extra arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_chaos.py", "-m", "slow", "--chaos-long", *session.posargs)
    # and the idle-kill run at 5,000 jobs per start method (not marked slow: 150 by default)
    idle_kills = ("-k", "idle_kills", "--chaos-long")
    session.run("pytest", "tests/test_chaos.py", *idle_kills, *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The queue soak against a real redis-server (extra arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_redis_soak.py", "--soak", "-s", *session.posargs)
