"""Issue 19, finding 1: the memory budget holds from request to last byte written.

Eight clients ask our server for a 256 MiB selection of a gzip object (256 MiB of zeros, about
260 KB stored) and never read the answer. Before, every answer sat in the server's memory outside
the budget (8 x 256 MiB and more, with ``bytes_in_flight`` showing 0). Now a request holds its
reservation until its answer has been written or the client dropped (``--write-timeout``), so the
server's resident memory stays within ``--max-bytes-in-flight`` plus a fixed overhead
(:data:`OVERHEAD`: the interpreter, libraries and socket buffers), measured here by sampling the
server's RSS throughout the flood; after it, the freed memory is given back to the OS.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time

import pytest
import requests

from relhelp import server_alive
from scripted import ScriptedStore, ranged
from servers import start_active_server

pytestmark = pytest.mark.timeout(300)

SELECT = 256 << 20        # decoded bytes of each selection
BUDGET = 1 << 30          # --max-bytes-in-flight
OVERHEAD = 160 << 20      # allowed above the budget, over the server's idle RSS
CLIENTS = 8


def _rss(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    raise RuntimeError(key)


def _selects_done(url: str) -> int:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(int(float(m.group(1))) for m in re.finditer(
        r'activestorage_requests_total\{[^}]*api="v2"[^}]*operation="select"[^}]*\} (\S+)', text))


def _in_flight(url: str) -> float:
    m = re.search(r"^activestorage_bytes_in_flight (\S+)$",
                  requests.get(url + "/metrics", timeout=10).text, re.M)
    return float(m.group(1)) if m else -1.0


def test_slow_reader_flood_of_large_selects_stays_within_budget(rel_dir):
    blob = gzip.compress(bytes(SELECT), 6)
    with ScriptedStore(ranged(blob)) as store:
        srv = start_active_server(rel_dir / "flood", "--max-bytes-in-flight", str(BUDGET),
                                  "--write-timeout", "3", "--memory-wait-seconds", "120",
                                  "--kernel-threads", "2", "--no-access-log")
        try:
            body = json.dumps({"interface_type": "http", "url": f"{store.url}/zeros.gz",
                               "dtype": "int32", "shape": [SELECT // 4], "offset": 0,
                               "size": len(blob), "compression": {"id": "gzip"}}).encode()
            # warm up (imports, thread pools) with a small read, then take the idle RSS
            small = json.dumps({"interface_type": "http", "url": f"{store.url}/zeros.gz",
                                "dtype": "uint8", "offset": 0, "size": 8}).encode()
            assert requests.post(srv.url + "/v2/max", data=small, timeout=30,
                                 headers={"content-type": "application/json"}).status_code == 200
            base = _rss(srv.pid)
            peak = [base]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _rss(srv.pid))
                    time.sleep(0.02)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            clients = []
            for _ in range(CLIENTS):  # send the request, never read the answer
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", srv.port))
                s.sendall(b"POST /v2/select HTTP/1.1\r\nhost: x\r\ncontent-type: "
                          b"application/json\r\ncontent-length: " + str(len(body)).encode()
                          + b"\r\n\r\n" + body)
                clients.append(s)
            deadline = time.monotonic() + 240
            while _selects_done(srv.url) < CLIENTS and time.monotonic() < deadline:
                server_alive(srv)
                time.sleep(0.5)
            stop.set()
            sampler.join()
            done = _selects_done(srv.url)
            heads = []
            for s in clients:
                s.settimeout(5)
                try:
                    heads.append(s.recv(64))
                except OSError:
                    heads.append(b"")
                s.close()
            assert done == CLIENTS, f"only {done} of {CLIENTS} selects finished"
            assert _in_flight(srv.url) == 0
            # every client got an answer started (200: each ran in turn, none refused)
            assert sum(h.startswith(b"HTTP/1.1 200") for h in heads) == CLIENTS, heads
            grown = peak[0] - base
            assert grown <= BUDGET + OVERHEAD, (
                f"RSS grew {grown / 2**20:.0f} MiB over idle {base / 2**20:.0f} MiB; budget "
                f"{BUDGET / 2**20:.0f} MiB + overhead {OVERHEAD / 2**20:.0f} MiB")
            time.sleep(1.0)
            idle = _rss(srv.pid)
            assert idle - base < 96 << 20, f"idle RSS stays {(idle - base) / 2**20:.0f} MiB up"
            print(f"flood: idle {base / 2**20:.0f} MiB, peak +{grown / 2**20:.0f} MiB, "
                  f"after +{(idle - base) / 2**20:.0f} MiB")
        finally:
            srv.stop()


def test_a_reading_client_gets_the_whole_selection(rel_dir):
    """The streamed answer is the same CBOR as before, and a normal reader gets all of it."""
    import cbor2
    import numpy as np

    data = np.arange(1 << 20, dtype="<i4")
    blob = gzip.compress(data.tobytes(), 1)
    with ScriptedStore(ranged(blob)) as store:
        srv = start_active_server(rel_dir / "stream")
        try:
            body = {"interface_type": "http", "url": f"{store.url}/a.gz", "dtype": "int32",
                    "shape": [1 << 20], "offset": 0, "size": len(blob),
                    "compression": {"id": "gzip"}, "selection": [[5, 1 << 20, 3]]}
            r = requests.post(srv.url + "/v2/select", json=body, timeout=60)
            assert r.status_code == 200, r.content[:300]
            m = cbor2.loads(r.content)
            got = np.frombuffer(m["bytes"], "<i4")
            assert np.array_equal(got, data[5::3]) and m["shape"] == [len(data[5::3])]
            assert m["count"] == [len(data[5::3])]
        finally:
            srv.stop()
