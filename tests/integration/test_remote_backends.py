"""Remote datasets end to end: Active on s3:// (moto) and http:// (nginx), through the fetch backend
and through our reduction server (per chunk, batched, v1), each against netCDF4-python's masked
read of the same file reduced by numpy.ma.

Every store and server is a real process on loopback, started on a free port and stopped by PID:
moto's standalone S3 server with authentication enforced (started here: an IAM user is created
during the first unauthenticated requests, after which a wrong secret is refused), and the
session's nginx and ``python -m activestorage.server`` from tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from activestorage import Active
from activestorage.backends.fetch import FetchBackend
from activestorage.backends.server import ServerBackend
from activestorage.errors import ObjectChangedError, ServerError, StorageError
from activestorage.request import make_request
from activestorage.storage import open_url

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[1] / "data"  # real climate files (tests/data/README.md)
SHARED_VARS = {"CMIP6_IPSL-CM6A-LR_tas.nc": "tas", "cesm2_native.nc": "TREFHT",
               "daily_data.nc": "ta", "daily_data_masked.nc": "ta"}
BUCKET = "remote-tests"
OPS = ("mean", "min", "max", "sum", "count")


# ------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """Wait until ``port`` accepts TCP connections (no HTTP request: moto counts those)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not ready after {timeout}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start(cmd: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    wait_for_port(port, proc, log)
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote")


@pytest.fixture(scope="module")
def moto(workdir):
    """moto_server with auth enforced after the 3 unauthenticated calls that create our user."""
    pytest.importorskip("moto", reason="moto[server] is in the test extra")
    import boto3

    port = free_port()
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                 port, workdir / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="x",
                           aws_secret_access_key="x", region_name="us-east-1")
        iam.create_user(UserName="tester")
        iam.put_user_policy(UserName="tester", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="tester")["AccessKey"]
        yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        stop(proc)


def storage_options(moto, secret=None) -> dict:
    return {"key": moto["key"], "secret": secret or moto["secret"],
            "client_kwargs": {"endpoint_url": moto["endpoint"]}}


def write_generated(root: Path) -> dict[str, str]:
    """Files the shared ones lack: many small compressed int32 chunks whose sum overflows int32,
    with missing data; many adjacent uncompressed float64 chunks (coalescing)."""
    rng = np.random.default_rng(42)
    data = rng.integers(-2_000_000_000, 2_000_000_000, size=(24, 30, 40), dtype=np.int32)
    data[data % 7 == 0] = -99
    with netCDF4.Dataset(root / "ints.nc", "w") as ds:
        for name, n in zip("tyx", data.shape):
            ds.createDimension(name, n)
        v = ds.createVariable("v", "i4", ("t", "y", "x"), zlib=True, shuffle=True,
                              chunksizes=(4, 10, 10), fill_value=-2147483647)
        v.missing_value = np.int32(-99)
        v[...] = data
        v[0, 0, 0] = np.ma.masked
    f = rng.normal(280, 15, size=(50, 20, 16))
    with netCDF4.Dataset(root / "floats.nc", "w") as ds:
        for name, n in zip("tyx", f.shape):
            ds.createDimension(name, n)
        v = ds.createVariable("v", ">f8", ("t", "y", "x"), chunksizes=(1, 20, 16),
                              endian="big")
        v.valid_range = np.array([250.0, 310.0])
        v[...] = f
    return {"ints.nc": "v", "floats.nc": "v"}


@pytest.fixture(scope="module")
def files(workdir):
    """name -> (local path, variable): the shared files (if present) and generated ones."""
    gen = workdir / "gen"
    gen.mkdir()
    out = {n: (gen / n, v) for n, v in write_generated(gen).items()}
    out.update({n: (SHARED / n, v) for n, v in SHARED_VARS.items()})
    return out


@pytest.fixture(scope="module")
def s3_files(moto, files):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto["endpoint"], aws_access_key_id=moto["key"],
                      aws_secret_access_key=moto["secret"], region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for name, (path, _) in files.items():
        s3.upload_file(str(path), BUCKET, f"data/{name}")
    return {name: f"s3://{BUCKET}/data/{name}" for name in files}


@pytest.fixture(scope="module")
def nginx(nginx_server, files):
    """The session's nginx (tests/integration/conftest.py) serving our files, symlinked."""
    root = Path(nginx_server.extra["docroot"]) / "remote-backends"
    root.mkdir(exist_ok=True)
    for name, (path, _) in files.items():
        link = root / name
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return {name: f"{nginx_server.url}/remote-backends/{name}" for name in files}


@pytest.fixture(scope="module")
def server(active_server):
    """The session's reduction server (allowed to read loopback stores only)."""
    return active_server.url


# ------------------------------------------------------------------------------- oracle

def oracle(path: Path, var: str, op: str, key=Ellipsis, axis=None):
    with netCDF4.Dataset(path) as ds:
        x = np.ma.asarray(ds.variables[var][key])
    if op == "count":
        return np.ma.count(x, axis=axis)
    if op in ("sum", "mean") and x.dtype.kind in "iu":
        x = x.astype(np.int64)
    return getattr(np.ma, op)(x, axis=axis)


def check(got, want, op):
    got_m = np.ma.getmaskarray(np.ma.asarray(got))
    want_m = np.ma.getmaskarray(np.ma.asarray(want))
    assert np.shape(got) == np.shape(want)
    np.testing.assert_array_equal(got_m, want_m)
    g = np.ma.getdata(np.ma.asarray(got))[~got_m].astype(np.float64)
    w = np.ma.getdata(np.ma.asarray(want))[~want_m].astype(np.float64)
    if op in ("min", "max", "count"):
        np.testing.assert_array_equal(g, w)
    elif np.issubdtype(np.ma.asarray(want).dtype, np.integer) and op == "sum":
        np.testing.assert_array_equal(np.ma.getdata(got)[~got_m], np.ma.getdata(want)[~want_m])
    else:
        np.testing.assert_allclose(g, w, rtol=3e-5)


BACKENDS = {
    # name: (store, backend kind, backend options)
    "fetch-s3": ("s3", "fetch", {}),
    "fetch-s3-nocoalesce": ("s3", "fetch", {"coalesce": False}),
    "fetch-http": ("http", "fetch", {}),
    "server-s3-batch": ("s3", "server", {"batch": True}),
    "server-s3-perchunk": ("s3", "server", {"batch": False}),
    "server-s3-v1": ("s3", "server", {"api_version": 1}),
    "server-http-auto": ("http", "server", {}),
}


def make_backend(kind, opts, moto, server):
    if kind == "fetch":
        return FetchBackend(storage_options(moto), max_threads=4, timeout=20, env={}, **opts)
    return ServerBackend(server, storage_options=storage_options(moto), max_threads=4,
                         timeout=(5, 60), env={}, **opts)


@pytest.mark.parametrize("bname", list(BACKENDS))
def test_backends_match_oracle(bname, files, s3_files, nginx, server, moto):
    store, kind, opts = BACKENDS[bname]
    urls = s3_files if store == "s3" else nginx
    with make_backend(kind, opts, moto, server) as backend:
        for name, (path, var) in files.items():
            with Active(urls[name], var, storage_options=storage_options(moto),
                        backend=backend) as a:
                assert a.backend is backend
                for op in OPS:
                    check(getattr(a, op)[...], oracle(path, var, op), op)
                    if kind == "server" and a.stats.bytes_without_active > 20000:
                        assert a.stats.bytes_received < a.stats.bytes_without_active / 4
                # a selection and a partial reduction across chunk boundaries
                key = (slice(1, None, 2),) + (slice(None),) * (a.ndim - 1)
                for op in ("mean", "max", "count"):
                    check(getattr(a, op)(axis=0)[key], oracle(path, var, op, key, axis=0), op)
        if kind == "server" and opts.get("batch") is True:
            assert backend.batching
        if store == "http" and kind == "server":
            assert backend.batching  # detected against our server


def test_batching_cuts_requests_and_server_cuts_bytes(files, s3_files, server, moto):
    url, var = s3_files["ints.nc"], files["ints.nc"][1]
    nchunks = 6 * 3 * 4
    got = {}
    for label, backend in (
            ("fetch", FetchBackend(storage_options(moto), max_threads=2, coalesce=False, env={})),
            ("per-chunk", ServerBackend(server, storage_options=storage_options(moto),
                                        batch=False, max_threads=2, env={})),
            ("batched", ServerBackend(server, storage_options=storage_options(moto),
                                      batch=True, max_threads=2, env={}))):
        with backend, Active(url, var, storage_options=storage_options(moto),
                             backend=backend, max_threads=2) as a:
            check(a.sum[...], oracle(files["ints.nc"][0], var, "sum"), "sum")
            got[label] = a.stats
    assert got["fetch"].requests == nchunks
    assert got["per-chunk"].requests == nchunks
    assert got["batched"].requests <= 1 + 8  # GET /capabilities + one POST per Active thread batch
    assert got["per-chunk"].bytes_received < got["fetch"].bytes_received / 10


def test_server_folds_axis_partials(files, s3_files, server, moto):
    """An axis reduction over many small chunks: the server folds the partials that land in the
    same part of the result, so a few come back instead of one per chunk; answers unchanged."""
    url, (path, var) = s3_files["floats.nc"], files["floats.nc"]

    class NoFold(ServerBackend):
        folds = False

    moved = {}
    for label, cls in (("fold", ServerBackend), ("no fold", NoFold)):
        with cls(server, storage_options=storage_options(moto), batch=True, env={}) as b, \
                Active(url, var, storage_options=storage_options(moto), backend=b) as a:
            for op in ("mean", "min", "max", "count"):
                check(getattr(a, op)(axis=0)[3:], oracle(path, var, op, slice(3, None), 0), op)
            moved[label] = a.stats.bytes_received
    assert moved["fold"] * 10 < moved["no fold"], moved


def test_int32_sum_does_not_overflow(files, s3_files, server, moto):
    url, (path, var) = s3_files["ints.nc"], files["ints.nc"]
    want = oracle(path, var, "sum")
    assert abs(int(want)) > 2**31  # the test would not catch an overflow otherwise
    for batch in (True, False):
        with ServerBackend(server, storage_options=storage_options(moto), batch=batch,
                           env={}) as b, Active(url, var, storage_options=storage_options(moto),
                                                backend=b) as a:
            assert int(a.sum[...]) == int(want)


def test_metadata_read_is_cheap(files, s3_files, moto):
    for name in ("ints.nc", "CMIP6_IPSL-CM6A-LR_tas.nc"):
        if name not in s3_files:
            continue
        import h5py

        with open_url(s3_files[name], storage_options(moto)) as f:
            with h5py.File(f, "r") as h:
                ds = h[files[name][1]]
                ds.id.get_num_chunks()
                ds.id.get_chunk_info(0)
            assert f.etag
            assert 1 <= f.stats.requests <= 4, f.stats
            print(f"metadata of {name} ({f.size} bytes): {f.stats}")
        url, var = s3_files[name], files[name][1]
        with Active(url, var, storage_options=storage_options(moto), backend="fetch") as a:
            a.max[...]
            assert 1 <= a.stats.metadata_requests <= 4
            assert 0 < a.stats.metadata_bytes <= f.size


def test_wrong_secret_is_refused_end_to_end(files, s3_files, server, moto):
    url, var = s3_files["ints.nc"], files["ints.nc"][1]
    bad = storage_options(moto, secret="not-the-secret")
    a = Active(url, var, storage_options=bad)  # store errors wait for the first call (issue 18)
    with pytest.raises(StorageError) as ei:
        a.sum[...]
    assert ei.value.status == 401 and url in str(ei.value)
    req = make_request("int32", (4, 10, 10), offset=0, size=100, url=url)
    with FetchBackend(bad, env={}) as fb, pytest.raises(StorageError) as ei:
        fb.reduce_chunk(req, "sum")
    assert ei.value.status == 401
    with ServerBackend(server, storage_options=bad, env={}) as b, \
            Active(url, var, storage_options=storage_options(moto), backend=b) as a:
        for _ in range(2):  # batched, then per chunk
            with pytest.raises(ServerError) as ei:
                a.sum[...]
            assert ei.value.status == 401 and ei.value.url.startswith(server)
            assert "error" in ei.value.body
            b._batch_pref = False


def test_missing_object_and_bucket(s3_files, server, moto):
    for url in (f"s3://{BUCKET}/data/nope.nc", "s3://no-such-bucket/x.nc"):
        with pytest.raises(StorageError) as ei:
            open_url(url, storage_options(moto))
        assert ei.value.status == 404 and url in str(ei.value)
        req = make_request("float32", (10,), offset=0, size=40, url=url)
        with FetchBackend(storage_options(moto), env={}) as fb, pytest.raises(StorageError) as ei:
            fb.reduce_chunk(req, "max")
        assert ei.value.status == 404
        with ServerBackend(server, storage_options=storage_options(moto), env={}) as b, \
                pytest.raises(ServerError) as ei:
            b.reduce_chunk(req, "max")
        assert ei.value.status in (400, 404)  # the reference server says 400 for NoSuchKey
        assert url.split("/")[-1] in str(ei.value)


def test_pinned_etag_mismatch(files, s3_files, nginx, server, moto):
    url = s3_files["floats.nc"]
    with open_url(url, storage_options(moto)) as f:
        etag = f.etag
    req = make_request(">f8", (20, 16), offset=0, size=8 * 320, url=url)
    with FetchBackend(storage_options(moto), env={}) as fb:
        fb.reduce_chunk(req.with_(etag=etag), "max")  # matching ETag: fine
        with pytest.raises(ObjectChangedError, match="object changed"):
            fb.reduce_chunk(req.with_(etag="0123456789abcdef"), "max")
        with pytest.raises(ObjectChangedError):
            fb.reduce_chunk(req.with_(url=nginx["floats.nc"], etag="0123456789abcdef"), "max")
    with ServerBackend(server, storage_options=storage_options(moto), env={}) as b:
        b.reduce_chunk(req.with_(etag=etag), "max")
        with pytest.raises(ServerError) as ei:
            b.reduce_chunk(req.with_(etag="0123456789abcdef"), "max")
        assert ei.value.status == 409 and "object changed" in str(ei.value)


def test_server_down_is_typed_and_quick(files, s3_files, moto):
    url, var = s3_files["ints.nc"], files["ints.nc"][1]
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach") as ei:
        with ServerBackend(dead, storage_options=storage_options(moto), env={},
                           backoff=0.05) as b, \
                Active(url, var, storage_options=storage_options(moto), backend=b) as a:
            a.mean[...]
    assert dead in str(ei.value)
    assert time.monotonic() - t0 < 10


def test_store_down_is_typed_and_quick(files):
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StorageError) as ei:
        open_url(f"s3://{BUCKET}/x.nc", {"endpoint_url": dead, "anon": True,
                                          "config_kwargs": {"retries": {"max_attempts": 1}}})
    assert ei.value.status in (502, 504)
    req = make_request("float32", (10,), offset=0, size=40, url=f"{dead}/x.nc")
    with FetchBackend(retries=1, timeout=2, env={}) as fb, pytest.raises(StorageError):
        fb.reduce_chunk(req, "max")
    assert time.monotonic() - t0 < 20


def test_http_store_basic_auth_end_to_end(files, nginx_server, server):
    """nginx's /private/ needs Basic auth: right credentials work through fetch and the server
    (which passes them on); a wrong password is a typed 401 at every step."""
    from servers import NGINX_PASSWORD, NGINX_USER

    private = Path(nginx_server.extra["docroot"]) / "private"
    private.mkdir(exist_ok=True)
    link = private / "remote-ints.nc"
    if not link.exists():
        link.symlink_to(Path(files["ints.nc"][0]).resolve())
    url = f"{nginx_server.url}/private/remote-ints.nc"
    path, var = files["ints.nc"]
    good = {"username": NGINX_USER, "password": NGINX_PASSWORD}
    bad = {"username": NGINX_USER, "password": "wrong"}
    for backend in (FetchBackend(good, env={}), ServerBackend(server, storage_options=good,
                                                              env={})):
        with backend, Active(url, var, storage_options=good, backend=backend) as a:
            check(a.mean[...], oracle(path, var, "mean"), "mean")
    with pytest.raises(StorageError) as ei:
        Active(url, var, storage_options=bad)[...]  # raised by the first call (issue 18)
    assert ei.value.status == 401
    req = make_request("int32", (4, 10, 10), offset=0, size=1600, url=url)
    with FetchBackend(bad, env={}) as fb, pytest.raises(StorageError) as ei:
        fb.reduce_chunk(req, "sum")
    assert ei.value.status == 401
    with ServerBackend(server, storage_options=bad, env={}) as b, pytest.raises(ServerError) as ei:
        b.reduce_chunk(req, "sum")
    assert ei.value.status == 401


def test_pyactivestorage_reduce_chunk_against_our_server(files, s3_files, server, moto):
    """The module-level reduce_chunk with PyActiveStorage's conventions (S3 path-style URL and
    storage_type="s3", numcodecs codecs, the 4-tuple missing, slices) on a real chunk."""
    import h5py
    import numcodecs

    from activestorage.backends.server import make_session, reduce_chunk

    path, var = files["ints.nc"]
    with h5py.File(path) as h:
        ds = h[var]
        info = ds.id.get_chunk_info_by_coord((4, 10, 0))
        chunk = ds[4:8, 10:20, 0:10]
    with netCDF4.Dataset(path) as nc:
        masked = np.ma.asarray(nc.variables[var][4:8, 10:20, 0:10])
    session = make_session(username=moto["key"], password=moto["secret"])
    url = f"{moto['endpoint']}/{BUCKET}/data/ints.nc"
    for api in (1, 2):
        vals, counts = reduce_chunk(
            session, server, url, info.byte_offset, info.size, numcodecs.Zlib(),
            [numcodecs.Shuffle(elementsize=4)], (-2147483647, -99, None, None), chunk.dtype,
            chunk.shape, "C", (slice(0, 4), slice(2, 10, 3), slice(None)), (0, 2), "sum",
            storage_type="s3", api_version=api)
        want = masked[:, 2:10:3, :]
        np.testing.assert_array_equal(vals, want.astype(np.int64).sum(axis=(0, 2)).filled(0))
        np.testing.assert_array_equal(counts, np.ma.count(want, axis=(0, 2)))
    with pytest.raises(ServerError) as ei:
        reduce_chunk(make_session(username=moto["key"], password="wrong"), server, url,
                     info.byte_offset, info.size, numcodecs.Zlib(), None, None, chunk.dtype,
                     chunk.shape, "C", None, None, "max", storage_type="s3")
    assert ei.value.status == 401


def test_remote_netcdf4_chunks_are_pinned_to_the_object_version(files, moto, tmp_path):
    """Opening a netCDF-4 object pins its chunk index to the ETag: a rewrite fails loudly."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto["endpoint"], aws_access_key_id=moto["key"],
                      aws_secret_access_key=moto["secret"], region_name="us-east-1")
    path, var = files["floats.nc"]
    s3.put_object(Bucket=BUCKET, Key="pinned.nc", Body=Path(path).read_bytes())
    url = f"s3://{BUCKET}/pinned.nc"
    with Active(url, var, storage_options=storage_options(moto), backend="fetch") as a:
        assert all(loc.etag for loc in a.variable.chunks.values())
        a.max[...]
        s3.put_object(Bucket=BUCKET, Key="pinned.nc", Body=Path(path).read_bytes() + b"\0")
        with pytest.raises(ObjectChangedError, match="object changed"):
            a.max[...]
