"""Ratios, the printed table, the JSON record and the PNG plot of one benchmark run.

Ratios are times divided by a reference time for the same dataset and case (lower is better):

- ``x_peer``: local methods against PyActiveStorage's best local configuration (the faster of
  ``peer_posix`` and ``peer_posix_t2``); remote methods (``ours_fetch``, ``ours_server_*``)
  against ``peer_reductionist`` (the peer's client talking to our server over the same S3).
- ``x_limit``: local methods against the in-memory NumPy pass, or on the compressed file against
  the ideal decode time ``decode_1core / cores`` when that is larger; remote methods against the
  raw per-chunk range-GET time from the store the run used (``moto_get`` for ``--store s3``, else
  ``nginx_get``; only measured on the uncompressed files).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

REMOTE = ("ours_fetch", "ours_server_chunk", "ours_server_batch", "peer_reductionist",
          "moto_get", "nginx_get")
LIMITS = ("numpy_memory", "pread", "decode_1core", "decode_threads", "moto_get", "nginx_get")
CASES = ("whole", "sub", "axis0")


def _median(results: dict[str, Any], method: str, ds: str, case: str) -> float | None:
    c = results.get(method, {}).get("datasets", {}).get(ds, {}).get("cases", {}).get(case, {})
    t = c.get("median_s")
    return t if isinstance(t, (int, float)) and math.isfinite(t) and t > 0 else None


def references(results: dict[str, Any], method: str, ds: str, case: str,
               cores: int) -> tuple[float | None, float | None]:
    """(peer time, limit time) this method is compared with."""
    if method in REMOTE:
        peer = _median(results, "peer_reductionist", ds, case)
        limit = _median(results, "moto_get", ds, case) or _median(results, "nginx_get", ds, case)
        return peer, limit
    peers = [t for t in (_median(results, m, ds, case) for m in ("peer_posix", "peer_posix_t2"))
             if t]
    mem = _median(results, "numpy_memory", ds, case)
    dec = _median(results, "decode_1core", ds, case)
    limits = [t for t in (mem, dec / cores if dec else None) if t]
    return (min(peers) if peers else None), (max(limits) if limits else None)


def add_ratios(results: dict[str, Any], cores: int) -> None:
    """Put ``x_peer`` and ``x_limit`` into every case record."""
    for method, rec in results.items():
        for ds, drec in rec.get("datasets", {}).items():
            for case, c in drec.get("cases", {}).items():
                t = c.get("median_s")
                peer, limit = references(results, method, ds, case, cores)
                c["x_peer"] = t / peer if t and peer else None
                c["x_limit"] = t / limit if t and limit else None


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return format(x, spec)


def _mb(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}" if n >= 1e5 else f"{n / 1e6:.3f}"


def table_lines(results: dict[str, Any], datasets: list[dict[str, Any]]) -> list[str]:
    """One Markdown table per dataset: a row per method, times of each case and ratios."""
    lines: list[str] = []
    for ds in datasets:
        name = ds["name"]
        lines.append(f"\n### {name}: {ds['describe']}\n")
        lines.append("| method | whole s | sub s | axis0 s | GB/s (whole) | x peer (w/s/a) "
                     "| x limit (w/s/a) | CPU s (whole) | peak RSS MB (w/s/a) | moved MB (whole) "
                     "| ok |")
        lines.append("|---|---:|---:|---:|---:|---|---|---:|---|---:|---|")
        for method, rec in results.items():
            drec = rec.get("datasets", {}).get(name)
            if drec is None:
                continue
            if "skip" in drec or "error" in drec:
                why = drec.get("skip") or drec.get("error")
                if "skip" in drec:
                    continue  # skipped by design (e.g. decode limits on uncompressed data)
                lines.append(f"| {method} | error: {why} |  |  |  |  |  |  |  |  |  |")
                continue
            cs = drec["cases"]
            times, peers, limits, oks, rss = [], [], [], [], []
            for case in CASES:
                c = cs.get(case, {})
                if "error" in c:
                    times.append("ERR")
                    oks.append("ERR")
                    continue
                times.append(_fmt(c.get("median_s"), ".4f"))
                peers.append(_fmt(c.get("x_peer"), ".2f"))
                limits.append(_fmt(c.get("x_limit"), ".2f"))
                rss.append(_fmt(c.get("peak_rss_mb"), ".1f"))
                chk = c.get("check")
                oks.append("n/a" if chk is None else "yes" if chk.get("ok") else "NO")
            whole = cs.get("whole", {})
            ok = "n/a" if set(oks) == {"n/a"} else "yes" if set(oks) <= {"yes", "n/a"} else \
                "NO (" + ",".join(o for o in oks if o not in ("yes", "n/a")) + ")"
            lines.append(
                f"| {method} | {' | '.join(times)} | {_fmt(whole.get('gbps'), '.2f')} "
                f"| {'/'.join(peers)} | {'/'.join(limits)} | {_fmt(whole.get('cpu_s'), '.3f')} "
                f"| {'/'.join(rss) or '-'} "
                f"| {_mb(whole.get('bytes_moved'))} | {ok} |")
    return lines


def print_table(results: dict[str, Any], datasets: list[dict[str, Any]],
                out: TextIO | None = None) -> None:
    import sys

    out = out or sys.stdout
    for line in table_lines(results, datasets):
        print(line, file=out)


def write_json(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))


def plot(results: dict[str, Any], datasets: list[dict[str, Any]], path: Path) -> None:
    """Time (whole-variable mean) and bytes moved per method, one bar group per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    names = [d["name"] for d in datasets]
    fig, axes = plt.subplots(1, 2, figsize=(15, max(5, 0.38 * len(methods) + 2)), sharey=True)
    height = 0.8 / max(1, len(names))
    y = np.arange(len(methods))
    for k, (what, ax, label) in enumerate((("median_s", axes[0], "seconds (whole-variable mean)"),
                                           ("bytes_moved", axes[1],
                                            "bytes moved into the client (whole-variable mean)"))):
        for j, ds in enumerate(names):
            vals = []
            for m in methods:
                c = results[m].get("datasets", {}).get(ds, {}).get("cases", {}).get("whole", {})
                v = c.get(what)
                vals.append(v if isinstance(v, (int, float)) and v and v > 0 else np.nan)
            ax.barh(y + j * height, vals, height, label=ds)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y + 0.4 - height / 2)
    axes[0].set_yticklabels(methods)
    axes[0].set_ylim(len(methods) - 0.1, -0.3)  # first method on top; shared by both panels
    axes[0].legend(title="dataset", loc="lower right")
    fig.suptitle(f"activestorage benchmarks ({os.cpu_count()} cores); log scales; "
                 "missing bars: not measured or 0 bytes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report RESULT.json``: print the table and redraw the PNG of a run."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    p.add_argument("record", type=Path)
    args = p.parse_args(argv)
    record = json.loads(args.record.read_text())
    print_table(record["methods"], record["datasets"])
    plot(record["methods"], record["datasets"], args.record.with_suffix(".png"))
    print(f"wrote {args.record.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
