"""Unit tests of the server backend's client side against an in-process fake Reductionist.

The fake (http.server on loopback in a thread) answers v1, v2, batch and /capabilities with the
real kernel over objects held in memory, and can be scripted to fail (429/503, error bodies,
malformed responses, resets) so retries, backoff and error decoding are tested without processes.
The real server is exercised in tests/integration/test_remote_backends.py.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activestorage.backends.server import (ServerBackend, clear_capabilities_cache, make_session,
                                           reduce_chunk, routing_fields)
from activestorage.errors import ServerError, UnsupportedError
from activestorage.kernel import reduce_chunk as kernel_reduce
from activestorage.request import ChunkRequest, Missing, make_request

ENDPOINT = "http://s3.test:9000"


class FakeReductionist:
    """A tiny Reductionist-compatible server over in-memory objects (keyed by 'bucket/key')."""

    def __init__(self, *, batch: bool = True, max_batch: int = 1000) -> None:
        self.objects: dict[str, bytes] = {}
        self.batch = batch
        self.max_batch = max_batch
        self.script: list[tuple[int, bytes, dict[str, str]] | str] = []
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _scripted(self) -> bool:
                with fake.lock:
                    item = fake.script.pop(0) if fake.script else None
                if item is None:
                    return False
                if item == "reset":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return True
                if item == "cut":  # promise 100 bytes, send 3, hang up
                    self.send_response(200)
                    self.send_header("content-type", "application/cbor")
                    self.send_header("content-length", "100")
                    self.end_headers()
                    self.wfile.write(b"\xa1ab")
                    self.close_connection = True
                    return True
                self._send(*item)
                return True

            def do_GET(self) -> None:
                fake.log.append(("GET", self.path, dict(self.headers)))
                if self.path == "/capabilities" and fake.batch:
                    self._send(200, json.dumps({"name": "fake", "batch": True, "api": ["v1", "v2"],
                                                "max_batch": fake.max_batch}).encode(),
                               {"content-type": "application/json"})
                else:
                    self._send(404, b'{"error": {"message": "not found"}}',
                               {"content-type": "application/json"})

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(n)
                fake.log.append(("POST", self.path, dict(self.headers)))
                if self._scripted():
                    return
                parts = self.path.strip("/").split("/")
                try:
                    if parts[:2] == ["v2", "batch"] and fake.batch:
                        body = cbor2.loads(raw)
                        res = [fake.reduce(item, parts[2], 2) for item in body["requests"]]
                        self._send(200, cbor2.dumps({"results": res}),
                                   {"content-type": "application/cbor"})
                    elif parts[0] == "v2" and len(parts) == 2:
                        self._send(200, cbor2.dumps(fake.reduce(json.loads(raw), parts[1], 2)),
                                   {"content-type": "application/cbor"})
                    elif parts[0] == "v1" and len(parts) == 2:
                        r = fake.reduce(json.loads(raw), parts[1], 1)
                        self._send(200, r["bytes"], {
                            "content-type": "application/octet-stream",
                            "x-activestorage-dtype": r["dtype"],
                            "x-activestorage-shape": json.dumps(r["shape"]),
                            "x-activestorage-count": json.dumps(r["count"]),
                            "x-activestorage-byte-order": r["byte_order"]})
                    else:
                        self._send(404, b'{"error": {"message": "no such path"}}',
                                   {"content-type": "application/json"})
                except KeyError as exc:
                    self._send(400, json.dumps({"error": {"message": f"no object {exc}"}}).encode(),
                               {"content-type": "application/json"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reduce(self, body: dict, op: str, version: int) -> dict:
        if version == 1:
            key = f"{body['bucket']}/{body['object']}"
        else:
            u = urlsplit(body["url"])
            path = unquote(u.path.lstrip("/"))
            key = path if body.get("interface_type") == "s3" else f"{u.hostname}/{path}"
        raw = self.objects[key]
        req = ChunkRequest.from_wire(body)
        data = raw[req.offset: req.offset + (req.size or len(raw))]
        part = kernel_reduce(data, req, op)
        values = part.values
        if op != "select":
            values = values.reshape([n for i, n in enumerate(values.shape)
                                     if i not in req.reduce_axes])
        if op == "sum" and not body.get("option_wide_sum"):
            values = values.astype(req.dtype)
        count = part.counts.reshape(-1).tolist() if op != "select" else int(part.counts.sum())
        # the result bytes in the request's order, as the spec says
        return {"bytes": values.tobytes(order=req.order), "dtype": values.dtype.name,
                "shape": list(values.shape), "count": count,
                "byte_order": "little" if np.little_endian else "big"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def fake():
    f = FakeReductionist()
    yield f
    f.close()


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.script.clear()
    fake.log.clear()
    fake.batch = True
    clear_capabilities_cache()  # the fake answers /capabilities differently from test to test
    yield


def backend(fake, **kw) -> ServerBackend:
    kw.setdefault("storage_options", {"endpoint_url": ENDPOINT, "key": "AK", "secret": "SK"})
    kw.setdefault("backoff", 0.01)
    return ServerBackend(fake.url, env={}, **kw)


# ---------------------------------------------------------------------------- round trips

DTYPES = ["int8", "uint8", "int16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@st.composite
def chunk_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    if dtype.kind == "f":
        elems = st.floats(-1e6, 1e6, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elems = st.integers(int(info.min), int(info.max))
    n = int(np.prod(shape))
    data = np.array(draw(st.lists(elems, min_size=n, max_size=n)), dtype=dtype).reshape(shape)
    order = draw(st.sampled_from("CF"))
    selection = None
    if draw(st.booleans()):
        selection = []
        for size in shape:
            a = draw(st.integers(0, size - 1))
            b = draw(st.integers(a + 1, size))
            c = draw(st.integers(1, 2))
            selection.append((a, b, c))
        selection = tuple(selection)
    axis = draw(st.one_of(st.none(), st.lists(st.integers(0, len(shape) - 1), min_size=1,
                                              unique=True)))
    missing = None
    if draw(st.booleans()):
        flat = data.reshape(-1)
        missing = Missing(values=(flat[draw(st.integers(0, n - 1))],))
    op = draw(st.sampled_from(["count", "min", "max", "sum", "select"]))
    byte_order = draw(st.sampled_from(["little", "big"]))
    return data, dtype, order, selection, axis, missing, op, byte_order


def _stored(data: np.ndarray, order: str, byte_order: str) -> bytes:
    dt = data.dtype.newbyteorder("<" if byte_order == "little" else ">")
    return data.astype(dt).tobytes(order=order)


def _assert_partials_equal(got, want, op):
    assert got.values.shape == want.values.shape
    assert got.values.dtype == want.values.dtype
    np.testing.assert_array_equal(got.counts, want.counts)
    ok = want.counts > 0 if op in ("min", "max") else np.ones(want.values.shape, bool)
    if op == "select":
        ok = np.ones(want.values.shape, bool)
    np.testing.assert_array_equal(got.values[ok], want.values[ok])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=chunk_cases(), api=st.sampled_from([1, 2]))
def test_round_trip_matches_kernel(fake, case, api):
    data, dtype, order, selection, axis, missing, op, byte_order = case
    raw = _stored(data, order, byte_order)
    fake.objects["bkt/obj"] = b"\0" * 7 + raw
    req = make_request(dtype, data.shape, offset=7, size=len(raw), url="s3://bkt/obj",
                       order=order, selection=selection, axis=axis, missing=missing,
                       byte_order=byte_order)
    with backend(fake, api_version=api) as b:
        got = b.reduce_chunk(req, op)
    _assert_partials_equal(got, kernel_reduce(raw, req, op), op)


def test_batch_used_once_detected_and_matches_kernel(fake):
    rng = np.random.default_rng(0)
    data = rng.integers(-2**31, 2**31 - 1, size=(40, 10), dtype=np.int32)
    raw = data.tobytes()
    fake.objects["bkt/big"] = raw
    reqs = [make_request("int32", (1, 10), offset=i * 40, size=40, url="s3://bkt/big")
            for i in range(40)]
    with backend(fake, max_threads=2) as b:
        for op in ("sum", "min", "count"):
            parts = b.reduce_chunks(reqs, op)
            for r, p in zip(reqs, parts):
                _assert_partials_equal(p, kernel_reduce(raw[r.offset:r.offset + 40], r, op), op)
        total = sum(int(p.values.sum()) for p in b.reduce_chunks(reqs, "sum"))
    assert total == int(data.astype(np.int64).sum())  # wide sums: no int32 overflow
    paths = [p for _, p, _ in fake.log]
    assert paths.count("/capabilities") == 1
    assert all(p.startswith("/v2/batch/") for p in paths if p != "/capabilities")
    assert len([p for p in paths if p.startswith("/v2/batch/")]) == 4


def test_falls_back_to_per_chunk_without_batch_support(fake):
    fake.batch = False
    fake.objects["bkt/o"] = np.arange(20, dtype="<f8").tobytes()
    reqs = [make_request("<f8", (10,), offset=i * 80, size=80, url="s3://bkt/o") for i in (0, 1)]
    with backend(fake) as b:
        parts = b.reduce_chunks(reqs, "max")
        b.reduce_chunks(reqs, "max")
        assert not b.batching
    assert [float(p.values[0]) for p in parts] == [9.0, 19.0]
    paths = [p for _, p, _ in fake.log]
    assert paths.count("/capabilities") == 1
    assert paths.count("/v2/max/") == 4


def test_batch_endpoint_404_falls_back(fake):
    fake.objects["bkt/o"] = np.arange(20, dtype="<f8").tobytes()
    reqs = [make_request("<f8", (10,), offset=i * 80, size=80, url="s3://bkt/o") for i in (0, 1)]
    fake.script.append((404, b"{}", {"content-type": "application/json"}))
    with backend(fake, batch=True) as b:
        parts = b.reduce_chunks(reqs, "min")
    assert [float(p.values[0]) for p in parts] == [0.0, 10.0]


def test_wire_fields_and_basic_auth(fake):
    fake.objects["bkt/a/b c.nc"] = np.arange(4, dtype="<i2").tobytes()
    req = make_request("<i2", (4,), offset=0, size=8, url="s3://bkt/a/b c.nc")
    with backend(fake) as b:
        p = b.reduce_chunk(req, "sum")
    assert p.values.dtype == np.int64 and int(p.values[0]) == 6
    _, path, headers = fake.log[-1]
    assert path == "/v2/sum/"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"AK:SK").decode()
    body = routing_fields("s3://bkt/a/b c.nc", 2, ENDPOINT)
    assert body == {"interface_type": "s3", "url": ENDPOINT + "/bkt/a/b%20c.nc"}
    assert routing_fields("s3://bkt/k", 1, ENDPOINT) == {
        "source": ENDPOINT, "bucket": "bkt", "object": "k"}
    assert routing_fields("https://h/x/y.nc", 2, ENDPOINT) == {
        "interface_type": "https", "url": "https://h/x/y.nc"}
    assert routing_fields(ENDPOINT + "/bkt/k", 2, ENDPOINT)["interface_type"] == "s3"
    with pytest.raises(UnsupportedError, match="local path"):
        routing_fields("/data/file.nc", 2, ENDPOINT)


def test_repr_hides_credentials(fake):
    with backend(fake) as b:
        assert "SK" not in repr(b)


# ------------------------------------------------------------------- retries and errors

def _req(fake):
    fake.objects["bkt/o"] = np.arange(10, dtype="<f4").tobytes()
    return make_request("<f4", (10,), offset=0, size=40, url="s3://bkt/o")


def test_retries_transient_statuses_then_succeeds(fake):
    req = _req(fake)
    fake.script += [(503, b"busy", {}), (429, b"", {"Retry-After": "0"}),
                    (502, b"", {}), "reset"]
    with backend(fake, retries=4) as b:
        assert float(b.reduce_chunk(req, "max").values[0]) == 9.0
        assert b.stats.requests == 5  # every attempt is accounted


def test_answer_cut_short_is_retried_then_typed(fake):
    req = _req(fake)
    fake.script += ["cut", "cut"]
    with backend(fake, retries=2) as b:
        assert float(b.reduce_chunk(req, "max").values[0]) == 9.0
    fake.script += ["cut"] * 3
    with backend(fake, retries=1) as b, pytest.raises(ServerError, match="cut short") as ei:
        b.reduce_chunk(req, "max")
    assert ei.value.status == 502 and ei.value.url.startswith(fake.url)
    fake.script.clear()


def test_retries_are_bounded(fake):
    req = _req(fake)
    fake.script += [(503, b'{"error": {"message": "overloaded"}}',
                     {"content-type": "application/json"})] * 10
    with backend(fake, retries=2) as b, pytest.raises(ServerError) as ei:
        b.reduce_chunk(req, "max")
    assert ei.value.status == 503 and "overloaded" in str(ei.value)
    assert len([1 for _, p, _ in fake.log if p == "/v2/max/"]) == 3


def test_retries_apply_to_a_callers_own_session(fake):
    """reduce_chunk(session, ...) retries with a plain requests.Session too (the policy is
    mounted for the server's origin) and with the count asked for."""
    import requests

    fake.objects["bkt/o"] = np.arange(10, dtype="<f4").tobytes()
    fake.script += [(503, b"busy", {}), (502, b"", {})]
    with requests.Session() as session:
        vals, _ = reduce_chunk(session, fake.url, f"{ENDPOINT}/bkt/o", 0, 40, None, None, None,
                               "<f4", (10,), "C", None, None, "max", storage_type="s3",
                               s3_endpoint_url=ENDPOINT, retries=2)
    assert float(vals) == 9.0
    fake.script += [(503, b"busy", {})] * 2
    with make_session() as session, pytest.raises(ServerError) as ei:
        reduce_chunk(session, fake.url, f"{ENDPOINT}/bkt/o", 0, 40, None, None, None, "<f4",
                     (10,), "C", None, None, "max", storage_type="s3", retries=1)
    assert ei.value.status == 503
    assert len([1 for m, p, _ in fake.log if m == "POST"]) == 3 + 2


def test_a_refused_connection_is_retried_and_every_attempt_accounted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = ServerBackend(f"http://127.0.0.1:{port}", env={}, backoff=0.01, retries=2, batch=False,
                      storage_options={"endpoint_url": ENDPOINT, "anon": True})
    with b, pytest.raises(ServerError, match="cannot reach"):
        b.reduce_chunk(make_request("<f4", (1,), size=4, url="s3://b/k"), "max")
    assert b.stats.requests == 3
    with ServerBackend(f"http://127.0.0.1:{port}", env={}, backoff=5.0) as b2, \
            pytest.raises(ServerError, match="cannot reach"):
        b2.capabilities()  # a GET: tried once, typed


def test_error_body_decoded(fake):
    req = _req(fake)
    body = {"error": {"message": "selection[0]: stride must not be zero",
                      "caused_by": ["bad stride"]}}
    fake.script.append((400, json.dumps(body).encode(), {"content-type": "application/json"}))
    with backend(fake) as b, pytest.raises(ServerError) as ei:
        b.reduce_chunk(req, "max")
    e = ei.value
    assert e.status == 400 and e.body == body and e.url.endswith("/v2/max/")
    assert "stride must not be zero" in str(e) and "bad stride" in str(e)


@pytest.mark.parametrize("resp", [
    (200, b"not cbor", {"content-type": "application/cbor"}),
    (200, b"{}", {"content-type": "application/json"}),
    (200, cbor2.dumps({"bytes": b"\0" * 3, "dtype": "float32", "shape": [],
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 8, "dtype": "float64", "shape": [],
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "float32", "shape": [2],
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "float32", "shape": [],
                       "count": "x", "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps([1, 2]), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "float32", "shape": "[]",
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "float32", "shape": ["a"],
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
    (200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "nonsense", "shape": [],
                       "count": [1], "byte_order": "little"}), {"content-type": "application/cbor"}),
] + [(200, cbor2.dumps({"bytes": b"\0" * 4, "dtype": "float32", "shape": [], "count": count,
                        "byte_order": "little"}), {"content-type": "application/cbor"})
     for count in ([True], [1.5], [2**70], [1, 2], ["1"], None)])
def test_malformed_response_is_typed(fake, resp):
    req = _req(fake)
    fake.script.append(resp)
    with backend(fake) as b, pytest.raises(ServerError, match="malformed|answered"):
        b.reduce_chunk(req, "max")


def test_axis_counts_are_checked_and_kept_as_one_number_when_uniform():
    """An axis reduction's answer has a count per result value: uniform ones become a broadcast
    of one number (as the kernel gives, so the client tallies them instead of adding arrays)."""
    from activestorage.backends.server import decode_v2

    req = make_request("<f4", (4, 30, 20), axis=(0,))
    values = np.arange(600, dtype=np.float32).reshape(30, 20)
    payload = {"bytes": values.tobytes(), "dtype": "float32", "shape": [30, 20],
               "count": [4] * 600, "byte_order": "little"}
    p = decode_v2(payload, req, "max", "u")
    assert p.counts.shape == (1, 30, 20) and not any(p.counts.strides)
    assert (p.counts == 4).all() and (p.values[0] == values).all()
    varied = list(range(600))
    p = decode_v2({**payload, "count": varied}, req, "max", "u")
    assert p.counts.dtype == np.int64 and p.counts.reshape(-1).tolist() == varied
    for bad in ([4] * 599, [4] * 599 + [True], [4] * 599 + [4.0]):
        with pytest.raises(ServerError, match="malformed"):
            decode_v2({**payload, "count": bad}, req, "max", "u")


def test_server_down_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = ServerBackend(f"http://127.0.0.1:{port}", env={}, backoff=0.01, retries=2,
                      storage_options={"endpoint_url": ENDPOINT, "anon": True})
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach"):
        b.reduce_chunk(make_request("<f4", (1,), size=4, url="s3://b/k"), "max")
    assert time.monotonic() - t0 < 5


def test_read_timeout_is_typed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts connections, never answers
    try:
        b = ServerBackend(f"http://127.0.0.1:{srv.getsockname()[1]}", env={}, batch=False,
                          timeout=(1, 0.5), storage_options={"endpoint_url": ENDPOINT})
        with pytest.raises(ServerError, match="did not answer") as ei:
            b.reduce_chunk(make_request("<f4", (1,), size=4, url="s3://b/k"), "max")
        assert ei.value.status == 504
    finally:
        srv.close()


def test_no_url_is_an_error():
    with pytest.raises(ServerError, match="ACTIVESTORAGE_URL"):
        ServerBackend(env={})
    assert ServerBackend(env={"ACTIVESTORAGE_URL": "http://x:1/"}).url == "http://x:1"


def test_credentials_from_env(fake):
    env = {"AWS_ACCESS_KEY_ID": "EK", "AWS_SECRET_ACCESS_KEY": "ES",
           "AWS_ENDPOINT_URL": "http://e:1"}
    b = ServerBackend(fake.url, env=env)
    assert b._auth == {"s3": ("EK", "ES"), "http": None} and b.s3_endpoint_url == "http://e:1"
    b2 = ServerBackend(fake.url, env=env, username="u", password="p")
    assert b2._auth == {"s3": ("u", "p"), "http": ("u", "p")}


def test_s3_secret_never_sent_with_http_store_requests(fake):
    """The server forwards Basic credentials to HTTP stores: an AWS secret must not go there."""
    fake.objects["host/x.bin"] = np.arange(4, dtype="<f4").tobytes()
    fake.objects["bkt/o"] = np.arange(4, dtype="<f4").tobytes()
    http_req = make_request("<f4", (4,), offset=0, size=16, url="https://host/x.bin")
    s3_req = make_request("<f4", (4,), offset=0, size=16, url="s3://bkt/o")
    for batch in (False, True):
        fake.log.clear()
        with backend(fake, batch=batch) as b:
            parts = b.reduce_chunks([http_req, s3_req, http_req], "max")
        assert [float(p.values[0]) for p in parts] == [3.0, 3.0, 3.0]
        posts = [h for m, _, h in fake.log if m == "POST"]
        assert len(posts) == (2 if batch else 3)
        auths = sorted(h.get("Authorization", "") for h in posts)
        assert auths.count("Basic " + base64.b64encode(b"AK:SK").decode()) == 1
        assert auths.count("") == len(posts) - 1
    with backend(fake, storage_options={"endpoint_url": ENDPOINT, "username": "web",
                                        "password": "pw"}) as b:
        b.reduce_chunk(http_req, "max")
    assert fake.log[-1][2]["Authorization"] == "Basic " + base64.b64encode(b"web:pw").decode()


def test_batch_too_large_is_split(fake):
    fake.objects["bkt/o"] = np.arange(40, dtype="<f8").tobytes()
    reqs = [make_request("<f8", (10,), offset=i * 80, size=80, url="s3://bkt/o") for i in range(4)]
    fake.script.append((413, b'{"error": {"message": "too many"}}',
                        {"content-type": "application/json"}))
    with backend(fake, batch=True, max_threads=1) as b:
        parts = b.reduce_chunks(reqs, "max")
    assert [float(p.values[0]) for p in parts] == [9.0, 19.0, 29.0, 39.0]
    assert [p for m, p, _ in fake.log if m == "POST"] == ["/v2/batch/max"] * 3


# ------------------------------------------------------------ PyActiveStorage entry point

def test_module_reduce_chunk_pyactivestorage_conventions(fake):
    import numcodecs

    data = np.arange(24, dtype=">i4").reshape(4, 6)
    data[0, 0] = -999
    comp = numcodecs.Zlib(level=1)
    shuffled = numcodecs.Shuffle(elementsize=4).encode(data.tobytes())
    raw = comp.encode(shuffled)
    fake.objects["bkt/f.nc"] = raw
    session = make_session(username="AK", password="SK")
    sel = (slice(0, 4, 1), slice(1, None, 2))
    vals, counts = reduce_chunk(session, fake.url, f"{ENDPOINT}/bkt/f.nc", 0, len(raw), comp,
                                [numcodecs.Shuffle(elementsize=4)], (None, [-999], None, None),
                                data.dtype, data.shape, "C", sel, (0,), "mean", storage_type="s3")
    want = data[:, 1::2].astype(np.int64).sum(axis=0)
    np.testing.assert_array_equal(vals, want)
    np.testing.assert_array_equal(counts, [4, 4, 4])
    # missing as fill value + all axes + select
    vals, counts = reduce_chunk(session, fake.url, f"{ENDPOINT}/bkt/f.nc", 0, len(raw), comp,
                                [numcodecs.Shuffle(elementsize=4)], (-999, None, None, None),
                                data.dtype, data.shape, "C", (slice(0, 2), slice(0, 2)), None,
                                None, storage_type="s3")
    np.testing.assert_array_equal(vals, data[:2, :2])
    np.testing.assert_array_equal(counts, [[0, 1], [1, 1]])
    vals, counts = reduce_chunk(session, fake.url, f"s3://bkt/f.nc", 0, len(raw), comp,
                                [numcodecs.Shuffle(elementsize=4)], (-999, None, None, 20),
                                data.dtype, data.shape, "C", None, None, "count",
                                api_version=1, s3_endpoint_url=ENDPOINT)
    assert vals.shape == () and int(vals) == 20 and int(counts) == 20


@pytest.mark.parametrize("count", ["[6]", "6", "[[6]]"])
def test_v1_count_header_forms(count):
    """The flat list the spec gives (``[6]``), and the bare number / nested list of older
    servers, all parse."""
    from types import SimpleNamespace

    from activestorage.backends.server import decode_v1
    from activestorage.request import make_request

    req = make_request("int32", (2, 3))
    resp = SimpleNamespace(content=np.int32(15).tobytes(), headers={
        "x-activestorage-dtype": "int32", "x-activestorage-shape": "[]",
        "x-activestorage-count": count, "x-activestorage-byte-order": "little"})
    p = decode_v1(resp, req, "sum", "http://srv")
    assert int(p.values.reshape(-1)[0]) == 15 and int(p.counts.sum()) == 6


@pytest.mark.parametrize("count,want", [("[3,3,2,3]", [[3, 3], [2, 3]]),
                                        ("[[3,3],[2,3]]", [[3, 3], [2, 3]])])
def test_v1_axis_count_header_flat_or_nested(count, want):
    from types import SimpleNamespace

    from activestorage.backends.server import decode_v1
    from activestorage.request import make_request

    req = make_request("int32", (2, 2, 5), axis=2)
    resp = SimpleNamespace(content=np.arange(4, dtype="<i4").tobytes(), headers={
        "x-activestorage-dtype": "int32", "x-activestorage-shape": "[2,2]",
        "x-activestorage-count": count, "x-activestorage-byte-order": "little"})
    p = decode_v1(resp, req, "max", "http://srv")
    assert p.counts.reshape(2, 2).tolist() == want


@pytest.mark.parametrize("caps,order", [
    ({}, "F"),  # not our server (no /capabilities): the spec's layout, the request's order
    ({"name": "activestorage", "batch": True}, "C"),  # an older server of ours: always C
    ({"name": "activestorage", "result_order": "request"}, "F"),
])
def test_result_order_of_fortran_requests(caps, order):
    from activestorage.request import make_request

    b = ServerBackend("http://127.0.0.1:9", env={})
    b._caps = caps
    req = make_request("int32", (2, 3, 4), order="F", axis=2)
    assert b._result_order(req, "sum") == order
    assert b._result_order(req, "select") == order
    assert b._result_order(req.with_(order="C"), "select") == "C"
    assert b._result_order(make_request("int32", (2, 3), order="F", axis=1), "sum") == "C"  # 1-D
    b.close()


def test_capabilities_are_fetched_once_per_server_for_the_process(fake):
    """cf-python makes one Active (so one backend) per Dask chunk: only the first one asks."""
    for _ in range(5):
        b = backend(fake)
        assert b.batching is True and b.max_batch == 1000
        b.close()
    assert [p for _, p, _ in fake.log].count("/capabilities") == 1


def test_capabilities_cache_expires_and_never_keeps_a_failure():
    from activestorage.backends.server import cached_capabilities

    calls = []

    def fetch():
        calls.append(1)
        if len(calls) == 1:
            raise ServerError("down")
        return {"batch": len(calls)}

    with pytest.raises(ServerError):
        cached_capabilities("http://cache-test", fetch, ttl=60)
    assert cached_capabilities("http://cache-test", fetch, ttl=60) == {"batch": 2}
    assert cached_capabilities("http://cache-test", fetch, ttl=60) == {"batch": 2}
    assert cached_capabilities("http://cache-test", fetch, ttl=0) == {"batch": 3}
    assert len(calls) == 3


def test_option_disable_chunk_cache_is_sent_when_asked():
    from activestorage.backends.server import request_body

    req = make_request("f4", (4,), offset=0, size=16, url="s3://b/k")
    routing = {"interface_type": "s3", "url": "http://s3/b/k"}
    assert "option_disable_chunk_cache" not in request_body(req, "sum", routing)
    assert request_body(req, "sum", routing, disable_chunk_cache=True)[
        "option_disable_chunk_cache"] is True


# ----------------------------------------------------------- the moments extension's decisions

EXT = {"operations": ["moments", "minmax"], "weights": ["axes", "values", "array"],
       "api": ["v2", "batch"], "max_body_bytes": 4096}


def _backend_with(caps, **kw):
    b = ServerBackend("http://ext.test", env={}, **kw)
    b._caps = caps  # as if GET /capabilities had answered this
    return b


def _wreq(weights=None):
    return make_request("float64", (4, 6), url="s3://b/k", size=192)._replace(weights=weights)


@pytest.mark.parametrize("caps, api, want", [
    ({"extensions": {"moments": EXT}}, 2, False),
    ({}, 2, True),  # a reference Reductionist: no capabilities
    ({"batch": True, "operations": ["count", "min", "max", "sum", "select"]}, 2, True),
    ({"extensions": {"moments": {**EXT, "operations": ["minmax"]}}}, 2, True),
    ({"extensions": {"moments": EXT}}, 1, True),  # v1 has no extension
])
def test_moments_go_to_the_server_only_when_it_says_so(caps, api, want):
    with _backend_with(caps, api_version=api) as b:
        assert b._in_client("moments", [_wreq()]) == [want]
        assert b.serves("moments") is not want
        assert b.serves("sum") and b.serves("select")  # the Reductionist's, always


def test_weights_the_server_cannot_take_are_reduced_here():
    sep, nd = {1: np.ones(6)}, np.ones((4, 6))
    big = {1: np.ones(6), 0: np.ones(4)}
    with _backend_with({"extensions": {"moments": {**EXT, "weights": ["axes"]}}}) as b:
        assert b._in_client("moments", [_wreq(sep), _wreq(nd), _wreq()]) == [False, True, False]
    # weights over half the body limit (4096 / 2 bytes = 256 float64) stay here
    with _backend_with({"extensions": {"moments": {**EXT, "max_body_bytes": 128}}}) as b:
        assert b._in_client("moments", [_wreq(sep), _wreq(nd), _wreq(big)]) == [False, True, True]


def test_mixed_chunks_are_split_between_server_and_client(monkeypatch):
    from activestorage.kernel import Partial

    calls = {}

    class Local:
        def reduce_chunks(self, reqs, op):
            calls["local"] = len(reqs)
            return [Partial(np.full((1, 1, 4), 1.0), np.ones((1, 1), np.int64))] * len(reqs)

    with _backend_with({"extensions": {"moments": {**EXT, "max_body_bytes": 128}}},
                       batch=False) as b:
        monkeypatch.setattr(b, "_client_side", lambda op, n: Local())

        def remote(r, op):
            calls["remote"] = calls.get("remote", 0) + 1
            return Partial(np.full((1, 1, 4), 2.0), np.ones((1, 1), np.int64))

        monkeypatch.setattr(b, "reduce_chunk", remote)
        reqs = [_wreq({1: np.ones(6)}), _wreq(np.ones((4, 6))), _wreq()]
        out = b.reduce_chunks(reqs, "moments")
        assert [float(p.values.flat[0]) for p in out] == [2.0, 1.0, 2.0]
        assert calls == {"local": 1, "remote": 2}


def test_fallback_is_logged_once_per_server(caplog):
    from activestorage.backends import server as sb

    sb._FALLBACK_LOGGED.discard(("http://once.test", 2))
    with caplog.at_level("WARNING", logger="activestorage.backends.server"):
        for op in ("moments", "minmax", "moments"):
            sb._log_fallback_once("http://once.test", op, 2)
    lines = [r.getMessage() for r in caplog.records if "once.test" in r.getMessage()]
    assert len(lines) == 1 and "cannot compute moments" in lines[0]


def test_weighted_request_bodies():
    from activestorage.backends.server import request_body, weights_nbytes

    r = _wreq({1: np.arange(6.0)})
    body = request_body(r, "moments", {"interface_type": "s3", "url": "http://h/b/k"})
    assert body["weights"] == {"axes": {"1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}}
    binary = request_body(r, "moments", {}, binary=True)["weights"]["axes"]["1"]
    assert np.frombuffer(binary, "<f8").tolist() == list(range(6))
    assert "weights" not in request_body(_wreq(), "moments", {})
    assert weights_nbytes({1: np.ones(6), 0: None}) == 48 and weights_nbytes(np.ones((2, 3))) == 48
    assert weights_nbytes(None) == 0
