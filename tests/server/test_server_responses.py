"""Streamed responses: the pieced CBOR encoding is byte-for-byte cbor2's, and the reservation is
released exactly once whether the body is written in full or the client goes away."""

import asyncio

import cbor2
import numpy as np
from hypothesis import given, settings, strategies as st

from activestorage.server.responses import PIECE, BudgetedResponse, cbor_head, cbor_map_parts


@settings(max_examples=200, deadline=None)
@given(n=st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 70000]),
       dtype=st.sampled_from(["u1", "<i4", "<f8"]), extra=st.booleans())
def test_pieces_equal_cbor2(n, dtype, extra):
    values = np.arange(n // np.dtype(dtype).itemsize, dtype=dtype)
    m = {"bytes": values, "dtype": values.dtype.name, "shape": [len(values)], "count": [n],
         "byte_order": "little"}
    if extra:
        m["count_as_bytes"] = b"\0" * 8
    want = cbor2.dumps({**m, "bytes": values.tobytes()})
    assert b"".join(bytes(p) for p in cbor_map_parts(m)) == want


@given(n=st.integers(0, (1 << 64) - 1), k=st.integers(0, 70000))
def test_cbor_heads_match_cbor2(n, k):
    assert cbor_head(0, n) == cbor2.dumps(n)                          # unsigned integers
    head = cbor_head(2, k)
    assert cbor2.dumps(b"x" * k) == head + b"x" * k                   # byte strings
    assert cbor2.dumps([None] * min(k, 300))[:len(cbor_head(4, min(k, 300)))] == cbor_head(
        4, min(k, 300))                                                # arrays


def _run(resp, disconnect_after=None):
    sent, released = [], []
    resp._release = lambda: released.append(1)

    async def main():
        gone = asyncio.Event()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)
            if disconnect_after is not None and len(sent) >= disconnect_after:
                gone.set()
            await asyncio.sleep(0)
        await resp({"type": "http"}, receive, send)
    asyncio.run(main())
    return sent, released


def test_large_body_is_written_in_pieces_then_released_once():
    data = np.arange(3 * PIECE // 8 + 5, dtype="<f8")
    resp = BudgetedResponse(cbor_map_parts({"bytes": data}), media_type="application/cbor")
    sent, released = _run(resp)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert cbor2.loads(body) == {"bytes": data.tobytes()} and released == [1]
    assert max(len(m.get("body", b"")) for m in sent[1:]) <= PIECE and not sent[-1]["more_body"]


def test_client_gone_stops_writing_and_releases():
    data = np.zeros(8 * PIECE, np.uint8)
    resp = BudgetedResponse([memoryview(data)], media_type="application/octet-stream")
    sent, released = _run(resp, disconnect_after=3)
    assert len(sent) < 6 and released == [1]


def test_small_body_is_one_message():
    resp = BudgetedResponse([b"ab", memoryview(b"cd")], media_type="application/octet-stream")
    sent, released = _run(resp)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"abcd" and released == [1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 30), st.integers(0, 2**16 + 5),
                          st.integers(0, 2**32 + 5), st.integers(0, 2**63 - 1)), max_size=200))
def test_cbor_uint_array_is_what_cbor2_encodes(values):
    # up to 64 counts go through Python ints, more through NumPy: both paths are drawn
    values = values + [0, 30, 300, 70000, 2**40] * (len(values) % 2 * 14)
    from activestorage.server.responses import cbor_uint_array

    a = np.asarray(values, dtype=np.int64)
    assert cbor_uint_array(a) == cbor2.dumps(values)
    assert cbor_uint_array(a.reshape(-1, 1) if a.size else a) == cbor2.dumps(values)
    assert cbor2.loads(b"".join(cbor_map_parts({"count": a}))) == {"count": values}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(0, 23), (24, 255), (256, 65535), (65536, 2**32 - 1), (2**32, 2**63 - 1)])
       .flatmap(lambda b: st.lists(st.integers(*b), min_size=1, max_size=150)),
       st.integers(0, 200))
def test_cbor_uint_array_of_one_size_class(values, pad):
    values = values + values[:1] * pad  # longer than 64 as often as not: NumPy's path too
    from activestorage.server.responses import cbor_uint_array

    assert cbor_uint_array(np.asarray(values, dtype=np.int64)) == cbor2.dumps(values)


ANSWER_VALUES = st.one_of(
    st.text(max_size=40), st.sampled_from(["float32", "int64", "little", "big", "count"]),
    st.lists(st.integers(0, 30), max_size=30), st.lists(st.integers(-2, 2**40), max_size=5),
    st.binary(max_size=40), st.none(), st.booleans(), st.floats(allow_nan=False),
    st.lists(st.integers(0, 2**33), max_size=100).map(lambda v: np.asarray(v, np.uint64)))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), ANSWER_VALUES, max_size=7))
def test_any_answer_map_is_what_cbor2_encodes(m):
    """Strings (remembered encodings), short shapes (written directly), counts (NumPy) and
    anything else (cbor2): the pieces are cbor2's bytes for the same map."""
    plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in m.items()}
    for _ in range(2):  # the second time through the remembered string encodings
        assert b"".join(bytes(p) for p in cbor_map_parts(m, raw_key="\0none")) == \
            cbor2.dumps(plain)
