"""Zarr v2/v3 reader against zarr itself: every element through the kernel, for many codec
pipelines, byte orders, C/F order, missing chunks, fill values and sharding."""

from __future__ import annotations

import json
import math
import warnings

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings, strategies as st

from _oracle import assemble, assert_masked_equal, assert_reductions
from activestorage.errors import FormatError, UnsupportedError, VariableNotFoundError
from activestorage.formats.registry import detect_format
from activestorage.formats.zarr import list_variables, map_pipeline, open_zarr

warnings.filterwarnings("ignore", module="numcodecs")
warnings.filterwarnings("ignore", module="zarr")

DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
V2_COMPRESSORS = [None, "zlib", "gzip", "zstd", "blosc", "lz4", "bz2"]
V3_COMPRESSORS = [None, "gzip", "zstd", "blosc", "zlib"]


def cf_mask(data: np.ndarray, attrs: dict) -> np.ma.MaskedArray:
    """The masking rule stated independently: equality with missing_value/_FillValue, outside
    valid_range (or valid_min/valid_max)."""
    mask = np.zeros(data.shape, bool)
    for key in ("missing_value", "_FillValue"):
        if key in attrs:
            for v in np.atleast_1d(attrs[key]):
                mask |= np.isnan(data) if isinstance(v, float) and np.isnan(v) else data == v
    if "valid_range" in attrs:
        lo, hi = attrs["valid_range"]
        mask |= (data < lo) | (data > hi)
    else:
        if "valid_min" in attrs:
            mask |= data < attrs["valid_min"]
        if "valid_max" in attrs:
            mask |= data > attrs["valid_max"]
    return np.ma.MaskedArray(data, mask)


def _values(rng, dt, shape):
    if dt.kind == "f":
        return rng.normal(0, 50, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -100), min(info.max, 100), shape, endpoint=True).astype(dt)


def _compressor(name, fmt):
    if name is None:
        return None
    if fmt == 2:
        return {"zlib": numcodecs.Zlib(level=1), "gzip": numcodecs.GZip(level=1),
                "zstd": numcodecs.Zstd(level=1), "lz4": numcodecs.LZ4(), "bz2": numcodecs.BZ2(1),
                "blosc": numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE)}[name]
    import numcodecs.zarr3 as z3

    return {"gzip": zarr.codecs.GzipCodec(level=1), "zstd": zarr.codecs.ZstdCodec(level=1),
            "blosc": zarr.codecs.BloscCodec(cname="zstd", shuffle="shuffle"),
            "zlib": z3.Zlib(level=1)}[name]


@st.composite
def zarr_spec(draw):
    fmt = draw(st.sampled_from([2, 3]))
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    chunks = [draw(st.integers(1, n)) for n in shape]
    shards = None
    if fmt == 3 and draw(st.booleans()):
        shards = [c * draw(st.integers(1, 3)) for c in chunks]
    return dict(
        fmt=fmt, shape=shape, chunks=chunks, shards=shards, dtype=draw(st.sampled_from(DTYPES)),
        endian=draw(st.sampled_from("<>")), order=draw(st.sampled_from("CF")),
        compressor=draw(st.sampled_from(V2_COMPRESSORS if fmt == 2 else V3_COMPRESSORS)),
        shuffle=draw(st.booleans()), written=draw(st.floats(0, 1)),
        attrs=draw(st.sampled_from([None, "missing_value", "_FillValue", "valid_range",
                                    "valid_min"])),
        fill=draw(st.sampled_from([None, 0, 3])), seed=draw(st.integers(0, 2**32 - 1)))


def write_spec(path, spec) -> zarr.Array:
    dt = np.dtype(spec["dtype"]).newbyteorder(spec["endian"])
    fmt = spec["fmt"]
    comp = _compressor(spec["compressor"], fmt)
    kw: dict = {}
    if fmt == 2:
        kw["filters"] = [numcodecs.Shuffle(dt.itemsize)] if spec["shuffle"] else None
        kw["order"] = spec["order"]
        kw["compressors"] = comp
        kw["dtype"] = dt
    else:
        import numcodecs.zarr3 as z3

        kw["dtype"] = dt.newbyteorder("=")
        kw["serializer"] = zarr.codecs.BytesCodec(endian="big" if spec["endian"] == ">" else "little")
        if spec["order"] == "F":
            kw["filters"] = [zarr.codecs.TransposeCodec(order=tuple(range(len(spec["shape"])))[::-1])]
        comps = [z3.Shuffle(elementsize=dt.itemsize)] if spec["shuffle"] else []
        if comp is not None:
            comps.append(comp)
        kw["compressors"] = comps or None
        if spec["shards"]:
            kw["shards"] = tuple(spec["shards"])
    arr = zarr.create_array(str(path), shape=tuple(spec["shape"]), chunks=tuple(spec["chunks"]),
                            zarr_format=fmt, fill_value=spec["fill"], overwrite=True, **kw)
    rng = np.random.default_rng(spec["seed"])
    data = _values(rng, dt.newbyteorder("="), spec["shape"])
    attrs = {}
    if spec["attrs"] == "missing_value":
        attrs["missing_value"] = data.reshape(-1)[0].item()
    elif spec["attrs"] == "_FillValue":
        attrs["_FillValue"] = data.reshape(-1)[-1].item()
    elif spec["attrs"] == "valid_range":
        attrs["valid_range"] = [0 if dt.kind == "u" else -20, 20]
    elif spec["attrs"] == "valid_min":
        attrs["valid_min"] = 5
    arr.attrs.update(attrs)
    # write a leading block of the array: chunks beyond it stay unwritten (read as fill_value)
    n0 = math.ceil(spec["shape"][0] * spec["written"])
    if n0:
        arr[:n0] = data[:n0]
    return arr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=zarr_spec())
def test_zarr_arrays_match_zarr(tmp_path, spec):
    path = tmp_path / "a.zarr"
    arr = write_spec(path, spec)
    var = open_zarr(str(path), "a")
    assert var.shape == tuple(spec["shape"]) and var.chunk_shape == tuple(spec["chunks"])
    assert var.format == f"zarr{spec['fmt']}"
    want = cf_mask(arr[...], dict(arr.attrs))
    assert_masked_equal(assemble(var), want)
    assert_reductions(var, want)
    if spec["shards"]:
        urls = {loc.url for loc in var.chunks.values()}
        assert len(urls) <= math.prod(math.ceil(n / s) for n, s in zip(spec["shape"], spec["shards"]))
    else:
        for loc in var.chunks.values():
            assert loc.offset == 0


def test_missing_chunks_are_absent_and_read_as_fill(tmp_path):
    arr = zarr.create_array(str(tmp_path / "m.zarr"), shape=(6, 4), chunks=(2, 2), dtype="f4",
                            fill_value=-1.0)
    arr[2:4, :2] = 5.0
    var = open_zarr(str(tmp_path / "m.zarr"), "m")
    assert list(var.chunks) == [(1, 0)] and var.nchunks == 6 and var.fill_value == -1.0
    assert var.missing.is_empty()  # zarr's fill_value is not a missing value by itself
    np.testing.assert_array_equal(assemble(var).data, arr[...])


def test_xarray_style_v2_masks_fill_value(tmp_path):
    """xarray keeps _FillValue in a v2 array's fill_value (and marks it with _ARRAY_DIMENSIONS)."""
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=(4, 3), chunks=(2, 3), dtype="f8",
                            fill_value=np.nan, zarr_format=2)
    arr.attrs.update({"_ARRAY_DIMENSIONS": ["time", "x"], "units": "K"})
    arr[:2] = np.array([[1, np.nan, 3], [4, 5, 6]])
    var = open_zarr(str(tmp_path / "x.zarr"), "x")
    assert var.dimensions == ("time", "x") and "_ARRAY_DIMENSIONS" not in var.attrs
    got = assemble(var)
    assert got.mask.sum() == 1 + 6 and got.sum() == 19


def test_groups_nested_arrays_and_listing(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    sub = g.create_group("sub")
    a = sub.create_array("tas", shape=(4, 5), chunks=(2, 5), dtype="f4",
                         dimension_names=("time", "lon"))
    a[:] = np.arange(20).reshape(4, 5)
    g.create_array("pr", shape=(3,), chunks=(3,), dtype="i2")[:] = [1, 2, 3]
    listing = list_variables(str(tmp_path / "g.zarr"))
    assert listing["sub/tas"] == {"dimensions": ["time", "lon"], "shape": [4, 5], "dtype": "float32"}
    assert listing["pr"]["dtype"] == "int16"
    var = open_zarr(str(tmp_path / "g.zarr"), "sub/tas")
    assert var.dimensions == ("time", "lon")
    np.testing.assert_array_equal(assemble(var).data, a[...])
    with pytest.raises(VariableNotFoundError, match="no array 'nope'; arrays: pr, sub/tas"):
        open_zarr(str(tmp_path / "g.zarr"), "nope")


def test_sharded_index_is_read_and_chunks_are_ranges(tmp_path):
    arr = zarr.create_array(str(tmp_path / "s.zarr"), shape=(8, 8), chunks=(2, 2), shards=(4, 8),
                            dtype="i4", compressors=zarr.codecs.ZstdCodec(), fill_value=0)
    data = np.arange(64, dtype="i4").reshape(8, 8)
    data[0:2, 0:2] = 0  # an all-fill inner chunk is not stored
    arr[:] = data
    var = open_zarr(str(tmp_path / "s.zarr"), "s")
    assert (0, 0) not in var.chunks and len(var.chunks) == 15
    assert len({loc.url for loc in var.chunks.values()}) == 2
    np.testing.assert_array_equal(assemble(var).data, data)


def test_corrupt_shard_index_fails_its_checksum(tmp_path):
    arr = zarr.create_array(str(tmp_path / "c.zarr"), shape=(4,), chunks=(2,), shards=(4,),
                            dtype="i4")
    arr[:] = [1, 2, 3, 4]
    shard = tmp_path / "c.zarr" / "c" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="CRC32C"):
        open_zarr(str(tmp_path / "c.zarr"), "c")


# ------------------------------------------------------------------------ codecs and errors

def test_pipeline_mapping():
    assert map_pipeline([{"id": "shuffle", "elementsize": 4}, {"id": "zlib", "level": 4}], 4, "x") \
        == ({"id": "zlib"}, ({"id": "shuffle", "element_size": 4},))
    assert map_pipeline([{"name": "gzip", "configuration": {"level": 1}}], 8, "x") \
        == ({"id": "gzip"}, ())
    comp, filt = map_pipeline([{"id": "zlib"}, {"id": "fletcher32"}], 4, "x")
    assert filt == ({"id": "fletcher32", "outer": True},)
    with pytest.raises(UnsupportedError, match="codec 'delta' is not supported"):
        map_pipeline([{"id": "delta", "dtype": "<i4"}], 4, "x")
    with pytest.raises(UnsupportedError, match="two compressors"):
        map_pipeline([{"id": "zlib"}, {"id": "zstd"}], 4, "x")


def test_unsupported_codec_dtype_and_transpose_name_the_problem(tmp_path):
    a = zarr.create_array(str(tmp_path / "d.zarr"), shape=(4,), chunks=(2,), dtype="i4",
                          zarr_format=2, filters=[numcodecs.Delta(dtype="i4")], compressors=None)
    a[:] = 1
    with pytest.raises(UnsupportedError, match=r"d.zarr: d: codec 'delta' is not supported"):
        open_zarr(str(tmp_path / "d.zarr"), "d")
    b = zarr.create_array(str(tmp_path / "t.zarr"), shape=(2, 2, 2), chunks=(2, 2, 2), dtype="f4",
                          filters=[zarr.codecs.TransposeCodec(order=(1, 0, 2))])
    b[:] = 1
    with pytest.raises(UnsupportedError, match=r"transpose codec with order \[1, 0, 2\]"):
        open_zarr(str(tmp_path / "t.zarr"), "t")
    c = zarr.create_array(str(tmp_path / "b.zarr"), shape=(2,), chunks=(2,), dtype="bool")
    c[:] = True
    with pytest.raises(UnsupportedError, match="dtype bool"):
        open_zarr(str(tmp_path / "b.zarr"), "b")


def test_not_a_store(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FormatError, match="empty.zarr"):
        open_zarr(str(tmp_path / "empty.zarr"), "v")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(FormatError, match="bad.zarr"):
        open_zarr(str(tmp_path / "bad.zarr"), "v")


def test_detect_zarr():
    assert detect_format(b"", "/data/x.zarr") == "zarr"
    assert detect_format(b"", "/data/x.zarr/") == "zarr"
    assert detect_format(json.dumps({"zarr_format": 3}).encode(), "zarr.json") == "zarr"
    assert detect_format(b'{"zarr_format": 2, "shape": [1]}', "meta") == "zarr"


# ------------------------------------------------------------------------ through Active

@pytest.mark.parametrize("fmt", [2, 3])
def test_active_on_zarr_matches_numpy(tmp_path, fmt):
    active = pytest.importorskip("activestorage.active")
    kw = {"shards": (4, 6)} if fmt == 3 else {}
    arr = zarr.create_array(str(tmp_path / "z.zarr"), shape=(7, 6), chunks=(2, 3), dtype="f8",
                            zarr_format=fmt, fill_value=-9.0, **kw)
    arr.attrs["_FillValue"] = -9.0
    data = np.arange(42.0).reshape(7, 6)
    arr[:5] = data[:5]  # rows 5-6 unwritten: fill, masked by _FillValue
    want = np.ma.masked_equal(arr[...], -9.0)
    a = active.Active(str(tmp_path / "z.zarr"), "z")
    assert a.mean[...] == pytest.approx(want.mean())
    assert a.count[...] == want.count()
    np.testing.assert_array_equal(np.ma.getdata(a.max(axis=1)[1:4]), want[1:4].max(axis=1).data)


@pytest.mark.parametrize("fmt, encoding", [
    (2, {"name": "v2", "separator": "/"}),
    (3, {"name": "v2", "separator": "."}),
    (3, {"name": "default", "separator": "."}),
])
def test_chunk_key_encodings(tmp_path, fmt, encoding):
    arr = zarr.create_array(str(tmp_path / "k.zarr"), shape=(5, 4, 3), chunks=(2, 3, 2),
                            dtype="i2", zarr_format=fmt, chunk_key_encoding=encoding)
    arr[:4] = np.arange(48, dtype="i2").reshape(4, 4, 3)
    var = open_zarr(str(tmp_path / "k.zarr"), "k")
    assert len(var.chunks) == 2 * 2 * 2
    np.testing.assert_array_equal(assemble(var).data, arr[...])


def test_huge_sparse_grid_opens_in_time_proportional_to_stored_chunks(tmp_path):
    """The chunk index comes from the listing, not from walking a 2**40-chunk grid."""
    import time

    arr = zarr.create_array(str(tmp_path / "h.zarr"), shape=(2**40,), chunks=(4,), dtype="i2",
                            fill_value=0)
    arr[8:16] = np.arange(1, 9, dtype="i2")
    t0 = time.perf_counter()
    var = open_zarr(str(tmp_path / "h.zarr"), "h")
    assert time.perf_counter() - t0 < 5
    assert sorted(var.chunks) == [(2,), (3,)] and var.grid == (2**38,)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(["shape", "chunks", "dtype", "compressor", "filters", "fill_value",
                            "order", "dimension_separator", "zarr_format"]),
       value=st.none() | st.integers(-3, 2**64) | st.text(max_size=4)
       | st.lists(st.integers(-2, 5), max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                   st.integers(), max_size=2))
def test_damaged_zarr_metadata_in_references_raises_typed_errors(key, value):
    from activestorage.errors import ActiveStorageError
    from activestorage.formats.references import open_references

    meta = {"zarr_format": 2, "shape": [4, 4], "chunks": [2, 2], "dtype": "<f4",
            "compressor": None, "filters": None, "fill_value": 0, "order": "C"}
    meta[key] = value
    refs = {"v/.zarray": json.dumps(meta), "v/0.0": ["/nonexistent/x", 0, 16]}
    try:
        var = open_references({"version": 1, "refs": refs}, "v")
    except ActiveStorageError:
        return
    assert var.chunk_shape and all(c >= 1 for c in var.chunk_shape)


@pytest.mark.parametrize("fmt", [2, 3])
def test_xarray_written_stores_mask_like_xarray(tmp_path, fmt):
    """xarray keeps _FillValue in fill_value (v2) or as a base64 attribute (v3 floats): the
    masked elements must be exactly the ones xarray decodes as NaN."""
    xr = pytest.importorskip("xarray", reason="xarray is the oracle for xarray-written stores")
    data = np.arange(24, dtype="f4").reshape(4, 6)
    data[1, 2] = np.nan
    ds = xr.Dataset({"tas": (("time", "x"), data),
                     "cnt": (("time", "x"), np.arange(24, dtype="i2").reshape(4, 6))})
    ds["tas"].encoding.update(_FillValue=-1.0, chunks=(2, 3))
    ds["cnt"].encoding.update(_FillValue=np.int16(5), chunks=(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(tmp_path / "x.zarr"), mode="w", zarr_format=fmt, consolidated=fmt == 2)
        back = xr.open_zarr(str(tmp_path / "x.zarr"))
    for name in ("tas", "cnt"):
        var = open_zarr(str(tmp_path / "x.zarr"), name)
        got = assemble(var)
        want = back[name].values.astype("f8")
        np.testing.assert_array_equal(got.mask, np.isnan(want))
        np.testing.assert_array_equal(got.compressed().astype("f8"), want[~np.isnan(want)])
        assert var.dimensions == ("time", "x")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=zarr_spec(), data=st.data())
def test_active_selections_on_random_zarr_arrays(tmp_path, spec, data):
    """Active's planner over Zarr variables (edge chunks, F order, missing chunks, shards) with
    random selections, against numpy.ma on zarr's own read."""
    from activestorage import Active

    path = tmp_path / "a.zarr"
    arr = write_spec(path, spec)
    want_all = cf_mask(arr[...], dict(arr.attrs))
    key = tuple(slice(data.draw(st.integers(0, n - 1)), None, data.draw(st.integers(1, 3)))
                for n in spec["shape"])
    want = want_all[key]
    op = data.draw(st.sampled_from(["min", "max", "sum", "count", "mean"]))
    with Active(str(path), "a") as a:
        got = getattr(a, op)[key]
    n = np.ma.count(want)
    if op == "count":
        assert int(got) == n
    elif n == 0:
        assert np.ma.is_masked(got)
    elif op in ("min", "max"):
        assert got == getattr(np.ma, op)(want)
    else:
        expect = getattr(np.ma, op)(want.astype("f8"))
        np.testing.assert_allclose(float(got), float(expect), rtol=1e-5,
                                   atol=1e-5 * float(np.ma.abs(want.astype("f8")).max()))
