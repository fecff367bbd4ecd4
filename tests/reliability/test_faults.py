"""Faults in the store and in front of the server, injected by a loopback proxy (faultproxy.py).

Server side (proxy between our server and nginx / moto): refused connections, resets mid-body,
stalls, truncated bodies, 500/503 bursts, wrong Content-Length, non-HTTP garbage. The server must
answer 502/504 with the store named, never a 200 computed from partial bytes, and recover on the
very next request once the store is healthy.

SDK side (proxy between ServerBackend/FetchBackend and our server/nginx/moto): retries succeed
after transient faults; persistent faults end in a typed error (ServerError/StorageError) in
bounded time.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from typing import Any

import cbor2
import numpy as np
import pytest
import requests

from faultproxy import FaultProxy
from relhelp import error_body, server_alive
from servers import S3_KEY, S3_SECRET, start_active_server

from activestorage.backends.fetch import FetchBackend
from activestorage.backends.server import ServerBackend
from activestorage.errors import ServerError, StorageError
from activestorage.request import make_request

pytestmark = pytest.mark.timeout(300)

TIMEOUT = (5, 30)
#: fault -> the status our server must answer with
SERVER_FAULTS = {"refuse": (502,), "reset": (502,), "stall": (504,), "truncate": (502,),
                 "status500": (502,), "status503": (502,), "long_length": (502,),
                 "short_length": (502,), "garbage": (502,)}


@pytest.fixture(scope="module")
def proxies(store, rel_nginx, rel_moto):
    http = FaultProxy("127.0.0.1", rel_nginx.port, stall_seconds=10)
    s3 = FaultProxy("127.0.0.1", rel_moto.port, stall_seconds=10)
    yield {"http": http, "s3": s3}
    http.close()
    s3.close()


@pytest.fixture(autouse=True)
def _healed(request):
    """Whatever a test injected, the next test starts with healthy proxies."""
    yield
    for name in ("proxies", "server_proxy"):
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            for p in (value.values() if isinstance(value, dict) else [value]):
                p.heal()


@pytest.fixture(scope="module")
def fault_server(rel_dir):
    """Our server with short upstream timeouts, so stalls turn into 504s quickly; no chunk cache,
    so every request reads the faulty store (the cache has its own test below)."""
    proc = start_active_server(rel_dir / "fault-server", "--upstream-read-timeout", "1.5",
                               "--upstream-connect-timeout", "1.5", "--no-chunk-cache")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def cached_fault_server(rel_dir):
    """The same with the chunk cache on (its default)."""
    proc = start_active_server(rel_dir / "cached-fault-server", "--upstream-read-timeout", "1.5",
                               "--upstream-connect-timeout", "1.5")
    yield proc
    proc.stop()


def _body(kind: str, proxy: FaultProxy, store) -> dict[str, Any]:
    if kind == "http":
        url = f"{proxy.url}/big.bin"
    else:
        url = f"{proxy.url}/{store.bucket}/big.bin"
    return {"interface_type": kind, "url": url, "dtype": "int16", "shape": [1 << 20]}


def _sum_of(resp) -> int:
    m = cbor2.loads(resp.content)
    return int(np.frombuffer(m["bytes"], m["dtype"])[0])


def _post(server, body, op="sum", auth=None):
    return requests.post(f"{server.url}/v2/{op}", data=json.dumps(body), timeout=TIMEOUT,
                         auth=auth, headers={"content-type": "application/json"})


def _inject(proxy: FaultProxy, fault: str, count: int = 1) -> None:
    if fault.startswith("status"):
        proxy.inject("status", count, status=int(fault[6:]))
    else:
        proxy.inject(fault, count)


@pytest.mark.parametrize("kind", ["http", "s3"])
@pytest.mark.parametrize("fault", list(SERVER_FAULTS))
def test_store_fault_is_502_504_naming_store_then_recovers(fault, kind, proxies, store,
                                                           fault_server):
    proxy = proxies[kind]
    body = _body(kind, proxy, store)
    want = int(store.arrays["big.bin"].astype(np.int64).sum())
    auth = (S3_KEY, S3_SECRET) if kind == "s3" else None

    ok = _post(fault_server, body, auth=auth)  # healthy first
    assert ok.status_code == 200, ok.content[:300]
    wrapped = int(np.int64(want).astype(np.int16))
    assert _sum_of(ok) == wrapped  # the spec's int16 result dtype wraps

    _inject(proxy, fault, 1)
    t0 = time.monotonic()
    r = _post(fault_server, body, auth=auth)
    elapsed = time.monotonic() - t0
    proxy.heal()
    assert r.status_code in SERVER_FAULTS[fault], (fault, r.status_code, r.content[:300])
    err = error_body(r)
    store_name = f"127.0.0.1:{proxy.port}"
    assert store_name in err["message"], err
    assert elapsed < 10, f"{fault} took {elapsed:.1f}s"

    again = _post(fault_server, body, auth=auth)  # recovers at once
    assert again.status_code == 200, again.content[:300]
    assert _sum_of(again) == wrapped


@pytest.mark.parametrize("status", [500, 503])
def test_bursts_then_recovery(status, proxies, store, fault_server):
    proxy = proxies["http"]
    body = _body("http", proxy, store)
    proxy.inject("status", 5, status=status)
    codes = [_post(fault_server, body).status_code for _ in range(7)]
    assert codes == [502] * 5 + [200, 200], codes


def test_random_faults_never_give_wrong_numbers(proxies, store, fault_server):
    """100 reductions of several ranges while a third of the store's answers are broken: every
    answer is a correct 200 or a 502/504; none is computed from partial bytes."""
    proxy = proxies["http"]
    big = store.arrays["big.bin"]
    rng = random.Random(8)
    faults = ["reset", "truncate", "long_length", "short_length", "status500", "status503",
              "garbage"]
    seen = {"ok": 0, "fault": 0}
    for i in range(100):
        n = rng.choice([1000, 4096, 65536, 1 << 19])
        start = rng.randrange(0, big.size - n)
        body = {"interface_type": "http", "url": f"{proxy.url}/big.bin", "dtype": "int16",
                "shape": [n], "offset": start * 2, "size": n * 2}
        op = rng.choice(["sum", "max", "min", "count"])
        if rng.random() < 0.35:
            _inject(proxy, rng.choice(faults), 1)
        r = _post(fault_server, body, op=op)
        proxy.heal()
        if r.status_code == 200:
            m = cbor2.loads(r.content)
            got = np.frombuffer(m["bytes"], m["dtype"])[0]
            part = big[start:start + n]
            want = {"sum": part.sum(dtype=np.int64).astype(np.int16), "max": part.max(),
                    "min": part.min(), "count": n}[op]
            assert got == want, (i, op, got, want)
            seen["ok"] += 1
        else:
            assert r.status_code in (502, 504), r.content[:300]
            seen["fault"] += 1
    assert seen["ok"] > 40 and seen["fault"] > 15, seen


def test_random_faults_with_the_chunk_cache_never_give_wrong_numbers(proxies, store,
                                                                     cached_fault_server):
    """Repeated ranges (so some are answered from the cache, after the authorised HEAD) while a
    third of the store's answers (HEADs included) are broken: every answer is a correct 200 or a
    502/504; a broken HEAD only means the range is read again."""
    proxy = proxies["http"]
    big = store.arrays["big.bin"]
    rng = random.Random(9)
    faults = ["reset", "truncate", "long_length", "short_length", "status500", "status503",
              "garbage"]
    ranges = [(rng.randrange(0, big.size - n), n) for n in (1000, 4096, 65536, 1 << 19)]
    seen = {"ok": 0, "fault": 0}
    for i in range(60):
        start, n = rng.choice(ranges)
        body = {"interface_type": "http", "url": f"{proxy.url}/big.bin", "dtype": "int16",
                "shape": [n], "offset": start * 2, "size": n * 2}
        op = rng.choice(["sum", "max", "min", "count"])
        if rng.random() < 0.35:
            _inject(proxy, rng.choice(faults), 1)
        r = _post(cached_fault_server, body, op=op)
        proxy.heal()
        if r.status_code == 200:
            m = cbor2.loads(r.content)
            got = np.frombuffer(m["bytes"], m["dtype"])[0]
            part = big[start:start + n]
            want = {"sum": part.sum(dtype=np.int64).astype(np.int16), "max": part.max(),
                    "min": part.min(), "count": n}[op]
            assert got == want, (i, op, got, want)
            seen["ok"] += 1
        else:
            assert r.status_code in (502, 504), r.content[:300]
            seen["fault"] += 1
    assert seen["ok"] > 40, seen
    hits = re.search(r'activestorage_chunk_cache_hits_total\{tier="memory"\} (\S+)',
                     requests.get(cached_fault_server.url + "/metrics", timeout=10).text)
    assert hits is not None and float(hits.group(1)) > 10, seen


def test_batch_under_store_faults_is_exact_or_502(proxies, store, fault_server):
    """A batch whose ranges share one coalesced GET: a one-off fault may be retried by the server
    (then every result must be exact), a persistent one is a 502 naming the store."""
    proxy = proxies["http"]
    big = store.arrays["big.bin"]
    items = [{"interface_type": "http", "url": f"{proxy.url}/big.bin", "dtype": "int16",
              "shape": [4096], "offset": 8192 * i, "size": 8192} for i in range(32)]
    want = [int(big[4096 * i:4096 * (i + 1)].sum(dtype=np.int64).astype(np.int16))
            for i in range(32)]

    def post():
        return requests.post(f"{fault_server.url}/v2/batch/sum",
                             data=cbor2.dumps({"requests": items}), timeout=TIMEOUT,
                             headers={"content-type": "application/cbor"})

    for fault in ("truncate", "reset", "short_length", "long_length", "status503"):
        for count in (1, 0):  # once, then persistent
            _inject(proxy, fault, count)
            r = post()
            proxy.heal()
            if r.status_code == 200:
                assert count == 1, (fault, "a persistent fault cannot give a 200")
                got = [int(np.frombuffer(m["bytes"], m["dtype"])[0])
                       for m in cbor2.loads(r.content)["results"]]
                assert got == want, fault
            else:
                assert r.status_code == 502, (fault, r.status_code, r.content[:200])
                assert f"127.0.0.1:{proxy.port}" in error_body(r)["message"]
    r = post()
    assert r.status_code == 200
    server_alive(fault_server)


# ------------------------------------------------------------------------------ SDK side

@pytest.fixture(scope="module")
def server_proxy(fault_server):
    """A fault proxy in front of our server, for the SDK's retries."""
    p = FaultProxy("127.0.0.1", fault_server.port, stall_seconds=5)
    yield p
    p.close()


def _chunk_request(store, name="big.bin", n=4096, offset=0):
    return make_request("int16", (n,), offset=offset, size=2 * n, url=store.http_url(name))


def _sdk(server_proxy, **kw) -> ServerBackend:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0.2)
    return ServerBackend(server_proxy.url, batch=False, env={}, timeout=(2, 3), **kw)


@pytest.mark.parametrize("fault", ["status502", "status503", "status504", "garbage", "refuse"])
def test_server_backend_retries_transient_faults(fault, server_proxy, store):
    big = store.arrays["big.bin"]
    req = _chunk_request(store)
    with _sdk(server_proxy) as b:
        server_proxy.reset_counts()
        if fault == "refuse":
            server_proxy.refuse()
            threading.Timer(0.3, server_proxy.heal).start()
        else:
            _inject(server_proxy, fault, 2)
        p = b.reduce_chunk(req, "sum")
        server_proxy.heal()
    assert int(p.values.reshape(-1)[0]) == int(big[:4096].sum(dtype=np.int64))
    assert int(p.counts.reshape(-1)[0]) == 4096
    if fault != "refuse":
        assert server_proxy.requests == 3, server_proxy.outcomes


@pytest.mark.parametrize("fault", ["reset", "truncate", "long_length"])
def test_server_backend_retries_truncated_answers(fault, server_proxy, store):
    req = _chunk_request(store)
    with _sdk(server_proxy) as b:
        _inject(server_proxy, fault, 1)
        p = b.reduce_chunk(req, "sum")
        server_proxy.heal()
    assert int(p.counts.reshape(-1)[0]) == 4096


@pytest.mark.parametrize("fault,status", [("status503", 503), ("status500", 500),
                                          ("refuse", None), ("stall", 504), ("truncate", None),
                                          ("short_length", None), ("reset", None)])
def test_server_backend_gives_up_typed(fault, status, server_proxy, store):
    req = _chunk_request(store)
    with _sdk(server_proxy, retries=2, backoff=0.05) as b:
        server_proxy.reset_counts()
        if fault == "refuse":
            server_proxy.refuse()
        else:
            _inject(server_proxy, fault, 0)  # persistent
        t0 = time.monotonic()
        try:
            with pytest.raises(ServerError) as ei:
                b.reduce_chunk(req, "sum")
        finally:
            server_proxy.heal()
        elapsed = time.monotonic() - t0
    assert elapsed < 15, elapsed
    assert ei.value.url and server_proxy.url in ei.value.url
    if status is not None:
        assert ei.value.status == status, (ei.value.status, str(ei.value))
    if fault in ("status503", "status500"):
        assert server_proxy.requests == (3 if status == 503 else 1), server_proxy.outcomes


def test_server_backend_batches_survive_store_faults(server_proxy, proxies, store):
    """End to end: store faults behind our server come back as 502s that the SDK retries."""
    big = store.arrays["big.bin"]
    store_proxy = proxies["http"]
    reqs = [make_request("int16", (4096,), offset=8192 * i, size=8192,
                         url=f"{store_proxy.url}/big.bin") for i in range(64)]
    with ServerBackend(server_proxy.url, env={}, retries=3, backoff=0.1, timeout=(2, 10)) as b:
        store_proxy.inject("status", 2, status=503)
        parts = b.reduce_chunks(reqs, "max")
        store_proxy.heal()
    assert [int(p.values.reshape(-1)[0]) for p in parts] == \
        [int(big[4096 * i:4096 * (i + 1)].max()) for i in range(64)]


def _fetch_backend(**kw) -> FetchBackend:
    return FetchBackend(env={}, timeout=3, retries=3, **kw)


def _deflated_req(store: Any, url: str) -> Any:
    """The zlib chunk, which fetch inflates as its body arrives (not collected first)."""
    return make_request("<i4", (16, 64), offset=0, size=len(store.objects["i32.zlib"]),
                        compression={"id": "zlib"}, url=url)


@pytest.mark.parametrize("fault", ["status502", "status503", "status504", "refuse"])
def test_fetch_backend_retries_transient_faults(fault, proxies, store):
    proxy = proxies["http"]
    big = store.arrays["big.bin"]
    req = make_request("int16", (4096,), offset=0, size=8192, url=f"{proxy.url}/big.bin")
    with _fetch_backend() as fb:
        if fault == "refuse":
            proxy.refuse()
            threading.Timer(0.3, proxy.heal).start()
        else:
            _inject(proxy, fault, 2)
        p = fb.reduce_chunk(req, "sum")
        proxy.heal()
    assert int(p.values.reshape(-1)[0]) == int(big[:4096].sum(dtype=np.int64))


def test_fetch_backend_s3_retries_503(proxies, store):
    proxy = proxies["s3"]
    big = store.arrays["big.bin"]
    req = make_request("int16", (4096,), offset=0, size=8192,
                       url=f"s3://{store.bucket}/big.bin")
    opts = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": proxy.url}}
    with _fetch_backend(storage_options=opts) as fb:
        proxy.inject("status", 2, status=503)
        p = fb.reduce_chunk(req, "sum")
        proxy.heal()
    assert int(p.values.reshape(-1)[0]) == int(big[:4096].sum(dtype=np.int64))


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_fetch_backend_retries_cut_bodies(fault, proxies, store):
    proxy = proxies["http"]
    req = make_request("int16", (4096,), offset=0, size=8192, url=f"{proxy.url}/big.bin")
    with _fetch_backend() as fb:
        _inject(proxy, fault, 1)
        p = fb.reduce_chunk(req, "sum")
        proxy.heal()
    assert int(p.counts.reshape(-1)[0]) == 4096


@pytest.mark.parametrize("deflated", [False, True], ids=["whole", "inflating"])
@pytest.mark.parametrize("fault", ["status503", "refuse", "stall", "short_length", "truncate",
                                   "reset", "long_length"])
def test_fetch_backend_gives_up_typed_never_wrong(fault, deflated, proxies, store):
    proxy = proxies["http"]
    req = (_deflated_req(store, f"{proxy.url}/i32.zlib") if deflated else
           make_request("int16", (4096,), offset=0, size=8192, url=f"{proxy.url}/big.bin"))
    with _fetch_backend() as fb:
        if fault == "refuse":
            proxy.refuse()
        else:
            _inject(proxy, fault, 0)
        t0 = time.monotonic()
        try:
            with pytest.raises(StorageError) as ei:
                fb.reduce_chunk(req, "sum")
        finally:
            proxy.heal()
    assert time.monotonic() - t0 < 30
    assert ei.value.status in (502, 504), ei.value.status
    assert str(proxy.port) in str(ei.value)


@pytest.mark.parametrize("fault", ["reset", "truncate", "status503"])
def test_fetch_backend_retries_faults_while_inflating(fault, proxies, store):
    proxy = proxies["http"]
    want = int(store.arrays["i32.zlib"].sum(dtype=np.int64))
    with _fetch_backend() as fb:
        _inject(proxy, fault, 1)
        p = fb.reduce_chunk(_deflated_req(store, f"{proxy.url}/i32.zlib"), "sum")
        proxy.heal()
    assert int(p.values.reshape(-1)[0]) == want and int(p.counts.reshape(-1)[0]) == 16 * 64


@pytest.mark.parametrize("fault", ["reset", "truncate", "long_length"])
def test_fetch_backend_s3_inflating_retries_cut_bodies(fault, proxies, store):
    proxy = proxies["s3"]
    want = int(store.arrays["i32.zlib"].sum(dtype=np.int64))
    opts = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": proxy.url}}
    with _fetch_backend(storage_options=opts) as fb:
        _inject(proxy, fault, 1)
        p = fb.reduce_chunk(_deflated_req(store, f"s3://{store.bucket}/i32.zlib"), "sum")
        proxy.heal()
        assert fb.stats.requests == 2  # the cut body, then the whole one
    assert int(p.values.reshape(-1)[0]) == want
