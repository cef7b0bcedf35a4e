"""Smoke test of the benchmark script: it runs and prints its tables.

No timing assertions: speed targets are judged by the script itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "floors,worker",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| Measurement | Result | Compared with | Ratio | Target | Verdict |" in lines
    assert any(line.startswith("| open_worker() spawn-to-ready") for line in lines)
    assert any(line.startswith("| `python -c pass` start") for line in lines)
    assert "ERROR" not in proc.stdout
    assert (out / "results.md").read_text().startswith("## procsup benchmarks")
    assert (out / "results.json").exists()
