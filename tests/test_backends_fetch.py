"""FetchBackend: range coalescing, local and HTTP range reads, pinning and errors (in-process
fakes; moto S3 and nginx are in tests/integration/test_remote_backends.py)."""

from __future__ import annotations

import gzip
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numcodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.backends.fetch import FetchBackend
from activestorage.stores import merge_ranges
from activestorage.stores._body import BODY_PIECE, _Body, _read_body
from activestorage.errors import ObjectChangedError, StorageError
from activestorage.kernel import reduce_chunk
from activestorage.request import make_request


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 5000),
                                st.integers(1, 300), st.sampled_from([None, "e1"])),
                      min_size=1, max_size=30),
       gap=st.integers(0, 200), max_range=st.integers(300, 3000))
def test_coalesce_groups_cover_each_request_once(spans, gap, max_range):
    reqs = [make_request("u1", (n,), offset=o, size=n, url=u, etag=e) for u, o, n, e in spans]
    groups = merge_ranges(reqs, max_gap=gap, max_range=max_range)
    members = sorted(i for g in groups for i in g.members)
    assert members == list(range(len(reqs)))
    for g in groups:
        rs = [reqs[i] for i in g.members]
        assert all(r.url == g.url and r.etag == g.etag for r in rs)
        assert g.start == min(r.offset for r in rs) and g.end == max(r.offset + r.size for r in rs)
        assert len(rs) == 1 or g.end - g.start <= max_range
        # consecutive members (by offset) never leave a hole wider than the gap
        reach = g.start
        for r in sorted(rs, key=lambda r: r.offset):
            assert r.offset <= reach + gap
            reach = max(reach, r.offset + r.size)


def _chunked_file(tmp_path, nchunks=12, shape=(3, 4)):
    """A file of zlib+shuffle compressed int16 chunks back to back, with junk between some."""
    rng = np.random.default_rng(3)
    blob, reqs, arrays = bytearray(), [], []
    for i in range(nchunks):
        a = rng.integers(-300, 300, size=shape, dtype="<i2")
        raw = numcodecs.Zlib(1).encode(numcodecs.Shuffle(2).encode(a.tobytes()))
        if i % 4 == 3:
            blob += b"junk" * 10
        reqs.append(make_request("<i2", shape, offset=len(blob), size=len(raw),
                                 compression={"id": "zlib"},
                                 filters=({"id": "shuffle", "element_size": 2},)))
        blob += raw
        arrays.append(a)
    path = tmp_path / "chunks.bin"
    path.write_bytes(bytes(blob))
    return path, bytes(blob), [r.with_(url=str(path)) for r in reqs], arrays


@pytest.mark.parametrize("op", ["sum", "min", "max", "count", "select"])
@pytest.mark.parametrize("coalesce_on", [True, False])
def test_local_reduce_chunks_equals_kernel(tmp_path, op, coalesce_on):
    path, blob, reqs, arrays = _chunked_file(tmp_path)
    with FetchBackend(max_threads=3, coalesce=coalesce_on, env={}) as b:
        parts = b.reduce_chunks(reqs[::-1], op)
        assert b.stats.requests == (len(reqs) if not coalesce_on else 1)
    for r, p, a in zip(reqs[::-1], parts, arrays[::-1]):
        want = reduce_chunk(blob[r.offset:r.offset + r.size], r, op)
        np.testing.assert_array_equal(p.values, want.values)
        np.testing.assert_array_equal(p.counts, want.counts)
        if op == "sum":
            assert int(p.values.sum()) == int(a.astype(np.int64).sum())


class FakeStore:
    """Range GETs over named objects, with switches for the ways stores misbehave."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.etag = "v1"
        self.ignore_range = False
        self.truncate = False
        self.cut_once = 0
        self.fail_first: list[int] = []
        self.gzip_encoding = False
        self.gets = 0
        self.connections = 0
        store = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def setup(self) -> None:
                store.connections += 1
                super().setup()

            def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{store.etag}"')
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                store.gets += 1
                if store.fail_first:
                    self._send(store.fail_first.pop(0), b"busy")
                    return
                blob = store.objects.get(self.path)
                if blob is None:
                    self._send(404)
                    return
                im = self.headers.get("If-Match")
                if im is not None and im.strip('"') != store.etag:
                    self._send(412)
                    return
                if store.ignore_range:
                    self._send(200, blob)
                    return
                a, b = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
                body = blob[a:b + 1]
                if store.truncate:
                    body = body[:-1]
                if store.gzip_encoding:  # the range, compressed for the trip
                    self._send(206, gzip.compress(body), Content_Encoding="gzip")
                    return
                if store.cut_once:  # promise the full length, send half, hang up
                    store.cut_once -= 1
                    self.send_response(206)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self._send(206, body, Content_Range=f"bytes {a}-{a + len(body) - 1}/{len(blob)}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def store(tmp_path):
    s = FakeStore()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _http_reqs(store, tmp_path):
    _, blob, reqs, _ = _chunked_file(tmp_path)
    store.objects["/o.bin"] = blob
    return blob, [r.with_(url=store.url + "/o.bin") for r in reqs]


def test_http_coalesces_and_matches_kernel(store, tmp_path):
    blob, reqs = _http_reqs(store, tmp_path)
    with FetchBackend(env={}, max_gap=0) as b:
        parts = b.reduce_chunks(reqs, "sum")
        # junk before chunks 3, 7 and 11 splits the object into 4 runs at gap 0
        assert store.gets == 4 and b.stats.requests == 4
        assert b.stats.bytes_received == sum(r.size for r in reqs)
    with FetchBackend(env={}) as b:
        b.reduce_chunks(reqs, "sum")
        assert store.gets == 5 and b.stats.bytes_received == len(blob)
    for r, p in zip(reqs, parts):
        np.testing.assert_array_equal(p.values, reduce_chunk(
            blob[r.offset:r.offset + r.size], r, "sum").values)


def test_http_server_ignoring_range_still_correct(store, tmp_path):
    blob, reqs = _http_reqs(store, tmp_path)
    store.ignore_range = True
    with FetchBackend(env={}) as b:
        p = b.reduce_chunk(reqs[5], "max")
    r = reqs[5]
    assert p.values == reduce_chunk(blob[r.offset:r.offset + r.size], r, "max").values


def test_http_pinning(store, tmp_path):
    _, reqs = _http_reqs(store, tmp_path)
    with FetchBackend(env={}) as b:
        b.reduce_chunk(reqs[0].with_(etag="v1"), "sum")
        store.etag = "v2"
        with pytest.raises(ObjectChangedError, match="object changed since manifest") as ei:
            b.reduce_chunks([r.with_(etag="v1") for r in reqs], "sum")
        assert ei.value.status == 409 and "/o.bin" in str(ei.value)


def test_http_errors_are_typed(store, tmp_path):
    _, reqs = _http_reqs(store, tmp_path)
    with FetchBackend(env={}, retries=2) as b:
        with pytest.raises(StorageError) as ei:
            b.reduce_chunk(reqs[0].with_(url=store.url + "/nope"), "sum")
        assert ei.value.status == 404 and "/nope" in str(ei.value)
        store.truncate = True
        with pytest.raises(StorageError, match="short read"):
            b.reduce_chunk(reqs[0], "sum")
        store.truncate = False
        store.fail_first = [503, 502]  # retried, then fine
        b.reduce_chunk(reqs[0], "sum")
        store.fail_first = [503] * 5  # retries are bounded
        with pytest.raises(StorageError):
            b.reduce_chunk(reqs[0], "sum")
    with FetchBackend(env={}) as b, pytest.raises(StorageError) as ei:
        b.reduce_chunk(reqs[0].with_(url=str(tmp_path / "missing")), "sum")
    assert ei.value.status == 404


def test_http_body_cut_short_is_retried(store, tmp_path):
    blob, reqs = _http_reqs(store, tmp_path)
    r = reqs[2]
    store.cut_once = 2
    with FetchBackend(env={}, retries=2) as b:
        p = b.reduce_chunk(r, "sum")
        assert b.stats.requests == 3
    assert p.values == reduce_chunk(blob[r.offset:r.offset + r.size], r, "sum").values
    store.cut_once = 5
    with FetchBackend(env={}, retries=1) as b, pytest.raises(StorageError) as ei:
        b.reduce_chunk(r, "sum")
    assert ei.value.status == 502 and store.url in str(ei.value)


def test_bodies_the_client_must_hand_over_are_read_a_piece_at_a_time_into_one_buffer():
    """A body read through the HTTP client's ``read`` lands in one buffer, a piece at a time:
    never held twice, as one large read (the client's buffer plus its bytes copy) would; a body
    that ends early is short."""
    body = bytes(range(256)) * (12 * 2**20 // 256)  # 12 MiB
    asked = []

    def reader(data):
        pos = 0

        def read(n):
            nonlocal pos
            asked.append(n)
            piece = data[pos:pos + n]
            pos += len(piece)
            return piece
        return read

    tracemalloc.start()
    try:
        got = _read_body(_Body(reader(body), len(body)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bytes(got) == body and max(asked) <= BODY_PIECE
    assert asked[-1] == 1  # one byte past the range: the client checks the declared length
    assert peak < len(body) + 3 * BODY_PIECE, peak
    short = _read_body(_Body(reader(body[:1000]), 5000))
    assert bytes(short) == body[:1000]


def test_bodies_are_read_from_the_socket_into_their_buffer_on_one_connection(store):
    """An HTTP body sent as is goes from the socket straight into the buffer it ends up in (no
    piece is allocated on the way), and the connection is reused for the next GET."""
    body = bytes(range(256)) * (12 * 2**20 // 256)  # 12 MiB
    store.objects["/big"] = body
    url = store.url + "/big"
    with FetchBackend(env={}) as b:
        assert bytes(b.read_range(url, 5, 105)) == body[5:105]  # warm: session, connection
        tracemalloc.start()
        try:
            got = b.read_range(url, 0, len(body))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert bytes(got) == body
        del got
        assert peak < len(body) + BODY_PIECE // 2, peak  # the client's reads held 2 pieces more
        for a in (0, 3 * 2**20, len(body) - 10):
            assert bytes(b.read_range(url, a, a + 10)) == body[a:a + 10]
    assert store.connections == 1 and store.gets == 5


def test_a_body_sent_compressed_is_handed_over_decoded_by_the_client(store, tmp_path):
    """Content-Encoding is the HTTP client's to undo: such bodies are not read from the socket."""
    blob, reqs = _http_reqs(store, tmp_path)
    store.gzip_encoding = True
    with FetchBackend(env={}) as b:
        assert bytes(b.read_range(reqs[0].url, 7, len(blob) - 3)) == blob[7:-3]
        parts = b.reduce_chunks(reqs, "sum")
    for r, p in zip(reqs, parts):
        assert p.values == reduce_chunk(blob[r.offset:r.offset + r.size], r, "sum").values


def test_large_chunks_get_a_fold_block_each():
    """In-process backends do not pair chunks too large to stack (for fetch that would put two in
    one GET and double what each of its 8 threads holds); small ones share 8 MiB blocks."""
    from activestorage.backends.posix import PosixBackend

    for backend in (FetchBackend(), PosixBackend()):
        assert backend.fold_block(4 * 2**20) == 1 and backend.fold_block(2**20) == 1
        assert backend.fold_block(64 * 1024) == 128


def _big_deflated_chunk(store, shape=(1024, 1024)):
    """One zlib+shuffle float32 chunk of 4 MiB that barely compresses, served as /big.bin."""
    a = np.random.default_rng(9).random(shape, dtype=np.float32)
    raw = numcodecs.Zlib(1).encode(numcodecs.Shuffle(4).encode(a.tobytes()))
    store.objects["/big.bin"] = bytes(raw)
    req = make_request("<f4", shape, offset=0, size=len(raw), compression={"id": "zlib"},
                       filters=({"id": "shuffle", "element_size": 4},))
    return a, bytes(raw), req.with_(url=store.url + "/big.bin")


def test_deflated_bodies_are_inflated_as_they_arrive(store, monkeypatch):
    """A deflated chunk alone in its GET is never held compressed and decoded at once: peak
    memory is the decoded chunk and a few pieces, not the compressed body as well."""
    import activestorage.stores._body as fetch

    monkeypatch.setattr(fetch, "STREAM_PIECE", 64 * 1024)
    a, raw, req = _big_deflated_chunk(store)
    assert len(raw) > 0.8 * a.nbytes
    with FetchBackend(env={}) as b:
        b.reduce_chunk(req, "sum")  # warm: connections, decoder modules
        tracemalloc.start()
        try:
            p = b.reduce_chunk(req, "sum")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert b.stats.bytes_received == 2 * len(raw)
    assert peak < a.nbytes + 1024 * 1024, peak  # reading it whole held ~7.6 MiB
    np.testing.assert_array_equal(p.values, reduce_chunk(raw, req, "sum").values)


def test_a_body_cut_while_inflating_is_read_again(store, monkeypatch):
    import activestorage.stores._body as fetch

    monkeypatch.setattr(fetch, "STREAM_PIECE", 64 * 1024)
    _a, raw, req = _big_deflated_chunk(store)
    want = reduce_chunk(raw, req, "max").values
    store.cut_once = 2  # half the body, then the connection closes: the inflater was mid-way
    with FetchBackend(env={}, retries=2) as b:
        np.testing.assert_array_equal(b.reduce_chunks([req], "max")[0].values, want)
        assert b.stats.requests == 3 and store.gets == 3
    store.cut_once = 5
    with FetchBackend(env={}, retries=1) as b, pytest.raises(StorageError) as ei:
        b.reduce_chunk(req, "max")
    assert ei.value.status == 502 and "/big.bin" in str(ei.value)


def test_a_corrupt_deflated_body_is_a_decode_error_not_retried(store):
    from activestorage.errors import DecodeError

    _a, raw, req = _big_deflated_chunk(store)
    bad = bytearray(raw)
    bad[len(bad) // 2:len(bad) // 2 + 64] = bytes(64)
    store.objects["/big.bin"] = bytes(bad)
    with FetchBackend(env={}, retries=3) as b, pytest.raises(DecodeError):
        b.reduce_chunk(req, "sum")
    assert store.gets == 1
