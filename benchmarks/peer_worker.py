"""PyActiveStorage timings, run by the PEER's interpreter: ``VENV/bin/python peer_worker.py ...``.

Not part of the ``benchmarks`` package on purpose: the peer's import name is ``activestorage``, the
same as ours, so this script runs from its own virtual environment (see :mod:`benchmarks.peer`)
with only ``measure.py`` (stdlib + NumPy) beside it. Methods:

- ``peer_posix``: local path mode with its default ``max_threads=30``;
- ``peer_posix_t2``: local path mode with ``max_threads=2`` (its best on 2 cores, per issue #9);
- ``peer_reductionist``: its Reductionist client (API v2) pointed at OUR server, reading the
  same remote store as ours (moto S3 or nginx, ``--store``).

Usage: ``python peer_worker.py METHOD CONFIG.json OUT.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any

from measure import emit, rss_kb, run_method  # noqa: E402  (beside this script)

import activestorage  # the peer's  # noqa: E402
from activestorage import reductionist  # noqa: E402
from activestorage.active import Active  # noqa: E402

VAR = "tas"


def _check_peer() -> None:
    ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "activestorage")
    got = os.path.abspath(activestorage.__file__)
    if not got.startswith(os.path.abspath(sys.prefix)) or got.startswith(ours + os.sep):
        raise SystemExit(f"peer_worker must run in the peer's venv; activestorage is "
                         f"{activestorage.__file__}")


_RECEIVED = [0]
_request = reductionist.request


def _counting_request(session: Any, url: str, data: Any) -> Any:
    """The peer's reductionist.request, counting response bytes (for 'bytes moved')."""
    resp = _request(session, url, data)
    _RECEIVED[0] += len(resp.content)
    return resp


reductionist.request = _counting_request


class Peer:
    checks_result = True
    skip = None

    def __init__(self, ds: dict[str, Any], config: dict[str, Any], method: str) -> None:
        self.mode = method
        self.quiet = io.StringIO()
        with contextlib.redirect_stdout(self.quiet):
            if method == "peer_reductionist" and config["store"] == "http":
                # its https interface is what it uses for any HTTP(S) server (nginx)
                self.active = Active(ds["http_url"], VAR, interface_type="https",
                                     active_storage_url=config["server_url"])
                self.active._version = 2
            elif method == "peer_reductionist":
                s3 = config["s3"]
                # "bucket/key", not "s3://bucket/key": given storage_options, 0.8 builds the
                # object URL as f"{endpoint}/{bucket}/{path}" with path "/key", i.e. a double
                # slash ("bucket//key") that S3 (moto, AWS) reads as another key. Without the
                # scheme it splits bucket and key itself and the URL comes out right.
                self.active = Active(
                    ds["s3_url"][len("s3://"):], VAR, interface_type="s3",
                    storage_options={"key": s3["key"], "secret": s3["secret"],
                                     "client_kwargs": {"endpoint_url": s3["endpoint"]}},
                    active_storage_url=config["server_url"])
                self.active._version = 2
            else:
                threads = 2 if method == "peer_posix_t2" else 30
                self.active = Active(ds["path"], VAR, max_threads=threads)
                self.active._version = 1

    def run(self, case: dict[str, Any]) -> Any:
        sel = tuple(slice(a, b) for a, b in case["box"])
        a = self.active
        a._axis = None if case["axis"] is None else tuple(case["axis"])  # it keeps the last one
        _RECEIVED[0] = 0
        self.quiet.seek(0)
        self.quiet.truncate()
        with contextlib.redirect_stdout(self.quiet):  # it prints a line per chunk
            return a.mean()[sel]

    def bytes_moved(self, case: dict[str, Any]) -> int | None:
        if self.mode == "peer_reductionist":
            return _RECEIVED[0]
        return int(self.active.data_read)

    def close(self) -> None:
        pass


def main(argv: list[str]) -> int:
    method, config_path, out_path = argv
    _check_peer()
    baseline = rss_kb()
    with open(config_path) as f:
        config = json.load(f)
    record = run_method(method, config, lambda ds, cfg: Peer(ds, cfg, method), baseline)
    from importlib.metadata import version

    record["peer_version"] = version("pyactivestorage")
    emit(record, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
