"""netCDF-3 reader against netCDF4-python: every element, through the kernel, for classic,
64-bit offset and CDF-5 files with fixed and record variables, several dtypes and missing data."""

from __future__ import annotations

import struct

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _oracle import assemble, assert_masked_equal, assert_reductions
from activestorage.errors import FormatError, UnsupportedError, VariableNotFoundError
from activestorage.formats.registry import detect_format
from activestorage.formats.netcdf3 import list_variables, open_netcdf3, parse_header

FORMATS = ["NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET", "NETCDF3_64BIT_DATA"]
CLASSIC_DTYPES = ["i1", "i2", "i4", "f4", "f8"]
CDF5_DTYPES = CLASSIC_DTYPES + ["u1", "u2", "u4", "i8", "u8"]


def oracle(path, name) -> np.ma.MaskedArray:
    with netCDF4.Dataset(path) as ds:
        v = ds[name]
        v.set_auto_scale(False)
        return np.ma.asarray(v[...])


def check(path, name, **kw):
    var = open_netcdf3(str(path), name, **kw)
    want = oracle(path, name)
    assert var.shape == want.shape
    got = assemble(var)
    assert_masked_equal(got, want)
    assert_reductions(var, want)
    return var


def _values(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0, 100, shape).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    return rng.integers(lo, hi, shape, endpoint=True).astype(dt)


@st.composite
def nc3_spec(draw):
    fmt = draw(st.sampled_from(FORMATS))
    dtypes = CDF5_DTYPES if fmt == "NETCDF3_64BIT_DATA" else CLASSIC_DTYPES
    nrec_vars = draw(st.integers(0, 3))
    nfixed = draw(st.integers(0 if nrec_vars else 1, 2))
    dims = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    variables = []
    for i in range(nrec_vars + nfixed):
        record = i < nrec_vars
        ndim = draw(st.integers(0, len(dims)))
        variables.append(dict(
            name=f"v{i}", record=record, dims=list(range(ndim)), dtype=draw(st.sampled_from(dtypes)),
            fill=draw(st.sampled_from([None, "attr"])),
            missing_value=draw(st.booleans()), valid=draw(st.sampled_from([None, "min", "max", "range"])),
            holes=draw(st.booleans())))
    numrecs = draw(st.integers(0, 4))
    return fmt, dims, variables, numrecs, draw(st.integers(0, 2**32 - 1))


def write_spec(path, spec):
    fmt, dims, variables, numrecs, seed = spec
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("time", None)
        for i, n in enumerate(dims):
            ds.createDimension(f"d{i}", n)
        for v in variables:
            dimnames = (["time"] if v["record"] else []) + [f"d{i}" for i in v["dims"]]
            dt = np.dtype(v["dtype"])
            fill = _values(rng, dt, ()) if v["fill"] == "attr" else None
            var = ds.createVariable(v["name"], dt, dimnames, fill_value=fill)
            shape = ([numrecs] if v["record"] else []) + [dims[i] for i in v["dims"]]
            data = _values(rng, dt, shape)
            if v["missing_value"] and data.size:
                mv = data.reshape(-1)[0]
                var.missing_value = mv
            if v["valid"] == "min":
                var.valid_min = dt.type(0)
            elif v["valid"] == "max":
                var.valid_max = dt.type(10)
            elif v["valid"] == "range":
                var.valid_range = np.array([0 if dt.kind == "u" else -50, 50], dt)
            if v["record"] and v["holes"] and numrecs > 1:
                # leave the last record of this variable unwritten: it reads as the fill value
                if shape[1:]:
                    var[: numrecs - 1, ...] = data[: numrecs - 1]
                else:
                    var[: numrecs - 1] = data[: numrecs - 1]
            elif data.ndim == 0:
                var.assignValue(data)
            elif data.size:
                var[...] = data
        if numrecs and not any(v["record"] for v in variables):
            ds.createVariable("tvals", "f8", ("time",))[:] = np.arange(numrecs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=nc3_spec())
def test_every_variable_matches_netcdf4(tmp_path, spec):
    path = tmp_path / "f.nc"
    write_spec(path, spec)
    with netCDF4.Dataset(path) as ds:
        names = list(ds.variables)
    assert sorted(list_variables(str(path))) == sorted(names)
    for name in names:
        var = check(path, name)
        assert var.format == spec[0].lower()
        if var.dimensions and var.dimensions[0] == "time":
            assert var.chunk_shape[0] == 1 and len(var.chunks) == var.shape[0]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["i1", "i2"])
def test_single_small_record_variable_is_unpadded(tmp_path, fmt, dtype):
    """A lone record variable's records are packed without padding (the spec's special case)."""
    path = tmp_path / "one.nc"
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 3)  # 3 bytes or 6 bytes per record: not a multiple of 4
        v = ds.createVariable("v", dtype, ("t", "x"))
        v[:] = np.arange(21).reshape(7, 3)
    var = check(path, "v")
    offsets = [var.chunks[(i, 0)].offset for i in range(7)]
    assert np.diff(offsets).tolist() == [3 * np.dtype(dtype).itemsize] * 6


def test_interleaved_records_and_scalars(tmp_path):
    path = tmp_path / "mix.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 5)
        a = ds.createVariable("a", "i2", ("t", "x"))
        b = ds.createVariable("b", "f8", ("t",))
        s = ds.createVariable("s", "i4", ())
        a[:] = np.arange(30).reshape(6, 5)
        b[:] = np.linspace(0, 1, 6)
        s.assignValue(42)
    check(path, "a")
    check(path, "b")
    var = check(path, "s")
    assert var.shape == () and list(var.chunks) == [()]


def test_streaming_numrecs_counts_records_from_file_size(tmp_path):
    path = tmp_path / "s.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 4)
        ds.createVariable("v", "f4", ("t", "x"))[:] = np.arange(20.0).reshape(5, 4)
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack(">I", 0xFFFFFFFF)
    streamed = tmp_path / "streamed.nc"
    streamed.write_bytes(bytes(raw))
    var = open_netcdf3(str(streamed), "v")
    assert var.shape == (5, 4)
    from _oracle import assemble as asm

    np.testing.assert_array_equal(asm(var).data, np.arange(20.0).reshape(5, 4))


def test_large_fixed_variable_is_split_into_equal_slabs(tmp_path):
    path = tmp_path / "big.nc"
    data = np.arange(12 * 7 * 3, dtype="f8").reshape(12, 7, 3)
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        for n, k in zip("abc", data.shape):
            ds.createDimension(n, k)
        ds.createVariable("v", "f8", ("a", "b", "c"))[:] = data
    row = 7 * 3 * 8
    var = check(path, "v", max_chunk_bytes=5 * row)
    assert var.chunk_shape == (4, 7, 3) and len(var.chunks) == 3  # 4 is the largest divisor <= 5
    assert all(loc.size == 4 * row for loc in var.chunks.values())


def test_masking_rules_follow_netcdf4_python(tmp_path):
    """Default fill values are masked (also for bytes: a netCDF-3 file reads with fill on);
    valid_range wins over valid_min/max; missing_value and _FillValue both mask."""
    path = tmp_path / "m.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 6)
        b = ds.createVariable("b", "i1", ("x",))
        b[:] = np.array([-127, 1, 2, 3, 4, 5], "i1")
        f = ds.createVariable("f", "f4", ("x",), fill_value=np.float32(-1))
        f.missing_value = np.float32(3)
        f.valid_range = np.array([-10, 10], "f4")
        f.valid_min = np.float32(4)  # ignored: valid_range is given
        f[:] = np.array([-1, 1, 3, 100, 9.96921e36, 5], "f4")
    assert oracle(path, "b").mask.tolist() == [True] + [False] * 5
    check(path, "b")
    var = check(path, "f")
    assert var.missing.valid_min == -10 and var.missing.valid_max == 10


def test_packed_variable_records_scale_and_offset(tmp_path):
    path = tmp_path / "p.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 4)
        v = ds.createVariable("p", "i2", ("x",))
        v.scale_factor = np.float32(0.5)
        v.add_offset = np.float32(10)
        v.set_auto_scale(False)
        v[:] = np.array([1, 2, 3, 4], "i2")
    var = open_netcdf3(str(path), "p")
    assert var.scale_factor == np.float32(0.5) and var.add_offset == np.float32(10)
    assert var.scale_factor.dtype == np.float32


# ------------------------------------------------------------------------ bad input

@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 50)
        ds.title = "a title long enough to matter"
        ds.createVariable("v", "f8", ("t", "x"))[:] = np.ones((3, 50))
        ds.createVariable("c", "S1", ("x",))
    return path


@pytest.mark.parametrize("cut", [3, 7, 20, 60, 100])
def test_truncated_header_is_a_format_error_naming_the_file(tmp_path, small, cut):
    hdr = parse_header(small.read_bytes(), "x")
    assert cut < hdr.header_size
    bad = tmp_path / "cut.nc"
    bad.write_bytes(small.read_bytes()[:cut])
    with pytest.raises(FormatError, match="cut.nc"):
        open_netcdf3(str(bad), "v")


def test_truncated_data_is_a_format_error_naming_the_variable(tmp_path, small):
    bad = tmp_path / "short.nc"
    bad.write_bytes(small.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"short.nc.*'v'.*record 2.*past the end"):
        open_netcdf3(str(bad), "v")


def test_corrupt_tags_and_counts(tmp_path, small):
    raw = bytearray(small.read_bytes())
    raw[8:12] = struct.pack(">I", 0x0B)  # dimension list tag replaced by the variable tag
    bad = tmp_path / "tag.nc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="tag.nc: bad dimension list tag"):
        open_netcdf3(str(bad), "v")
    raw = bytearray(small.read_bytes())
    raw[12:16] = struct.pack(">I", 0x7FFFFFFF)  # absurd number of dimensions
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="tag.nc"):
        open_netcdf3(str(bad), "v")


def test_not_netcdf3_char_variable_and_unknown_variable(tmp_path, small):
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(FormatError, match="other.bin is not a netCDF-3 file"):
        open_netcdf3(str(other), "v")
    with pytest.raises(UnsupportedError, match="'c' is of type char"):
        open_netcdf3(str(small), "c")
    with pytest.raises(VariableNotFoundError, match="no variable 'nope'; variables: v, c"):
        open_netcdf3(str(small), "nope")


def test_detected_as_netcdf3(small):
    assert detect_format(small.read_bytes()[:4096], str(small)) == "netcdf3"


# ------------------------------------------------------------------------ through Active

@pytest.mark.parametrize("fmt", FORMATS)
def test_active_reduces_netcdf3_like_netcdf4_python(tmp_path, fmt):
    active = pytest.importorskip("activestorage.active")
    path = tmp_path / "a.nc"
    rng = np.random.default_rng(1)
    data = rng.normal(280, 5, (6, 4, 5)).astype("f4")
    data[1, 2, 3] = -999
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 4)
        ds.createDimension("lon", 5)
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), fill_value=np.float32(-999))
        v[:] = data
        w = ds.createVariable("orog", "i2", ("lat", "lon"))
        w.missing_value = np.int16(7)
        w[:] = np.arange(20).reshape(4, 5)
    want = oracle(path, "tas")
    a = active.Active(str(path), "tas")
    np.testing.assert_allclose(a.mean[...], want.mean(), rtol=1e-6)
    np.testing.assert_allclose(a.max[1:4, :, 2:], want[1:4, :, 2:].max(), rtol=0)
    assert a.count[...] == want.count()
    got = a.sum(axis=0)[...]
    np.testing.assert_allclose(np.ma.getdata(got), np.ma.getdata(want.sum(axis=0)), rtol=1e-5)
    b = active.Active(str(path), "orog")
    assert b.sum[...] == oracle(path, "orog").sum()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_files_raise_format_errors_only(tmp_path, small, data):
    """Random byte damage in the header: a typed error (or a still-valid file), never a crash,
    a hang or a huge allocation."""
    from activestorage.errors import ActiveStorageError

    raw = bytearray(small.read_bytes())
    hdr_size = parse_header(bytes(raw), "x").header_size
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(4, hdr_size - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(raw), hdr_size + 8, hdr_size // 2]))
    bad = tmp_path / "fuzz.nc"
    bad.write_bytes(bytes(raw[:cut]))
    for name in ("v", "c"):
        try:
            var = open_netcdf3(str(bad), name)
        except ActiveStorageError as exc:
            assert "fuzz.nc" in str(exc) or isinstance(exc, (UnsupportedError, VariableNotFoundError))
        else:
            assert var.stored_bytes <= len(raw)
    try:
        list_variables(str(bad))
    except ActiveStorageError:
        pass


def test_header_larger_than_the_first_read(tmp_path):
    """A header beyond the first 64 KiB read (long history attribute, many variables)."""
    path = tmp_path / "long.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.history = "x" * 300_000
        ds.createDimension("t", None)
        for i in range(300):
            v = ds.createVariable(f"v{i}", "i4", ("t",))
            v.long_name = f"variable number {i}"
            v[:] = np.arange(3) + i
    assert parse_header(path.read_bytes(), "x").header_size > 300_000
    var = check(path, "v299")
    assert var.shape == (3,)
    assert len(list_variables(str(path))) == 300


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=nc3_spec(), data=st.data())
def test_active_selections_on_random_netcdf3_files(tmp_path, spec, data):
    """Active over every non-scalar variable of a random netCDF-3 file with a random selection."""
    from activestorage import Active

    path = tmp_path / "f.nc"
    write_spec(path, spec)
    with netCDF4.Dataset(path) as ds:
        names = [n for n, v in ds.variables.items() if v.ndim and v.size]
    for name in names:
        want_all = oracle(path, name)
        key = tuple(slice(data.draw(st.integers(0, n - 1)), None, data.draw(st.integers(1, 2)))
                    for n in want_all.shape)
        want = want_all[key]
        op = data.draw(st.sampled_from(["min", "max", "sum", "count", "mean"]))
        with Active(str(path), name) as a:
            got = getattr(a, op)[key]
        n = np.ma.count(want)
        if op == "count":
            assert int(got) == n
        elif n == 0:
            assert np.ma.is_masked(got)
        elif op in ("min", "max"):
            assert got == getattr(np.ma, op)(want)
        else:
            w = want.astype("f8")
            np.testing.assert_allclose(float(got), float(getattr(np.ma, op)(w)), rtol=1e-6,
                                       atol=1e-6 * float(np.ma.abs(w).max()))
