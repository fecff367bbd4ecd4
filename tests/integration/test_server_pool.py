"""ServerPool against two real reduction server processes reading from a real moto S3 server.

One server is killed (SIGKILL, by PID) part-way through a reduction: the pool marks it down,
retries its chunks on the other, and the answer still equals the oracle (netCDF4's masked read
reduced by numpy.ma). With both down, the error is typed and names each server.
"""

from __future__ import annotations

import os
import signal
import threading

import netCDF4
import numpy as np
import pytest

from activestorage import Active
from activestorage.backends.pool import AllServersDownError, ServerPool
from activestorage.backends.server import ServerBackend

from servers import S3_KEY, S3_SECRET, start_active_server

pytestmark = pytest.mark.integration
BUCKET = "pool-tests"
OPS = ("mean", "min", "max", "sum", "count")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, s3, moto_server):
    """A float32 variable with missing data in 240 small chunks, in moto."""
    rng = np.random.default_rng(606)
    data = rng.normal(280, 12, size=(48, 20, 30)).astype("f4")
    data[rng.random(data.shape) < 0.05] = -1e30
    path = tmp_path_factory.mktemp("pool") / "tas.nc"
    with netCDF4.Dataset(path, "w") as ds:
        for name, n in zip("tyx", data.shape):
            ds.createDimension(name, n)
        v = ds.createVariable("tas", "f4", ("t", "y", "x"), chunksizes=(2, 10, 15), zlib=True)
        v.missing_value = np.float32(-1e30)
        v[...] = data
    with netCDF4.Dataset(path) as ds:
        x = ds["tas"][...]
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(path), BUCKET, "tas.nc")
    opts = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": moto_server.url}}
    return f"s3://{BUCKET}/tas.nc", opts, x


@pytest.fixture
def two_servers(tmp_path):
    procs = [start_active_server(tmp_path / f"s{i}") for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


def check(got, want, op):
    gm, wm = np.ma.getmaskarray(got), np.ma.getmaskarray(want)
    np.testing.assert_array_equal(gm, wm)
    g = np.ma.getdata(got)[~gm].astype("f8")
    w = np.ma.getdata(want)[~wm].astype("f8")
    if op in ("min", "max", "count"):
        np.testing.assert_array_equal(g, w)
    else:
        np.testing.assert_allclose(g, w, rtol=3e-5)


def test_pool_spreads_over_two_servers(dataset, two_servers):
    url, opts, x = dataset
    with ServerPool([p.url for p in two_servers], storage_options=opts, env={}) as pool, \
            Active(url, "tas", storage_options=opts, backend=pool) as a:
        for op in OPS:
            check(getattr(a, op)(axis=0)[4:40], getattr(np.ma, op, None)(x[4:40], axis=0)
                  if op != "count" else np.ma.count(x[4:40], axis=0), op)
        chunks = [s["chunks"] for s in pool.status()]
    assert all(c > 0 for c in chunks), chunks


class KillAfter(ServerBackend):
    """A ServerBackend that SIGKILLs its own server process before its N-th call: a server
    dying in the middle of a reduction, at a deterministic point."""

    def __init__(self, url, pid, after, **kw):
        super().__init__(url, **kw)
        self.pid, self.after, self.calls = pid, after, 0
        self.killed = threading.Event()
        self._l = threading.Lock()

    def reduce_chunks(self, requests, operation):
        with self._l:
            self.calls += 1
            if self.calls == self.after:
                os.kill(self.pid, signal.SIGKILL)
                self.killed.set()
        return super().reduce_chunks(requests, operation)


def test_server_killed_midway_still_right(dataset, two_servers):
    url, opts, x = dataset
    s1, s2 = two_servers
    made = {}

    def factory(u):
        kw = dict(storage_options=opts, env={}, batch=False, max_threads=2, retries=1)
        if u == s2.url:
            made["b"] = KillAfter(u, s2.pid, after=4, **kw)
            return made["b"]
        return ServerBackend(u, **kw)

    with ServerPool([s1.url, s2.url], backend_factory=factory, backoff=60) as pool, \
            Active(url, "tas", storage_options=opts, backend=pool, max_threads=4) as a:
        got = a.mean[...]
        assert made["b"].killed.is_set(), "the second server was never killed"
        status = {s["url"]: s for s in pool.status()}
        assert not status[s2.url]["up"] and status[s2.url]["failures"] >= 1
        assert status[s1.url]["up"]
        check(np.ma.asarray(got), np.ma.asarray(np.ma.mean(x)), "mean")
        # later calls skip the dead server and stay right
        for op in OPS:
            want = np.ma.count(x, axis=(1, 2)) if op == "count" else \
                getattr(np.ma, op)(x, axis=(1, 2))
            check(getattr(a, op)(axis=(1, 2))[...], want, op)
    s2.proc.wait(5)


def test_all_servers_down_is_typed(dataset, two_servers):
    url, opts, _ = dataset
    for p in two_servers:
        p.stop()
    with ServerPool([p.url for p in two_servers], storage_options=opts, env={}) as pool, \
            Active(url, "tas", storage_options=opts, backend=pool) as a:
        with pytest.raises(AllServersDownError) as ei:
            a.sum[...]
    assert set(ei.value.failures) == {p.url for p in two_servers}
    assert all(p.url in str(ei.value) for p in two_servers)
    assert S3_SECRET not in str(ei.value)
