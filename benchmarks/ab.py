"""``python -m benchmarks.ab --a TREE --b TREE``: is revision B slower than revision A, case by case?

A one-after-another run of the suite for two revisions compares figures taken minutes apart, and
on a shared machine the load moves by more than the change being judged (+-20 % here). This tool
pairs the runs instead: for every (method, dataset) it runs A's worker and B's worker back to back,
each in a fresh process (``python -m benchmarks.worker`` from that tree, with that tree first on
``PYTHONPATH``), alternating which goes first round by round (A B, B A, A B, ...), over many short
rounds. Each round gives one *paired* ratio per case, B's median time over A's, taken seconds
apart, so load that lasts longer than a pair falls on both sides. Reported per case: the median
of the paired ratios, a bootstrap 95 % interval of that median and the min/max ratio. A case is
``slower`` when the whole interval lies above ``1 + --tolerance`` (default 5 %), ``faster`` when it
lies below ``1 - tolerance``, otherwise ``same``.

Both trees read the same datasets (made once, read back into the page cache and locked there as
in the main run, :mod:`benchmarks.pagecache`) and the same remote store (one nginx, or moto with
``--store s3``); server methods talk to a reduction server started from the side's own tree, so
the server's code is part of what is compared. Every result is checked against the NumPy oracle.
A tree needs ``activestorage/`` (with its C extension built or copied in) and ``benchmarks/``; both
run in this interpreter, so its environment must hold both trees' dependencies.

Writes ``benchmarks/results/<stamp>-ab.json``; exit code 1 when a case failed or is wrong, 2 when
a case is slower (with ``--fail-slower``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data, pagecache, services
from .worker import MODULES

REPO = Path(__file__).resolve().parents[1]
METHODS = tuple(m for names in MODULES.values() for m in names)
DEFAULT_METHODS = ("ours_posix", "ours_fetch", "ours_server_batch")
REMOTE = {"ours_fetch", "ours_server_chunk", "ours_server_batch", "moto_get", "nginx_get"}
NEEDS_SERVER = {"ours_server_chunk", "ours_server_batch"}
#: fewer paired ratios than this give no verdict
MIN_ROUNDS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="source tree of revision A (the 'before')")
    p.add_argument("--b", type=Path, default=REPO, help="source tree of revision B (default: this one)")
    p.add_argument("--only", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods (default %(default)s); any of " + ", ".join(METHODS))
    p.add_argument("--datasets", default="", help="comma-separated subset of plain,zlib,small,missing")
    p.add_argument("--cases", default="", help="comma-separated subset of whole,sub,axis0")
    p.add_argument("--rounds", type=int, default=8, help="paired rounds (default %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per process; its median is the "
                   "process's figure (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs first for local methods (remote methods: 0, as in the suite)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="a ratio interval entirely above 1 + this is 'slower' (default %(default)s)")
    p.add_argument("--store", choices=("s3", "http"), default=None,
                   help="remote store: nginx (http, default) or moto (s3, default with --quick)")
    p.add_argument("--quick", action="store_true", help="the ~20 MB datasets")
    p.add_argument("--page-cache", choices=("read", "as-is"), default="read")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR)
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--worker-timeout", type=float, default=900.0)
    p.add_argument("--fail-slower", action="store_true", help="exit 2 when a case is slower")
    return p.parse_args(argv)


def check_tree(tree: Path) -> Path:
    """``tree`` resolved, after checking it holds a package and the benchmark worker."""
    tree = tree.resolve()
    for need in ("activestorage/__init__.py", "benchmarks/worker.py"):
        if not (tree / need).exists():
            raise SystemExit(f"{tree} has no {need}: not an activestorage source tree")
    return tree


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes ``tree``'s ``activestorage`` the one imported (and lets Python
    keep compiled modules, as an installed package has them: see :func:`compile_tree`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ACTIVESTORAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    return env


def compile_tree(tree: Path) -> None:
    """Byte-compile ``tree``'s package and benchmarks once, up front: an installed package has its
    ``.pyc`` files, and with ``PYTHONDONTWRITEBYTECODE`` set (as some sandboxes do) every fresh
    process would otherwise compile the source again, a cost that grows with the code's size and
    that no user pays (it made the larger revision's first calls look slower)."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", "activestorage", "benchmarks"],
                       cwd=tree, env=tree_env(tree), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: compileall failed: {r.stdout.strip()[-400:]}")


def imported_from(tree: Path) -> str:
    """Where ``activestorage`` comes from under :func:`tree_env` (must be inside ``tree``)."""
    r = subprocess.run([sys.executable, "-c", "import activestorage, activestorage._fused as f; "
                        "print(activestorage.__file__)"], cwd=tree, env=tree_env(tree),
                       capture_output=True, text=True, timeout=120)
    where = r.stdout.strip()
    if r.returncode != 0 or not where.startswith(str(tree) + os.sep):
        raise SystemExit(f"{tree}: activestorage (with its C extension) is not importable from "
                         f"the tree ({where or r.stderr.strip().splitlines()[-1:]})")
    return where


def run_side(tree: Path, method: str, config: dict[str, Any], work: Path, tag: str,
             timeout: float) -> dict[str, Any]:
    """One fresh worker process of ``tree`` over one dataset: its record, or an error record."""
    cfg, out = work / f"{tag}.config.json", work / f"{tag}.result.json"
    cfg.write_text(json.dumps(config))
    out.unlink(missing_ok=True)
    try:
        r = subprocess.run([sys.executable, "-m", "benchmarks.worker", method, str(cfg), str(out)],
                           cwd=tree, env=tree_env(tree), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if r.returncode != 0 or not out.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {r.returncode}: " + " | ".join(tail)}
    return json.loads(out.read_text())


def bootstrap_median(ratios: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the median of ``ratios`` (deterministic seed)."""
    if len(ratios) < 2:
        return (ratios[0], ratios[0]) if ratios else (float("nan"), float("nan"))
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return meds[int(0.025 * n)], meds[min(n - 1, int(0.975 * n))]


def summarise(times_a: list[float], times_b: list[float], tolerance: float,
              cpu_a: list[float] | None = None, cpu_b: list[float] | None = None) -> dict[str, Any]:
    """Paired ratios B/A of one case and what they say (the verdict is the wall-clock one's; the
    client's CPU seconds, blind to a server's work but not stretched by other load, beside it)."""
    ratios = [b / a for a, b in zip(times_a, times_b) if a > 0]
    if not ratios:
        return {"ratios": [], "verdict": "no data"}
    lo, hi = bootstrap_median(ratios)
    verdict = ("slower" if lo > 1 + tolerance else "faster" if hi < 1 - tolerance else "same")
    if len(ratios) < MIN_ROUNDS:  # a bootstrap of 2-4 values says little
        verdict = f"too few rounds ({len(ratios)} < {MIN_ROUNDS})"
    return {"ratio_median": statistics.median(ratios), "ci95": [lo, hi],
            "min": min(ratios), "max": max(ratios), "ratios": ratios, "verdict": verdict,
            "a_median_s": statistics.median(times_a), "b_median_s": statistics.median(times_b),
            "a_times_s": times_a, "b_times_s": times_b,
            "cpu_ratio_median": _cpu_ratio(cpu_a or [], cpu_b or [])}


def _cpu_ratio(cpu_a: list[float], cpu_b: list[float]) -> float | None:
    ratios = [b / a for a, b in zip(cpu_a, cpu_b) if a > 0]
    return statistics.median(ratios) if ratios else None


def print_table(summary: dict[str, dict[str, Any]], label_a: str, label_b: str, rounds: int) -> None:
    print(f"\nB/A per case: median of {rounds} paired ratios (fresh process each side, "
          f"A={label_a}, B={label_b}); 95 % bootstrap interval; min-max")
    print("| method | dataset/case | A median s | B median s | B/A | 95 % interval | min-max | "
          "verdict | CPU B/A |")
    print("|---|---|---:|---:|---:|---|---|---|---:|")
    for key, s in summary.items():
        method, case = key.split(" ", 1)
        if "ratio_median" not in s:
            print(f"| {method} | {case} | | | | | | {s.get('verdict', 'no data')} |")
            continue
        print(f"| {method} | {case} | {s['a_median_s']:.4f} | {s['b_median_s']:.4f} | "
              f"{s['ratio_median']:.3f} | {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f} | "
              f"{s['min']:.3f}-{s['max']:.3f} | {s['verdict']} | "
              f"{s['cpu_ratio_median'] or float('nan'):.3f} |")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"A": check_tree(args.a), "B": check_tree(args.b)}
    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {', '.join(METHODS)}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwind: stop the servers
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the servers' processes too (compile_tree)
    for tree in trees.values():
        compile_tree(tree)
        imported_from(tree)
    store = args.store or ("s3" if args.quick else "http")
    from .__main__ import prepare  # the suite's dataset + oracle step, reused as is

    datasets, oracle = prepare(args)
    wanted_cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    for d in datasets:
        d["cases"] = [c for c in d["cases"] if not wanted_cases or c["name"] in wanted_cases]
    files = [Path(d["path"]) for d in datasets]
    started = dt.datetime.now(dt.timezone.utc)
    if args.page_cache == "read":
        for f in files:
            pagecache.recache(f)
    times: dict[str, dict[str, list[float]]] = {}
    problems: list[str] = []
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / (f"{started.strftime('%Y%m%dT%H%M%SZ')}"
                              f"{'-quick' if args.quick else ''}-ab.json")

    def save(times: dict[str, dict[str, list[float]]], problems: list[str],
             rounds: int) -> dict[str, dict[str, Any]]:
        summary = {k: summarise(v["A"], v["B"], args.tolerance, v["A_cpu"], v["B_cpu"])
                   for k, v in times.items()}
        record = {"started": started.isoformat(), "a": str(trees["A"]), "b": str(trees["B"]),
                  "rounds": rounds, "runs": args.runs, "warmup": args.warmup, "store": store,
                  "tolerance": args.tolerance, "quick": args.quick, "loadavg": os.getloadavg(),
                  "command": "python -m benchmarks.ab " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),
                  "summary": summary, "problems": problems}
        out.write_text(json.dumps(record, indent=1))
        return summary
    srv = services.servers_module()
    remote = bool(REMOTE & set(methods))
    with tempfile.TemporaryDirectory(prefix="activestorage-ab-") as tmp, \
            pagecache.Pinned(files if args.page_cache == "read" else []), \
            services.started(Path(tmp), files, args.data_dir, moto=remote and store == "s3",
                             server=False, nginx=remote and store == "http") as svc:
        work = Path(tmp)
        np.savez(work / "oracle.npz", **oracle)
        servers = {}
        try:
            if NEEDS_SERVER & set(methods):
                for side, tree in trees.items():  # each side's own server code
                    servers[side] = srv.start_active_server(
                        work / f"server-{side}", "--no-access-log", "--log-level", "warning",
                        env={"PYTHONPATH": str(tree)})
            for d in datasets:
                d["s3_url"] = svc.s3_url(Path(d["path"])) if svc.s3 else None
                d["http_url"] = svc.http_url(Path(d["path"]))
                d["remote_url"] = d["s3_url"] if store == "s3" else d["http_url"]
            t_start = time.perf_counter()
            for r in range(args.rounds):
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for method in methods:
                    for d in datasets:
                        recs = {}
                        for side in order:
                            cfg = {"runs": args.runs, "store": store,
                                   "warmup": 0 if method in REMOTE else args.warmup,
                                   "oracle": str(work / "oracle.npz"), "s3": svc.s3,
                                   "server_url": servers[side].url if side in servers else None,
                                   "datasets": [d]}
                            recs[side] = run_side(trees[side], method, cfg, work,
                                                  f"{side}-{method}-{d['name']}",
                                                  args.worker_timeout)
                        for side, rec in recs.items():
                            bad = rec.get("error") or rec["datasets"][d["name"]].get("error")
                            if bad:
                                problems.append(f"{side} {method} {d['name']} round {r + 1}: {bad}")
                        if any("error" in rec or "error" in rec["datasets"][d["name"]]
                               for rec in recs.values()):
                            continue
                        for case in d["cases"]:
                            got = {s: rec["datasets"][d["name"]]["cases"][case["name"]]
                                   for s, rec in recs.items()}
                            key = f"{method} {d['name']}/{case['name']}"
                            for side, c in got.items():
                                if "error" in c or (c.get("check") and not c["check"]["ok"]):
                                    why = c.get("error") or c["check"].get("why")
                                    problems.append(f"{side} {key} round {r + 1}: {why}")
                            if all("median_s" in c for c in got.values()):
                                t = times.setdefault(key, {"A": [], "B": [], "A_cpu": [],
                                                           "B_cpu": []})
                                for side in "AB":
                                    t[side].append(got[side]["median_s"])
                                    t[side + "_cpu"].append(got[side].get("cpu_s") or 0.0)
                save(times, problems, r + 1)  # an interrupted run keeps its finished rounds
                print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f}s)",
                      flush=True)
        finally:
            for s in servers.values():
                s.stop()
    summary = save(times, problems, args.rounds)
    print_table(summary, str(trees["A"]), str(trees["B"]), args.rounds)
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"wrote {out}")
    if problems:
        return 1
    if args.fail_slower and any(s.get("verdict") == "slower" for s in summary.values()):
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
