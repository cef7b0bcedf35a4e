"""Jobs and initializers that the standard pickle cannot send by reference
(lambdas, closures, functions of an interactive ``__main__``) go by value with
cloudpickle, when it is installed; without it, the error says what to do.
A worker that runs only by-reference jobs never imports cloudpickle."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import helpers
import pytest
from support import child_env

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")

ADVICE = "move it to a module"


@pytest.fixture
def cloudpickle() -> None:
    pytest.importorskip("cloudpickle")


@pytest.mark.usefixtures("cloudpickle")
async def test_a_lambda_and_a_closure_run_by_value() -> None:
    offset = 40

    def closure(x: int) -> int:
        return x + offset

    async with procsup.open_worker(max_jobs=None) as worker:
        assert await worker.run(lambda: "lambda") == "lambda"
        assert await worker.run(closure, 2) == 42
        assert await worker.run(functools.partial(closure, 1)) == 41
        assert "cloudpickle" in await worker.run(helpers.modules_loaded)


@pytest.mark.usefixtures("cloudpickle")
async def test_a_lambda_initializer_runs_by_value() -> None:
    model = {"weights": [1, 2, 3]}
    async with procsup.open_pool(lambda: model, idle=1) as pool:
        assert await pool.run(helpers.state) == model


@pytest.mark.usefixtures("cloudpickle")
async def test_a_worker_running_by_reference_jobs_never_imports_cloudpickle() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        await worker.run(lambda: None)  # the parent has used cloudpickle now
    init = functools.partial(helpers.echo_init, "by reference")
    async with procsup.open_pool(init, idle=1, max_jobs=None) as pool:
        assert await pool.run(helpers.state) == "by reference"
        assert await pool.run(helpers.add, 1, 2) == 3
        assert "cloudpickle" not in await pool.run(helpers.modules_loaded)


@pytest.mark.usefixtures("no_cloudpickle")
async def test_without_cloudpickle_the_error_says_what_to_do() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        with pytest.raises(procsup.SerializationError) as info:
            await worker.run(lambda: None)
        assert ADVICE in str(info.value)
        assert "procsup[cloudpickle]" in str(info.value)
        assert "<lambda>" in str(info.value)
        # an argument that does not pickle is the arguments' fault, not the job's
        with pytest.raises(procsup.SerializationError, match="arguments") as info:
            await worker.run(helpers.add, lambda: 1, 2)
        assert "procsup[cloudpickle]" not in str(info.value)
        assert await worker.run(helpers.add, 1, 2) == 3
    with pytest.raises(TypeError, match=r"procsup\[cloudpickle\]"):
        async with procsup.open_worker(lambda: None):
            pass


_SCRIPT = """
import sys
if sys.argv[1] == "without":
    sys.modules["cloudpickle"] = None  # as if not installed
import trio, procsup

def double(x):
    return 2 * x

async def main():
    async with procsup.open_worker() as worker:
        try:
            print(await worker.run(double, 21))
        except procsup.SerializationError as exc:
            print("SerializationError:", exc)

trio.run(main)
"""


@pytest.mark.parametrize("how", ["-c", "stdin"])
@pytest.mark.parametrize("cloudpickle", ["with", "without"])
def test_a_function_of_an_interactive_main(how: str, cloudpickle: str) -> None:
    if cloudpickle == "with":
        pytest.importorskip("cloudpickle")
    script = textwrap.dedent(_SCRIPT)
    argv = ["-c", script, cloudpickle] if how == "-c" else ["-", cloudpickle]
    done = subprocess.run(
        [sys.executable, *argv],
        input=script if how == "stdin" else None,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if cloudpickle == "with":
        assert done.stdout == "42\n"
    else:
        assert done.stdout.startswith("SerializationError: double cannot be pickled by reference")
        assert "__main__" in done.stdout
        assert ADVICE in done.stdout
