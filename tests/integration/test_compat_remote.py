"""PyActiveStorage's and cf-python's remote call shapes against moto S3 and our server process.

Each shape hands ``Active`` the dataset differently -- a pyfive Dataset opened over s3fs, an
``S3File``, a scheme-less ``bucket/key`` with the endpoint in ``client_kwargs``, an ``s3://`` URL
with ``interface_type="s3"`` -- and each result is compared with netCDF4-python's.
"""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from activestorage import Active
from activestorage.dummy_data import make_missing_ncdata
from servers import S3_KEY, S3_SECRET

pyfive = pytest.importorskip("pyfive", reason="pyfive is a dependency; install it")
s3fs = pytest.importorskip("s3fs", reason="s3fs is a dependency; install it")

BUCKET = "peer-shapes"
KEY = "missing.nc"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, moto_server, s3):
    path = str(Path(tmp_path_factory.mktemp("peer-remote")) / KEY)
    make_missing_ncdata(filename=path, chunksize=(3, 3, 2))
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(path, BUCKET, KEY)
    with netCDF4.Dataset(path) as ds:
        ref = ds["data"][...]
    return {"ref": ref, "endpoint": moto_server.url}


def options(endpoint: str, nested: bool = False) -> dict:
    if nested:
        return {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    return {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": endpoint}


def test_pyfive_dataset_over_s3fs_reduces_on_the_server(stored, active_server):
    fs = s3fs.S3FileSystem(**options(stored["endpoint"]))
    ds = pyfive.File(fs.open(f"{BUCKET}/{KEY}", "rb"))["data"]
    a = Active(ds, None, active_storage_url=active_server.url)  # credentials come from ds
    a.method = "max"
    a.components = True
    got = a[1:8, :, 2:9]
    assert a.backend.name == "server"
    ref = stored["ref"][1:8, :, 2:9]
    assert got["max"].item() == ref.max() and got["n"].item() == ref.count()


def test_s3file_and_scheme_less_key(stored, active_server):
    ref = stored["ref"]
    fs = s3fs.S3FileSystem(**options(stored["endpoint"]))
    with fs.open(f"{BUCKET}/{KEY}", "rb") as f:
        a = Active(f, "data", active_storage_url=active_server.url)
        np.testing.assert_allclose(a.mean[...], ref.mean())
        assert a.backend.name == "server"
    b = Active(f"{BUCKET}/{KEY}", "data", storage_options=options(stored["endpoint"], True),
               active_storage_url=active_server.url)
    np.testing.assert_allclose(b.sum(axis=0)[:, :, 2:5], ref[:, :, 2:5].sum(axis=0))


def test_interface_type_version_and_chunk_cache_option(stored, active_server):
    ref = stored["ref"]
    a = Active(f"s3://{BUCKET}/{KEY}", "data", interface_type="s3",
               storage_options=options(stored["endpoint"]),
               active_storage_url=active_server.url, option_disable_chunk_cache=True)
    a._version = 2
    a.method = "min"
    got = a[0:5, [1, 4, 6], 2:6]  # keepdims, as the peer
    assert a.backend.name == "server" and a.backend.disable_chunk_cache is True
    np.testing.assert_array_equal(got, ref[0:5, [1, 4, 6], 2:6].min(keepdims=True))
    a._version = 1  # reduce in this process: range GETs, no server
    a.method = "min"
    np.testing.assert_array_equal(a[0:5, [1, 4, 6], 2:6], got)
    assert a.backend.name == "fetch"


def test_reductionist_reduce_chunk_against_our_server(stored, active_server):
    from activestorage.hdf2numcodec import decode_filters
    from activestorage.reductionist import get_session, reduce_chunk

    fs = s3fs.S3FileSystem(**options(stored["endpoint"]))
    ds = pyfive.File(fs.open(f"{BUCKET}/{KEY}", "rb"))["data"]
    compressor, filters = decode_filters(ds.id.filter_pipeline or [], 8, "data")
    info = ds.id.get_chunk_info_from_chunk_coord((0, 0, 0))
    session = get_session(S3_KEY, S3_SECRET, None)
    values, counts = reduce_chunk(
        session, active_server.url, f"{stored['endpoint']}/{BUCKET}/{KEY}", info.byte_offset,
        info.size, compressor, filters, (None, -999.0, None, None), np.dtype("f8"), (3, 3, 2),
        "C", (slice(0, 3, 1), slice(0, 3, 1), slice(0, 2, 1)), (0, 1, 2), "sum",
        option_disable_chunk_cache=True)
    block = stored["ref"][0:3, 0:3, 0:2]
    assert values.item() == block.sum() and np.asarray(counts).item() == block.count()


def test_pyfive_dataset_over_https_reduces_on_the_server(stored, nginx_server, active_server,
                                                         tmp_path_factory):
    """load_from_https (the peer's loader) -> a pyfive Dataset over HTTP -> our server."""
    from activestorage.active import load_from_https

    local = Path(tmp_path_factory.mktemp("https")) / "h.nc"
    make_missing_ncdata(filename=str(local), chunksize=(3, 3, 2))
    link = Path(nginx_server.extra["docroot"]) / "peer-shapes-h.nc"
    if not link.exists():
        link.symlink_to(local)
    url = f"{nginx_server.url}/peer-shapes-h.nc"
    ds = load_from_https(url)["data"]
    a = Active(ds, interface_type="https", active_storage_url=active_server.url)
    a.method = "sum"
    got = a[2:9, 1:4, :]
    assert a.backend.name == "server" and a.variable.source == url
    np.testing.assert_allclose(got, stored["ref"][2:9, 1:4, :].sum(keepdims=True))
    import fsspec

    with fsspec.filesystem("http").open(url, "rb") as f:  # an fsspec HTTP file object
        b = Active(f, "data", active_storage_url=active_server.url)
        np.testing.assert_allclose(b.max(axis=1)[...], stored["ref"].max(axis=1))
        assert b.variable.source == url and b.backend.name == "server"


def test_interface_type_s3_with_a_path_style_http_url(stored, active_server):
    """PyActiveStorage users may give the object as endpoint/bucket/key with interface_type='s3'."""
    url = f"{stored['endpoint']}/{BUCKET}/{KEY}"
    a = Active(url, "data", interface_type="s3", storage_options=options(stored["endpoint"]),
               active_storage_url=active_server.url)
    np.testing.assert_allclose(a.min[...], stored["ref"].min())
    assert a.variable.source == f"s3://{BUCKET}/{KEY}" and a.backend.name == "server"
    b = Active(url, "data", interface_type="s3", storage_options={"key": S3_KEY,
               "secret": S3_SECRET}, active_storage_url=active_server.url)  # endpoint from url
    np.testing.assert_allclose(b.max[...], stored["ref"].max())
