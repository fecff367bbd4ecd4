"""The wire form of the moments extension's weights (activestorage/wire_extension.py): what our
client writes is what the server reads back, and every malformed field is refused by name."""

from __future__ import annotations

import json

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from activestorage import wire_extension as wx
from activestorage.errors import RequestValidationError

SHAPE = (4, 5, 6)
SEL = ((0, 4, 1), (1, 5, 2), (5, -1, -1))  # selected region (4, 2, 6)


def roundtrip(weights, binary):
    """encode -> the body's serialisation -> parse, as client and server do."""
    field = wx.encode(weights, binary)
    wire = cbor2.loads(cbor2.dumps(field)) if binary else json.loads(json.dumps(field))
    return wx.parse(wire, "moments", SHAPE, SEL)


@settings(max_examples=40, deadline=None)
@given(w1=hnp.arrays(np.float64, 2, elements=st.floats(0, 1e300)),
       w2=hnp.arrays(np.float64, 6, elements=st.floats(0, 1e300)),
       binary=st.booleans())
def test_separable_weights_roundtrip_exactly(w1, w2, binary):
    got = roundtrip({1: w1, 2: w2, 0: None}, binary)
    assert set(got) == {1, 2}
    np.testing.assert_array_equal(got[1], w1)
    np.testing.assert_array_equal(got[2], w2)
    assert got[1].dtype == np.float64


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(4, 2, 6), (2, 6), (1, 2, 1), (6,), (4, 1, 1)]),
       binary=st.booleans(), data=st.data())
def test_nd_weights_roundtrip_and_broadcast(shape, binary, data):
    w = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1e6)))
    got = roundtrip(w, binary)
    np.testing.assert_array_equal(got, w)
    assert np.broadcast_to(got, (4, 2, 6)).shape == (4, 2, 6)


def test_array_reference_is_kept_for_the_server_with_the_datas_interface():
    ref = wx.parse({"array": {"url": "http://h/b/w", "dtype": "float32", "shape": [2, 6]}},
                   "moments", SHAPE, SEL, "s3")
    assert isinstance(ref, wx.WeightsRef)
    assert ref.body["interface_type"] == "s3" and ref.body["url"] == "http://h/b/w"


@pytest.mark.parametrize("op", ["sum", "count", "min", "max", "select", "minmax"])
def test_weights_only_for_moments(op):
    with pytest.raises(RequestValidationError) as err:
        wx.parse({"axes": {"1": [1.0, 2.0]}}, op, SHAPE, SEL)
    assert err.value.field == "weights" and "only the moments" in err.value.message


@pytest.mark.parametrize("value, field, words", [
    ([1, 2], "weights", "exactly one of"),
    ({}, "weights", "exactly one of"),
    ({"axes": {}, "values": {}}, "weights", "exactly one of"),
    ({"cells": {}}, "weights", "exactly one of"),
    ({"axes": [1, 2]}, "weights.axes", "object"),
    ({"axes": {"x": [1.0]}}, "weights.axes.x", "integers"),
    ({"axes": {"3": [1.0]}}, "weights.axes.3", "out of range"),
    ({"axes": {"1": [1.0, 1.0], "-2": [1.0, 1.0]}}, "weights.axes.-2", "twice"),
    ({"axes": {"1": [1.0, 2.0, 3.0]}}, "weights.axes.1", "3 weights exceed the 2"),
    ({"axes": {"1": [1.0]}}, "weights.axes.1", "1 weights for axis 1, whose selection has 2"),
    ({"axes": {"1": [1.0, -1.0]}}, "weights.axes.1", ">= 0"),
    ({"axes": {"1": [1.0, float("nan")]}}, "weights.axes.1", "finite"),
    ({"axes": {"1": [1.0, float("inf")]}}, "weights.axes.1", "finite"),
    ({"axes": {"1": [1.0, "a"]}}, "weights.axes.1", "numbers"),
    ({"axes": {"1": [True, 1.0]}}, "weights.axes.1", "numbers"),
    ({"axes": {"1": b"\x00" * 12}}, "weights.axes.1", "whole number of float64"),
    ({"axes": {"2": b"\x00" * 8 * 7}}, "weights.axes.2", "7 weights exceed the 6"),
    ({"axes": {"1": 3.0}}, "weights.axes.1", "list of numbers"),
    ({"values": [1.0]}, "weights.values", "object"),
    ({"values": {"shape": [3], "data": [1.0] * 3}}, "weights.values.shape", "broadcast"),
    ({"values": {"shape": [1, 1, 1, 6], "data": [1.0] * 6}}, "weights.values.shape",
     "broadcast"),
    ({"values": {"shape": [0], "data": []}}, "weights.values.shape", "positive"),
    ({"values": {"shape": [6], "data": [1.0] * 5}}, "weights.values.data", "5 weights for"),
    ({"values": {"shape": [6], "data": [1.0] * 7}}, "weights.values.data", "exceed"),
    ({"values": {"shape": [6], "data": [1.0] * 5 + [-2.0]}}, "weights.values.data", ">= 0"),
    ({"array": "http://x"}, "weights.array", "byte range"),
    ({"array": {"url": "http://x", "axis": 0}}, "weights.array.axis", "not allowed"),
    ({"array": {"url": "http://x", "missing": {"missing_value": 0}}},
     "weights.array.missing", "not allowed"),
])
def test_malformed_weights_are_refused_by_name(value, field, words):
    with pytest.raises(RequestValidationError) as err:
        wx.parse(value, "moments", SHAPE, SEL)
    assert err.value.field == field, err.value
    assert words in err.value.message, err.value


def test_resolve_array_checks_broadcast_and_values():
    w = wx.resolve_array(np.ones((2, 6), np.float32), SHAPE, SEL)
    assert w.dtype == np.float64 and w.shape == (2, 6)
    with pytest.raises(RequestValidationError, match="broadcast"):
        wx.resolve_array(np.ones((3, 6)), SHAPE, SEL)
    with pytest.raises(RequestValidationError, match=">= 0"):
        wx.resolve_array(np.array([[1.0] * 5 + [-1.0]] * 2), SHAPE, SEL)


def test_no_weights_is_none_and_encode_none():
    assert wx.parse(None, "sum", SHAPE, SEL) is None
    assert wx.encode(None, True) is None


@pytest.mark.parametrize("shape, to, ok", [
    ((), (2, 3), True), ((3,), (2, 3), True), ((1, 3), (2, 3), True), ((2, 1), (2, 3), True),
    ((2,), (2, 3), False), ((1, 2, 3), (2, 3), False), ((2, 3), (2, 3), True)])
def test_broadcastable_follows_numpy(shape, to, ok):
    assert wx.broadcastable(shape, to) is ok
    try:
        np.broadcast_to(np.zeros(shape), to)
        numpy_ok = True
    except ValueError:
        numpy_ok = False
    assert numpy_ok is ok


def test_weights_of_an_empty_selection_are_checked_then_dropped():
    empty = ((0, 4, 1), (0, 0, 1), (0, 6, 1))
    assert wx.parse({"axes": {"1": []}}, "moments", SHAPE, empty) is None
    assert wx.parse({"values": {"shape": [1, 1, 6], "data": [1.0] * 6}}, "moments", SHAPE,
                    empty) is None
    assert wx.resolve_array(np.ones((1, 6)), SHAPE, empty) is None
    with pytest.raises(RequestValidationError, match=">= 0"):
        wx.parse({"axes": {"0": [1.0, 1.0, 1.0, -1.0]}}, "moments", SHAPE, empty)
