"""Hostile request bodies against a real server process: only 4xx JSON errors naming the field.

Hypothesis starts from valid requests over known objects (nginx and moto on loopback) and breaks
them: huge/negative/zero shapes, zero/negative/huge strides, out-of-range selections, duplicate
axes, dtype/size mismatches, NaN/inf missing values, wrong types everywhere, unknown fields. Whole
bodies are attacked too: non-objects, invalid UTF-8, truncated and deeply nested JSON, giant
bodies, wrong content types, CBOR garbage to the batch endpoint. Every answer must be < 500, every
rejection a 4xx ``{"error": ...}`` naming the field, every 200 equal to NumPy where the request
reads a known array plainly. Every request has a client timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import cbor2
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from relhelp import check_answer, decode_result, error_body, oracle, server_alive

pytestmark = pytest.mark.timeout(600)

TIMEOUT = (5, 30)
OPS = ("count", "min", "max", "sum", "select")
#: examples per property (CI: 100; a long run: FUZZ_EXAMPLES=2000)
N = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

HUGE = st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1])
INTS = st.one_of(st.integers(-5, 70), HUGE, st.integers())
JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=8),
                 st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), INTS,
                    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308,
                                     5e-324, 3.5e38, 2**63, -(2**63), 2**64 - 1, 0.5]))


@pytest.fixture(scope="module")
def srv(rel_server, store):
    s = requests.Session()
    yield rel_server.url, s, store
    s.close()


def base_bodies(store) -> list[tuple[str, dict[str, Any], np.ndarray | None]]:
    """Valid requests over the known objects: (api, body, array or None)."""
    f64, i32 = store.arrays["f64.bin"], store.arrays["i32.bin"]
    http = {"interface_type": "http", "url": store.http_url("f64.bin")}
    return [
        ("v2", {**http, "dtype": "float64", "shape": [64, 64], "size": 32768}, f64),
        ("v2", {**http, "dtype": "float64", "shape": [4096]}, f64),
        ("v2", {"interface_type": "s3", "url": store.s3_url("i32.bin"), "dtype": "int32",
                "shape": [16, 64], "missing": {"missing_value": -999}}, i32),
        ("v2", {"interface_type": "http", "url": store.http_url("i32.zlib"), "dtype": "int32",
                "shape": [16, 64], "compression": {"id": "zlib"},
                "size": len(store.objects["i32.zlib"])}, i32),
        ("v1", {"source": store.moto, "bucket": store.bucket, "object": "f64.bin",
                "dtype": "float64", "shape": [8, 512], "order": "F"}, f64),
    ]


def selection_for(draw, shape) -> list[Any]:
    out = []
    for n in shape:
        out.append([draw(st.one_of(st.integers(-n - 3, n + 3), HUGE, st.none())),
                    draw(st.one_of(st.integers(-n - 3, n + 3), HUGE, st.none())),
                    draw(st.one_of(st.integers(-4, 4), HUGE, st.just(0)))])
    return out


@st.composite
def hostile(draw, bases):
    """(api, op, body, array): a valid base with 1-3 fields broken."""
    api, body, array = draw(st.sampled_from(bases))
    body = json.loads(json.dumps(body))
    op = draw(st.sampled_from(OPS))
    shape = body.get("shape") or [4096]
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(
            ["shape", "selection", "selection", "axis", "axis", "dtype", "size", "offset",
             "missing", "compression", "filters", "byte_order", "order", "unknown", "option"]))
        if field == "shape":
            body["shape"] = draw(st.one_of(
                st.lists(INTS, min_size=0, max_size=4), st.lists(st.just(1), min_size=30,
                                                                 max_size=40),
                st.sampled_from([[64, 64], [4096], [2, 2048], [4096, 1], [0], [-64, -64]]), JUNK))
        elif field == "selection":
            kind = draw(st.integers(0, 3))
            body["selection"] = (selection_for(draw, shape) if kind < 2 else draw(st.one_of(
                st.lists(st.lists(INTS, max_size=4), max_size=4), JUNK)))
        elif field == "axis":
            body["axis"] = draw(st.one_of(st.integers(-4, 4), HUGE,
                                          st.lists(st.integers(-3, 3), max_size=4), JUNK))
        elif field == "dtype":
            body["dtype"] = draw(st.one_of(
                st.sampled_from(["int8", "uint8", "int16", "int32", "uint64", "float32",
                                 "float16", "complex128", "<f8", "object", "bool", "S8", "",
                                 "float64 ", "FLOAT64"]), JUNK))
        elif field == "size":
            body["size"] = draw(st.one_of(INTS, st.sampled_from([32767, 32769, 8, 7]), JUNK))
        elif field == "offset":
            body["offset"] = draw(st.one_of(INTS, st.sampled_from([1, 8, 32760, 32768, 10**9]),
                                            JUNK))
        elif field == "missing":
            key = draw(st.sampled_from(["missing_value", "missing_values", "valid_min",
                                        "valid_max", "valid_range", "bogus"]))
            if key in ("missing_values", "valid_range"):
                val: Any = draw(st.one_of(st.lists(NUMBERS, max_size=4), JUNK))
            else:
                val = draw(st.one_of(NUMBERS, JUNK))
            body["missing"] = draw(st.one_of(st.just({key: val}), JUNK,
                                             st.just({key: val, "valid_min": 0})))
        elif field == "compression":
            body["compression"] = draw(st.one_of(
                st.fixed_dictionaries({"id": st.sampled_from(
                    ["zlib", "gzip", "zstd", "blosc", "blosc2", "lz4", "bz2", "lzma", "snappy"])}),
                JUNK))
        elif field == "filters":
            body["filters"] = draw(st.one_of(
                st.lists(st.fixed_dictionaries(
                    {"id": st.sampled_from(["shuffle", "shuffle_simd", "fletcher32", "delta"]),
                     "element_size": st.one_of(INTS, JUNK)}), max_size=3), JUNK))
        elif field in ("byte_order", "order"):
            body[field] = draw(st.one_of(st.sampled_from(["big", "little", "C", "F", "native"]),
                                         JUNK))
        elif field == "unknown":
            body[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
        else:
            body[draw(st.sampled_from(["option_wide_sum", "option_shape_as_bytes",
                                       "option_count_as_bytes", "etag", "version_id"]))] = draw(JUNK)
    return api, op, body, array


def _url(base: str, api: str, op: str) -> str:
    return f"{base}/v1/{op}/" if api == "v1" else f"{base}/v2/{op}"


def _check_ok(resp, api: str, op: str, body: dict[str, Any], array: np.ndarray | None) -> None:
    values, count = decode_result(resp, api, body.get("order") if isinstance(body, dict) else "C")
    if array is None:
        return
    want = oracle(body, op, array)
    if want is None:
        return
    if op == "select":
        np.testing.assert_array_equal(values, want)
    elif np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(values, want, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_array_equal(values.astype(np.int64), np.asarray(want).astype(np.int64))


def test_hostile_fields_single(srv):
    base, session, store = srv
    bases = base_bodies(store)
    seen: dict[int, int] = {}

    @FUZZ
    @given(hostile(bases))
    def run(case):
        api, op, body, array = case
        try:
            data = json.dumps(body, allow_nan=True).encode()
        except (ValueError, OverflowError):
            return
        r = session.post(_url(base, api, op), data=data,
                         headers={"content-type": "application/json"}, timeout=TIMEOUT)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        check_answer(r, context=(api, op, body), extra_names=("f64.bin", "i32.bin", "i32.zlib"))
        if r.status_code == 200:
            _check_ok(r, api, op, body, array)

    run()
    # the generator must reach both sides of validation, or it tests nothing
    print("status counts", seen)
    assert seen.get(200, 0) >= 3 and seen.get(400, 0) >= N // 3, seen


@st.composite
def legal_edges(draw, store):
    """Legal but awkward requests: negative and huge strides, empty and reversed selections,
    negative axes, C/F order -- the server must answer them exactly like NumPy."""
    f64 = store.arrays["f64.bin"]
    shape = draw(st.sampled_from([[4096], [64, 64], [2, 2048], [8, 8, 64], [16, 16, 4, 4]]))
    sel = [[draw(st.one_of(st.none(), st.integers(-n - 1, n))),
            draw(st.one_of(st.none(), st.integers(-n - 1, n))),
            draw(st.one_of(st.integers(-3, 3).filter(bool), st.sampled_from([n, -n, 2**40])))]
           for n in shape]
    body: dict[str, Any] = {"interface_type": "http", "url": store.http_url("f64.bin"),
                            "dtype": "float64", "shape": shape,
                            "order": draw(st.sampled_from(["C", "F"]))}
    if draw(st.booleans()):
        body["selection"] = sel
    if draw(st.booleans()):
        nd = len(shape)
        body["axis"] = draw(st.lists(st.integers(-nd, nd - 1), min_size=1, max_size=nd,
                                     unique_by=lambda a: a % nd))
    return draw(st.sampled_from(OPS)), body, f64


def test_legal_edge_requests_match_numpy(srv):
    base, session, store = srv

    @FUZZ
    @given(legal_edges(store))
    def run(case):
        op, body, array = case
        r = session.post(f"{base}/v2/{op}", data=json.dumps(body), timeout=TIMEOUT,
                         headers={"content-type": "application/json"})
        assert r.status_code == 200, (body, r.content[:300])
        sel = body.get("selection")
        want_body = dict(body)
        if sel is not None:  # the oracle uses Python slices exactly as given
            want_body["selection"] = [[a, b, c] for a, b, c in sel]
        _check_ok(r, "v2", op, want_body, array)

    run()


def test_hostile_batches(srv):
    """The same hostile items inside /v2/batch (CBOR and JSON): the error names requests[i]."""
    base, session, store = srv
    bases = [b for b in base_bodies(store) if b[0] == "v2"]

    @settings(max_examples=max(10, N * 3 // 5), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile(bases), min_size=1, max_size=5), st.booleans(),
           st.sampled_from(OPS))
    def run(cases, use_cbor, op):
        items = [c[2] for c in cases]
        if use_cbor:
            try:
                data = cbor2.dumps({"requests": items})
            except (ValueError, OverflowError, cbor2.CBOREncodeError):
                return
            ctype = "application/cbor"
        else:
            data, ctype = json.dumps({"requests": items}).encode(), "application/json"
        r = session.post(f"{base}/v2/batch/{op}", data=data, headers={"content-type": ctype},
                         timeout=TIMEOUT)
        check_answer(r, context=items, extra_names=("f64.bin", "i32.bin", "i32.zlib"))
        if r.status_code == 400:
            msg = error_body(r)["message"]
            assert "requests[" in msg or "body" in msg, msg
        if r.status_code == 200:
            results = cbor2.loads(r.content)["results"]
            assert len(results) == len(items)

    run()


BODIES = [
    b"", b"null", b"[]", b"1", b'"x"', b"true", b"{", b'{"dtype": ', b"\xff\xfe\xfd",
    b'{"dtype": "\xff\xfe"}', b"\xef\xbb\xbf{}", b'{"a": 1, "a": 2}', b"NaN", b"{}",
    b'{"interface_type": "http", "url": "http://127.0.0.1/x", "dtype": "float64", "shape": '
    + b"[" * 60 + b"]" * 60 + b"}",
    json.dumps({"requests": [[]] * 3}).encode(), json.dumps({"requests": {}}).encode(),
    json.dumps({"requests": [None, 1, "x"]}).encode(),
    b"\x00" * 1000, "{\"dtype\": \"\u2603\"}".encode("utf-16"),
]


@pytest.mark.parametrize("path", ["/v1/sum/", "/v2/min", "/v2/batch/max", "/v2/select/"])
@pytest.mark.parametrize("ctype", ["application/json", "application/cbor", "text/plain",
                                   "multipart/form-data; boundary=x", None,
                                   "application/x-www-form-urlencoded"])
def test_malformed_bodies_and_content_types(srv, path, ctype):
    base, session, _ = srv
    headers = {"content-type": ctype} if ctype else {}
    for data in BODIES:
        r = session.post(base + path, data=data, headers=headers, timeout=TIMEOUT)
        check_answer(r, context=(path, ctype, data[:80]))
        assert r.status_code != 200, data


@settings(max_examples=N, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=2048), path=st.sampled_from(["/v2/batch/sum", "/v2/count"]))
def test_cbor_garbage(srv, data, path):
    base, session, _ = srv
    r = session.post(base + path, data=data, headers={"content-type": "application/cbor"},
                     timeout=TIMEOUT)
    check_answer(r, context=data[:100])


@settings(max_examples=max(10, N * 3 // 5), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(tree=st.recursive(st.one_of(st.integers(), st.text(max_size=4), st.none()),
                         lambda ch: st.one_of(st.lists(ch, max_size=3),
                                              st.dictionaries(st.text(max_size=3), ch,
                                                              max_size=3)),
                         max_leaves=40),
       cbor=st.booleans())
def test_nested_junk_structures(srv, tree, cbor):
    base, session, _ = srv
    body = {"requests": [tree, {"dtype": tree}]} if cbor else {"dtype": "int32", "shape": tree}
    data = cbor2.dumps(body) if cbor else json.dumps(body).encode()
    path = "/v2/batch/sum" if cbor else "/v2/sum"
    r = session.post(base + path, data=data,
                     headers={"content-type": "application/cbor" if cbor else "application/json"},
                     timeout=TIMEOUT)
    check_answer(r, context=body)
    assert r.status_code != 200


def test_cbor_length_bombs(srv):
    """CBOR headers that declare 2^63-element arrays/strings/maps: refused, no allocation."""
    base, session, _ = srv
    for data in (b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
                 b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x7b\x7f\xff\xff\xff\xff\xff\xff\xff",
                 b"\x81" * 5000, b"\xa1\x68requests\x9f" + b"\xa0" * 100,
                 b"\xd9\xd9\xf7" * 1000 + b"\xa0"):
        r = session.post(base + "/v2/batch/sum", data=data,
                         headers={"content-type": "application/cbor"}, timeout=TIMEOUT)
        check_answer(r, context=data[:40])
        assert r.status_code in (400, 413)


@pytest.mark.parametrize("depth", [100, 500])
def test_moderately_nested_json_is_rejected(srv, depth):
    base, session, _ = srv
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        r = session.post(base + "/v2/sum", data=data, headers={"content-type": "application/json"},
                         timeout=TIMEOUT)
        check_answer(r, context=data[:40])
        assert r.status_code == 400


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_deeply_nested_json_is_a_400(srv, depth):
    base, session, _ = srv
    r = session.post(base + "/v2/sum", data=b"[" * depth + b"]" * depth,
                     headers={"content-type": "application/json"}, timeout=TIMEOUT)
    check_answer(r, context=depth)


@pytest.mark.parametrize("suffix", ["\x00", "\r\nX-Injected: 1", " x", "\t"])
def test_url_with_control_characters_is_a_400(srv, suffix):
    base, session, store = srv
    body = {"interface_type": "http", "url": store.http_url("f64.bin") + suffix,
            "dtype": "float64", "shape": [4096]}
    r = session.post(base + "/v2/sum", data=json.dumps(body), timeout=TIMEOUT,
                     headers={"content-type": "application/json"})
    check_answer(r, context=body)
    assert r.status_code == 400


@pytest.mark.parametrize("etag", ["\x1f", "a\r\nX-Injected: 1", "\x00"])
def test_pins_with_control_characters_are_a_400(srv, etag):
    base, session, store = srv
    body = {"interface_type": "http", "url": store.http_url("f64.bin"), "dtype": "float64",
            "shape": [4096], "etag": etag}
    r = session.post(base + "/v2/count", data=json.dumps(body), timeout=TIMEOUT,
                     headers={"content-type": "application/json"})
    check_answer(r, context=body)
    assert r.status_code == 400 and "etag" in error_body(r)["message"]


def test_giant_json_is_413(srv):
    base, session, _ = srv
    big = b'{"dtype": "int32", "pad": "' + b"x" * (2 << 20) + b'"}'
    r = session.post(base + "/v2/sum", data=big, headers={"content-type": "application/json"},
                     timeout=TIMEOUT)
    assert r.status_code == 413
    assert "body" in error_body(r)["message"]

    def chunks():  # no Content-Length: the streaming limit must catch it
        for _ in range(40):
            yield b"[" + b"0," * 32768 + b"0]"

    r = session.post(base + "/v2/sum", data=chunks(), timeout=TIMEOUT,
                     headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "body" in error_body(r)["message"]


def test_server_survived(rel_server):
    server_alive(rel_server)
    r = requests.get(rel_server.url + "/healthz", timeout=5)
    assert r.status_code == 200
    assert math.isfinite(len(r.content))
