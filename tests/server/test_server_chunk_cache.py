"""The server's chunk cache on its own (LRU, byte bound, age, disk tier, key isolation,
revalidation) and inside the app with a fake upstream (hits, option_disable_chunk_cache, one read
and one decode per distinct chunk of a batch)."""

from __future__ import annotations

import asyncio
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings as hsettings, strategies as st
from prometheus_client import CollectorRegistry

from activestorage.server import service as service_mod
from activestorage.server.app import create_app
from activestorage.server.chunk_cache import (CacheMetrics, ChunkCache, DiskTier, Entry,
                                              MemoryTier, strong_etag)
from activestorage.server.settings import Settings, parse_args
from activestorage.server.upstream import Target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------- memory tier

@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.lists(st.tuples(st.sampled_from("put get".split()),
                                              st.integers(0, 7), st.integers(1, 40)),
                                    max_size=60))
def test_memory_tier_is_the_byte_bounded_lru_model(limit, ops):
    tier = MemoryTier(limit, ttl=1e9, metrics=CacheMetrics(None), clock=Clock())
    model: OrderedDict[str, int] = OrderedDict()
    for op, k, n in ops:
        key = f"k{k}"
        if op == "put":
            kept = tier.put(key, Entry(bytes(n), None, 0.0))
            assert kept == (n <= limit)
            if kept:
                model.pop(key, None)
                while model and sum(model.values()) + n > limit:
                    model.popitem(last=False)
                model[key] = n
        else:
            e = tier.get(key)
            assert (e is not None) == (key in model)
            if e is not None:
                assert len(e.data) == model[key]
                model.move_to_end(key)
        assert tier.used == sum(model.values()) <= limit
        assert len(tier) == len(model)


def test_memory_tier_age_limit_and_metrics():
    reg, clock = CollectorRegistry(), Clock()
    tier = MemoryTier(100, ttl=10, metrics=CacheMetrics(reg), clock=clock)
    tier.put("a", Entry(b"x" * 8, "e", clock()))
    clock.now += 9
    assert tier.get("a") is not None
    clock.now += 2
    assert tier.get("a") is None and tier.used == 0
    assert metric(reg, "activestorage_chunk_cache_evictions_total", tier="memory",
                  reason="age") == 1
    tier.put("b", Entry(b"y" * 60, "e", clock()))
    tier.put("c", Entry(b"z" * 60, "e", clock()))  # pushes b out
    assert tier.get("b") is None and tier.get("c") is not None
    assert metric(reg, "activestorage_chunk_cache_evictions_total", tier="memory",
                  reason="size") == 1
    assert metric(reg, "activestorage_chunk_cache_bytes", tier="memory") == 60


def test_strong_etag():
    assert strong_etag('"abc"') == "abc" == strong_etag("abc")
    assert strong_etag('W/"abc"') is None and strong_etag(None) is None and strong_etag("") is None


# --------------------------------------------------------------------------------- disk tier

def test_disk_tier_round_trip_bounds_and_atomic_files(tmp_path: Path):
    reg, clock = CollectorRegistry(), Clock()
    d = DiskTier(tmp_path / "c", 100, ttl=50, metrics=CacheMetrics(reg), clock=clock)
    assert d.put("a-1.chunk", Entry(b"1" * 40, '"e1"', clock()))
    assert d.put("a-2.chunk", Entry(b"2" * 40, None, clock()))
    assert d.get("a-2.chunk").etag is None  # type: ignore[union-attr]
    e = d.get("a-1.chunk")  # now the most recently used
    assert e is not None and e.data == b"1" * 40 and e.etag == '"e1"'
    assert d.put("a-3.chunk", Entry(b"3" * 40, "e3", clock()))  # over 100: LRU (2) goes
    assert d.get("a-2.chunk") is None and d.get("a-1.chunk") is not None
    assert d.used <= 100
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["a-1.chunk", "a-3.chunk"]
    assert not d.put("a-big.chunk", Entry(b"x" * 200, "e", clock()))
    clock.now += 51
    assert d.get("a-1.chunk") is None
    assert metric(reg, "activestorage_chunk_cache_evictions_total", tier="disk",
                  reason="age") == 1


def test_disk_tier_restart_keeps_only_reachable_entries(tmp_path: Path):
    clock = Clock()
    d = DiskTier(tmp_path, 1000, ttl=50, metrics=CacheMetrics(None), clock=clock)
    d.put("a-anon.chunk", Entry(b"a" * 10, "e", clock()))
    d.put("u-user.chunk", Entry(b"u" * 10, "e", clock()))
    (tmp_path / ".a-x.chunk.1.2.tmp").write_bytes(b"half")
    (tmp_path / "a-corrupt.chunk").write_bytes(b"junk")
    clock.now = (tmp_path / "a-anon.chunk").stat().st_mtime + 1
    again = DiskTier(tmp_path, 1000, ttl=50, metrics=CacheMetrics(None), clock=clock)
    # a caller's entries were keyed with the old process's HMAC key: unreachable, so deleted
    assert not (tmp_path / "u-user.chunk").exists()
    assert not (tmp_path / ".a-x.chunk.1.2.tmp").exists()
    assert again.get("a-anon.chunk").data == b"a" * 10  # type: ignore[union-attr]
    assert again.get("a-corrupt.chunk") is None and not (tmp_path / "a-corrupt.chunk").exists()
    clock.now += 100
    later = DiskTier(tmp_path, 1000, ttl=50, metrics=CacheMetrics(None), clock=clock)
    assert later.get("a-anon.chunk") is None and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------- keys and sessions

A = ("AKIA-A", "secret-of-a")
B = ("AKIA-B", "secret-of-b")


def target(auth: Any = A, url: str = "http://127.0.0.1:9/b/k", etag: str | None = None) -> Target:
    return Target("s3", url, auth, etag)


@hsettings(max_examples=100, deadline=None)
@given(st.tuples(st.text(max_size=8), st.text(max_size=8)),
       st.tuples(st.text(max_size=8), st.text(max_size=8)))
def test_keys_of_different_credentials_never_meet(a, b):
    cache = ChunkCache(max_bytes=1 << 20)
    ka, kb = cache.key(target(a), 0, 8), cache.key(target(b), 0, 8)
    assert (ka == kb) == (a == b)
    assert ka != cache.key(target(None), 0, 8)
    # the secret is not in the key, and another process (another HMAC key) makes other keys
    assert a[1] not in ka or len(a[1]) < 3
    assert ChunkCache(max_bytes=1).caller(A) != cache.caller(A)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Heads:
    """A fake authorised HEAD: the ETag per (url, auth), counting calls."""

    def __init__(self, etags: dict[Any, str | None]) -> None:
        self.etags = etags
        self.calls = 0

    async def __call__(self, t: Target) -> str | None:
        self.calls += 1
        v = self.etags.get((t.url, t.auth), self.etags.get(t.url))
        if isinstance(v, Exception):
            raise v
        return v


def test_caller_b_never_gets_caller_a_entry():
    cache = ChunkCache(max_bytes=1 << 20)
    heads = Heads({"http://127.0.0.1:9/b/k": '"e1"'})

    async def go() -> None:
        s = cache.session(heads)
        await s.put(target(A), 0, 8, b"A" * 8, '"e1"')
        assert await cache.session(heads).get(target(A), 0, 8) == b"A" * 8
        for other in (B, (A[0], "wrong"), None):
            assert await cache.session(heads).get(target(other), 0, 8) is None
        assert await cache.session(heads).get(target(A), 0, 16) is None  # another range
    run(go())


def test_revalidation_one_head_per_object_changed_and_failed():
    reg = CollectorRegistry()
    cache = ChunkCache(max_bytes=1 << 20, registry=reg)
    heads = Heads({"http://127.0.0.1:9/b/k": '"e1"'})

    async def go() -> None:
        s = cache.session(heads)
        for off in range(0, 80, 8):
            await s.put(target(), off, 8, bytes([off]) * 8, '"e1"')
        assert heads.calls == 0  # misses and additions send no HEAD
        s = cache.session(heads)
        got = await asyncio.gather(*(s.get(target(), off, 8) for off in range(0, 80, 8)))
        assert got == [bytes([off]) * 8 for off in range(0, 80, 8)]
        assert heads.calls == 1  # one HEAD for the object, shared by its ten ranges
        heads.etags["http://127.0.0.1:9/b/k"] = '"e2"'  # overwritten
        assert await cache.session(heads).get(target(), 0, 8) is None
        assert await cache.session(heads).get(target(), 0, 8) is None  # and dropped
        await cache.session(heads).put(target(), 8, 8, b"n" * 8, '"e2"')
        heads.etags["http://127.0.0.1:9/b/k"] = RuntimeError("store down")
        assert await cache.session(heads).get(target(), 8, 8) is None
        heads.etags["http://127.0.0.1:9/b/k"] = None  # HEAD refused (403) or no ETag
        assert await cache.session(heads).get(target(), 8, 8) is None
        heads.etags["http://127.0.0.1:9/b/k"] = '"e2"'
        assert await cache.session(heads).get(target(), 8, 8) == b"n" * 8
        # pinned to another version than the entry: the GET decides (409 or those bytes)
        assert await cache.session(heads).get(target(etag="e1"), 8, 8) is None
    run(go())
    assert metric(reg, "activestorage_chunk_cache_hits_total", tier="memory") == 11
    assert metric(reg, "activestorage_chunk_cache_evictions_total", tier="memory",
                  reason="changed") == 1
    assert metric(reg, "activestorage_chunk_cache_revalidations_total", result="etag") == 3
    assert metric(reg, "activestorage_chunk_cache_revalidations_total", result="failed") == 2
    assert metric(reg, "activestorage_chunk_cache_misses_total") == 5


def test_without_revalidation_entries_age_out_and_need_no_etag():
    clock = Clock()
    cache = ChunkCache(max_bytes=1 << 20, revalidate=False, ttl=5, clock=clock)
    heads = Heads({})

    async def go() -> None:
        await cache.session(heads).put(target(), 0, 8, b"x" * 8, None)
        assert await cache.session(heads).get(target(), 0, 8) == b"x" * 8
        clock.now += 6
        assert await cache.session(heads).get(target(), 0, 8) is None
    run(go())
    assert heads.calls == 0


def test_weak_or_missing_etag_is_not_kept_and_one_request_is_bounded():
    reg = CollectorRegistry()
    cache = ChunkCache(max_bytes=1 << 20, request_bytes=20, registry=reg)
    heads = Heads({"http://127.0.0.1:9/b/k": '"e"'})

    async def go() -> None:
        s = cache.session(heads)
        await s.put(target(), 0, 8, b"1" * 8, None)
        await s.put(target(), 8, 8, b"2" * 8, 'W/"e"')
        for off in (16, 24, 32):
            await s.put(target(), off, 8, b"3" * 8, '"e"')
        s2 = cache.session(heads)
        got = [await s2.get(target(), off, 8) for off in (0, 8, 16, 24, 32)]
        assert got == [None, None, b"3" * 8, b"3" * 8, None]  # 20 bytes per request: two
    run(go())
    assert metric(reg, "activestorage_chunk_cache_refused_total", reason="no_etag") == 2
    assert metric(reg, "activestorage_chunk_cache_refused_total", reason="request_bound") == 1


def test_a_received_body_is_kept_without_a_copy_and_a_slice_is_copied():
    """A body as the upstream client returns it (read-only, the whole of its buffer) is kept as
    it is; a slice of a coalesced read is copied, so it cannot keep the whole read alive."""
    cache = ChunkCache(max_bytes=1 << 20, registry=CollectorRegistry())
    heads = Heads({"http://127.0.0.1:9/b/k": '"e"'})
    body = memoryview(np.arange(16, dtype=np.uint8)).toreadonly()
    shared = memoryview(np.arange(32, dtype=np.uint8)).toreadonly()

    async def go() -> None:
        s = cache.session(heads)
        await s.put(target(), 0, 16, body, '"e"')
        await s.put_many(target(), [(100, 8, shared[8:16])], '"e"')
        s2 = cache.session(heads)
        whole, part = await s2.get(target(), 0, 16), await s2.get(target(), 100, 8)
        assert whole is body
        assert isinstance(part, bytes) and part == bytes(range(8, 16))
    run(go())


def test_disk_tier_behind_memory_and_no_secret_on_disk(tmp_path: Path):
    cache = ChunkCache(max_bytes=16, disk_dir=tmp_path, disk_bytes=1 << 20)
    heads = Heads({"http://127.0.0.1:9/b/k": '"e"'})

    async def go() -> None:
        s = cache.session(heads)
        await s.put(target(), 0, 12, b"a" * 12, '"e"')
        await s.put(target(), 12, 12, b"b" * 12, '"e"')  # memory keeps only this one
        s = cache.session(heads)
        assert await s.get(target(), 0, 12) == b"a" * 12  # from disk
        assert await s.get(target(), 12, 12) == b"b" * 12
    run(go())
    assert cache.metrics.hits.labels("disk")._value.get() >= 1
    for p in tmp_path.iterdir():
        assert p.name.startswith("u-")
        blob = p.read_bytes()
        assert A[1].encode() not in blob and A[0].encode() not in blob


def test_off_means_no_lookups():
    cache = ChunkCache(max_bytes=0)
    assert not cache.enabled

    async def go() -> None:
        s = cache.session(Heads({}))
        await s.put(target(), 0, 8, b"x" * 8, '"e"')
        assert await s.get(target(), 0, 8) is None
    run(go())


def test_settings_and_flags():
    d = Settings()
    assert d.chunk_cache_size > 0 and d.chunk_cache_revalidate and d.chunk_cache_dir is None
    s = parse_args(["--chunk-cache-size", "1000", "--chunk-cache-ttl", "5",
                    "--chunk-cache-dir", "/tmp/x", "--no-chunk-cache-revalidate"], environ={})
    assert (s.chunk_cache_size, s.chunk_cache_ttl, s.chunk_cache_dir,
            s.chunk_cache_revalidate) == (1000, 5.0, "/tmp/x", False)
    off = parse_args(["--no-chunk-cache", "--chunk-cache-dir", "/tmp/x"], environ={})
    assert off.chunk_cache_size == 0 and off.chunk_cache_dir is None
    env = parse_args([], environ={"ACTIVESTORAGE_CHUNK_CACHE_SIZE": "77"})
    assert env.chunk_cache_size == 77


# ----------------------------------------------------------------------- inside the app

class FakeStore:
    """Objects by URL with an ETag each; counts GETs and HEADs."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.gets = 0
        self.heads = 0

    async def read(self, t: Target, offset: int, size: int | None, *, max_bytes: int,
                   meta: dict[str, Any] | None = None) -> bytes:
        self.gets += 1
        data, etag = self.objects[t.url]
        if meta is not None:
            meta["etag"] = etag
        return data[offset:] if size is None else data[offset:offset + size]

    async def etag(self, t: Target) -> str | None:
        self.heads += 1
        return self.objects[t.url][1]


@pytest.fixture()
def app_store():
    app = create_app(Settings())
    store = FakeStore()
    app.state.server.upstream.read = store.read
    app.state.server.upstream.etag = store.etag
    with TestClient(app) as c:
        yield c, store


URL = "http://127.0.0.1:1/x.bin"
X = np.arange(100, dtype="<f8")


def body(**kw: Any) -> dict[str, Any]:
    return {"interface_type": "http", "url": URL, "dtype": "float64", "size": 800,
            "shape": [100], **kw}


def test_repeat_is_a_hit_and_the_option_bypasses(app_store):
    c, store = app_store
    store.objects[URL] = (X.tobytes(), '"v1"')
    auth = ("u", "p")
    first = c.post("/v2/sum", json=body(), auth=auth)
    assert first.status_code == 200 and store.gets == 1
    again = c.post("/v2/max", json=body(), auth=auth)
    assert again.status_code == 200 and store.gets == 1 and store.heads == 1
    assert cbor2.loads(again.content)["bytes"] == np.float64(99).tobytes()
    c.post("/v2/sum", json=body(option_disable_chunk_cache=True), auth=auth)
    assert store.gets == 2 and store.heads == 1
    c.post("/v2/sum", json=body(), auth=("other", "p"))  # another caller: its own GET
    assert store.gets == 3
    store.objects[URL] = ((X + 1).tobytes(), '"v2"')  # overwritten: not served stale
    r = c.post("/v2/max", json=body(), auth=auth)
    assert store.gets == 4 and cbor2.loads(r.content)["bytes"] == np.float64(100).tobytes()
    text = c.get("/metrics").text
    assert 'activestorage_chunk_cache_hits_total{tier="memory"} 1.0' in text
    assert "activestorage_chunk_cache_misses_total" in text


def test_batch_hits_and_reads_each_distinct_range_once(app_store):
    c, store = app_store
    store.objects[URL] = (X.tobytes(), '"v1"')
    reqs = [body(size=80, offset=80 * k, shape=[10]) for k in range(10)] * 2
    r = c.post("/v2/batch/sum", json={"requests": reqs}, auth=("u", "p"))
    assert r.status_code == 200, r.text
    res = cbor2.loads(r.content)["results"]
    sums = [np.frombuffer(x["bytes"], "<f8")[0] for x in res]
    assert sums == [X[10 * k:10 * k + 10].sum() for k in range(10)] * 2
    gets = store.gets
    assert gets <= 10
    r2 = c.post("/v2/batch/sum", json={"requests": reqs}, auth=("u", "p"))
    assert [np.frombuffer(x["bytes"], "<f8")[0] for x in cbor2.loads(r2.content)["results"]] \
        == sums
    assert store.gets == gets and store.heads == 1


def test_a_chunk_repeated_in_a_batch_is_decoded_once(app_store, monkeypatch):
    c, store = app_store
    x = np.arange(64, dtype=">i4").reshape(8, 8)
    store.objects[URL] = (zlib.compress(x.tobytes()), '"z"')
    calls = []
    real = service_mod.decode
    monkeypatch.setattr(service_mod, "decode", lambda raw, req, *a: calls.append(1) or
                        real(raw, req, *a))
    n = len(store.objects[URL][0])
    base = {"interface_type": "http", "url": URL, "dtype": "int32", "byte_order": "big",
            "size": n, "shape": [8, 8], "compression": {"id": "zlib"}}
    sels = [[[0, 8, 1], [0, 8, 1]], [[1, 5, 2], [0, 8, 3]], [[7, 0, -1], [2, 3, 1]]]
    reqs = [dict(base, selection=s) for s in sels]
    r = c.post("/v2/batch/sum", json={"requests": reqs}, auth=("u", "p"),
               headers={"accept": "application/cbor"})
    assert r.status_code == 200, r.text
    got = [int(np.frombuffer(m["bytes"], ">i4" if m["byte_order"] == "big" else "<i4")[0])
           for m in cbor2.loads(r.content)["results"]]
    want = [int(x[slice(*a), slice(*b)].sum()) for a, b in sels]
    assert got == want and len(calls) == 1 and store.gets == 1


def test_v1_repeat_is_a_hit_and_a_cache_of_size_zero_is_off():
    store = FakeStore()
    store.objects["http://127.0.0.1:1/b/k"] = (X.tobytes(), '"v1"')
    for size, gets in ((1 << 20, 1), (0, 2)):
        app = create_app(Settings(chunk_cache_size=size))
        app.state.server.upstream.read = store.read
        app.state.server.upstream.etag = store.etag
        store.gets = 0
        with TestClient(app) as c:
            for _ in range(2):
                r = c.post("/v1/max/", json={"source": "http://127.0.0.1:1", "bucket": "b",
                                             "object": "k", "dtype": "float64", "size": 800},
                           auth=("u", "p"))
                assert r.status_code == 200 and np.frombuffer(r.content, "<f8")[0] == 99
            text = c.get("/metrics").text
        assert store.gets == gets
        hit_line = 'activestorage_chunk_cache_hits_total{tier="memory"} 1.0'
        assert (hit_line in text) == (size > 0)


SELECTION = st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.sampled_from([-3, -1, 1, 2]))


@hsettings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), SELECTION, SELECTION), min_size=1, max_size=8),
       st.sampled_from(["sum", "min", "max", "count", "select"]))
def test_batches_repeating_chunks_agree_with_numpy(picks, op):
    """Items repeating chunks (decoded once, read once) give NumPy's answer for each item."""
    store = FakeStore()
    chunks = [(np.arange(64).reshape(8, 8) * (k + 1) - 7 * k).astype(">i4") for k in range(3)]
    blob, spans = b"", []
    for x in chunks:
        z = zlib.compress(x.tobytes())
        spans.append((len(blob), len(z)))
        blob += z
    store.objects[URL] = (blob, '"z"')
    app = create_app(Settings())
    app.state.server.upstream.read = store.read
    app.state.server.upstream.etag = store.etag
    reqs = [{"interface_type": "http", "url": URL, "dtype": "int32", "byte_order": "big",
             "offset": spans[k][0], "size": spans[k][1], "shape": [8, 8],
             "compression": {"id": "zlib"}, "selection": [list(a), list(b)]}
            for k, a, b in picks]
    with TestClient(app) as c:
        for _ in range(2):  # cold, then from the cache
            r = c.post(f"/v2/batch/{op}", json={"requests": reqs}, auth=("u", "p"))
            assert r.status_code == 200, r.text
            for (k, a, b), m in zip(picks, cbor2.loads(r.content)["results"]):
                want = chunks[k][slice(*a), slice(*b)]
                dt = ">i4" if m["byte_order"] == "big" else "<i4"
                if op == "count":
                    dt = dt[0] + "i8"
                got = np.frombuffer(m["bytes"], dt)
                if op == "select":
                    assert np.array_equal(got.reshape(want.shape), want)
                elif op == "count":
                    assert got[0] == want.size
                elif want.size:
                    assert got[0] == getattr(np, op)(want.astype(np.int64)).astype(np.int32)
    assert store.gets <= len({k for k, _, _ in picks})
