"""activestorage.dask on a dask.distributed LocalCluster with two worker *processes*.

Everything a task needs must pickle and every worker opens its own Active, so these tests catch what
the threaded scheduler cannot: live objects in the graph, per-process caches, a worker dying
mid-reduction (its task is re-run elsewhere). Checked against netCDF4's masked read reduced by
numpy.ma; over local files (posix), and over moto S3 through our server (one, and two as a pool).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import dask.array as da
import netCDF4
import numpy as np
import pytest

from activestorage import dask as ad
from activestorage.backends.posix import PosixBackend

from servers import S3_KEY, S3_SECRET, start_active_server

distributed = pytest.importorskip("distributed", reason="dask.distributed is in the dask extra")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
SHARED = Path(__file__).resolve().parents[1] / "data"  # real climate files (tests/data/README.md)
REAL = {"CMIP6_IPSL-CM6A-LR_tas.nc": "tas", "daily_data_masked.nc": "ta"}
OPS = ("mean", "min", "max", "sum", "count")
BUCKET = "dask-tests"
#: one graph per case costs scheduler time on a 2-core machine: every op, axes varied
MIXED = [("mean", None), ("min", 0), ("max", (0, 2)), ("sum", 0), ("count", None)]


def oracle(x, op, axis=None):
    return np.ma.count(x, axis=axis) if op == "count" else getattr(np.ma, op)(x, axis=axis)


def check(got, want, op):
    got, want = np.ma.asarray(got), np.ma.asarray(want)
    assert got.shape == want.shape
    gm, wm = np.ma.getmaskarray(got), np.ma.getmaskarray(want)
    np.testing.assert_array_equal(gm, wm)
    g, w = np.ma.getdata(got)[~gm].astype("f8"), np.ma.getdata(want)[~wm].astype("f8")
    if op in ("min", "max", "count"):
        np.testing.assert_array_equal(g, w)
    else:
        np.testing.assert_allclose(g, w, rtol=3e-5, atol=1e-6 * (np.abs(w).max() if w.size else 0))


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        # Workers import this module's helpers by value (tests/ is not a package).
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield c


@pytest.fixture(scope="module")
def multifile(tmp_path_factory):
    """Three files of one variable along time, with missing data and different chunkings."""
    root = tmp_path_factory.mktemp("dask-dist")
    rng = np.random.default_rng(2)
    paths, parts = [], []
    for i, (nt, chunks) in enumerate([(6, (2, 5, 8)), (10, (3, 10, 4)), (4, (4, 5, 5))]):
        data = rng.normal(285, 9, size=(nt, 10, 16)).astype("f4")
        data[rng.random(data.shape) < 0.08] = 1e20
        p = root / f"tas_{i}.nc"
        with netCDF4.Dataset(p, "w") as ds:
            for name, n in zip("tyx", data.shape):
                ds.createDimension(name, n)
            v = ds.createVariable("tas", "f4", ("t", "y", "x"), chunksizes=chunks, zlib=True,
                                  shuffle=True, fill_value=np.float32(1e20))
            v[...] = data
        with netCDF4.Dataset(p) as ds:
            parts.append(ds["tas"][...])
        paths.append(p)
    return paths, np.ma.concatenate(parts, axis=0)


def test_multifile_on_two_worker_processes(client, multifile):
    paths, x = multifile
    # storage-aligned blocks for the first file, "auto" (fewer, larger blocks) for the others:
    # every task is a scheduler round trip, and this machine has two cores
    r = da.concatenate([ad.regions(str(p), "tas", chunks="storage" if i == 0 else "auto")
                        for i, p in enumerate(paths)], axis=0)
    assert r.numblocks == (3 + 1 + 1, 2, 2)
    cases = MIXED + [("mean", (1, 2))]
    results = client.compute([ad.reduce(r, op, axis) for op, axis in cases], sync=True)
    for (op, axis), got in zip(cases, results):
        check(got, oracle(x, op, axis), op)
    # both workers did some of the work (each opened its own Active)
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2


@pytest.mark.parametrize("name", list(REAL))
def test_real_files(client, name):
    path = SHARED / name
    var = REAL[name]
    with netCDF4.Dataset(path) as ds:
        x = ds[var][...]
    r = ad.regions(str(path), var)
    ops = MIXED[:2] + [("max", None), ("sum", 0), ("count", 0)]
    got = client.compute([ad.reduce(r, op, axis) for op, axis in ops], sync=True)
    for (op, axis), g in zip(ops, got):
        check(g, oracle(x, op, axis), op)


class DiesOnce(PosixBackend):
    """Kills its worker process the first time any worker uses it (a marker file says so)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def reduce_and_fold(self, requests, operation, slots):  # what Active calls on posix
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().reduce_and_fold(requests, operation, slots)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(17)  # the worker process dies mid-reduction


def test_worker_dying_midway_is_retried(client, multifile, tmp_path):
    paths, x = multifile
    marker = tmp_path / "died"
    r = ad.regions(str(paths[1]), "tas", backend=partial(DiesOnce, str(marker)))
    before = set(client.run(os.getpid).values())
    got = client.compute(ad.mean(r, axis=0), sync=True)
    check(got, oracle(x[6:16], "mean", 0), "mean")
    assert marker.exists(), "no worker died: the test did not test anything"
    assert int(marker.read_text()) in before
    client.wait_for_workers(2, timeout=60)


class Recorder:
    """A progress bar that remembers what it was told."""

    def __init__(self):
        self.total, self.n, self.closed = 0, 0, False

    def set_total(self, total):
        self.total = total

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_progress_on_distributed(client, multifile):
    paths, x = multifile
    m = ad.mean(ad.regions(str(paths[0]), "tas"))
    got, = ad.compute(m, progress=True, desc="cluster mean")
    check(got, oracle(x[:6], "mean"), "mean")
    # the scheduler feed drives the bar: every task of the graph counted, then closed
    bar = Recorder()
    fut = client.compute(ad.mean(ad.regions(str(paths[1]), "tas"), axis=0))
    ad._watch_distributed(client, [fut], bar).result(timeout=60)
    check(fut.result(), oracle(x[6:16], "mean", 0), "mean")
    assert bar.closed and bar.total >= 16 and bar.n == bar.total


# ------------------------------------------------------------------- through the server

@pytest.fixture(scope="module")
def s3_multifile(multifile, s3, moto_server):
    paths, x = multifile
    s3.create_bucket(Bucket=BUCKET)
    for p in paths:
        s3.upload_file(str(p), BUCKET, p.name)
    opts = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": moto_server.url}}
    return [f"s3://{BUCKET}/{p.name}" for p in paths], opts, x


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    proc = start_active_server(tmp_path_factory.mktemp("second-server"))
    yield proc
    proc.stop()


@pytest.mark.parametrize("servers", ["one", "two"])
def test_server_backend_on_workers(client, s3_multifile, active_server, second_server, servers):
    urls, opts, x = s3_multifile
    server = active_server.url if servers == "one" else [active_server.url, second_server.url]
    # "auto": several storage chunks per block (fewer tasks); the first file per storage chunk
    r = da.concatenate([ad.regions(u, "tas", storage_options=opts, active_storage_url=server,
                                   chunks="storage" if i == 0 else "auto")
                        for i, u in enumerate(urls)], axis=0)
    assert r.numblocks[0] == 3 + 1 + 1
    ops = MIXED
    got = client.compute([ad.reduce(r[2:19], op, axis) for op, axis in ops], sync=True)
    for (op, axis), g in zip(ops, got):
        check(g, oracle(x[2:19], op, axis), op)
