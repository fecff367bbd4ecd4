"""``python -m benchmarks.ab --a TREE --b TREE``: is revision B slower than revision A, case by case?

A one-after-another run of the suite for two revisions compares figures taken minutes apart, and
on a shared machine the load moves by more than the change being judged (+-20 % here). This tool
pairs the runs instead: for every (method, dataset) it runs A's worker and B's worker back to back,
each in a fresh process (``python -m benchmarks.worker`` from that tree, with that tree first on
``PYTHONPATH``), alternating which goes first round by round (A B, B A, A B, ...), over many short
rounds. Each round gives one *paired* ratio per case, B's median time over A's, taken seconds
apart, so load that lasts longer than a pair falls on both sides. ``--interleave run`` pairs
closer still: one warm process per tree and dataset, opened once, then single runs of A and B
alternating, milliseconds apart (the steadier on a busy machine). Reported per case: the median
of the paired ratios, a bootstrap 95 % interval of that median and the min/max ratio. A case is
``slower`` when the whole interval lies above ``1 + --tolerance`` (default 5 %), ``faster`` when it
lies below ``1 - tolerance``, otherwise ``same``; beside it the ratio of the client's CPU seconds
and (``--interleave run``) of the server process's, which other load does not stretch.

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
from dataclasses import dataclass
from typing import Any, Callable

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
    p.add_argument("--rounds", type=int, default=8,
                   help="paired rounds (default %(default)s); with --interleave run: paired runs "
                        "per case")
    p.add_argument("--interleave", choices=("process", "run"), default="process",
                   help="process (default): fresh A and B processes per round, each timing "
                        "--runs runs; run: one warm process per tree and dataset, single runs of "
                        "A and B alternating (pairs milliseconds apart: the steadier under load)")
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



@dataclass
class Context:
    """What both interleaving modes need."""

    trees: dict[str, Path]
    methods: list[str]
    datasets: list[dict[str, Any]]
    work: Path
    store: str
    s3: dict[str, str] | None
    server_urls: dict[str, str]
    server_pids: dict[str, int]
    args: argparse.Namespace
    times: dict[str, dict[str, list[float]]]
    problems: list[str]
    save: Callable[[dict[str, dict[str, list[float]]], list[str], int], Any]

    def config(self, side: str, method: str, ds: dict[str, Any]) -> dict[str, Any]:
        return {"runs": self.args.runs, "store": self.store,
                "warmup": 0 if method in REMOTE else self.args.warmup,
                "oracle": str(self.work / "oracle.npz"), "s3": self.s3,
                "server_url": self.server_urls.get(side), "datasets": [ds]}

    def add(self, key: str, wall: dict[str, float], cpu: dict[str, float],
            server_cpu: dict[str, float] | None = None) -> None:
        t = self.times.setdefault(key, {"A": [], "B": [], "A_cpu": [], "B_cpu": [],
                                        "A_server_cpu": [], "B_server_cpu": []})
        for side in "AB":
            t[side].append(wall[side])
            t[side + "_cpu"].append(cpu[side])
            if server_cpu is not None:
                t[side + "_server_cpu"].append(server_cpu[side])

    def server_cpu(self, side: str) -> float | None:
        """CPU seconds the side's server process has used so far (Linux), or None."""
        pid = self.server_pids.get(side)
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None


def by_process(ctx: Context) -> None:
    """Each round: per (method, dataset), A's and B's worker in fresh processes back to back
    (order alternating round by round); a case's figure is its process's median of ``--runs``."""
    t_start = time.perf_counter()
    for r in range(ctx.args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for method in ctx.methods:
            for d in ctx.datasets:
                recs = {side: run_side(ctx.trees[side], method, ctx.config(side, method, d),
                                       ctx.work, f"{side}-{method}-{d['name']}",
                                       ctx.args.worker_timeout) for side in order}
                failed = False
                for side, rec in recs.items():
                    bad = rec.get("error") or rec["datasets"][d["name"]].get("error")
                    if bad:
                        ctx.problems.append(f"{side} {method} {d['name']} round {r + 1}: {bad}")
                        failed = True
                if failed:
                    continue
                for case in d["cases"]:
                    got = {s: rec["datasets"][d["name"]]["cases"][case["name"]]
                           for s, rec in recs.items()}
                    key = f"{method} {d['name']}/{case['name']}"
                    for side, c in got.items():
                        if "error" in c or (c.get("check") and not c["check"]["ok"]):
                            why = c.get("error") or c["check"].get("why")
                            ctx.problems.append(f"{side} {key} round {r + 1}: {why}")
                    if all("median_s" in c for c in got.values()):
                        ctx.add(key, {s: c["median_s"] for s, c in got.items()},
                                {s: c.get("cpu_s") or 0.0 for s, c in got.items()})
        ctx.save(ctx.times, ctx.problems, r + 1)  # an interrupted run keeps its finished rounds
        print(f"round {r + 1}/{ctx.args.rounds} done ({time.perf_counter() - t_start:.0f}s)",
              flush=True)


#: the warm child of ``--interleave run``: opens one dataset with the tree's own benchmark method
#: (``benchmarks.<module>.FACTORIES``, present in every revision), then times one run per case
#: name read from stdin, answering one JSON line each
CHILD = r"""
import importlib, json, sys, time
import numpy as np
from benchmarks.measure import compare
from benchmarks.worker import module_of
method, config_path = sys.argv[1], sys.argv[2]
with open(config_path) as f:
    config = json.load(f)
ds = config["datasets"][0]
oracle = np.load(config["oracle"])
runner = importlib.import_module("benchmarks." + module_of(method)).FACTORIES[method](ds, config)
cases = {c["name"]: c for c in ds["cases"]}
print(json.dumps({"ready": True, "skip": getattr(runner, "skip", None)}), flush=True)
for line in sys.stdin:
    name = line.strip()
    if not name:
        break
    c0, t0 = time.process_time(), time.perf_counter()
    result = runner.run(cases[name])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    key = ds["name"] + "/" + name
    checked = getattr(runner, "checks_result", True) and key in oracle.files  # limits: no result
    check = compare(result, oracle[key]) if checked else {"ok": True}
    result = None
    print(json.dumps({"wall": wall, "cpu": cpu, "ok": check["ok"], "why": check.get("why")}),
          flush=True)
runner.close()
"""


class Warm:
    """One tree's warm child process (see :data:`CHILD`)."""

    def __init__(self, tree: Path, method: str, config: dict[str, Any], path: Path) -> None:
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, method, str(path)], cwd=tree,
                                     env=tree_env(tree), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        #: why the method does not run on this dataset (a limit measured elsewhere only), or None
        self.skip = self.ask(None).get("skip")

    def ask(self, case: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if case is not None:
            self.proc.stdin.write(case + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError("worker died: " + " | ".join(err.strip().splitlines()[-6:]))
        return json.loads(line)

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def by_run(ctx: Context) -> None:
    """Per (method, dataset): one warm process per tree, opened once; then ``--rounds`` times per
    case one run of A and one of B back to back (order alternating), so each paired ratio
    compares runs milliseconds apart. The first run of each side per case is a warm-up."""
    t_start = time.perf_counter()
    for method in ctx.methods:
        for d in ctx.datasets:
            warm: dict[str, Warm] = {}
            try:
                for side in ("A", "B"):
                    warm[side] = Warm(ctx.trees[side], method, ctx.config(side, method, d),
                                      ctx.work / f"{side}-{method}-{d['name']}.warm.json")
                skip = warm["A"].skip or warm["B"].skip
                if skip:
                    print(f"{method} {d['name']} skipped: {skip}", flush=True)
                    continue
                for case in d["cases"]:
                    key = f"{method} {d['name']}/{case['name']}"
                    for side in ("A", "B"):  # warm-up, and the result checked
                        got = warm[side].ask(case["name"])
                        if not got["ok"]:
                            ctx.problems.append(f"{side} {key}: wrong result ({got['why']})")
                    for r in range(ctx.args.rounds):
                        order = ("A", "B") if r % 2 == 0 else ("B", "A")
                        res, srv_cpu = {}, {}
                        for side in order:
                            before = ctx.server_cpu(side)
                            res[side] = warm[side].ask(case["name"])
                            after = ctx.server_cpu(side)
                            if before is not None and after is not None:
                                srv_cpu[side] = after - before
                        ctx.add(key, {s: g["wall"] for s, g in res.items()},
                                {s: g["cpu"] for s, g in res.items()},
                                srv_cpu if len(srv_cpu) == 2 else None)
            except (RuntimeError, OSError, ValueError) as exc:
                ctx.problems.append(f"{method} {d['name']}: {exc}")
            finally:
                for w in warm.values():
                    w.close()
            ctx.save(ctx.times, ctx.problems, ctx.args.rounds)
            print(f"{method} {d['name']} done ({time.perf_counter() - t_start:.0f}s)", flush=True)


def bootstrap_median(ratios: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the median of ``ratios`` (deterministic seed)."""
    if len(ratios) < 2:
        return (ratios[0], ratios[0]) if ratios else (float("nan"), float("nan"))
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return meds[int(0.025 * n)], meds[min(n - 1, int(0.975 * n))]


def summarise(times_a: list[float], times_b: list[float], tolerance: float,
              cpu_a: list[float] | None = None, cpu_b: list[float] | None = None,
              server_cpu_a: list[float] | None = None,
              server_cpu_b: list[float] | None = None) -> dict[str, Any]:
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
            "cpu_ratio_median": _cpu_ratio(cpu_a or [], cpu_b or []),
            # the server's CPU seconds per run (--interleave run): 10 ms ticks, so only
            # runs of many ticks say much
            "server_cpu_ratio_median": _cpu_ratio(server_cpu_a or [], server_cpu_b or []),
            "server_cpu_a_median_s": statistics.median(server_cpu_a) if server_cpu_a else None,
            "server_cpu_b_median_s": statistics.median(server_cpu_b) if server_cpu_b else None}


def _cpu_ratio(cpu_a: list[float], cpu_b: list[float]) -> float | None:
    ratios = [b / a for a, b in zip(cpu_a, cpu_b) if a > 0]
    return statistics.median(ratios) if ratios else None


def print_table(summary: dict[str, dict[str, Any]], label_a: str, label_b: str, rounds: int,
                mode: str = "process") -> None:
    how = "fresh process each side" if mode == "process" else "runs of two warm processes"
    print(f"\nB/A per case: median of {rounds} paired ratios ({how}, "
          f"A={label_a}, B={label_b}); 95 % bootstrap interval; min-max")
    print("| method | dataset/case | A median s | B median s | B/A | 95 % interval | min-max | "
          "verdict | client CPU B/A | server CPU B/A |")
    print("|---|---|---:|---:|---:|---|---|---|---:|---:|")
    for key, s in summary.items():
        method, case = key.split(" ", 1)
        if "ratio_median" not in s:
            print(f"| {method} | {case} | | | | | | {s.get('verdict', 'no data')} |")
            continue
        print(f"| {method} | {case} | {s['a_median_s']:.4f} | {s['b_median_s']:.4f} | "
              f"{s['ratio_median']:.3f} | {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f} | "
              f"{s['min']:.3f}-{s['max']:.3f} | {s['verdict']} | "
              f"{_fmt(s['cpu_ratio_median'])} | {_fmt(s.get('server_cpu_ratio_median'))} |")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


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
        summary = {k: summarise(v["A"], v["B"], args.tolerance, v["A_cpu"], v["B_cpu"],
                                v["A_server_cpu"], v["B_server_cpu"]) for k, v in times.items()}
        record = {"started": started.isoformat(), "a": str(trees["A"]), "b": str(trees["B"]),
                  "rounds": rounds, "interleave": args.interleave, "runs": args.runs,
                  "warmup": args.warmup, "store": store,
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
            ctx = Context(trees, methods, datasets, work, store, svc.s3,
                          {side: srv_.url for side, srv_ in servers.items()},
                          {side: srv_.proc.pid for side, srv_ in servers.items()}, args, times,
                          problems, save)
            (by_run if args.interleave == "run" else by_process)(ctx)
        finally:
            for s in servers.values():
                s.stop()
    summary = save(times, problems, args.rounds)
    print_table(summary, str(trees["A"]), str(trees["B"]), args.rounds, args.interleave)
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
