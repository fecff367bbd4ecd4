"""ChunkRequest: every validation rule of the Reductionist API names its field; wire round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.errors import RequestValidationError
from activestorage.request import (NATIVE_BYTE_ORDER, WIRE_DTYPES, ChunkRequest, Missing,
                                   make_request)

BASE = {"dtype": "float32", "shape": [4, 5], "size": 80, "offset": 0}


def body(**changes):
    b = {k: v for k, v in BASE.items()}
    for k, v in changes.items():
        if v is _DROP:
            b.pop(k, None)
        else:
            b[k] = v
    return b


_DROP = object()

# (changes to a valid body, the field the error must name)
INVALID = [
    # body and dtype
    ("not a dict", None, "body"),
    ("no dtype", dict(dtype=_DROP), "dtype"),
    ("unknown dtype", dict(dtype="float16"), "dtype"),
    ("dtype not a string", dict(dtype=4), "dtype"),
    ("numpy-style dtype", dict(dtype="<f4"), "dtype"),
    # byte order and order
    ("bad byte_order", dict(byte_order="native"), "byte_order"),
    ("byte_order wrong type", dict(byte_order=1), "byte_order"),
    ("bad order", dict(order="c"), "order"),
    ("order as list", dict(order=["C"]), "order"),
    # offset and size
    ("negative offset", dict(offset=-1), "offset"),
    ("float offset", dict(offset=1.0), "offset"),
    ("string offset", dict(offset="0"), "offset"),
    ("bool offset", dict(offset=True), "offset"),
    ("huge offset", dict(offset=2**64), "offset"),
    ("size zero", dict(size=0), "size"),
    ("negative size", dict(size=-80), "size"),
    ("bool size", dict(size=True), "size"),
    ("float size", dict(size=80.0), "size"),
    ("size not a multiple of dtype size", dict(size=82, shape=_DROP), "size"),
    ("size does not match shape", dict(size=84), "size"),
    ("size smaller than shape", dict(size=76), "size"),
    ("neither shape nor size", dict(shape=_DROP, size=_DROP), "size"),
    ("compression without shape", dict(shape=_DROP, compression={"id": "zlib"}), "shape"),
    # shape
    ("shape not a list", dict(shape=20), "shape"),
    ("empty shape", dict(shape=[]), "shape"),
    ("zero dimension", dict(shape=[0, 5], size=_DROP), "shape[0]"),
    ("negative dimension", dict(shape=[4, -5], size=_DROP), "shape[1]"),
    ("float dimension", dict(shape=[4.0, 5]), "shape[0]"),
    ("bool dimension", dict(shape=[True, 5], size=_DROP), "shape[0]"),
    ("string dimension", dict(shape=["4", 5]), "shape[0]"),
    ("too many dimensions", dict(shape=[1] * 33, size=_DROP), "shape"),
    ("dimension too large", dict(shape=[2**63], size=_DROP), "shape[0]"),
    ("shape too large to exist", dict(shape=[2**40, 2**40], size=_DROP), "shape"),
    # selection
    ("stride zero", dict(selection=[[0, 4, 0], [0, 5, 1]]), "selection[0]"),
    ("selection shorter than shape", dict(selection=[[0, 4, 1]]), "selection"),
    ("selection longer than shape", dict(selection=[[0, 4, 1]] * 3), "selection"),
    ("selection not a list", dict(selection="all"), "selection"),
    ("slice of two", dict(selection=[[0, 4], [0, 5, 1]]), "selection[0]"),
    ("slice not a list", dict(selection=[[0, 4, 1], 5]), "selection[1]"),
    ("float stride", dict(selection=[[0, 4, 1.0], [0, 5, 1]]), "selection[0]"),
    ("bool stride", dict(selection=[[0, 4, True], [0, 5, 1]]), "selection[0]"),
    ("bool start", dict(selection=[[False, 4, 1], [0, 5, 1]]), "selection[0]"),
    ("float end", dict(selection=[[0, 4, 1], [0, 5.0, 1]]), "selection[1]"),
    ("selection without shape", dict(shape=_DROP, selection=[[0, 4, 1]]), "selection"),
    # axis
    ("axis out of range", dict(axis=2), "axis"),
    ("negative axis out of range", dict(axis=[-3]), "axis"),
    ("duplicate axes", dict(axis=[0, 0]), "axis"),
    ("duplicate axes after normalising", dict(axis=[1, -1]), "axis"),
    ("bool axis", dict(axis=True), "axis"),
    ("bool in axis list", dict(axis=[False]), "axis"),
    ("float axis", dict(axis=[0.0]), "axis"),
    ("axis as string", dict(axis="0"), "axis"),
    ("axis without shape", dict(shape=_DROP, axis=0), "axis"),
    # codecs
    ("unknown compression", dict(compression={"id": "lzma"}), "compression"),
    ("compression as string", dict(compression="zlib"), "compression"),
    ("compression without id", dict(compression={"level": 1}), "compression"),
    ("filters not a list", dict(filters={"id": "shuffle"}), "filters"),
    ("unknown filter", dict(filters=[{"id": "delta"}]), "filters[0]"),
    ("filter not an object", dict(filters=["shuffle"]), "filters[0]"),
    ("element_size zero", dict(filters=[{"id": "shuffle", "element_size": 0}]), "filters[0]"),
    ("element_size bool", dict(filters=[{"id": "shuffle", "element_size": True}]), "filters[0]"),
    ("element_size float", dict(filters=[{"id": "shuffle", "element_size": 4.0}]), "filters[0]"),
    ("outer not a bool", dict(filters=[{"id": "fletcher32", "outer": 1}]), "filters[0]"),
    ("too many filters", dict(filters=[{"id": "shuffle"}] * 17), "filters"),
    # missing
    ("missing not an object", dict(missing=5), "missing"),
    ("missing empty", dict(missing={}), "missing"),
    ("missing unknown key", dict(missing={"fill_value": 1}), "missing"),
    ("missing_value a string", dict(missing={"missing_value": "1"}), "missing.missing_value"),
    ("missing_value a bool", dict(missing={"missing_value": True}), "missing.missing_value"),
    ("missing_value beyond float32", dict(missing={"missing_value": 1e300}),
     "missing.missing_value"),
    ("missing_value a huge int", dict(missing={"missing_value": 10**400}),
     "missing.missing_value"),
    ("missing_values empty", dict(missing={"missing_values": []}), "missing.missing_values"),
    ("missing_values not a list", dict(missing={"missing_values": 3}), "missing.missing_values"),
    ("missing_values bad item", dict(missing={"missing_values": [1, "x"]}),
     "missing.missing_values[1]"),
    ("valid_range of one", dict(missing={"valid_range": [1]}), "missing.valid_range"),
    ("valid_range reversed", dict(missing={"valid_range": [2, 1]}), "missing.valid_range"),
    ("valid_range of equal ends", dict(missing={"valid_range": [2, 2]}), "missing.valid_range"),
    ("valid_range with a NaN end", dict(missing={"valid_range": [float("nan"), 2]}),
     "missing.valid_min"),
    ("valid_range item", dict(missing={"valid_range": [0, None]}), "missing.valid_range[1]"),
    ("valid_range and valid_min", dict(missing={"valid_range": [0, 1], "valid_min": 0}),
     "missing"),
    ("NaN valid_min", dict(missing={"valid_min": float("nan")}), "missing.valid_min"),
    ("NaN valid_max", dict(missing={"valid_max": float("nan")}), "missing.valid_max"),
    # routing-free extensions
    ("etag not a string", dict(etag=5), "etag"),
    ("version_id not a string", dict(version_id=["v"]), "version_id"),
]


@pytest.mark.parametrize("case,changes,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_bodies_name_the_field(case, changes, field):
    b = "just a string" if changes is None else body(**changes)
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire(b)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(field)


INT_MISSING = [
    ("int8", 128), ("int8", -129), ("uint8", -1), ("uint8", 256), ("int16", 2**15),
    ("uint16", 2**16), ("int32", 2**31), ("uint32", -1), ("int64", 2**63), ("int64", -2**63 - 1),
    ("uint64", 2**64), ("uint64", -1), ("int32", 1.5), ("int32", float("nan")),
    ("int64", float("inf")), ("uint8", float("-inf")), ("int64", 1e19),
    # a JSON number with a decimal point or exponent is a float: refused even when whole
    ("int32", -1.0), ("uint32", 1.0), ("int64", 0.0), ("uint8", 1e2), ("int16", np.float32(3)),
]


@pytest.mark.parametrize("dtype,value", INT_MISSING)
@pytest.mark.parametrize("key", ["missing_value", "valid_min", "valid_max"])
def test_missing_value_not_representable_in_integer_dtype(dtype, value, key):
    b = {"dtype": dtype, "shape": [3], "missing": {key: value}}
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire(b)
    assert e.value.field == f"missing.{key}"
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire({**b, "missing": {"missing_values": [0, value]}})
    assert e.value.field == "missing.missing_values[1]"


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_missing_values_at_the_limits_are_accepted(dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        vals = [float(np.finfo(dt).max), float(np.finfo(dt).min), float("nan"), float("inf"),
                0.1]
    else:
        vals = [int(np.iinfo(dt).min), int(np.iinfo(dt).max), 2]
    req = ChunkRequest.from_wire({"dtype": dtype, "shape": [3], "missing": {"missing_values": vals}})
    assert all(isinstance(v, dt.type) for v in req.missing.values)
    if dt.kind == "f":  # rounded to the dtype, as the reference server parses it
        assert req.missing.values[-1] == dt.type(0.1)


def test_max_elements_bounds_shape_and_size_derived_shape():
    ChunkRequest.from_wire({"dtype": "int64", "shape": [10, 10]}, max_elements=100)
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire({"dtype": "int64", "shape": [10, 11]}, max_elements=100)
    assert e.value.field == "shape" and "100" in e.value.message
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire({"dtype": "int64", "size": 808}, max_elements=100)
    assert e.value.field == "size"


def test_defaults():
    req = ChunkRequest.from_wire({"dtype": "uint16", "size": 10, "junk": 1,
                                  "byte_order": None, "order": None, "offset": None})
    assert req.shape == (5,)
    assert req.byte_order == NATIVE_BYTE_ORDER and req.order == "C" and req.offset == 0
    assert req.selection is None and req.axis is None and req.missing is None
    assert req.reduce_axes == (0,)
    req = ChunkRequest.from_wire({"dtype": "int32", "shape": [2, 3], "axis": -1})
    assert req.axis == (1,)


def test_fletcher32_counts_in_the_stored_size():
    """Uncompressed with a checksum, the stored size is the data plus 4 bytes."""
    f = [{"id": "shuffle"}, {"id": "fletcher32", "outer": True}]
    req = ChunkRequest.from_wire({"dtype": "float64", "shape": [3], "size": 28, "filters": f})
    assert req.filters == ({"id": "shuffle", "element_size": 8},
                           {"id": "fletcher32", "outer": True})
    with pytest.raises(RequestValidationError) as e:
        ChunkRequest.from_wire({"dtype": "float64", "shape": [3], "size": 24, "filters": f})
    assert e.value.field == "size"
    req = ChunkRequest.from_wire({"dtype": "float64", "size": 28, "filters": f})
    assert req.shape == (3,)


def test_shuffle_simd_is_an_alias():
    req = ChunkRequest.from_wire(body(filters=[{"id": "shuffle_simd", "element_size": 2}]))
    assert req.filters == ({"id": "shuffle", "element_size": 2},)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_selection_is_exactly_python_slicing(n):
    """Every start/stop/step, in range or past either end (clamped), selects what a Python
    slice selects, and survives the SDK's wire encoding."""
    x = np.arange(n)
    bounds = [None, -10**30, 10**30] + list(range(-n - 3, n + 3))
    for start in bounds:
        for stop in bounds:
            for step in (1, 2, -1, -3):
                req = ChunkRequest.from_wire({"dtype": "int8", "shape": [n],
                                              "selection": [[start, stop, step]]})
                want = x[start:stop:step]
                np.testing.assert_array_equal(x[req.selection_slices()], want)
                again = ChunkRequest.from_wire(json.loads(json.dumps(req.to_wire())))
                assert again.selection == req.selection
                assert len(range(*req.selection[0])) == want.size


def test_make_request_normalises():
    req = make_request(">f4", (3, 4), axis=-1)
    assert req.byte_order == "big" and req.dtype == np.dtype("float32") and req.dtype.isnative
    assert req.axis == (1,)
    assert req.stored_dtype == np.dtype(">f4")
    assert req.nbytes == 48
    assert make_request("u1", (2,)).byte_order == NATIVE_BYTE_ORDER


def test_missing_to_wire_forms():
    assert Missing(values=(np.float32(1),)).to_wire() == {"missing_value": 1.0}
    assert Missing(values=(1, 2)).to_wire() == {"missing_values": [1, 2]}
    assert Missing(valid_min=0, valid_max=5).to_wire() == {"valid_range": [0, 5]}
    assert Missing(valid_max=5).to_wire() == {"valid_max": 5}
    # an empty range (everything missing) cannot be a valid_range; it still round-trips
    m = Missing(valid_min=np.int16(5), valid_max=np.int16(1))
    assert m.to_wire() == {"valid_min": 5, "valid_max": 1}
    req = ChunkRequest.from_wire({"dtype": "int16", "shape": [2], "missing": m.to_wire()})
    assert req.missing == m
    # nor can a range of one value (valid_range needs low < high)
    m = Missing(valid_min=np.int16(5), valid_max=np.int16(5))
    assert m.to_wire(np.dtype("int16")) == {"valid_min": 5, "valid_max": 5}
    assert ChunkRequest.from_wire({"dtype": "int16", "shape": [2],
                                   "missing": m.to_wire()}).missing == m


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "uint32", "int64", "uint64"])
def test_missing_to_wire_sends_integers_for_integer_dtypes(dtype):
    """Float attributes of an integer variable go as JSON integers (the reference server refuses
    -1.0 for int32); values no element can equal are left out, as the kernel ignores them."""
    dt = np.dtype(dtype)
    m = Missing(values=(-1.0, np.float64(7.0), 1.5, float("nan"), 10**30),
                valid_min=np.float32(1.0), valid_max=np.float64(100.0))
    wire = m.to_wire(dt)
    text = json.dumps(wire)
    assert "." not in text and "NaN" not in text, text
    want = [v for v in (-1, 7) if np.iinfo(dt).min <= v]
    assert wire == {**({"missing_values": want} if len(want) > 1 else {"missing_value": want[0]}),
                    "valid_range": [1, 100]}
    req = ChunkRequest.from_wire({"dtype": dtype, "shape": [4], "missing": json.loads(text)})
    assert all(type(v) is dt.type for v in req.missing.values)
    # the server masks exactly what the kernel masks with the original values
    x = np.array([-1, 7, 1, 0, 100, 101, 50], dtype) if dt.kind == "i" else \
        np.array([7, 1, 0, 100, 101, 50], dtype)
    from activestorage.kernel import missing_mask
    np.testing.assert_array_equal(missing_mask(x, m), missing_mask(x, req.missing))
    # nothing that fits: no missing object at all
    assert Missing(values=(0.5,)).to_wire(dt) == {}
    body = ChunkRequest(dtype=dt, shape=(2,), missing=Missing(values=(0.5,))).to_wire()
    assert "missing" not in body


# ------------------------------------------------------------------ round-trip property

def _scalar(dtype: np.dtype, nan: bool = True):
    if dtype.kind == "f":
        return st.floats(width=dtype.itemsize * 8, allow_nan=nan).map(dtype.type)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max)).map(dtype.type)


@st.composite
def requests(draw):
    dtype = np.dtype(draw(st.sampled_from(WIRE_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 50), min_size=1, max_size=4)))
    sel = None
    if draw(st.booleans()):
        sel = tuple(slice(draw(st.none() | st.integers(-n - 1, n)),
                          draw(st.none() | st.integers(-n - 1, n)),
                          draw(st.sampled_from([1, 2, 7, -1, -2]))).indices(n) for n in shape)
    axis = draw(st.none() | st.sets(st.integers(0, len(shape) - 1)).map(lambda s: tuple(sorted(s))))
    compression = draw(st.none() | st.sampled_from(
        ["zlib", "gzip", "zstd", "blosc", "blosc2", "lz4", "bz2", "bzip2"]).map(lambda c: {"id": c}))
    filters = tuple(draw(st.lists(st.one_of(
        st.integers(1, 64).map(lambda n: {"id": "shuffle", "element_size": n}),
        st.just({"id": "fletcher32"}), st.just({"id": "fletcher32", "outer": True})),
        max_size=3)))
    checksums = 4 * sum(f["id"] == "fletcher32" for f in filters)
    if compression is None:
        size = draw(st.none() | st.just(math.prod(shape) * dtype.itemsize + checksums))
    else:
        size = draw(st.none() | st.integers(1, 2**40))
    missing = None
    if draw(st.booleans()):
        values = tuple(draw(st.lists(_scalar(dtype), max_size=4)))
        lo = draw(st.none() | _scalar(dtype, nan=False))
        hi = draw(st.none() | _scalar(dtype, nan=False))
        missing = Missing(values=values, valid_min=lo, valid_max=hi)
        if missing.is_empty():
            missing = None
    return ChunkRequest(
        dtype=dtype, shape=shape, offset=draw(st.integers(0, 2**63 - 1)), size=size,
        byte_order=draw(st.sampled_from(["little", "big"])), order=draw(st.sampled_from("CF")),
        selection=sel, axis=axis, compression=compression, filters=filters, missing=missing,
        etag=draw(st.none() | st.text(min_size=1, max_size=10)),
        version_id=draw(st.none() | st.text(min_size=1, max_size=10)))


def _same_scalar(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and (a == b or (np.isnan(a) and np.isnan(b)))


@settings(max_examples=300, deadline=None)
@given(requests())
def test_wire_round_trip(req):
    """to_wire -> JSON -> from_wire gives back the same request."""
    text = json.dumps(req.to_wire())  # Python's json carries NaN/Infinity
    back = ChunkRequest.from_wire(json.loads(text))
    for name in ("dtype", "shape", "offset", "size", "byte_order", "order", "selection", "axis",
                 "filters", "etag", "version_id"):
        assert getattr(back, name) == getattr(req, name), name
    assert (back.compression is None) == (req.compression is None)
    if req.compression is not None:
        assert dict(back.compression) == dict(req.compression)
    if req.missing is None:
        assert back.missing is None
    else:
        assert len(back.missing.values) == len(req.missing.values)
        assert all(_same_scalar(a, b) for a, b in zip(back.missing.values, req.missing.values))
        assert _same_scalar(back.missing.valid_min, req.missing.valid_min)
        assert _same_scalar(back.missing.valid_max, req.missing.valid_max)
    assert json.dumps(back.to_wire()) == text  # and the wire form is stable


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["float32", "int16", "uint8", "float64"]),
                          st.integers(0, 2)), min_size=1, max_size=8))
def test_to_wire_memo_gives_what_to_wire_gives(chunks):
    """A batch's bodies built with one memo are those built without it, each with its own
    ``missing`` dict, whichever dtypes share a missing-data object."""
    specs = [Missing(values=(np.float32(1e20), -1)), Missing(valid_min=0, valid_max=-0.0),
             Missing(values=(np.nan, 300))]
    reqs = [make_request(dtype, (2, 3), offset=8 * i, missing=specs[m])
            for i, (dtype, m) in enumerate(chunks)]
    memo: dict = {}
    got = [r.to_wire(memo) for r in reqs]
    assert json.dumps(got) == json.dumps([r.to_wire() for r in reqs])
    missing = [b["missing"] for b in got if "missing" in b]
    assert len({id(m) for m in missing}) == len(missing)  # a caller may change one body
