"""PyActiveStorage 0.8's documented call shapes, run against this package, each checked against a
NumPy oracle (netCDF4-python's masked read of the same file).

The shapes come from the peer's README and public API: ``Active(path | pyfive.Dataset, ncvar,
interface_type=..., option_disable_chunk_cache=...)``, ``active._version``, ``active.method =``,
``active._method =``, ``active.components``, ``active.mean(axis=...)[...]``, orthogonal list
indices, and its module paths (``activestorage.reductionist``, ``.storage``, ``.config``,
``.hdf2numcodec``, ``.dummy_data``, ``.active``'s loaders).
"""

from __future__ import annotations

import itertools
import logging

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import activestorage
from activestorage import Active
from activestorage.dummy_data import (make_compressed_ncdata, make_missing_ncdata,
                                      make_validrange_ncdata, make_vanilla_ncdata)
from activestorage.errors import ActiveStorageError, StorageError
from activestorage.formats.objects import locate

pyfive = pytest.importorskip("pyfive", reason="pyfive is a dependency; install it")

OPS = {"mean": np.ma.mean, "sum": np.ma.sum, "min": np.ma.min, "max": np.ma.max}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("peer")
    out = {}
    for name, make in (("vanilla", make_vanilla_ncdata), ("missing", make_missing_ncdata),
                       ("range", make_validrange_ncdata)):
        path = str(d / f"{name}.nc")
        make(filename=path)
        out[name] = path
    path = str(d / "zlib.nc")
    make_compressed_ncdata(filename=path, compression="zlib", shuffle=True)
    out["zlib"] = path
    return out


def oracle(path: str, var: str = "data") -> np.ma.MaskedArray:
    with netCDF4.Dataset(path) as ds:
        return ds[var][...]


def ortho(ref: np.ndarray, index: tuple) -> np.ndarray:
    """netCDF4-python's orthogonal indexing of an in-memory array, one axis at a time."""
    out = ref
    for ax, k in enumerate(index):
        sl = [slice(None)] * out.ndim
        sl[ax] = k
        out = out[tuple(sl)]
    return out


# ------------------------------------------------------------------------- README shapes

def test_dummy_data_values(files):
    ref = oracle(files["vanilla"])
    i, j, k = 3, 4, 7
    assert ref[i, j, k] == i + j * 10 + k * 100
    assert not np.ma.is_masked(ref)


def test_readme_example(files):
    """The peer README's example: _version = 2, then active.mean[...] (keepdims)."""
    path = files["missing"]
    active = Active(path, ncvar="data")
    active._version = 2
    result = active.mean[0:2, 4:6, 7:9]
    assert result.shape == (1, 1, 1)
    np.testing.assert_allclose(result[0][0][0], oracle(path)[0:2, 4:6, 7:9].mean())


@pytest.mark.parametrize("interface_type", [None])
def test_version0_reads_data_and_version1_matches(files, interface_type):
    path = files["vanilla"]
    a = Active(path, "data", interface_type=interface_type)
    a._version = 0
    d0 = a[0:2, 4:6, 7:9]
    np.testing.assert_array_equal(d0, oracle(path)[0:2, 4:6, 7:9])
    b = Active(path, "data", interface_type=interface_type)
    b._version = 1
    np.testing.assert_array_equal(b[0:2, 4:6, 7:9], d0)


def test_method_attribute_reduces_with_keepdims_and_resets(files):
    path = files["missing"]
    ref = oracle(path)[0:2, 4:6, 7:9]
    a = Active(path, "data")
    a.method = "mean"
    assert a.method == "mean"
    r = a[0:2, 4:6, 7:9]
    assert r.shape == (1, 1, 1)
    np.testing.assert_allclose(r, np.ma.mean(ref, keepdims=True))
    assert a.method is None and a._method is None  # reset after the call
    np.testing.assert_array_equal(a[0:2, 4:6, 7:9], ref)  # plain data again


def test_private_method_and_callable_method(files):
    a = Active(files["vanilla"], "data")
    a._method = "min"
    assert a.method([3, 444]) == 3
    assert a[3:5].item() == oracle(files["vanilla"])[3:5].min()
    a._method = "cow"
    assert a.method is None


def test_components_with_version_2_on_a_local_file_reduce_here(files, caplog):
    path = files["missing"]
    ref = oracle(path)[0:2, 4:6, 7:9]
    a = Active(path, "data", active_storage_url="http://127.0.0.1:9")
    a._version = 2
    a.method = "mean"
    a.components = True
    with caplog.at_level(logging.INFO, logger="activestorage.active"):
        r = a[0:2, 4:6, 7:9]
    assert [m for m in caplog.messages if "local file" in m] and a.backend.name == "posix"
    assert r["sum"].shape == r["n"].shape == (1, 1, 1)
    assert r["n"].item() == ref.count()
    np.testing.assert_allclose(r["sum"] / r["n"], ref.mean(keepdims=True))


def test_components_without_a_method_is_a_value_error(files):
    a = Active(files["vanilla"], "data")
    a.components = True
    with pytest.raises(ValueError, match="needs a method"):
        a[0:2]


@pytest.mark.parametrize("name", ["vanilla", "zlib", "range"])
def test_pyfive_dataset_is_accepted(files, name):
    path = files[name]
    ds = pyfive.File(path)["data"]
    ref = oracle(path)
    av = Active(ds)
    assert av.ncvar == "data" and av.shape == ref.shape
    av._method = "min"
    assert av[3:5].item() == ref[3:5].min()
    assert av.method is None
    np.testing.assert_allclose(av.mean[3:5], ref[3:5].mean())
    av.components = True
    got = av.mean()[3:5]
    np.testing.assert_allclose(got["sum"] / got["n"], ref[3:5].mean(keepdims=True))


def test_fsspec_file_object_is_accepted(files):
    import fsspec

    path = files["missing"]
    with fsspec.open(path, "rb") as f:
        a = Active(f, "data")
        np.testing.assert_allclose(a.sum[2:7, :, 1:9], oracle(path)[2:7, :, 1:9].sum())


def axis_combinations(ndim: int):
    return [None] + [ax for n in range(1, ndim + 1)
                     for ax in itertools.permutations(range(ndim), n)]


@pytest.mark.parametrize("index", [
    Ellipsis,
    (slice(6, 7), slice(None), slice(None)),
    (slice(1, 9, 2), slice(0, 10, 3), slice(None)),
    (slice(None), [0, 1, 5, 7], slice(None)),
    (slice(None), [0, 1, 5, 7, 8], [2, 3, 9]),
])
def test_axis_reductions_attribute_api(files, index):
    path = files["missing"]
    ref = ortho(oracle(path), index if index is not Ellipsis else ())
    for axis in axis_combinations(3)[::3]:
        for method, fn in OPS.items():
            a = Active(path, "data", axis=axis)
            a.method = method
            x = a[index]
            r = fn(ref, axis=axis, keepdims=True)
            assert x.shape == r.shape
            np.testing.assert_array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(r))
            np.testing.assert_allclose(np.ma.filled(x, 0), np.ma.filled(r, 0), rtol=1e-12)
            a.method, a.components = method, True
            c = a[index]
            np.testing.assert_array_equal(c["n"], np.ma.count(ref, axis=axis, keepdims=True))


index_item = st.one_of(
    st.builds(slice, st.integers(0, 4), st.integers(5, 10), st.integers(1, 3)),
    st.lists(st.integers(-10, 9), min_size=1, max_size=6),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.tuples(index_item, index_item, index_item),
       axis=st.sampled_from([None, 0, 1, 2, (0, 2), (1, 2)]),
       method=st.sampled_from(["mean", "sum", "min", "max", None]))
def test_orthogonal_list_indices_match_netcdf4(files, index, axis, method):
    path = files["missing"]
    with netCDF4.Dataset(path) as ds:
        ref = ds["data"][index]  # netCDF4-python's own orthogonal indexing
    a = Active(path, "data")
    if method is None:
        x = a[index]
        np.testing.assert_array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(ref))
        np.testing.assert_array_equal(np.ma.filled(x, 0), np.ma.filled(ref, 0))
        return
    x = getattr(a, method)(axis=axis)[index]
    r = OPS[method](ref, axis=axis)
    if np.ma.is_masked(r) and np.ndim(r) == 0:
        assert x is np.ma.masked
        return
    assert np.shape(x) == np.shape(r)
    np.testing.assert_array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(r))
    np.testing.assert_allclose(np.ma.filled(x, 0), np.ma.filled(r, 0), rtol=1e-12)


# ------------------------------------------------------------------------- result shapes

def test_keepdims_default_follows_the_api_used(files, monkeypatch):
    path = files["vanilla"]
    ref = oracle(path)
    monkeypatch.delenv("ACTIVESTORAGE_PEER_COMPAT", raising=False)
    assert np.ndim(Active(path, "data").mean[...]) == 0          # ours: NumPy shapes
    a = Active(path, "data")
    a._version = 1                                                 # the peer's API: keepdims
    assert a.mean[...].shape == (1, 1, 1)
    assert a.min(axis=(0, 2))[...][0][0][0] == ref.min()
    assert Active(path, "data", interface_type=None).max[...].shape == (1, 1, 1)
    assert Active(path, "data", peer_compat=True).sum[...].shape == (1, 1, 1)
    assert np.ndim(Active(path, "data", peer_compat=True, keepdims=False).sum[...]) == 0
    monkeypatch.setenv("ACTIVESTORAGE_PEER_COMPAT", "1")
    assert Active(path, "data").mean[...].shape == (1, 1, 1)


# ------------------------------------------------------------------------------- errors

def test_peer_exception_types(files, tmp_path):
    path = files["vanilla"]
    with pytest.raises(ValueError):
        Active(None, "data")
    with pytest.raises(ValueError):
        Active(str(tmp_path / "cow.nc"), "data")
    with pytest.raises(ValueError):
        Active(path, "nope")
    a = Active(path, "data")
    with pytest.raises(ValueError):
        a.method = "median"
    a = Active(path, "data", axis=(0, 3))
    a.method = "mean"
    with pytest.raises(ValueError, match="axis 3"):
        a[...]
    a = Active(path, "data")
    a.method = "mean"
    with pytest.raises(IndexError, match="drops an axis"):
        a[0]
    a._version = 3
    with pytest.raises(ValueError, match="_version 3"):
        a[0:2]
    a._version = 0
    a.method = "max"
    with pytest.raises(ValueError, match="data only"):
        a[0:2]
    assert issubclass(activestorage.AxisError, (ValueError, IndexError, ActiveStorageError))


def test_interface_type_must_match_the_url(files):
    with pytest.raises(ValueError, match="interface_type='https'"):
        Active(files["vanilla"], "data", interface_type="https")
    with pytest.raises(ValueError, match="interface_type must be"):
        Active(files["vanilla"], "data", interface_type="ftp")
    with pytest.raises(ValueError, match="interface_type='s3'"):
        locate("file:///x.nc", None, "s3")


def test_scheme_less_bucket_key_with_s3_options():
    so = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    assert locate("bucket/dir/file.nc", so, None) == ("s3://bucket/dir/file.nc", so)
    assert locate("bucket/f.nc", {"endpoint_url": "http://x"}, None)[0] == "s3://bucket/f.nc"
    assert locate("bucket/f.nc", None, "s3")[0] == "s3://bucket/f.nc"
    assert locate("bucket/f.nc", None, None)[0] == "bucket/f.nc"  # no S3 hint: a local path


def test_store_errors_wait_for_the_first_call():
    """cf-python builds Active outside its try; the store's failure must come from active[...]."""
    so = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9",
          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    a = Active("bucket/none.nc", "tas", storage_options=so, active_storage_url="http://127.0.0.1:9")
    a.method = "max"
    with pytest.raises(StorageError, match="127.0.0.1:9|none.nc"):
        a[...]


# ------------------------------------------------------------------------- module paths

def test_storage_reduce_chunk_and_decode_filters(files):
    from activestorage.active import get_missing_attributes
    from activestorage.hdf2numcodec import decode_filters
    from activestorage.storage import mask_missing, reduce_chunk

    for name in ("zlib", "missing"):
        path = files[name]
        ref = oracle(path)
        ds = pyfive.File(path)["data"]
        compressor, filters = decode_filters(ds.id.filter_pipeline or [], 8, "data")
        assert (compressor is None) == (name != "zlib")
        missing = get_missing_attributes(ds)
        info = ds.id.get_chunk_info_from_chunk_coord((1, 0, 4))  # chunk at [3:6, 0:3, 4:5]
        sel = (slice(0, 3, 1), slice(1, 3, 1), slice(0, 1, 1))
        block = ref[3:6, 1:3, 4:5]
        for src in (path, ds):
            tmp, n = reduce_chunk(src, info.byte_offset, info.size, compressor, filters, missing,
                                  np.dtype("f8"), (3, 3, 1), "C", sel, (0, 1), method=np.ma.max)
            assert tmp.shape == n.shape == (1, 1, 1)
            assert tmp.item() == block.max() and n.item() == block.count()
        data, none = reduce_chunk(path, info.byte_offset, info.size, compressor, filters, missing,
                                  np.dtype("f8"), (3, 3, 1), "C", sel, None)
        assert none is None
        np.testing.assert_array_equal(np.ma.getmaskarray(data), np.ma.getmaskarray(block))
        masked = mask_missing(np.array([1.0, -999.0, 5.0]), (None, -999.0, None, None))
        assert masked.mask.tolist() == [False, True, False]


def test_missing_attributes_and_config_names(files):
    from activestorage import config
    from activestorage.active import get_endpoint_url, get_missing_attributes

    ds = pyfive.File(files["range"])["data"]
    fill, mv, vmin, vmax = get_missing_attributes(ds)
    assert (fill, mv) == (None, None) and (vmin, vmax) == (-1.0, 1200.0)
    assert get_endpoint_url({"client_kwargs": {"endpoint_url": "https://cow.moo"}}) == \
        "https://cow.moo"
    for name in ("USE_S3", "S3_ACTIVE_STORAGE_URL", "S3_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY",
                 "S3_BUCKET", "S3_ACTIVE_STORAGE_CACERT", "REMOTE_RED"):
        assert hasattr(config, name)


def test_reductionist_module_path():
    from activestorage.errors import ServerError
    from activestorage.reductionist import ReductionistError, get_session, reduce_chunk

    s = get_session("user", "pw", None)
    assert s.auth == ("user", "pw") and s.verify is True
    assert get_session(None, None, "/ca.pem").verify == "/ca.pem"
    err = ReductionistError(400, "bad request")
    assert isinstance(err, ServerError) and "HTTP 400" in str(err)
    with pytest.raises(ReductionistError):  # nothing listens on port 9
        reduce_chunk(s, "http://127.0.0.1:9", "http://127.0.0.1:1/b/k", 0, 8, None, None,
                     (None, None, None, None), np.dtype("f8"), (1,), "C", (slice(0, 1, 1),),
                     (0,), "sum", timeout=(1, 1))
