"""Runs PyActiveStorage's own Reductionist client, in the PEER's venv, over a list of cases.

Usage: ``PEER_VENV/bin/python peer_client_worker.py CASES.json OUT.json``. Not a test module (the
peer's import name is ``activestorage``, as ours, so it cannot run in our interpreter): each case
is turned into the arguments PyActiveStorage 0.8's ``Active`` passes to
``activestorage.reductionist.reduce_chunk`` (a ``requests`` session from its ``get_session``,
numcodecs codec objects, its (fill_value, missing_value, valid_min, valid_max) tuple, a NumPy
dtype with its byte order, slices or integers per axis, an axis tuple, the operation name or None
for a selection) and the result it returns, or the error it raised, is written out as JSON.
Only the standard library, NumPy and the peer's own dependencies are used here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numcodecs
import numpy as np

import activestorage  # the peer's
from activestorage import reductionist


def _check_peer() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    got = os.path.abspath(activestorage.__file__)
    if got.startswith(os.path.join(repo, "activestorage") + os.sep):
        raise SystemExit(f"peer_client_worker must run in the peer's venv; got {got}")


def _codec(spec: Any) -> Any:
    if spec is None:
        return None
    return {"zlib": numcodecs.Zlib, "gzip": numcodecs.GZip}[spec]()


def _selection(spec: Any) -> Any:
    if spec is None:
        return None
    return tuple(s if isinstance(s, int) else slice(*s) for s in spec)


def _missing(spec: list[Any], f32: bool) -> tuple[Any, ...]:
    """The missing tuple; float32 attributes as np.float32 scalars, as netCDF reads them."""
    if not f32:
        return tuple(spec)
    return tuple(np.float32(v) if isinstance(v, float) else v for v in spec)


def run(case: dict[str, Any], sessions: dict[Any, Any]) -> dict[str, Any]:
    auth = tuple(case["auth"]) if case.get("auth") else (None, None)
    session = sessions.get(auth)
    if session is None:
        session = sessions[auth] = reductionist.get_session(auth[0], auth[1], None)
    filters = ([numcodecs.Shuffle(elementsize=case["shuffle"])] if case.get("shuffle") else None)
    try:
        result, count = reductionist.reduce_chunk(
            session, case["server"], case["url"], case["offset"], case["size"],
            _codec(case.get("compression")), filters, _missing(case["missing"], case.get("missing_f32", False)),
            np.dtype(case["dtype"]), tuple(case["shape"]), case["order"],
            _selection(case.get("selection")),
            None if case.get("axis") is None else tuple(case["axis"]), case["operation"],
            **({"interface_type": case["interface_type"]} if case.get("interface_type") else {}),
            **({"option_disable_chunk_cache": True} if case.get("no_cache") else {}))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
        return {"error": f"{type(exc).__name__}: {exc}"}
    arr = np.ma.getdata(result)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape),
            "values": arr.astype(arr.dtype.newbyteorder("=")).tolist(),
            "count": np.asarray(count).tolist()}


def main() -> None:
    _check_peer()
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    sessions: dict[Any, Any] = {}
    out = [run(c, sessions) for c in cases]
    with open(sys.argv[2], "w") as f:
        json.dump({"version": getattr(activestorage, "__version__", "?"), "results": out}, f)


if __name__ == "__main__":
    main()
