"""Resource safety of the server process: memory limits before reads, decompression bombs, body
limits, slow clients.

* A declared ``size``/``shape`` needing more memory than ``--max-bytes-in-flight`` is refused
  before any upstream read: the store sits behind a counting fault proxy that must see nothing.
* Decompression bombs (256 MiB of zeros in a few KiB, for every codec) with a small declared shape
  are stopped at the declared size: the server's peak RSS (``VmHWM``) does not jump.
* Bodies over ``--max-body-bytes`` get 413, with or without Content-Length; batches over
  ``--max-batch`` too.
* Slow clients (slowloris: headers one byte at a time) do not stop others being served and are
  disconnected (``--client-timeout``); so are clients dripping a body.
"""

from __future__ import annotations

import bz2
import gzip
import json
import socket
import threading
import time
import zlib

import cbor2
import numpy as np
import pytest
import requests

from faultproxy import FaultProxy
from relhelp import error_body, server_alive
from servers import start_active_server

pytestmark = pytest.mark.timeout(300)

TIMEOUT = (5, 30)
LIMIT = 8 << 20  # --max-bytes-in-flight of the server under test
BOMB = 256 << 20


def _vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (Linux ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


@pytest.fixture(scope="module")
def limited(rel_dir, rel_nginx):
    """Our server with an 8 MiB memory budget, 4 KiB body limit, batches of at most 16, and a
    counting proxy in front of nginx."""
    proxy = FaultProxy("127.0.0.1", rel_nginx.port)
    proc = start_active_server(rel_dir / "limited", "--max-bytes-in-flight", str(LIMIT),
                               "--max-body-bytes", "4096", "--max-batch", "16",
                               "--memory-wait-seconds", "1")
    yield proc, proxy
    proxy.close()
    proc.stop()


def _post(server, path, body, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url + path, data=data, headers={"content-type": ctype},
                         timeout=TIMEOUT)


@pytest.mark.parametrize("body,field", [
    ({"dtype": "float64", "shape": [1 << 22]}, None),                      # 32 MiB decoded
    ({"dtype": "float64", "shape": [1 << 20, 1 << 20]}, "shape"),          # 8 TiB
    ({"dtype": "int8", "shape": [2**62]}, "shape"),
    ({"dtype": "float64", "size": 1 << 30}, "size"),                       # 1 GiB, no shape
    ({"dtype": "int32", "shape": [1024], "compression": {"id": "zlib"}, "size": 1 << 40}, None),
    ({"dtype": "float32", "shape": [4096, 1024], "compression": {"id": "zstd"}}, None),
])
def test_oversized_requests_refused_before_any_read(limited, store, body, field):
    server, proxy = limited
    proxy.reset_counts()
    full = {"interface_type": "http", "url": f"{proxy.url}/big.bin", **body}
    r = _post(server, "/v2/sum", full)
    assert r.status_code in (400, 413), r.content[:300]
    msg = error_body(r)["message"]
    if field:
        assert field in msg, msg
    else:
        assert "limit" in msg or "max-bytes-in-flight" in msg, msg
    assert proxy.requests == 0, f"upstream was asked {proxy.requests} times: {proxy.paths}"


def test_oversized_batch_refused_before_any_read(limited, store):
    server, proxy = limited
    proxy.reset_counts()
    item = {"interface_type": "http", "url": f"{proxy.url}/big.bin", "dtype": "int16",
            "shape": [1 << 20]}  # 2 MiB each: 8 of them (raw + decoded) exceed 8 MiB
    r = _post(server, "/v2/batch/sum", cbor2.dumps({"requests": [item] * 8}), "application/cbor")
    assert r.status_code == 413, r.content[:300]
    r = _post(server, "/v2/batch/sum", cbor2.dumps({"requests": [item] * 17}), "application/cbor")
    assert r.status_code == 413 and "max_batch" in error_body(r)["message"]
    assert proxy.requests == 0
    # and the server is still fine, reading what fits
    r = _post(server, "/v2/batch/max", cbor2.dumps({"requests": [item]}), "application/cbor")
    assert r.status_code == 200 and proxy.requests == 1


def test_body_over_limit_is_413(limited):
    server, proxy = limited
    proxy.reset_counts()
    big = {"interface_type": "http", "url": f"{proxy.url}/x", "dtype": "int8", "pad": "x" * 5000}
    r = _post(server, "/v2/sum", big)
    assert r.status_code == 413 and "body" in error_body(r)["message"]

    def stream():  # chunked: no Content-Length to refuse early
        yield b'{"pad": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = requests.post(server.url + "/v1/sum/", data=stream(), timeout=TIMEOUT,
                      headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in error_body(r)["message"]
    r = requests.post(server.url + "/v2/sum", data=b"x", timeout=TIMEOUT,
                      headers={"content-type": "application/json", "content-length": "99999999"})
    assert r.status_code in (400, 413)
    assert proxy.requests == 0


def _bombs() -> dict[str, tuple[bytes, dict]]:
    from numcodecs import LZ4, Blosc, Zstd

    z = bytes(BOMB)
    small = bytes(BOMB // 2)  # the slow codecs: 128 MiB is bomb enough and keeps CI quick
    return {
        "zlib": (zlib.compress(small, 9), {"id": "zlib"}),
        "gzip": (gzip.compress(small, 9), {"id": "gzip"}),
        "bz2": (bz2.compress(bytes(BOMB // 4), 9), {"id": "bz2"}),
        "zstd": (bytes(Zstd(level=19).encode(z)), {"id": "zstd"}),
        "lz4": (bytes(LZ4().encode(z)), {"id": "lz4"}),
        "blosc": (bytes(Blosc(cname="zstd", clevel=9).encode(z)), {"id": "blosc"}),
    }


@pytest.fixture(scope="module")
def bomb_server(rel_dir):
    proc = start_active_server(rel_dir / "bombs")
    yield proc
    proc.stop()


def test_decompression_bombs_stopped_at_declared_size(bomb_server, store, rel_nginx):
    docroot = rel_nginx.extra["docroot"]
    bombs = _bombs()
    shape = [4096]  # declares 16 KiB of int32
    good = np.arange(4096, dtype="<i4")
    for name, (blob, comp) in bombs.items():
        (docroot / f"bomb.{name}").write_bytes(blob)
        enc = _encode(good.tobytes(), name)
        (docroot / f"good.{name}").write_bytes(enc)
    # warm up: every codec decodes a legitimate chunk first (imports, thread pools, caches)
    for name, (_, comp) in bombs.items():
        body = {"interface_type": "http", "url": f"{store.nginx}/good.{name}", "dtype": "int32",
                "shape": shape, "compression": comp}
        r = _post(bomb_server, "/v2/sum", body)
        assert r.status_code == 200, (name, r.content[:300])
        m = cbor2.loads(r.content)
        assert int(np.frombuffer(m["bytes"], m["dtype"])[0]) == int(good.sum())
    base_hwm = _vm_hwm(bomb_server.pid)
    for name, (blob, comp) in bombs.items():
        for size in (None, len(blob)):
            body = {"interface_type": "http", "url": f"{store.nginx}/bomb.{name}",
                    "dtype": "int32", "shape": shape, "compression": comp}
            if size:
                body["size"] = size
            r = _post(bomb_server, "/v2/sum", body)
            assert r.status_code in (400, 413), (name, r.status_code, r.content[:300])
            error_body(r)
    grew = _vm_hwm(bomb_server.pid) - base_hwm
    assert grew < 48 << 20, f"peak RSS grew by {grew >> 20} MiB decoding bombs"
    server_alive(bomb_server)


def _encode(raw: bytes, name: str) -> bytes:
    from numcodecs import LZ4, Blosc, Zstd

    return {"zlib": lambda: zlib.compress(raw), "gzip": lambda: gzip.compress(raw),
            "bz2": lambda: bz2.compress(raw), "zstd": lambda: bytes(Zstd().encode(raw)),
            "lz4": lambda: bytes(LZ4().encode(raw)),
            "blosc": lambda: bytes(Blosc(cname="zstd").encode(raw))}[name]()


# ------------------------------------------------------------------------------ slow clients

def _drip(port: int, stop: threading.Event, interval: float, out: dict) -> None:
    """Send an HTTP request one header byte at a time; note when the server drops us."""
    head = (b"POST /v2/sum HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"X-Pad: " + b"a" * 4000 + b"\r\n")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    try:
        for b in head:
            if stop.is_set():
                break
            s.sendall(bytes([b]))
            time.sleep(interval)
        out.setdefault("sent_all", 0)
        out["sent_all"] += 1
    except OSError:
        out.setdefault("dropped_after", []).append(time.monotonic() - t0)
    finally:
        s.close()


def test_slowloris_does_not_starve_other_clients(bomb_server, store):
    """200 clients dripping headers a byte at a time; normal requests still answer quickly."""
    stop = threading.Event()
    out: dict = {}
    threads = [threading.Thread(target=_drip, args=(bomb_server.port, stop, 0.05, out),
                                daemon=True) for _ in range(200)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        body = {"interface_type": "http", "url": store.http_url("f64.bin"), "dtype": "float64",
                "shape": [4096]}
        lat = []
        for _ in range(50):
            t0 = time.monotonic()
            r = _post(bomb_server, "/v2/max", body)
            lat.append(time.monotonic() - t0)
            assert r.status_code == 200
        assert max(lat) < 2.0 and sorted(lat)[len(lat) // 2] < 0.2, lat
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    server_alive(bomb_server)


def test_slow_client_is_disconnected(bomb_server):
    stop = threading.Event()
    out: dict = {}
    t = threading.Thread(target=_drip, args=(bomb_server.port, stop, 0.5, out), daemon=True)
    t.start()
    t.join(20)
    stop.set()
    assert out.get("dropped_after"), "a slowloris client was still connected after 20 s"


def test_slow_body_is_cut_off(bomb_server):
    """Headers on time, then a body dripping a byte every 0.5 s: answered 408 or closed, in time."""
    s = socket.create_connection(("127.0.0.1", bomb_server.port), timeout=5)
    s.sendall(b"POST /v2/sum HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    answer = b""
    try:
        while time.monotonic() - t0 < 20:
            s.sendall(b" ")
            s.settimeout(0.5)
            try:
                part = s.recv(4096)
            except socket.timeout:
                continue
            if not part:
                break
            answer += part
            if b"\r\n\r\n" in answer:
                break
    except OSError:
        pass
    finally:
        s.close()
    assert time.monotonic() - t0 < 20, "a client dripping its body was still connected after 20 s"
    if answer:
        assert answer.startswith(b"HTTP/1.1 408") or answer.startswith(b"HTTP/1.1 4"), answer[:200]
