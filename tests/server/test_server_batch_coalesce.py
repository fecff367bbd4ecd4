"""Batches of small chunks that share one upstream GET (the app in-process, a fake upstream that
counts GETs): the stacked kernel path gives the answers the per-chunk path gives, for any chunk
layout, gaps, byte order, selection, axes and missing data."""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

import activestorage.server.service as service
from activestorage.errors import StorageError
from activestorage.server.app import create_app
from activestorage.server.settings import Settings

STORE: dict[str, bytes] = {}
GETS: list[tuple[str, int, int | None]] = []


async def counting_read(target, offset, size, *, max_bytes, meta=None):
    GETS.append((target.url, offset, size))
    data = STORE.get(target.url)
    if data is None:
        raise StorageError(f"object not found: {target.name}", status=400, store=target.store)
    return data[offset:] if size is None else data[offset:offset + size]


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(max_batch=64, coalesce_gap_bytes=256))
    app.state.server.upstream.read = counting_read
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def apart():
    """The same app reading every range with a GET of its own: the per-chunk path."""
    app = create_app(Settings(max_batch=64, coalesce_below_bytes=0))
    app.state.server.upstream.read = counting_read
    with TestClient(app) as c:
        yield c


@pytest.fixture
def stacked_calls(monkeypatch):
    """How many runs the stacked path reduced (it must be used, not only be correct)."""
    calls: list[int] = []
    real = service.reduce_run

    def spy(raw, requests, operation, slots=None):
        calls.append(len(requests))
        return real(raw, requests, operation, slots)

    monkeypatch.setattr(service, "reduce_run", spy)
    return calls


def _cbor(client, path: str, body: Any) -> Any:
    r = client.post(path, content=cbor2.dumps(body), headers={"content-type": "application/cbor"})
    assert r.status_code == 200, r.text
    return cbor2.loads(r.content)


def _values(m: dict[str, Any]) -> np.ndarray:
    dt = np.dtype(m["dtype"]).newbyteorder("<" if m["byte_order"] == "little" else ">")
    return np.frombuffer(m["bytes"], dt).reshape(m["shape"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(),
       dtype=st.sampled_from(["<f4", ">f8", "<i2", "<u1", ">i4"]),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       op=st.sampled_from(["sum", "min", "max", "count"]))
def test_coalesced_batch_equals_per_chunk_answers(client, apart, stacked_calls, data, dtype,
                                                  shape, op):
    dt = np.dtype(dtype)
    k = data.draw(st.integers(2, 8), label="chunks")
    # bytes between consecutive chunks: 0 (back to back: stacked) or a gap (still one GET)
    gaps = data.draw(st.lists(st.sampled_from([0, 0, 0, 3, dt.itemsize, 40]), min_size=k,
                              max_size=k), label="gaps")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    chunks = [rng.integers(0, 50, size=shape).astype(dt) for _ in range(k)]
    missing = data.draw(st.sampled_from([None, 7]), label="missing")
    axis = data.draw(st.sampled_from([None] + [[a] for a in range(len(shape))]), label="axis")
    sel = data.draw(st.sampled_from([None, [[0, n, 2] for n in shape]]), label="selection")
    url = f"http://127.0.0.1:1/run-{len(STORE)}.bin"
    blob, bodies = bytearray(), []
    for gap, c in zip(gaps, chunks):
        blob += b"\x5a" * gap
        b: dict[str, Any] = {"interface_type": "http", "url": url, "dtype": dt.name,
                             "byte_order": "little" if dt.byteorder in "<=|" else "big",
                             "offset": len(blob), "size": c.nbytes, "shape": list(shape)}
        if missing is not None:
            b["missing"] = {"missing_value": missing}
        if axis is not None:
            b["axis"] = axis
        if sel is not None:
            b["selection"] = sel
        bodies.append(b)
        blob += c.tobytes()
    STORE[url] = bytes(blob)

    fold = data.draw(st.none() | st.lists(st.integers(0, 2), min_size=k, max_size=k),
                     label="fold")
    batch = {"requests": bodies} if fold is None else {"requests": bodies, "fold": fold}

    GETS.clear()
    stacked_calls.clear()
    results = _cbor(client, f"/v2/batch/{op}", batch)["results"]
    assert len(GETS) == 1  # every range within the gap limit of its neighbour: one GET
    if fold is not None and any(g == 0 and f0 == f1 for g, f0, f1 in
                                zip(gaps[1:], fold, fold[1:])):
        assert stacked_calls  # back-to-back chunks of one fold group were reduced stacked

    GETS.clear()
    wanted = _cbor(apart, f"/v2/batch/{op}", batch)["results"]  # the per-chunk path
    assert len(GETS) == k
    for got, want in zip(results, wanted):
        if want is None:
            assert got is None
            continue
        assert got["dtype"] == want["dtype"] and got["shape"] == want["shape"]
        assert got["count"] == want["count"]
        if op == "sum" and np.dtype(want["dtype"]).kind == "f":
            np.testing.assert_allclose(_values(got), _values(want), rtol=1e-12)
        else:
            np.testing.assert_array_equal(_values(got), _values(want))


def test_adjacent_ranges_share_one_get_and_far_ones_do_not(client):
    """Merged GETs are observable: four back-to-back chunks and one far away take two GETs, and
    the metrics count them."""
    x = np.arange(4 * 16, dtype="<f4")
    blob = x.tobytes() + b"\0" * 4096 + x[:16].tobytes()
    url = f"http://127.0.0.1:1/far-{len(STORE)}.bin"
    STORE[url] = blob
    bodies = [{"interface_type": "http", "url": url, "dtype": "float32", "offset": 64 * i,
               "size": 64, "shape": [16]} for i in range(4)]
    bodies.append({**bodies[0], "offset": len(x.tobytes()) + 4096})
    before = _upstream_requests(client)
    GETS.clear()
    results = _cbor(client, "/v2/batch/sum", {"requests": bodies, "fold": [0] * 5})["results"]
    assert sorted((o, s) for _u, o, s in GETS) == [(0, 256), (4352, 64)]
    assert _upstream_requests(client) - before == 2
    assert results[1:] == [None] * 4
    assert _values(results[0]).item() == float(x.sum() + x[:16].sum())


def _upstream_requests(client) -> float:
    text = client.get("/metrics").text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("activestorage_upstream_requests_total "))
    return float(line.split()[1])
