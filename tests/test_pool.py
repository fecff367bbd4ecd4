"""ServerPool: spreading, failover, back-off and errors, with in-process member backends.

The members here are real POSIX backends (so every answer is checked against netCDF4's masked read)
wrapped to fail on demand; one test uses real ServerBackends pointed at closed ports.
"""

from __future__ import annotations

import socket
import threading
import time

import netCDF4
import numpy as np
import pytest

from activestorage import Active, RequestValidationError, ServerError
from activestorage.backends.pool import AllServersDownError, ServerPool, validate_server_url
from activestorage.backends.posix import PosixBackend

from helpers import assert_same, oracle, write_nc

OPS = ["mean", "min", "max", "sum", "count"]


class Member(PosixBackend):
    """A POSIX backend that can be told to fail like a dead server, or to be slow."""

    def __init__(self, url: str, fail: str | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.url = url
        self.fail = fail
        self.delay = delay
        self.calls = 0
        self.chunks = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._l = threading.Lock()

    def reduce_chunks(self, requests, operation):
        with self._l:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.fail == "down":
                raise ServerError(f"cannot reach reduction server {self.url}: refused",
                                  status=None, url=self.url)
            if self.fail == "500":
                raise ServerError(f"reduction server {self.url} answered HTTP 500: boom",
                                  status=500, url=self.url)
            if self.fail == "400":
                raise ServerError(f"reduction server {self.url} answered HTTP 400: dtype: bad",
                                  status=400, url=self.url)
            if self.fail == "crash":
                raise ConnectionResetError("connection reset by peer")
            with self._l:
                self.chunks += len(requests)
            return super().reduce_chunks(requests, operation)
        finally:
            with self._l:
                self.in_flight -= 1


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(6)
    data = rng.normal(size=(24, 10, 12)).astype("f4")
    data[data > 1.8] = 1e20
    path = write_nc(tmp_path / "p.nc", data, chunks=[2, 5, 6], zlib=True,
                    attrs={"missing_value": np.float32(1e20)})
    with netCDF4.Dataset(path) as ds:
        x = ds["v"][...]
    return str(path), x


def make_pool(members, **kw):
    by_url = {m.url: m for m in members}
    return ServerPool([m.url for m in members], backend_factory=by_url.__getitem__, **kw)


def check_all(path, x, pool, threads=4):
    with Active(path, "v", backend=pool, max_threads=threads) as a:
        for op in OPS:
            assert_same(getattr(a, op)[...], oracle(x, op), "f4", op)
            assert_same(getattr(a, op)(axis=(0, 2))[3:17], oracle(x[3:17], op, (0, 2)), "f4", op)


def test_spreads_work_over_healthy_servers(dataset):
    path, x = dataset
    members = [Member("http://s1:1"), Member("http://s2:2"), Member("http://s3:3")]
    pool = make_pool(members)
    check_all(path, x, pool)
    assert all(m.chunks > 0 for m in members), [m.chunks for m in members]
    total = sum(m.chunks for m in members)
    assert max(m.chunks for m in members) < 0.6 * total  # no server took most of the work
    assert pool.stats.bytes_read == sum(m.stats.bytes_read for m in members) > 0
    assert pool.stats.requests == sum(m.stats.requests for m in members)
    assert all(s["outstanding"] == 0 and s["up"] for s in pool.status())
    assert max(m.max_in_flight for m in members) >= 1
    pool.close()


def test_least_outstanding_prefers_the_fast_server(dataset):
    path, x = dataset
    slow, fast = Member("http://slow:1", delay=0.2), Member("http://fast:2")
    pool = make_pool([slow, fast])
    with Active(path, "v", backend=pool, max_threads=4) as a:
        assert_same(a.sum[...], oracle(x, "sum"), "f4", "sum")
    assert fast.chunks > 2 * slow.chunks, (fast.chunks, slow.chunks)
    pool.close()


@pytest.mark.parametrize("failure", ["down", "500", "crash"])
def test_failing_server_is_skipped_and_its_work_retried(dataset, failure):
    path, x = dataset
    bad, good = Member("http://bad:1", fail=failure), Member("http://good:2")
    pool = make_pool([bad, good], backoff=60)
    check_all(path, x, pool)
    assert bad.calls >= 1  # it was tried ...
    calls = bad.calls
    check_all(path, x, pool)
    assert bad.calls == calls  # ... and then left alone during the back-off
    st = {s["url"]: s for s in pool.status()}
    assert not st["http://bad:1"]["up"] and st["http://good:2"]["up"]
    assert st["http://bad:1"]["failures"] >= 1 and st["http://bad:1"]["last_error"]
    pool.close()


def test_server_comes_back_after_backoff(dataset):
    path, x = dataset
    flaky, good = Member("http://flaky:1", fail="down"), Member("http://good:2")
    pool = make_pool([flaky, good], backoff=0.2)
    check_all(path, x, pool)
    flaky.fail = None
    time.sleep(0.3)
    before = flaky.chunks
    check_all(path, x, pool)
    assert flaky.chunks > before
    assert all(s["up"] for s in pool.status())
    pool.close()


def test_all_down_is_a_typed_error_listing_each_server(dataset):
    path, _ = dataset
    members = [Member("http://a:1", fail="down"), Member("http://b:2", fail="500")]
    pool = make_pool(members, backoff=60)
    with Active(path, "v", backend=pool) as a:
        with pytest.raises(AllServersDownError) as ei:
            a.mean[...]
    err = ei.value
    assert isinstance(err, ServerError) and err.status == 503
    assert set(err.failures) == {"http://a:1", "http://b:2"}
    assert "http://a:1" in str(err) and "HTTP 500" in str(err)
    pool.close()


def test_request_errors_are_not_failover(dataset):
    """A 4xx is the request's fault: raised at once, no server marked down."""
    path, _ = dataset
    bad, good = Member("http://a:1", fail="400"), Member("http://b:2", fail="400")
    pool = make_pool([bad, good])
    with Active(path, "v", backend=pool, max_threads=1) as a:
        with pytest.raises(ServerError, match="HTTP 400") as ei:
            a.mean[...]
    assert not isinstance(ei.value, AllServersDownError)
    assert all(s["up"] for s in pool.status())
    assert bad.calls + good.calls >= 1
    pool.close()


@pytest.mark.parametrize("urls,field", [
    (["http://ok:1", "localhost:8080"], "active_storage_url[1]"),
    (["ftp://h/x"], "active_storage_url[0]"),
    (["http://ok:1", "http://h:notaport"], "active_storage_url[1]"),
    (["http://"], "active_storage_url[0]"),
    (["http://user:pw@h:1"], "active_storage_url[0]"),
    ([None], "active_storage_url[0]"),
    ([], "active_storage_url"),
])
def test_malformed_url_fails_at_construction(urls, field):
    with pytest.raises(RequestValidationError) as ei:
        ServerPool(urls)
    assert ei.value.field == field
    assert "pw" not in str(ei.value)


def test_url_forms():
    assert validate_server_url(" https://h.example:8443/prefix/ ") == "https://h.example:8443/prefix"
    pool = ServerPool("http://127.0.0.1:1,http://127.0.0.1:2")
    assert pool.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    pool.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_backends_all_unreachable(dataset, tmp_path):
    """Real ServerBackends against closed ports: the typed error names both URLs, quickly."""
    data = np.arange(20, dtype="i4")
    urls = [f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{_closed_port()}"]
    pool = ServerPool(urls, backoff=60, storage_options={"anon": True})
    from activestorage.request import make_request

    req = make_request(data.dtype, data.shape, offset=0, size=data.nbytes,
                       url="http://127.0.0.1:9/bucket/key")
    t0 = time.perf_counter()
    with pytest.raises(AllServersDownError) as ei:
        pool.reduce_chunks([req], "sum")
    assert time.perf_counter() - t0 < 10
    assert set(ei.value.failures) == set(urls)
    pool.close()
