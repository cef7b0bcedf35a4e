"""One PNG with four panels: W1 throughput, round trips, start times, memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cases import METHODS, W1_SHORT
from report import Results, problem


def _value(results: Results, name: str, key: str) -> float | None:
    res = results.get(name)
    if problem(res) is not None or res is None or key not in res:
        return None
    return float(res[key])


def _bars(
    ax: Any,
    items: list[tuple[str, float | None]],
    title: str,
    unit: str,
    log: bool = False,
    procsup_color: str = "tab:blue",
) -> None:
    shown = [(label, v) for label, v in items if v is not None]
    ax.set_title(title, fontsize=10)
    if not shown:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [label for label, _ in shown]
    colors = [procsup_color if label.startswith("procsup") else "tab:gray" for label in labels]
    ax.barh(labels, [v for _, v in shown], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    if log:
        ax.set_xscale("log")
    ax.tick_params(axis="y", labelsize=7)


def write_chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (w1_ax, rtt_ax), (start_ax, mem_ax) = axes

    w1 = [(f"procsup {m}", _value(results, f"w1_procsup_{m}", "rate")) for m in METHODS]
    w1 += [(label, _value(results, f"w1_{p}", "rate")) for p, label in W1_SHORT.items()]
    _bars(w1_ax, w1, "W1: one-shot jobs/s (fresh process per job, 2 callers)", "jobs/s")
    fork = _value(results, "fork_rate", "rate")
    if fork is not None and w1_ax.axison:
        w1_ax.axvline(fork / 2, color="tab:red", linestyle="--", label="0.5x fork+exit+waitpid")
        w1_ax.legend(fontsize=7, loc="lower right")

    rtt = [
        ("socketpair ping-pong", _value(results, "socketpair_rtt", "p50")),
        ("procsup worker.run warm", _value(results, "worker_rtt", "p50")),
    ]
    for m in METHODS:
        rtt.append((f"procsup W4 reuse, {m}", _value(results, f"w4_procsup_{m}_reuse", "p50")))
    for m in METHODS:
        rtt.append((f"procsup W4 one-shot, {m}", _value(results, f"w4_procsup_{m}_oneshot", "p50")))
    rtt.append(("mp fork W4 one-shot", _value(results, "w4_mp_fork_oneshot", "p50")))
    rtt = [(label, None if v is None else v * 1e6) for label, v in rtt]
    _bars(rtt_ax, rtt, "Round trips, p50 (log scale)", "µs", log=True)

    starts = [
        ("python -c pass", _value(results, "python_start", "median")),
        ("procsup open_worker spawn-to-ready", _value(results, "worker_spawn", "median")),
    ]
    starts += [(f"procsup W2 4 warm, {m}", _value(results, f"w2_{m}", "median")) for m in METHODS]
    starts = [(label, None if v is None else v * 1e3) for label, v in starts]
    _bars(start_ax, starts, "Starting workers (median)", "ms")
    ideal = next(
        (
            _value(results, f"w2_{m}", "ideal")
            for m in METHODS
            if _value(results, f"w2_{m}", "ideal") is not None
        ),
        None,
    )
    if ideal is not None and start_ax.axison:
        start_ax.axvline(ideal * 1e3, color="tab:red", linestyle="--", label="W2 ideal")
        start_ax.legend(fontsize=7, loc="lower right")

    mem = [(f"procsup {m}", f"w5_procsup_{m}") for m in METHODS] + [("mp fork", "w5_mp_fork")]
    measured = [(label, name) for label, name in mem if _value(results, name, "uss") is not None]
    mem_ax.set_title("W5: idle warm worker memory", fontsize=10)
    if measured:
        width = 0.25
        for i, key in enumerate(("rss", "pss", "uss")):
            xs = [j + (i - 1) * width for j in range(len(measured))]
            ys = [_value(results, name, key) or 0.0 for _, name in measured]
            mem_ax.bar(xs, ys, width, label=key.upper())
        mem_ax.set_xticks(range(len(measured)), [label for label, _ in measured])
        mem_ax.set_ylabel("MiB")
        mem_ax.legend(fontsize=7)
    else:
        mem_ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=mem_ax.transAxes)
        mem_ax.set_axis_off()

    fig.suptitle("procsup benchmarks (blue: procsup, gray: floors and peers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
