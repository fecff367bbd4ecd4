"""Correctness cases issue #9 says PyActiveStorage gets wrong, through the peer and through ours.

``python -m benchmarks.peer_correctness [--no-peer]`` writes four small netCDF-4 files, asks both
clients (local path mode) for the mean the case is about, and prints a table against the
netCDF4-python + NumPy oracle (masked as netCDF-4 readers mask). Ours must be right (exit code 1
otherwise); the peer's failures are reported, not asserted.

- ``packed``: int16 with ``scale_factor``/``add_offset``: the mean is of unpacked values.
- ``default_fill``: no ``_FillValue`` attribute; a half-written chunk holds the netCDF default
  fill (9.97e36 for float32), which readers mask.
- ``unwritten_chunks``: only the first of four chunks along time was ever written; the rest are
  not allocated and read as ``_FillValue`` (masked).
- ``int_index``: an integer index drops an axis (``mean[5, :, 10:20]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import data, peer

VAR = "v"
SHAPE = (40, 30, 20)

#: run by the peer's interpreter: JSON [{"name", "path", "index"}] on stdin -> JSON results
PEER_SCRIPT = r"""
import contextlib, io, json, sys
import numpy as np
from activestorage.active import Active
out = {}
for case in json.load(sys.stdin):
    key = tuple(slice(*k) if isinstance(k, list) else k for k in case["index"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            a = Active(case["path"], "v", max_threads=2)
            r = a.mean()[key]
        r = np.ma.asarray(r)
        out[case["name"]] = None if np.ma.getmaskarray(r).all() else float(np.ma.filled(r.astype("f8"), np.nan).ravel()[0])
    except Exception as exc:
        out[case["name"]] = f"{type(exc).__name__}: {exc}"[:160]
print(json.dumps(out))
"""


def _field(rng: np.random.Generator) -> np.ndarray:
    return (280.0 + rng.normal(0, 5, SHAPE)).astype(np.float32)


def make_files(root: Path) -> list[dict[str, Any]]:
    """The four cases: file, index (JSON-able: [start, stop] lists for slices), description."""
    import netCDF4

    rng = np.random.default_rng(1)
    cases = []

    def new(name: str) -> Any:
        ds = netCDF4.Dataset(root / f"{name}.nc", "w", format="NETCDF4")
        for dim, n in zip(("time", "lat", "lon"), SHAPE):
            ds.createDimension(dim, n)
        return ds

    full = [[0, SHAPE[0]], [0, SHAPE[1]], [0, SHAPE[2]]]
    with new("packed") as ds:
        v = ds.createVariable(VAR, "i2", ("time", "lat", "lon"), chunksizes=(10, 30, 20))
        v.scale_factor = np.float32(0.01)
        v.add_offset = np.float32(273.15)
        v[:] = _field(rng)  # netCDF4 packs on write
    cases.append({"name": "packed", "index": full,
                  "what": "int16 + scale_factor/add_offset: mean of unpacked values"})

    with new("default_fill") as ds:
        v = ds.createVariable(VAR, "f4", ("time", "lat", "lon"), chunksizes=(10, 30, 20))
        v[0:35] = _field(rng)[0:35]  # the last chunk is half written: rest = default fill
    cases.append({"name": "default_fill", "index": full,
                  "what": "no _FillValue attr; half-written chunk holds the default fill 9.97e36"})

    with new("unwritten_chunks") as ds:
        v = ds.createVariable(VAR, "f4", ("time", "lat", "lon"), chunksizes=(10, 30, 20),
                              fill_value=np.float32(-1e30))
        v[0:10] = _field(rng)[0:10]  # chunks 1..3 along time never written
    cases.append({"name": "unwritten_chunks", "index": full,
                  "what": "3 of 4 chunks never written (read as _FillValue, masked)"})

    with new("int_index") as ds:
        v = ds.createVariable(VAR, "f4", ("time", "lat", "lon"), chunksizes=(10, 30, 20))
        v[:] = _field(rng)
    cases.append({"name": "int_index", "index": [5, [0, 30], [10, 20]],
                  "what": "integer index drops an axis: mean[5, :, 10:20]"})
    for c in cases:
        c["path"] = str(root / f"{c['name']}.nc")
    return cases


def _key(index: list[Any]) -> tuple[Any, ...]:
    return tuple(slice(*k) if isinstance(k, list) else k for k in index)


def oracle(case: dict[str, Any]) -> float | None:
    import netCDF4

    with netCDF4.Dataset(case["path"]) as ds:
        x = np.ma.asarray(ds[VAR][_key(case["index"])]).astype(np.float64)
    return None if np.ma.getmaskarray(x).all() else float(x.mean())


def ours(case: dict[str, Any]) -> Any:
    from activestorage import Active

    try:
        with Active(case["path"], VAR) as a:
            r = np.ma.asarray(a.mean[_key(case["index"])])
        return None if np.ma.getmaskarray(r).all() else float(r.astype(np.float64).ravel()[0])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:160]


def run_peer(cases: list[dict[str, Any]], data_dir: Path, workdir: Path) -> dict[str, Any]:
    python, _version = peer.ensure_venv(data_dir)
    r = subprocess.run([str(python), "-c", PEER_SCRIPT], input=json.dumps(cases), cwd=workdir,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {c["name"]: f"peer crashed: {msg}" for c in cases}
    return json.loads(r.stdout.strip().splitlines()[-1])


def agrees(got: Any, want: float | None) -> bool:
    if isinstance(got, str):
        return False
    if want is None or got is None:
        return got is None and want is None
    return bool(np.isclose(got, want, rtol=1e-5, atol=0))


def _show(x: Any) -> str:
    if x is None:
        return "masked"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_correctness",
                                description=__doc__.split("\n")[0])
    p.add_argument("--no-peer", action="store_true", help="check ours only (no peer venv)")
    p.add_argument("--data-dir", type=Path, default=data.DEFAULT_DIR)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="activestorage-correctness-") as tmp:
        root = Path(tmp)
        cases = make_files(root)
        peer_results = {} if args.no_peer else run_peer(cases, args.data_dir, root)
        rows = []
        for c in cases:
            want, got = oracle(c), ours(c)
            row = {"case": c["name"], "what": c["what"], "oracle": want, "ours": got,
                   "ours_ok": agrees(got, want)}
            if not args.no_peer:
                row["peer"] = peer_results.get(c["name"])
                row["peer_ok"] = agrees(row["peer"], want)
            rows.append(row)
    print("| case | what | netCDF4+NumPy | ours | ok | PyActiveStorage 0.8 | ok |")
    print("|---|---|---:|---:|---|---|---|")
    for r in rows:
        peer_cells = ("not run", "-") if args.no_peer else (
            _show(r["peer"]), "yes" if r["peer_ok"] else "NO")
        print(f"| {r['case']} | {r['what']} | {_show(r['oracle'])} | {_show(r['ours'])} | "
              f"{'yes' if r['ours_ok'] else 'NO'} | {peer_cells[0]} | {peer_cells[1]} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ours_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
