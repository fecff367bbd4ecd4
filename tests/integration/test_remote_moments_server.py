"""The moments extension end to end: moto S3 and our server as separate processes on loopback.

var/std/range/rms/sum_of_squares and weighted means through our server, per chunk and batched,
against numpy.ma (netCDF4-python's read of the same files); N-D weights the server reads from their
own byte range; and the client's fallback against a server without the extension (our server
started with ``--no-moments-extension``, and the v1 API): the same answers, computed in the client
from fetched bytes, said in ``Active.stats`` and in one log line per server."""

from __future__ import annotations

import base64
import logging

import boto3
import cbor2
import netCDF4
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from activestorage import Active
from activestorage.backends import server as server_backend
from activestorage.backends.server import ServerBackend
from activestorage.kernel import reduce_array
from activestorage.request import make_request

from helpers import MOMENT_OPS, assert_moments, moments_oracle
from servers import start_active_server
from test_remote_backends import (BUCKET, files, moto, s3_files, server,  # noqa: F401
                                  storage_options, workdir)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference_server(servers_dir):
    """Our server with the extension switched off: the operations of a reference Reductionist."""
    proc = start_active_server(servers_dir / "no-moments", "--no-moments-extension")
    yield proc.url
    proc.stop()


def backend(url, moto, **opts):  # noqa: F811
    server_backend.clear_capabilities_cache()
    return ServerBackend(url, storage_options=storage_options(moto), max_threads=4,
                         timeout=(5, 60), env={}, **opts)


def check_file(a, x, ran_on):
    """Every #21 operation of ``a`` against numpy.ma on ``x``, and where it ran."""
    for op in MOMENT_OPS:
        assert_moments(getattr(a, op)[...], moments_oracle(x, op), op, x.dtype)
        assert a.stats.ran_on == ran_on, (op, a.stats)
    key = (slice(1, None, 2), slice(None, None, -3))
    for op in ("var", "range"):
        assert_moments(getattr(a, op)(axis=0)[key], moments_oracle(x[key], op, 0), op, x.dtype)
    got = a.std(axis=(0, 2), ddof=1)[::3]
    assert_moments(got, moments_oracle(x[::3], "std", (0, 2), ddof=1), "std", x.dtype)
    coslat = np.cos(np.linspace(-1.2, 1.2, x.shape[1]))
    wx = np.broadcast_to(coslat[:, None], x.shape)
    for op in ("mean", "sum", "var"):
        got = getattr(a, op)(axis=(1, 2), weights={1: coslat})[...]
        assert_moments(got, moments_oracle(x, op, (1, 2), weights=wx), op, x.dtype)
        assert a.stats.ran_on == ran_on
    nd = np.random.default_rng(0).random(x.shape[1:])
    got = a.std(axis=(0, 2), weights=nd, ddof=1)[::2]
    assert_moments(got, moments_oracle(x[::2], "std", (0, 2), weights=nd, ddof=1), "std",
                   x.dtype)
    assert a.stats.ran_on == ran_on


@pytest.mark.parametrize("opts", [{"batch": True}, {"batch": False}],
                         ids=["batched", "per-chunk"])
def test_moments_through_our_server(opts, files, s3_files, server, moto):  # noqa: F811
    with backend(server, moto, **opts) as b:
        assert b.serves("moments") and b.serves("minmax")
        for name in ("ints.nc", "floats.nc"):
            path, var = files[name]
            with netCDF4.Dataset(path) as ds:
                x = ds[var][...]
            with Active(s3_files[name], var, storage_options=storage_options(moto),
                        backend=b) as a:
                check_file(a, x, "server")
                a.var[...]
                st_ = a.stats
                assert st_.chunks_in_client == 0
                # the server moved a few numbers per chunk, not the chunks
                assert st_.bytes_received < st_.bytes_without_active / 4, st_


def test_fallback_against_a_server_without_the_extension(files, s3_files, reference_server,
                                                         moto, caplog):  # noqa: F811
    with backend(reference_server, moto) as b:
        assert not b.serves("moments") and b.serves("sum")
        caps = b.capabilities()
        assert "moments" not in caps["operations"] and "extensions" not in caps
        path, var = files["floats.nc"]
        with netCDF4.Dataset(path) as ds:
            x = ds[var][...]
        with caplog.at_level(logging.INFO, logger="activestorage.backends.server"):
            with Active(s3_files["floats.nc"], var, storage_options=storage_options(moto),
                        backend=b) as a:
                check_file(a, x, "client")
                a.var[...]
                assert a.stats.chunks_in_client == a.stats.chunks_touched > 1
                assert a.stats.bytes_received >= a.stats.bytes_without_active  # the chunks came
                assert a.mean[...] is not None
                assert a.stats.ran_on == "server" and a.stats.chunks_in_client == 0
        lines = [r for r in caplog.records if "cannot compute" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert reference_server in lines[0].getMessage()


def test_fallback_on_the_v1_api(files, s3_files, server, moto):  # noqa: F811
    """v1 has no extension, even on our server: the client computes the moments."""
    path, var = files["ints.nc"]
    with netCDF4.Dataset(path) as ds:
        x = ds[var][...]
    with backend(server, moto, api_version=1) as b:
        assert not b.serves("moments")
        with Active(s3_files["ints.nc"], var, storage_options=storage_options(moto),
                    backend=b) as a:
            for op in ("var", "range"):
                assert_moments(getattr(a, op)[...], moments_oracle(x, op), op, x.dtype)
                assert a.stats.ran_on == "client"


# ------------------------------------------------- chunk requests against the kernel in-process

@pytest.fixture(scope="module")
def s3(moto):  # noqa: F811
    return boto3.client("s3", endpoint_url=moto["endpoint"], aws_access_key_id=moto["key"],
                        aws_secret_access_key=moto["secret"], region_name="us-east-1")


_dtypes = st.sampled_from(["int16", ">i4", "uint8", "float32", ">f8"])


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(dtype=_dtypes, data=st.data())
def test_chunk_moments_match_the_kernel_property(dtype, data, s3, s3_files, server,
                                                 moto):  # noqa: F811
    """Random chunks, selections with steps, axes, missing values and separable or N-D
    weights: the server's moments/minmax (per chunk and batched with fold) equal the
    in-process kernel's on the same array, which is itself checked against numpy.ma."""
    dt = np.dtype(dtype)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(dt, shape, elements=st.integers(0, 100)))
    key = f"prop/{dt.str}-{'x'.join(map(str, shape))}.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=x.tobytes())
    sel = tuple((0, n, data.draw(st.sampled_from([1, 2]))) for n in shape)
    axis = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    xs = x[tuple(slice(*s) for s in sel)]
    missing = None
    if data.draw(st.booleans()):
        from activestorage.request import Missing

        missing = Missing(values=(x.flat[0],))
    weights = None
    if data.draw(st.booleans()):
        weights = {a: np.asarray(data.draw(st.lists(st.floats(0, 10), min_size=xs.shape[a],
                                                    max_size=xs.shape[a])))
                   for a in axis}
    elif data.draw(st.booleans()):
        weights = np.asarray(data.draw(hnp.arrays(np.float64, xs.shape[1:],
                                                  elements=st.floats(0, 10))))
    req = make_request(dt, shape, offset=0, size=x.nbytes, url=f"s3://{BUCKET}/{key}",
                       selection=sel, axis=axis, missing=missing)
    native = np.ascontiguousarray(xs.astype(dt.newbyteorder("=")))
    for op in ("moments", "minmax"):
        r = req._replace(weights=weights if op == "moments" else None)
        want = reduce_array(native, op, axis, missing, r.weights)
        for opts in ({"batch": False}, {"batch": True}):
            with backend(server, moto, **opts) as b:
                parts = b.reduce_chunks([r, r], op)
            for p in parts:
                np.testing.assert_allclose(p.values, want.values, rtol=1e-12, atol=1e-12)
                np.testing.assert_array_equal(np.broadcast_to(p.counts, want.counts.shape),
                                              want.counts)


def test_nd_weights_from_their_own_byte_range(s3, s3_files, server, moto):  # noqa: F811
    """An area variable stored elsewhere (float32, zlib, behind a header): the server reads
    its block with the caller's credentials and weights the chunk with it."""
    import zlib

    rng = np.random.default_rng(5)
    x = rng.normal(280, 10, (3, 8, 10))
    area = rng.uniform(0.2, 1.0, (8, 10)).astype(np.float32)
    packed = zlib.compress(area.tobytes())
    s3.put_object(Bucket=BUCKET, Key="nd/data.bin", Body=x.tobytes())
    s3.put_object(Bucket=BUCKET, Key="nd/area.bin", Body=b"0123456789" + packed)
    base = f"{moto['endpoint']}/{BUCKET}/nd"
    body = {"interface_type": "s3", "url": f"{base}/data.bin", "dtype": "float64",
            "shape": [3, 8, 10], "selection": [[0, 3, 1], [2, 8, 1], [0, 10, 3]],
            "axis": [1, 2],
            "weights": {"array": {"url": f"{base}/area.bin", "offset": 10, "size": len(packed),
                                  "dtype": "float32", "shape": [8, 10],
                                  "compression": {"id": "zlib"},
                                  "selection": [[2, 8, 1], [0, 10, 3]]}}}
    auth = "Basic " + base64.b64encode(f"{moto['key']}:{moto['secret']}".encode()).decode()
    r = requests.post(f"{server}/v2/moments", json=body, timeout=30,
                      headers={"authorization": auth})
    assert r.status_code == 200, r.text
    m = cbor2.loads(r.content)
    got = np.frombuffer(m["bytes"], m["dtype"]).reshape(m["shape"])
    xs, ws = x[:, 2:8, ::3], area[2:8, ::3].astype(np.float64)
    want = np.ma.average(xs, axis=(1, 2), weights=np.broadcast_to(ws, xs.shape))
    np.testing.assert_allclose(got[:, 1], want, rtol=1e-12)
    np.testing.assert_allclose(got[:, 0], ws.sum(), rtol=1e-12)
    # the weights object is read with the caller's credentials: a wrong secret is refused
    bad = "Basic " + base64.b64encode(f"{moto['key']}:wrong".encode()).decode()
    r = requests.post(f"{server}/v2/moments", json=body, timeout=30,
                      headers={"authorization": bad})
    assert r.status_code == 401, r.text
    # and a weights length that does not match the selection is a 400 naming the field
    body.update(weights={"axes": {"1": [1.0] * 5}})
    r = requests.post(f"{server}/v2/moments", json=body, timeout=30,
                      headers={"authorization": auth})
    assert r.status_code == 400 and "weights.axes.1" in r.json()["error"]["message"], r.text
