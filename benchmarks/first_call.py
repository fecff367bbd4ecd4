"""``python -m benchmarks.first_call``: what a fresh process pays for its first reduction, ours vs the peer.

A notebook or a batch job starts, imports the package, opens a file and asks for one mean: the
user waits for all of that, not for a warm call. Each round starts two fresh interpreters, ours
and PyActiveStorage's (in its own venv, see :mod:`benchmarks.peer`), in an order that alternates
round by round, each timing in-process

- ``import``: ``from activestorage import Active``;
- ``open``: ``Active(path, "tas")`` on the plain 415 MB file (4 MB chunks);
- ``first``: the first whole-variable ``mean``; ``second``: the same call again (warm);
- ``cpu_...``: the process's CPU seconds (all threads) over the same steps: robust to other
  load on the machine, which stretches the wall-clock figures (and favours the side with more
  threads: the peer runs 30, we run one per core);

and reports per figure the median over rounds and the median of the per-round ratios ours/peer
(with min-max): ``open+first`` is the issue's figure (#22 item 4), ``import+open+first`` what a
script's user waits for after the interpreter itself started. Every mean is checked against the
NumPy oracle. ``--a TREE`` measures another source tree of ours instead of (or with ``--b``,
beside) this one, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import data, pagecache, peer
from .ab import compile_tree

REPO = Path(__file__).resolve().parents[1]

#: the child program; ``PEER`` selects the peer's calling convention
CHILD = r"""
import json, sys, time
clock = [(time.perf_counter(), time.process_time())]
from activestorage import Active
clock.append((time.perf_counter(), time.process_time()))
path, var, peer = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if peer:  # it prints a line per chunk
    import contextlib, io
    quiet = contextlib.redirect_stdout(io.StringIO())
    quiet.__enter__()
a = Active(path, var)
if peer:
    a._version = 1
clock.append((time.perf_counter(), time.process_time()))
results = []
for _ in range(2):
    results.append(float(a.mean()[...] if peer else a.mean[...]))
    clock.append((time.perf_counter(), time.process_time()))
if peer:
    quiet.__exit__(None, None, None)
out = {"result": results[0]}
for i, name in enumerate(("import", "open", "first", "second")):
    out[name] = clock[i + 1][0] - clock[i][0]
    out["cpu_" + name] = clock[i + 1][1] - clock[i][1]
print(json.dumps(out))
"""

FIGURES = ("import", "open", "first", "second", "open+first", "import+open+first",
           "cpu_open+first", "cpu_import+open+first")


def run_child(python: Path, tree: Path | None, path: Path, peer_side: bool,
              cwd: Path) -> dict[str, float]:
    """One fresh process's figures (seconds)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ACTIVESTORAGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    r = subprocess.run([str(python), "-c", CHILD, str(path), data.VAR, "1" if peer_side else "0"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{'peer' if peer_side else tree}: " + r.stderr.strip()[-800:])
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    rec["open+first"] = rec["open"] + rec["first"]
    rec["import+open+first"] = rec["import"] + rec["open"] + rec["first"]
    for k in ("open+first", "import+open+first"):  # CPU seconds of the process, all threads
        rec["cpu_" + k] = sum(rec["cpu_" + part] for part in k.split("+"))
    return rec


def ratio_summary(num: list[float], den: list[float]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(num, den) if b > 0]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_call",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--a", type=Path, default=None,
                   help="another source tree of ours, measured as 'A' beside this one ('B')")
    p.add_argument("--b", type=Path, default=REPO, help="our source tree (default: this one)")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-venv", type=Path, default=None,
                   help="the peer's venv (default: the tests' cached one where it exists, else "
                        "DATA_DIR/.venv-peer, made if needed)")
    p.add_argument("--quick", action="store_true", help="the ~20 MB plain file")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    spec = next(s for s in data.specs(args.quick) if s.name == "plain")
    path = data.ensure(spec, args.data_dir)
    want = float(data.ensure_oracle(spec, path)["whole"])
    sides: dict[str, tuple[Path, Path | None, bool]] = {"B": (Path(sys.executable), args.b.resolve(), False)}
    if args.a is not None:
        sides["A"] = (Path(sys.executable), args.a.resolve(), False)
    if not args.no_peer:
        venv = args.peer_venv or next((v for v in [peer.test_cache_venv()] if v.exists()),
                                      args.data_dir / ".venv-peer")
        python, _version = peer.make_venv(venv)
        sides["peer"] = (python, None, True)
    for _python, tree, _peer in sides.values():
        if tree is not None:
            compile_tree(tree)  # as installed: compiled modules on disk (see benchmarks.ab)
    pagecache.recache(path)
    got: dict[str, dict[str, list[float]]] = {s: {f: [] for f in FIGURES} for s in sides}
    names = list(sides)
    with tempfile.TemporaryDirectory(prefix="activestorage-first-") as tmp, pagecache.Pinned([path]):
        for r in range(args.rounds):
            for side in names[r % len(names):] + names[:r % len(names)]:
                python, tree, is_peer = sides[side]
                # the peer runs outside any tree (its import name is ours too)
                rec = run_child(python, tree, path, is_peer, Path(tmp) if is_peer else tree)
                if abs(rec["result"] - want) > 1e-4 * abs(want):
                    raise SystemExit(f"{side}: mean {rec['result']} != oracle {want}")
                for f in FIGURES:
                    got[side][f].append(rec[f])
    out: dict[str, Any] = {"rounds": args.rounds, "file": str(path),
                           "median_s": {s: {f: statistics.median(v) for f, v in d.items()}
                                        for s, d in got.items()},
                           "times_s": got, "ratios": {}}
    pairs = [(s, "peer") for s in ("B", "A") if s in sides and "peer" in sides]
    if "A" in sides:
        pairs.append(("B", "A"))
    for num, den in pairs:
        out["ratios"][f"{num}/{den}"] = {f: ratio_summary(got[num][f], got[den][f]) for f in FIGURES}
    print(f"fresh process, plain file, median of {args.rounds} rounds (ms); "
          f"sides: " + ", ".join(f"{s}={t or 'PyActiveStorage'}" for s, (_p, t, _i) in sides.items()))
    print("| figure | " + " | ".join(sides) + " | " + " | ".join(out["ratios"]) + " |")
    print("|---|" + "---:|" * (len(sides) + len(out["ratios"])))
    for f in FIGURES:
        cells = [f"{1e3 * out['median_s'][s][f]:.1f}" for s in sides]
        cells += [f"{r[f]['median']:.2f} ({r[f]['min']:.2f}-{r[f]['max']:.2f})"
                  for r in out["ratios"].values()]
        print(f"| {f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
