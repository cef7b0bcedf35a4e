"""The registry of benchmark cases. Each case runs in a process of its own
(``run.py --case NAME``), so a peer that hangs or leaks cannot disturb the
next measurement, and fork-based floors run in a process without threads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

METHODS = ("exec", "forkserver")
W3_MODES = ("raise", "exit", "hang")
W1_PEERS = {
    "mp_fork": "multiprocessing.Pool(2, maxtasksperchild=1), fork",
    "mp_forkserver": "multiprocessing.Pool(2, maxtasksperchild=1), forkserver",
    "mp_spawn": "multiprocessing.Pool(2, maxtasksperchild=1), spawn",
    "ppe_forkserver": "ProcessPoolExecutor(2, max_tasks_per_child=1), forkserver",
    "pebble": "pebble.ProcessPool(2, max_tasks=1), fork",
    "loky": "loky.ProcessPoolExecutor(1), a fresh one per job",
    "trio_parallel": "trio_parallel WorkerContext(retire=after 1 job), spawn",
}
W1_SHORT = {  # chart labels
    "mp_fork": "mp.Pool fork",
    "mp_forkserver": "mp.Pool forkserver",
    "mp_spawn": "mp.Pool spawn",
    "ppe_forkserver": "ProcessPoolExecutor forkserver",
    "pebble": "pebble",
    "loky": "loky (executor per job)",
    "trio_parallel": "trio-parallel spawn",
}
W3_PEER_LABELS = {
    "mp_fork": "multiprocessing.Pool(2), fork",
    "ppe_forkserver": "ProcessPoolExecutor(2), forkserver",
    "pebble": "pebble.ProcessPool(2)",
    "loky": "loky.ProcessPoolExecutor(2)",
    "trio_parallel": "trio_parallel WorkerContext, spawn",
}
LOAD_TASKS = 200  # concurrent acquirers
LOAD_JOBS = 2000
LOAD_POOL = 8  # idle = max_workers: every acquirer beyond it waits
LOAD_LAG_LIMIT = 0.05  # seconds of event-loop lag at p99
W1_JOBS = {"module": "jobs.getpid, a user module", "builtin": "os.getpid"}
PAYLOAD_KINDS = ("bytes", "numpy")
W6_PEERS = {
    "mp_fork": "multiprocessing.Pool(1).apply, fork",
    "trio_parallel": "trio_parallel.run_sync, default context",
}
W8_ORDERS = {"unordered": "", "ordered": "_ordered"}  # pool.map's order: the case's suffix
W8_PEERS = {
    "mp_fork": "multiprocessing.Pool(2).imap_unordered(chunksize=1), fork",
    "trio_parallel": "trio_parallel.run_sync, 2 callers, limiter of 2",
}
GROUPS = ("floors", "worker", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "load")
ALIASES = {
    "pool": ("w1", "w2"),
    "issue5": ("load",),
    "issue6": ("w3", "w4", "w5"),
    "issue14": ("w1", "w6", "w7", "w8"),
    "all": GROUPS,
}


@attrs.frozen
class Case:
    name: str
    group: str
    run: Callable[[bool], dict[str, Any]]  # run(quick) -> figures
    timeout: float = 120.0  # the orchestrator kills the case after this
    concurrent: bool = False  # may run beside other such cases (W3 peers: mostly waiting)
    script: str = "run.py"  # the script that runs it with --case NAME [--quick]
    # Run again in each of --rounds interleaved rounds (its figures are the
    # rounds' medians): the quick cases whose figures a target compares.
    repeat: bool = True


def _floors(quick: bool) -> dict[str, Any]:
    raise RuntimeError("floor cases run as floors.py --case NAME, in a bare interpreter")


def _procsup(name: str, *args: Any, quick_arg: bool = True) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import procsup_cases

        fn = getattr(procsup_cases, name)
        return fn(*args, quick) if quick_arg else fn(*args)  # type: ignore[no-any-return]

    return run


def _peer(name: str, *args: Any, quick_arg: bool = True) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import peers

        fn = getattr(peers, name)
        return fn(*args, quick) if quick_arg else fn(*args)  # type: ignore[no-any-return]

    return run


def w1_budget(quick: bool) -> float:
    """Seconds a W1 implementation may take for its jobs (slow peers stop early)."""
    return 4.0 if quick else 15.0


def w3_cap(quick: bool) -> float:
    """Seconds a peer may take to report a start failure before it counts as hanging."""
    return 2.0 if quick else 5.0


def _w1_peer(peer: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import peers

        total = 20 if quick else 200
        budget = w1_budget(quick)
        if peer.startswith("mp_"):
            return peers.w1_mp(peer[3:], total, budget)
        if peer == "ppe_forkserver":
            return peers.w1_ppe(total, budget)
        return getattr(peers, f"w1_{peer}")(total, budget)  # type: ignore[no-any-return]

    return run


def _w3_peer(peer: str, mode: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import peers

        return peers.w3_peer(peer, mode, w3_cap(quick))

    return run


def _w1_procsup(method: str, job: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import procsup_cases

        return procsup_cases.w1_throughput(method, job, quick, w1_budget(quick))

    return run


def all_cases() -> list[Case]:
    """Every case, in the order they run."""
    cases = [
        Case("python_start", "floors", _floors, script="floors.py"),
        Case("fork_rate", "floors", _floors, script="floors.py"),
        Case("socketpair_rtt", "floors", _floors, script="floors.py"),
        Case("trio_rtt", "floors", _floors, script="floors.py"),
        Case("memcpy_bandwidth", "floors", _floors, script="floors.py"),
        Case("worker_spawn", "worker", _procsup("worker_spawn")),
        Case("worker_rtt", "worker", _procsup("worker_rtt")),
    ]
    for method in METHODS:
        cases.append(Case(f"w2_{method}", "w2", _procsup("w2_warm", method)))
    for method in METHODS:
        cases.append(Case(f"w1_procsup_{method}", "w1", _w1_procsup(method, "module")))
        cases.append(Case(f"w1_procsup_{method}_builtin", "w1", _w1_procsup(method, "builtin")))
    for peer in W1_PEERS:  # the slow ones (5-15 s each) only once
        cases.append(Case(f"w1_{peer}", "w1", _w1_peer(peer), repeat=peer == "mp_fork"))
    for method in METHODS:
        for mode in W3_MODES:
            run = _procsup("w3_start_failure", method, mode, 4, quick_arg=False)
            cases.append(Case(f"w3_procsup_{method}_{mode}", "w3", run, repeat=False))
        run = _procsup("w3_start_failure", method, "hang", 0, quick_arg=False)
        cases.append(Case(f"w3_procsup_{method}_hang_idle0", "w3", run, repeat=False))
    for peer in W3_PEER_LABELS:  # W3 and W5 are outcomes and sizes, not timings
        for mode in W3_MODES:
            run = _w3_peer(peer, mode)
            cases.append(Case(f"w3_{peer}_{mode}", "w3", run, 60.0, True, repeat=False))
    for method in METHODS:
        for kind in ("oneshot", "reuse"):
            run = _procsup("w4_sequential", method, kind == "reuse")
            cases.append(Case(f"w4_procsup_{method}_{kind}", "w4", run))
    cases.append(Case("w4_procsup_asyncio_reuse", "w4", _procsup("w4_async_reuse")))
    cases.append(Case("w4_mp_fork_oneshot", "w4", _peer("w4_mp_fork_oneshot")))
    cases.append(Case("w4_trio_parallel_reuse", "w4", _peer("w4_trio_parallel_reuse")))
    for method in METHODS:
        run = _procsup("w5_memory", method, quick_arg=False)
        cases.append(Case(f"w5_procsup_{method}", "w5", run, repeat=False))
    cases.append(Case("w5_mp_fork", "w5", _peer("w5_mp_fork", quick_arg=False), repeat=False))
    for kind in PAYLOAD_KINDS:
        cases.append(Case(f"w6_procsup_{kind}", "w6", _procsup("w6_payload", kind)))
        for peer in W6_PEERS:
            cases.append(Case(f"w6_{peer}_{kind}", "w6", _peer(f"w6_{peer}", kind)))
    cases.append(Case("w7_procsup", "w7", _procsup("w7_idle_workers"), 300.0, repeat=False))
    for order, suffix in W8_ORDERS.items():
        cases.append(Case(f"w8_procsup{suffix}", "w8", _procsup("w8_many_jobs", order), 180.0))
    for peer in W8_PEERS:  # trio-parallel's takes 15 s: once
        run = _peer(f"w8_{peer}")
        cases.append(Case(f"w8_{peer}", "w8", run, 180.0, repeat=peer == "mp_fork"))
    run = _procsup("load_fairness", LOAD_TASKS, LOAD_JOBS, LOAD_POOL)
    cases.append(Case("load_procsup", "load", run, 60.0, repeat=False))
    return cases


# Cases whose figures the targets compare against: selecting the left one
# (by group) also runs the right ones.
REFERENCES = {
    "worker": ("python_start", "socketpair_rtt", "trio_rtt"),
    "w1": ("fork_rate",),
    "w4": ("socketpair_rtt", "trio_rtt"),
    "w6": ("memcpy_bandwidth",),
}


def select(only: str | None) -> list[Case]:
    """The cases named by ``--only`` (groups, aliases or case names, comma
    separated), plus the reference cases their targets need."""
    cases = all_cases()
    if not only:
        return cases
    by_name = {case.name: case for case in cases}
    wanted: set[str] = set()
    for word in (w.strip() for w in only.split(",")):
        if not word:
            continue
        groups = ALIASES.get(word, (word,) if word in GROUPS else ())
        if groups:
            wanted.update(c.name for c in cases if c.group in groups)
        elif word in by_name:
            wanted.add(word)
        else:
            known = ", ".join([*GROUPS, *ALIASES])
            raise SystemExit(f"--only: unknown name {word!r} (groups: {known}; or a case name)")
    for name in list(wanted):
        wanted.update(REFERENCES.get(by_name[name].group, ()))
    return [case for case in cases if case.name in wanted]
