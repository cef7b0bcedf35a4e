"""procsup's benchmarks: floors, the worker, the pool, and its peers.

    python benchmarks/run.py [--quick] [--only floors,worker,...] [--out DIR]

Prints markdown tables (measurement, reference, ratio, target, PASS/MISS)
and writes them, the raw figures (results.json), each case's output
(logs/) and a chart (chart.png) to ``--out`` (default ``bench-results``).

Every case runs in a fresh process of its own (this script with ``--case``),
so a peer that hangs or leaks is killed without disturbing the others.
Numbers from a loaded machine are noisy: compare ratios within one run.
The quick timing cases run ``--rounds`` times (default 3; 1 with ``--quick``), interleaved
(forward, then backward, ...), so that procsup and its peers see the same
drift; each figure reported is the median of its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Workers import jobs by name (jobs.noop): benchmarks/ goes on sys.path before
# any pool starts, and the checkout's procsup wins over an installed one.
for _path in (str(ROOT), str(HERE)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

CONCURRENT_CASES = 3  # W3 peer cases mostly wait out their cap: run a few at once


def run_case(name: str, quick: bool) -> None:
    """Inside a case process: run one case, print its result line, exit."""
    from _util import NotAvailable, emit, kill_descendants, leftover_workers
    from cases import all_cases

    case = {c.name: c for c in all_cases()}[name]
    result: dict[str, Any]
    try:
        result = case.run(quick)
    except NotAvailable as exc:
        result = {"na": str(exc)}
    except Exception as exc:  # noqa: BLE001 -- any failure is the case's result
        first_line = (str(exc).strip().splitlines() or [""])[0][:240]
        result = {"error": f"{type(exc).__name__}: {first_line}"}
    else:
        leaked = leftover_workers()
        if leaked:
            result["leaked"] = leaked
    emit(result)
    kill_descendants()
    os._exit(0)  # skip atexit hooks: a broken peer pool may hang in them


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def run_one(case: Any, quick: bool, logs: Path, round_: int = 0) -> dict[str, Any]:
    """Run ``case`` in a fresh process, bounded by its timeout (its log:
    ``NAME.log``, or ``NAME.rN.log`` for round N after the first)."""
    from _util import RESULT_PREFIX

    argv = [sys.executable, str(HERE / case.script), "--case", case.name]
    if quick:
        argv.append("--quick")
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(proc.pid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild holds the pipes
            out, err = "", ""
    suffix = f".r{round_ + 1}" if round_ else ""
    (logs / f"{case.name}{suffix}.log").write_text(f"$ {' '.join(argv)}\n{out}\n--- stderr\n{err}")
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])  # type: ignore[no-any-return]
    if timed_out:
        return {"na": f"timed out after {case.timeout:g} s, killed"}
    last = (err.strip().splitlines() or ["no output"])[-1][:200]
    return {"error": f"case process exited {proc.returncode} without a result: {last}"}


def _describe(result: dict[str, Any]) -> str:
    if "na" in result:
        return f"n/a: {result['na']}"
    if "error" in result:
        return f"ERROR: {result['error']}"
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "n"}
    return ", ".join(f"{k}={v:.4g}" for k, v in shown.items())


def plan_rounds(cases: list[Any], rounds: int) -> list[Any]:
    """Every case once, then the ``repeat`` cases again ``rounds - 1`` times,
    backward and forward in turn (a drift in the machine's speed then falls
    on procsup and its peers alike)."""
    again = [case for case in cases if case.repeat]
    order = list(cases)
    for r in range(1, rounds):
        order += again[::-1] if r % 2 else again
    return order


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's result from its rounds: each number the median of the rounds
    that gave figures; the first round's problem if none did."""
    good = [r for r in runs if "na" not in r and "error" not in r]
    if len(good) < 2:
        return good[0] if good else runs[0]
    merged = dict(good[0])
    for key in good[0]:
        values = [r[key] for r in good if key in r]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[key] = statistics.median_low(values)  # counts stay whole
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = statistics.median(values)
    merged["rounds"] = [{k: v for k, v in r.items() if k != "rounds"} for r in good]
    return merged


def run_cases(cases: list[Any], quick: bool, logs: Path) -> dict[str, dict[str, Any]]:
    """Run the cases in order (consecutive concurrent ones a few at a time);
    a case that comes more than once gets its rounds' medians (merge_rounds)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    total = len(cases)
    done = 0

    def report(case: Any, result: dict[str, Any], started: float) -> None:
        nonlocal done
        done += 1
        took = time.perf_counter() - started
        print(
            f"[{done:2}/{total}] {case.name}: {_describe(result)} ({took:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    i = 0
    while i < total:
        batch = [cases[i]]
        if cases[i].concurrent:
            while i + len(batch) < total and cases[i + len(batch)].concurrent:
                batch.append(cases[i + len(batch)])
        i += len(batch)
        if len(batch) == 1:
            started = time.perf_counter()
            result = run_one(batch[0], quick, logs, len(runs.get(batch[0].name, ())))
            runs.setdefault(batch[0].name, []).append(result)
            report(batch[0], result, started)
            continue

        def timed(case: Any) -> tuple[Any, dict[str, Any], float]:
            started = time.perf_counter()
            return case, run_one(case, quick, logs), started

        with ThreadPoolExecutor(CONCURRENT_CASES) as pool:
            for future in as_completed([pool.submit(timed, case) for case in batch]):
                case, result, started = future.result()
                runs.setdefault(case.name, []).append(result)
                report(case, result, started)
    return {name: merge_rounds(results) for name, results in runs.items()}


def machine_header(quick: bool, started: float) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"## procsup benchmarks{' (quick)' if quick else ''}\n\n"
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, load average at start {load}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}.\n"
    )


def _byte_compile_procsup() -> None:
    """Measure procsup as installed: a wheel install byte-compiles it, but a
    checkout under PYTHONDONTWRITEBYTECODE=1 would have every worker compile
    procsup's modules from source at start (about 10 ms of each start)."""
    import compileall

    import procsup

    compileall.compile_dir(str(Path(procsup.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated groups (floors, worker, w1 ... w8, load; aliases pool, issue5, "
        "issue6, issue14, all) or case names; the reference cases their targets need run too",
    )
    parser.add_argument(
        "--out", default="bench-results", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved runs of the quick timing cases (medians; default 3, 1 with --quick)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)
    if args.case:
        run_case(args.case, args.quick)

    from cases import select
    from report import build, markdown, verdicts

    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    cases = select(args.only)
    _byte_compile_procsup()
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    header = machine_header(args.quick, started)
    print(
        f"running {len(cases)} cases, the quick timing ones {rounds} times; output in {out}/",
        file=sys.stderr,
        flush=True,
    )
    results = run_cases(plan_rounds(cases, rounds), args.quick, logs)
    sections = build(results)
    counts = verdicts(sections)
    took = time.time() - started
    text = (
        header
        + "\n"
        + markdown(sections)
        + f"\nTargets: {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['n/a']} n/a; "
        f"the run took {took:.0f} s.\n"
    )
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {"quick": args.quick, "started": started, "seconds": took, "results": results}, indent=2
        )
    )
    try:
        from chart import write_chart

        write_chart(results, out / "chart.png")
        print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'chart.png'}")
    except ImportError as exc:
        print(f"chart skipped: {exc} (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
