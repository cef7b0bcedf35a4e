"""Turn the cases' figures into markdown tables with targets, and a chart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from cases import (
    LOAD_JOBS,
    LOAD_LAG_LIMIT,
    LOAD_POOL,
    LOAD_TASKS,
    METHODS,
    PAYLOAD_KINDS,
    W1_PEERS,
    W1_SHORT,
    W3_MODES,
    W3_PEER_LABELS,
    W6_PEERS,
    W8_PEERS,
)

Results = dict[str, dict[str, Any]]

W3_INIT_TIMEOUT = 1.0
W3_HANG_LIMIT = 3 * W3_INIT_TIMEOUT + 1.0
W3_FAST_LIMIT = 0.5


@attrs.frozen
class Row:
    measurement: str
    result: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@attrs.frozen
class Section:
    title: str
    rows: list[Row]


# -- formatting ------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}/s"


def problem(res: dict[str, Any] | None) -> str | None:
    """Why a case has no figures ("n/a: ..."), or None when it has."""
    if res is None:
        return "not run"
    if "na" in res:
        return f"n/a: {res['na']}"
    if "error" in res:
        return f"ERROR: {res['error']}"
    return None


def _note(res: dict[str, Any]) -> str:
    notes = [res["note"]] if res.get("note") else []
    if res.get("rounds"):
        notes.append(f"median of {len(res['rounds'])} runs")
    if res.get("leaked"):
        notes.append(f"{res['leaked']} processes left after the case")
    return f" ({'; '.join(notes)})" if notes else ""


def compare(
    measurement: str,
    res: dict[str, Any] | None,
    shown: Callable[[dict[str, Any]], str],
    ref: dict[str, Any] | None,
    ref_label: Callable[[dict[str, Any]], str],
    keys: tuple[str, str],
    target: str = "",
    limit: tuple[str, float] | None = None,
) -> Row:
    """A row comparing ``res[keys[0]]`` with ``ref[keys[1]]`` as a ratio,
    judged PASS when the ratio is ``limit`` = ("<=" or ">=", bound)."""
    na = "n/a" if limit else ""
    why = problem(res)
    if why is not None or res is None:
        return Row(measurement, why or "", target=target, verdict=na)
    result = shown(res) + _note(res)
    ref_why = problem(ref)
    if ref_why is not None or ref is None:
        return Row(measurement, result, ref_why or "", target=target, verdict=na)
    ratio = res[keys[0]] / ref[keys[1]]
    verdict = ""
    if limit is not None:
        op, bound = limit
        verdict = "PASS" if (ratio <= bound if op == "<=" else ratio >= bound) else "MISS"
    return Row(measurement, result, ref_label(ref), f"{ratio:.2f}x", target, verdict)


def at_least(
    measurement: str,
    res: dict[str, Any] | None,
    shown: Callable[[dict[str, Any]], str],
    ref: dict[str, Any] | None,
    ref_label: Callable[[dict[str, Any]], str],
    bound: float,
    key: str = "rate",
) -> Row:
    """A row judged PASS when ``res[key]`` is at least ``bound`` times ``ref[key]``."""
    return compare(
        measurement, res, shown, ref, ref_label, (key, key), f">= {bound:g}x", (">=", bound)
    )


def plain(
    measurement: str, res: dict[str, Any] | None, shown: Callable[[dict[str, Any]], str]
) -> Row:
    why = problem(res)
    if why is not None or res is None:
        return Row(measurement, why or "")
    return Row(measurement, shown(res) + _note(res))


def bounded(
    measurement: str,
    res: dict[str, Any] | None,
    shown: Callable[[dict[str, Any]], str],
    ok: Callable[[dict[str, Any]], bool],
    target: str,
) -> Row:
    """A row judged against an absolute target: PASS when ``ok(res)``."""
    why = problem(res)
    if why is not None or res is None:
        return Row(measurement, why or "", target=target, verdict="n/a")
    verdict = "PASS" if ok(res) else "MISS"
    return Row(measurement, shown(res) + _note(res), target=target, verdict=verdict)


def _latency(res: dict[str, Any]) -> str:
    return f"p50 {fmt_time(res['p50'])}, p99 {fmt_time(res['p99'])} (n={res['n']})"


def _median(res: dict[str, Any]) -> str:
    return f"{fmt_time(res['median'])} (min {fmt_time(res['min'])}, n={res['n']})"


def _throughput(res: dict[str, Any]) -> str:
    distinct = "all pids distinct" if res["distinct"] else "PIDS REPEAT"
    return (
        f"{fmt_rate(res['rate'])}; p50 {fmt_time(res['p50'])}, p99 {fmt_time(res['p99'])}; "
        f"{res['n']} jobs, {distinct}"
    )


def _memory(res: dict[str, Any]) -> str:
    return f"RSS {res['rss']:.1f} / USS {res['uss']:.1f} / PSS {res['pss']:.1f} MiB"


def _socketpair(res: dict[str, Any]) -> str:
    return f"socketpair p50 {fmt_time(res['p50'])}"


# -- sections --------------------------------------------------------------------


def floors(r: Results) -> Section:
    rows = [
        plain("`python -c pass` start, median", r.get("python_start"), _median),
        plain(
            "fork + _exit + waitpid in a loop, bare interpreter",
            r.get("fork_rate"),
            lambda x: f"{fmt_rate(x['rate'])} (n={x['n']})",
        ),
        plain("socketpair ping-pong with a forked echo child", r.get("socketpair_rtt"), _latency),
        plain(
            "the same ping-pong from a trio loop (send, wait_readable, recv; no other work)",
            r.get("trio_rtt"),
            _latency,
        ),
        plain(
            "memcpy of W6's payload into a buffer, in one process",
            r.get("memcpy_bandwidth"),
            _bandwidth,
        ),
    ]
    return Section("A. Floors (this machine, this run)", rows)


def worker(r: Results) -> Section:
    rows = [
        compare(
            "open_worker() spawn-to-ready, no-op initializer",
            r.get("worker_spawn"),
            _median,
            r.get("python_start"),
            lambda x: f"`python -c pass` {fmt_time(x['median'])}",
            keys=("median", "median"),
            target="<= 2x",
            limit=("<=", 2.0),
        ),
        compare(
            "warm worker.run(noop), max_jobs=None",
            r.get("worker_rtt"),
            _latency,
            r.get("socketpair_rtt"),
            _socketpair,
            keys=("p50", "p50"),
            target="p50 <= 3x",
            limit=("<=", 3.0),
        ),
    ]
    return Section("B. procsup worker (issue 2)", rows)


# W1 judges each start method against the peers that start workers the same
# way: forkserver (a fork per worker) against mp fork, exec (a fresh
# interpreter per worker) against mp spawn and the other spawning peers.
W1_SAME_KIND = {"forkserver": "mp_fork", "exec": "mp_spawn"}
W1_PEER_KINDS = {"forkserver": tuple(W1_PEERS), "exec": ("mp_spawn", "trio_parallel", "loky")}


def _best_peer(r: Results, method: str) -> dict[str, Any] | None:
    peers = W1_PEER_KINDS[method]
    rated = [(r[f"w1_{p}"]["rate"], p) for p in peers if problem(r.get(f"w1_{p}")) is None]
    if not rated:
        return None
    rate, peer = max(rated)
    return {"rate": rate, "label": W1_PEERS[peer]}


def _w1_rows(r: Results, method: str) -> list[Row]:
    res = r.get(f"w1_procsup_{method}")
    builtin = r.get(f"w1_procsup_{method}_builtin")
    peer = W1_SAME_KIND[method]
    rows = [
        at_least(
            f"W1 one-shot throughput, job in a user module, 2 callers, idle=2, procsup {method}",
            res,
            _throughput,
            r.get(f"w1_{peer}"),
            lambda x: f"{W1_SHORT[peer]} {fmt_rate(x['rate'])}",
            1.5,
        ),
        at_least(
            f"W1 procsup {method}: job in a user module vs os.getpid",
            res,
            lambda x: fmt_rate(x["rate"]),
            builtin,
            lambda x: f"os.getpid {fmt_rate(x['rate'])}",
            0.9,
        ),
        at_least(
            f"W1 procsup {method}, os.getpid",
            builtin,
            _throughput,
            _best_peer(r, method),
            lambda x: f"best peer {fmt_rate(x['rate'])}: {x['label']}",
            1.5,
        ),
    ]
    # An exec worker is a new interpreter: the fork floor is no floor for it.
    limit = (">=", 0.5) if method == "forkserver" else None
    rows.append(
        compare(
            f"W1 procsup {method} vs the fork floor",
            res,
            lambda x: fmt_rate(x["rate"]),
            r.get("fork_rate"),
            lambda x: f"fork+exit+waitpid {fmt_rate(x['rate'])}",
            ("rate", "rate"),
            ">= 0.5x" if limit else "",
            limit,
        )
    )
    for job, case in ((res, "a user module"), (builtin, "os.getpid")):
        if problem(job) is None and job is not None and not job["distinct"]:
            label = f"W1 procsup {method}, {case}: a fresh worker per job"
            rows.append(Row(label, "PIDS REPEAT", verdict="MISS"))
    return rows


def pool(r: Results) -> Section:
    rows = []
    for method in METHODS:
        w2 = r.get(f"w2_{method}")
        rows.append(
            compare(
                f"W2 warm 4 workers (150 ms CPU init each), {method}",
                w2,
                _median,
                w2,
                lambda x: f"ideal {fmt_time(x['ideal'])}",
                keys=("median", "ideal"),
                target="<= 1.15x",
                limit=("<=", 1.15),
            )
        )
    for method in METHODS:
        rows += _w1_rows(r, method)
    for peer, label in W1_PEERS.items():
        rows.append(plain(f"W1 peer: {label}", r.get(f"w1_{peer}"), _throughput))
    return Section("C. Pool (issues 3 and 14; W1 peers run the job from a user module)", rows)


def _w3_result(res: dict[str, Any]) -> str:
    if "hang" in res:
        text = f"hangs (>{res['hang']:g} s)"
    else:
        text = f"{fmt_time(res['seconds'])}, {res['raised']}"
    text += f"; {res['left']} left"
    if "after_close" in res:
        text += f", {res['after_close']} after close"
    return text


def _w3_procsup_row(mode: str, res: dict[str, Any] | None, label: str) -> Row:
    limit = W3_HANG_LIMIT if mode == "hang" else W3_FAST_LIMIT
    target = f"<= {limit:g} s, nothing left"
    why = problem(res)
    if why is not None or res is None:
        return Row(label, why or "", target=target, verdict="n/a")
    ok = "hang" not in res and res["seconds"] <= limit and res["left"] == 0
    ok = ok and res.get("after_close", 0) == 0
    return Row(label, _w3_result(res) + _note(res), target=target, verdict="PASS" if ok else "MISS")


def issue6(r: Results) -> Section:
    rows = []
    for mode in W3_MODES:
        for method in METHODS:
            label = f"W3 init {mode}s, procsup {method} (init_timeout=1, 3 attempts)"
            rows.append(_w3_procsup_row(mode, r.get(f"w3_procsup_{method}_{mode}"), label))
        if mode == "hang":
            for method in METHODS:
                label = f"W3 init hangs, procsup {method}, idle=0"
                rows.append(_w3_procsup_row(mode, r.get(f"w3_procsup_{method}_hang_idle0"), label))
        for peer, label in W3_PEER_LABELS.items():
            name = f"W3 init {mode}s, peer: {label}"
            rows.append(plain(name, r.get(f"w3_{peer}_{mode}"), _w3_result))
    mp_oneshot = r.get("w4_mp_fork_oneshot")
    for method in METHODS:
        rows.append(
            compare(
                f"W4 100 sequential jobs, reuse (max_jobs=None), procsup {method}",
                r.get(f"w4_procsup_{method}_reuse"),
                _latency,
                r.get("socketpair_rtt"),
                _socketpair,
                keys=("p50", "p50"),
                target="p50 <= 2x",
                limit=("<=", 2.0),
            )
        )
        rows.append(
            compare(
                f"W4 100 sequential jobs, one-shot (max_jobs=1, idle=2), procsup {method}",
                r.get(f"w4_procsup_{method}_oneshot"),
                _latency,
                mp_oneshot,
                lambda x: f"mp fork one-shot p50 {fmt_time(x['p50'])}",
                keys=("p50", "p50"),
                target="p50 <= 0.33x",
                limit=("<=", 1 / 3),
            )
        )
    on_loop = r.get("w4_procsup_asyncio_reuse")
    rows.append(
        compare(
            "W4 reuse, async def noop on worker_loop='asyncio'",
            on_loop,
            _latency,
            on_loop,
            lambda x: f"sync noop, default worker, p50 {fmt_time(x['sync_p50'])}",
            keys=("p50", "sync_p50"),
            target="p50 <= 1.5x",
            limit=("<=", 1.5),
        )
    )
    label = "W4 peer: multiprocessing.Pool(2, maxtasksperchild=1), fork, one-shot"
    rows.append(plain(label, mp_oneshot, _latency))
    mp_mem = r.get("w5_mp_fork")
    for method in METHODS:
        targeted = method == "forkserver"
        rows.append(
            compare(
                f"W5 idle warm worker memory, procsup {method}",
                r.get(f"w5_procsup_{method}"),
                _memory,
                mp_mem,
                lambda x: f"mp fork worker USS {x['uss']:.1f} MiB",
                keys=("uss", "uss"),
                target="USS <= 1x" if targeted else "",
                limit=("<=", 1.0) if targeted else None,
            )
        )
    rows.append(plain("W5 peer: multiprocessing fork worker", mp_mem, _memory))
    return Section("D. Start failures, sequential jobs, memory (issue 6)", rows)


def load(r: Results) -> Section:
    res = r.get("load_procsup")
    where = f"{LOAD_TASKS} tasks, {LOAD_JOBS:,} noop jobs, pool of {LOAD_POOL} reused workers"
    rows = [
        plain(
            f"Load throughput and acquire wait: {where}",
            res,
            lambda x: f"{fmt_rate(x['rate'])}; wait {_latency(x)}",
        ),
        bounded(
            "Load FIFO: most later waiters that acquired before one waiter",
            res,
            lambda x: f"{x['overtake']}",
            lambda x: x["overtake"] <= LOAD_POOL,
            f"<= {LOAD_POOL} (the pool size)",
        ),
        plain(
            "Load starvation: longest single acquire wait", res, lambda x: fmt_time(x["max_wait"])
        ),
        bounded(
            "Load: parent event-loop lag (a task sleeping 1 ms in a loop)",
            res,
            lambda x: (
                f"p50 {fmt_time(x['lag_p50'])}, p99 {fmt_time(x['lag_p99'])}, "
                f"max {fmt_time(x['lag_max'])} (n={x['lag_n']})"
            ),
            lambda x: x["lag_p99"] < LOAD_LAG_LIMIT,
            f"p99 < {fmt_time(LOAD_LAG_LIMIT)}",
        ),
    ]
    return Section("E. Load (issue 5)", rows)


def _bandwidth(res: dict[str, Any]) -> str:
    took = fmt_time(res["median"])
    return f"{res['gbps']:.2f} GB/s ({took} median, {res['mib']:g} MiB, n={res['n']})"


def issue14(r: Results) -> Section:
    rows = []
    memcpy = r.get("memcpy_bandwidth")
    for kind in PAYLOAD_KINDS:
        res = r.get(f"w6_procsup_{kind}")
        what = f"W6 {kind} payload round trip (counted both ways), procsup pool.run"
        rows.append(
            at_least(
                what,
                res,
                _bandwidth,
                r.get(f"w6_mp_fork_{kind}"),
                lambda x: f"mp fork {x['gbps']:.2f} GB/s",
                4.0,
                key="gbps",
            )
        )
        rows.append(
            at_least(
                f"W6 {kind}: procsup vs in-process memcpy",
                res,
                lambda x: f"{x['gbps']:.2f} GB/s",
                memcpy,
                lambda x: f"memcpy {x['gbps']:.2f} GB/s",
                0.25,
                key="gbps",
            )
        )
        for peer, label in W6_PEERS.items():
            rows.append(plain(f"W6 {kind} peer: {label}", r.get(f"w6_{peer}_{kind}"), _bandwidth))
    for method in METHODS:
        rows.append(
            compare(
                f"W4 reuse p50, procsup {method}, vs trio-parallel (fork workers)",
                r.get(f"w4_procsup_{method}_reuse"),
                lambda x: fmt_time(x["p50"]),
                r.get("w4_trio_parallel_reuse"),
                lambda x: f"trio-parallel p50 {fmt_time(x['p50'])}",
                keys=("p50", "p50"),
                target="<= 0.8x",
                limit=("<=", 0.8),
            )
        )
        rows.append(
            compare(
                f"W4 one-shot p50, procsup {method}, vs multiprocessing fork",
                r.get(f"w4_procsup_{method}_oneshot"),
                lambda x: fmt_time(x["p50"]),
                r.get("w4_mp_fork_oneshot"),
                lambda x: f"mp fork one-shot p50 {fmt_time(x['p50'])}",
                keys=("p50", "p50"),
                target="<= 0.7x",
                limit=("<=", 0.7),
            )
        )
    rows.append(
        plain(
            "W4 peer: trio_parallel reusing workers, fork, sequential noop",
            r.get("w4_trio_parallel_reuse"),
            _latency,
        )
    )
    w7 = r.get("w7_procsup")
    rows += [
        bounded(
            "W7 idle workers: open until warm",
            w7,
            lambda x: f"{fmt_time(x['open'])} for {x['workers']:,} ({x['rate']:,.0f} workers/s)",
            lambda x: x["open"] < 60.0,
            "< 60 s",
        ),
        bounded(
            "W7 idle workers: parent CPU while idle",
            w7,
            lambda x: (
                f"{x['cpu'] * 100:.2f}% of a core "
                f"({x['cpu_per_worker'] * 1e6:.1f} µs per worker per second)"
            ),
            lambda x: x["cpu"] < 0.01,
            "< 1% of a core",
        ),
        plain(
            "W7 idle workers: parent descriptors, and closing",
            w7,
            lambda x: (
                f"{x['fds']:,} descriptors ({x['fds_per_worker']:.2f} per worker); "
                f"closed in {fmt_time(x['close'])}; {x['setting']}"
            ),
        ),
    ]
    w8 = r.get("w8_procsup")
    rows.append(
        at_least(
            "W8 100,000 trivial jobs on 2 reusing workers, procsup pool.map(ordered=False)",
            w8,
            _many_jobs,
            r.get("w8_mp_fork"),
            lambda x: f"imap_unordered {fmt_rate(x['rate'])}",
            1.5,
        )
    )
    rows.append(plain("W8 procsup pool.map(ordered=True)", r.get("w8_procsup_ordered"), _many_jobs))
    for peer, label in W8_PEERS.items():
        rows.append(plain(f"W8 peer: {label}", r.get(f"w8_{peer}"), _many_jobs))
    return Section("F. Payloads, a thousand workers, many small jobs (issue 14)", rows)


def _many_jobs(res: dict[str, Any]) -> str:
    return f"{fmt_rate(res['rate'])} ({res['n']:,} jobs in {fmt_time(res['elapsed'])})"


def build(results: Results) -> list[Section]:
    """The sections with at least one measured (or attempted) case."""
    sections = [
        floors(results),
        worker(results),
        pool(results),
        issue6(results),
        load(results),
        issue14(results),
    ]
    return [
        attrs.evolve(s, rows=[row for row in s.rows if row.result != "not run"])
        for s in sections
        if any(row.result != "not run" for row in s.rows)
    ]


def markdown(sections: list[Section]) -> str:
    out = []
    for section in sections:
        out += [f"### {section.title}", ""]
        out.append("| Measurement | Result | Compared with | Ratio | Target | Verdict |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for row in section.rows:
            cells = [c.replace("|", "\\|") for c in attrs.astuple(row)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def verdicts(sections: list[Section]) -> dict[str, int]:
    counts = {"PASS": 0, "MISS": 0, "n/a": 0}
    for section in sections:
        for row in section.rows:
            if row.verdict in counts:
                counts[row.verdict] += 1
    return counts
