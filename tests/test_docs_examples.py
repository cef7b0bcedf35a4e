"""Every code example in the docs, in examples/ and in the README runs.

The conventions this enforces:

* ``examples/*.py`` are complete programs; each must exit 0 within a timeout
  and leave no process behind.
* Python code in ``docs/*.rst`` is either included from ``examples/`` with
  ``.. literalinclude:: ../examples/NAME.py`` (so the first rule runs it), or
  is a ``.. code-block:: python`` with the option ``:class: runnable`` (a
  complete program, run the same way) or ``:class: pytest`` (a test module,
  run by pytest with ``trio_mode = true``). A Python block with neither fails
  the suite: the docs hold no code that is not run.
* The README's first ```python block runs too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
TIMEOUT = 120  # seconds per program; they take a few on an idle machine
MARKER = "PROCSUP_DOCS_EXAMPLE"

PYTHON_LANGUAGES = {"python", "py", "python3"}
_DIRECTIVE = re.compile(
    r"^(?P<indent>\s*)\.\. (?:code-block|code|sourcecode)::\s*(?P<lang>\S*)\s*$"
)
_INCLUDE = re.compile(r"^\s*\.\. literalinclude::\s*(?P<path>\S+)\s*$")


class Snippet:
    def __init__(self, where: str, kind: str, code: str) -> None:
        self.where = where
        self.kind = kind  # "runnable", "pytest", or "" (unmarked)
        self.code = code

    def __repr__(self) -> str:
        return self.where


def rst_python_blocks(path: Path) -> list[Snippet]:
    """Every Python code block of an .rst file, with its ``:class:`` marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if not match or match["lang"].lower() not in PYTHON_LANGUAGES:
            continue
        start = i
        indent = len(match["indent"])
        options: dict[str, str] = {}
        while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):
            key, _, value = lines[i].strip()[1:].partition(":")
            options[key] = value.strip()
            i += 1
        body = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        classes = set(options.get("class", "").split())
        kind = "runnable" if "runnable" in classes else "pytest" if "pytest" in classes else ""
        where = f"{path.relative_to(ROOT)}:{start}"
        found.append(Snippet(where, kind, textwrap.dedent("\n".join(body)).strip() + "\n"))
    return found


def readme_snippet() -> Snippet:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no ```python block"
    return Snippet("README.md", "runnable", match[1])


DOC_BLOCKS = [block for page in sorted(DOCS.glob("*.rst")) for block in rst_python_blocks(page)]
PROGRAMS = [
    *[Snippet(f"examples/{p.name}", "example", "") for p in sorted(EXAMPLES.glob("*.py"))],
    *[b for b in DOC_BLOCKS if b.kind == "runnable"],
    readme_snippet(),
]
TEST_MODULES = [b for b in DOC_BLOCKS if b.kind == "pytest"]


def _environment(token: str) -> dict[str, str]:
    env = dict(os.environ)
    # procsup from this checkout, whether or not it is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[MARKER] = token  # inherited by every worker, to find any left behind
    return env


def _survivors(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _run_marked(
    argv: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], list[psutil.Process]]:
    """Run ``argv`` with a unique marker in its environment; return how it
    ended and the marked processes it left behind (killed by now)."""
    token = uuid.uuid4().hex
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=_environment(token),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        left = _survivors(token)
        for proc in left:
            proc.kill()
        psutil.wait_procs(left, timeout=5)
    return done, left


def _run(argv: list[str], cwd: Path, where: str) -> None:
    done, left = _run_marked(argv, cwd)
    output = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, f"{where} exited with {done.returncode}\n{output}"
    assert not left, f"{where} left processes behind: {left}\n{output}"


@pytest.mark.parametrize("program", PROGRAMS, ids=repr)
def test_program_runs(program: Snippet, tmp_path: Path) -> None:
    if program.kind == "example":
        script = ROOT / program.where
    else:
        script = tmp_path / "snippet.py"
        script.write_text(program.code, encoding="utf-8")
    _run([sys.executable, str(script)], tmp_path, program.where)


@pytest.mark.parametrize("module", TEST_MODULES, ids=repr)
def test_test_module_passes(module: Snippet, tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n", encoding="utf-8")
    (tmp_path / "test_snippet.py").write_text(module.code, encoding="utf-8")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"]
    _run(argv, tmp_path, module.where)


def test_every_python_block_in_the_docs_is_run() -> None:
    unmarked = [b.where for b in DOC_BLOCKS if not b.kind]
    assert not unmarked, (
        f"Python code blocks without ':class: runnable' or ':class: pytest': {unmarked}; "
        "make them complete programs, or include them from examples/"
    )


def test_docs_include_code_only_from_examples() -> None:
    for page in DOCS.glob("*.rst"):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            match = _INCLUDE.match(line)
            if match and match["path"].endswith(".py"):  # data, like bench tables, is fine
                target = (DOCS / match["path"]).resolve()
                message = (
                    f"{page.name}:{number} includes {match['path']}: include only files "
                    "of examples/, which the suite runs"
                )
                assert target.parent == EXAMPLES, message
                assert target.is_file(), message


def test_a_main_module_without_a_guard_gets_a_clear_error(tmp_path: Path) -> None:
    """A job defined in the main script makes the worker import that script;
    one that starts workers at import time must fail clearly, not multiply."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import trio
            import procsup

            def job():
                return 1

            async def main():
                async with procsup.open_pool(idle=0) as pool:
                    await pool.run(job)

            trio.run(main)  # no `if __name__ == "__main__":`
            """
        ),
        encoding="utf-8",
    )
    done, left = _run_marked([sys.executable, str(script)], tmp_path)
    assert not left
    assert done.returncode != 0
    assert "if __name__ ==" in done.stderr


MAIN_JOBS = """
import trio
import procsup

class Refused(Exception):
    pass

def double(x):
    return 2 * x

def refuse():
    raise Refused("no")

async def main():
    async with procsup.open_pool(idle=1) as pool:
        print(await pool.run(double, 21))
        try:
            await pool.run(refuse)
        except Refused as exc:  # a class of __main__ travels back as itself
            print("refused:", exc)

if __name__ == "__main__":
    trio.run(main)
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_jobs_defined_in_the_main_module_run(how: str, tmp_path: Path) -> None:
    """Jobs in ``__main__`` work whether it is a script or ``python -m``."""
    package = tmp_path / "mainpkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "app.py").write_text(MAIN_JOBS, encoding="utf-8")
    target = [str(package / "app.py")] if how == "script" else ["-m", "mainpkg.app"]
    done, left = _run_marked([sys.executable, *target], tmp_path)
    assert not left
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["42", "refused: no"]
