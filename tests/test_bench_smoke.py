"""Smoke test of the benchmark script: it runs and prints its tables.

No timing assertions: speed targets are judged by the script itself.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_HEADER = "| Measurement | Result | Compared with | Ratio | Target | Verdict |"


def run_quick(only: str, out: Path, timeout: float, *args: str) -> list[str]:
    """Run ``benchmarks/run.py --quick --only ONLY ARGS``; its stdout lines."""
    script = str(ROOT / "benchmarks" / "run.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--only", only, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stdout
    assert TABLE_HEADER in proc.stdout.splitlines()
    return proc.stdout.splitlines()


def test_quick_benchmark_prints_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    lines = run_quick("floors,worker", out, timeout=60)
    assert any(line.startswith("| open_worker() spawn-to-ready") for line in lines)
    assert any(line.startswith("| `python -c pass` start") for line in lines)
    assert (out / "results.md").read_text().startswith("## procsup benchmarks")
    assert (out / "results.json").exists()


def test_rounds_report_each_figure_as_the_median_of_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    lines = run_quick("socketpair_rtt,w5_mp_fork", out, 60, "--rounds", "3")
    row = next(line for line in lines if line.startswith("| socketpair ping-pong"))
    assert "median of 3 runs" in row
    results = json.loads((out / "results.json").read_text())["results"]
    rounds = results["socketpair_rtt"]["rounds"]
    assert len(rounds) == 3
    assert results["socketpair_rtt"]["p50"] == statistics.median(r["p50"] for r in rounds)
    assert "rounds" not in results["w5_mp_fork"]  # a size, measured once
    assert (out / "logs" / "socketpair_rtt.r3.log").exists()


def test_quick_issue14_cases_run(tmp_path: Path) -> None:
    """W6 (payload round trips), W7 (idle workers), W8 (many small jobs) at
    tiny sizes: each procsup case measures; a peer that is not installed
    shows n/a."""
    lines = run_quick("w6,w7,w8", tmp_path / "bench", timeout=180)
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| W")}
    for measurement in (
        "| W6 bytes payload round trip (counted both ways), procsup pool.run",
        "| W7 idle workers: open until warm",
        "| W7 idle workers: parent CPU while idle",
        "| W8 100,000 trivial jobs on 2 reusing workers, procsup pool.map(ordered=False)",
    ):
        assert measurement in rows, lines
        assert " n/a: " not in rows[measurement]
    assert any(line.startswith("| memcpy of W6's payload") for line in lines)
