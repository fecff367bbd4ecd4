"""``python -m benchmarks [--quick] [--only NAMES] [--no-peer]``: the side-by-side benchmark run.

Makes (or reuses) the datasets, computes the NumPy oracle, starts moto / our server / nginx as
loopback processes when a selected method needs them, then runs every method in a fresh process
(see :mod:`benchmarks.worker`, :mod:`benchmarks.peer`), prints one table per dataset and writes
``benchmarks/results/<timestamp>.json`` and ``.png``. Exit code 1 if any method failed or any
result disagrees with the oracle.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data, pagecache, peer, report, services

log = logging.getLogger("benchmarks")

GROUPS: dict[str, tuple[str, ...]] = {
    "limits": ("numpy_memory", "pread", "decode_1core", "decode_threads", "moto_get", "nginx_get"),
    "baselines": ("netcdf4_numpy", "xarray", "h5py_numpy"),
    "ours": ("ours_posix", "ours_fetch", "ours_server_chunk", "ours_server_batch"),
    "peer": peer.METHODS,
}
ALL = tuple(m for ms in GROUPS.values() for m in ms)
REMOTE = {"ours_fetch", "ours_server_chunk", "ours_server_batch", "peer_reductionist"}
NEEDS_SERVER = {"ours_server_chunk", "ours_server_batch", "peer_reductionist"}
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="~20 MB datasets and 1 timed run: checks the suite works (under a minute)")
    p.add_argument("--only", default="",
                   help="comma-separated methods or groups (" + ", ".join(GROUPS) + "); "
                        "methods: " + ", ".join(ALL))
    p.add_argument("--datasets", default="", help="comma-separated subset of plain,zlib,small,missing")
    p.add_argument("--store", choices=("auto", "s3", "http"), default="auto",
                   help="where remote methods read the files: moto S3 or nginx HTTP. auto: s3 with "
                        "--quick, http otherwise (moto reads the WHOLE object for every range GET, "
                        "so 400 MB objects make it, not the client, the thing measured)")
    p.add_argument("--no-peer", action="store_true",
                   help="skip PyActiveStorage (no venv is created)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per case (default 3; quick 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole list of methods this many times, one after another, and "
                        "take each case's median over every run of every round: the machine's "
                        "drift over minutes then falls on every method alike")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs first for local methods (default 1; quick 0; remote: 0)")
    p.add_argument("--page-cache", choices=("read", "as-is"), default="read",
                   help="read (default): before timing, drop each file from the page cache, "
                        "read it back once and lock it there for the run (see "
                        "benchmarks/pagecache.py); as-is: leave the cache as it is")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR)
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--worker-timeout", type=float, default=None,
                   help="seconds one method may take on one dataset (default 1800; quick 120)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def select_methods(only: str, no_peer: bool) -> list[str]:
    wanted: list[str] = []
    for item in (x.strip() for x in only.split(",") if x.strip()):
        if item in GROUPS:
            wanted += GROUPS[item]
        elif item in ALL:
            wanted.append(item)
        else:
            raise SystemExit(f"--only: unknown method or group {item!r}; choose from "
                             f"{', '.join(GROUPS)}, {', '.join(ALL)}")
    methods = [m for m in ALL if not wanted or m in wanted]
    if no_peer:
        methods = [m for m in methods if m not in peer.METHODS]
    return methods


def describe(spec: data.Spec, path: Path) -> str:
    comp = "zlib+shuffle" if spec.zlib else "uncompressed"
    miss = ", _FillValue land + missing_value" if spec.missing else ""
    decoded = spec.ntime * data.NLAT * data.NLON * 4
    return (f"float32 {(spec.ntime, data.NLAT, data.NLON)} = {decoded / 1e6:.0f} MB decoded, "
            f"{path.stat().st_size / 1e6:.0f} MB on disk, chunks {spec.chunks} "
            f"({int(np.prod(spec.chunks)) * 4 / 1024:.0f} KiB), {comp}{miss}")


def prepare(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Datasets (written if needed), their per-case stored bytes, and the combined oracle."""
    wanted = {x.strip() for x in args.datasets.split(",") if x.strip()}
    out, oracle = [], {}
    for spec in data.specs(args.quick):
        if wanted and spec.name not in wanted:
            continue
        t0 = time.perf_counter()
        path = data.ensure(spec, args.data_dir)
        for k, v in data.ensure_oracle(spec, path).items():
            oracle[f"{spec.name}/{k}"] = v
        index = data.chunk_index(path)
        cases = data.cases(spec.ntime)
        stored = {c["name"]: sum(s for _o, s in data.touched(index, spec.chunks, c["box"]))
                  for c in cases}
        out.append({"name": spec.name, "path": str(path), "chunks": list(spec.chunks),
                    "zlib": spec.zlib, "missing": spec.missing, "ntime": spec.ntime,
                    "cases": cases, "stored_bytes": stored, "file_bytes": path.stat().st_size,
                    "nchunks": len(index), "describe": describe(spec, path)})
        log.info("dataset %s ready in %.1fs", spec.name, time.perf_counter() - t0)
    if not out:
        raise SystemExit(f"--datasets {args.datasets!r} matches none of plain,zlib,small,missing")
    return out, oracle


def run_method(method: str, config: dict[str, Any], workdir: Path, timeout: float,
               peer_python: Path | None, isolate: bool = True) -> dict[str, Any]:
    """Run one method over every dataset; with ``isolate`` each dataset in a fresh process (so
    each case's peak RSS is its own, not raised by what an earlier dataset left in the
    allocator), else all in one (quicker to start). One record either way."""
    if not isolate:
        return run_worker(method, config, workdir, timeout, peer_python)
    merged: dict[str, Any] = {"method": method, "datasets": {}, "wall_s": 0.0,
                              "loadavg_1min": {"before": 0.0, "after": 0.0}}
    errors = []
    for ds in config["datasets"]:
        rec = run_worker(method, dict(config, datasets=[ds]), workdir, timeout, peer_python,
                         tag=ds["name"])
        if "error" in rec:
            errors.append(f"{ds['name']}: {rec['error']}")
            continue
        merged["datasets"].update(rec.get("datasets", {}))
        merged["wall_s"] += rec.get("wall_s", 0.0)
        for k, v in rec.get("loadavg_1min", {}).items():
            merged["loadavg_1min"][k] = max(merged["loadavg_1min"][k], v)
        for k, v in rec.items():
            if k not in merged and k not in ("datasets", "wall_s", "loadavg_1min"):
                merged[k] = v
    if errors:
        merged["error"] = "; ".join(errors)
    return merged


def _least(*xs: float | None) -> float | None:
    known = [x for x in xs if x is not None]
    return min(known) if known else None


def merge_rounds(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One method's records of two rounds as one: every case's runs together (median over all),
    its peak RSS the larger, its check failed if either failed; an error in either is kept."""
    if "error" in a or "error" in b:
        return a if "error" in a else b
    out = dict(a, wall_s=a.get("wall_s", 0.0) + b.get("wall_s", 0.0))
    out["loadavg_1min"] = {k: max(a.get("loadavg_1min", {}).get(k, 0.0), v)
                           for k, v in b.get("loadavg_1min", {}).items()}
    res_b = b.get("resident", {})
    out["resident"] = {k: {w: _least(v.get(w), res_b[k].get(w)) for w in ("before", "after")}
                       for k, v in a.get("resident", {}).items() if k in res_b}
    datasets: dict[str, Any] = {}
    for name, da in a.get("datasets", {}).items():
        db = b.get("datasets", {}).get(name, {})
        if "cases" not in da or "cases" not in db:
            datasets[name] = da if "error" in da or "skip" in da else db
            continue
        cases = {}
        for case, ca in da["cases"].items():
            cb = db["cases"].get(case, {})
            if "error" in ca or "error" in cb or "times_s" not in cb:
                cases[case] = ca if "error" in ca else cb
                continue
            times = ca["times_s"] + cb["times_s"]
            median = statistics.median(times)
            c = dict(ca, times_s=times, median_s=median,
                     cpu_s=statistics.median([ca["cpu_s"], cb["cpu_s"]]),
                     rounds=ca.get("rounds", 1) + 1)
            for k in ("peak_rss_mb", "peak_rss_open_mb", "rss_file_mb"):
                if k in ca and k in cb:
                    c[k] = max(ca[k], cb[k])
            if c.get("logical_bytes") and median > 0:
                c["gbps"] = c["logical_bytes"] / median / 1e9
            if ca.get("check") is not None and cb.get("check") is not None:
                c["check"] = ca["check"] if not ca["check"].get("ok") else cb["check"]
            cases[case] = c
        datasets[name] = dict(da, cases=cases)
    out["datasets"] = datasets
    return out


def run_worker(method: str, config: dict[str, Any], workdir: Path, timeout: float,
               peer_python: Path | None, tag: str = "") -> dict[str, Any]:
    """Run one method in a fresh process; its JSON record, or an error record."""
    cfg = workdir / f"{method}{tag}.config.json"
    out = workdir / f"{method}{tag}.result.json"
    cfg.write_text(json.dumps(config))
    if method in peer.METHODS:
        assert peer_python is not None
        cmd, cwd = peer.worker_command(peer_python, method, cfg, out), workdir
    else:
        cmd, cwd = [sys.executable, "-m", "benchmarks.worker", method, str(cfg), str(out)], REPO
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f}s", "datasets": {}}
    wall = time.perf_counter() - t0
    load = {"before": load_before, "after": os.getloadavg()[0]}
    if r.returncode != 0 or not out.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-8:]
        return {"method": method, "error": f"exit {r.returncode}: " + " | ".join(tail),
                "datasets": {}}
    rec = json.loads(out.read_text())
    rec["wall_s"] = wall
    rec["loadavg_1min"] = load
    return rec


def contention(results: dict[str, Any], cores: int) -> list[str]:
    """Methods that ran while the machine was busy with more than this benchmark (the 1-minute
    load average includes the method itself and the servers it uses, hence the margin)."""
    busy = []
    for m, rec in results.items():
        load = rec.get("loadavg_1min") or {}
        worst = max(load.values(), default=0.0)
        if worst > cores + 1:
            busy.append(f"{m} (load {worst:.1f})")
    return busy


def problems(results: dict[str, Any], peers: bool) -> list[str]:
    """Failed methods/cases and results that disagree with the oracle: of the peer's methods
    (``peers=True``; reported, not fatal) or of everything else."""
    bad = []
    for m, rec in results.items():
        if (m in peer.METHODS) != peers:
            continue
        if "error" in rec:
            bad.append(f"{m}: {rec['error']}")
        for ds, drec in rec.get("datasets", {}).items():
            if "error" in drec:
                bad.append(f"{m} on {ds}: {drec['error']}")
            for case, c in drec.get("cases", {}).items():
                if "error" in c:
                    bad.append(f"{m} on {ds}/{case}: {c['error']}")
                elif c.get("check") and not c["check"].get("ok"):
                    bad.append(f"{m} on {ds}/{case}: wrong result ({c['check'].get('why')})")
    return bad


def read_ahead_kb(path: Path) -> int | None:
    """The readahead window of the block device holding ``path`` (it sets how large the folios
    are that reads leave in the page cache), or None where it is not to be found."""
    st = os.stat(path)
    dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    for queue in (dev / "queue", dev / ".." / "queue"):  # a disk, or a partition of one
        try:
            return int((queue / "read_ahead_kb").read_text())
        except (OSError, ValueError):
            continue
    return None


def machine(data_dir: Path) -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    import h5py
    import netCDF4

    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "numpy": np.__version__, "h5py": h5py.__version__, "netCDF4": netCDF4.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "read_ahead_kb": read_ahead_kb(data_dir)}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers and the running worker are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    timeout = args.worker_timeout or (120.0 if args.quick else 1800.0)
    methods = select_methods(args.only, args.no_peer)
    store = args.store if args.store != "auto" else ("s3" if args.quick else "http")
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    notes: list[str] = []
    if args.no_peer:
        notes.append("PyActiveStorage not run (--no-peer): x peer ratios are blank")

    datasets, oracle = prepare(args)
    peer_python, peer_version = None, None
    if any(m in peer.METHODS for m in methods):
        peer_python, peer_version = peer.ensure_venv(args.data_dir)
        if not peer_version.startswith("0.8"):
            notes.append(f"pyactivestorage 0.8 unavailable; measured {peer_version}")
    print(f"datasets ready in {time.perf_counter() - t_start:.1f}s; methods: {', '.join(methods)}",
          flush=True)

    # Read back and locked right before the methods run (the peer's venv can take minutes to
    # make, and the OS may evict the files meanwhile).
    files = [Path(d["path"]) for d in datasets]
    if args.page_cache == "read":
        t0 = time.perf_counter()
        if all([pagecache.recache(f) for f in files]):
            notes.append(f"page cache: each file dropped and read back once before timing "
                         f"({time.perf_counter() - t0:.1f}s; --page-cache as-is skips this)")
        else:
            notes.append("page cache: left as it was (this OS cannot drop files from it)")
    pinned = pagecache.Pinned(files if args.page_cache == "read" else [])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="activestorage-bench-") as tmp, pinned:
        if pinned.pinned:
            notes.append(f"page cache: {len(pinned.pinned)} file(s) locked in it for the run "
                         f"(mlock), so the OS cannot evict them mid-run")
        notes += [f"page cache: not locked: {why}" for why in pinned.why]
        work = Path(tmp)
        np.savez(work / "oracle.npz", **oracle)
        remote = bool(REMOTE & set(methods))
        with services.started(work, files, args.data_dir,
                              moto=store == "s3" and (remote or "moto_get" in methods),
                              server=bool(NEEDS_SERVER & set(methods)),
                              nginx="nginx_get" in methods or (remote and store == "http")) as svc:
            notes += svc.notes
            if svc.http_base is None and "nginx_get" in methods:
                methods.remove("nginx_get")
            if svc.http_base is None and store == "http" and remote:
                raise SystemExit("--store http needs nginx (apt-get install -y nginx)")
            for d in datasets:
                d["s3_url"] = svc.s3_url(Path(d["path"])) if svc.s3 else None
                d["http_url"] = svc.http_url(Path(d["path"]))
                d["remote_url"] = d["s3_url"] if store == "s3" else d["http_url"]
            config = {"runs": runs, "store": store, "oracle": str(work / "oracle.npz"),
                      "s3": svc.s3, "server_url": svc.server_url, "datasets": datasets}
            for r, m in ((r, m) for r in range(max(1, args.rounds)) for m in methods):
                t0 = time.perf_counter()
                where = f" (round {r + 1})" if args.rounds > 1 else ""
                # Remote methods get no warm-up run: opening already read the metadata (the
                # process is warm) and each remote run of a 400 MB file takes many seconds.
                cfg = dict(config, warmup=0 if m in report.REMOTE else warmup)
                before = {d["name"]: pagecache.resident(Path(d["path"])) for d in datasets}
                rec = run_method(m, cfg, work, timeout, peer_python, isolate=not args.quick)
                # the share of each file in the page cache around the method's run
                rec["resident"] = {
                    d["name"]: {"before": before[d["name"]],
                                "after": pagecache.resident(Path(d["path"]))} for d in datasets}
                results[m] = rec if r == 0 else merge_rounds(results[m], rec)
                evicted = sorted(k for k, v in rec["resident"].items()
                                 if any(x is not None and x < 0.99 for x in v.values()))
                if evicted:
                    notes.append(f"{m}: part of {', '.join(evicted)} was not in the page cache "
                                 f"around its run{where} (see 'resident' in the JSON)")
                status = rec.get("error", "ok")
                print(f"  {m:<18} {time.perf_counter() - t0:6.1f}s  {status}{where}", flush=True)

    report.add_ratios(results, os.cpu_count() or 1)
    busy = contention(results, os.cpu_count() or 1)
    if busy:
        notes.append("the machine was busy with other work during: " + ", ".join(busy)
                     + "; rerun those with --only for clean figures")
    bad = problems(results, peers=False)
    peer_bad = problems(results, peers=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    record = {"started": started.isoformat(), "seconds": time.perf_counter() - t_start,
              "quick": args.quick, "store": store, "runs": runs, "rounds": args.rounds,
              "warmup": warmup,
              "page_cache": args.page_cache, "machine": machine(args.data_dir),
              "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
              "peer_version": peer_version, "notes": notes, "problems": bad,
              "peer_failures": peer_bad,
              "datasets": [{k: v for k, v in d.items() if k != "cases"} | {"cases": d["cases"]}
                           for d in datasets],
              "methods": results}
    json_path = args.results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    png_path = json_path.with_suffix(".png")
    report.write_json(record, json_path)
    report.print_table(results, datasets)
    try:
        report.plot(results, datasets, png_path)
    except Exception as exc:  # the numbers matter more than the picture
        notes.append(f"plot failed: {type(exc).__name__}: {exc}")
        png_path = None
        report.write_json(record, json_path)
    for n in notes:
        print(f"note: {n}")
    for b in peer_bad:
        print(f"peer failure (reported, not fatal): {b}")
    for b in bad:
        print(f"PROBLEM: {b}")
    print(f"\nmedians of {runs} run(s) x {args.rounds} round(s) after {warmup} warm-up each; "
          f"{os.cpu_count()} cores; "
          f"total {time.perf_counter() - t_start:.0f}s")
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
