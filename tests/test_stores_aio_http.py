"""The upstream HTTP/1.1 client (activestorage.stores.aio_http) against small asyncio servers on
loopback that write exactly the bytes each awkward case needs: bodies framed by length, chunks
or the connection's close, split anywhere; truncated and overlong bodies; stale kept-alive
connections; a store that drips; 200 for a range; pooled reuse; TLS with our own CA; refused
addresses. Through AsyncHTTPStore where the server's error mapping is what is checked."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activestorage.errors import StorageError
from activestorage.stores.aio_http import (BodyError, Pool, ProtocolError, Response,
                                           system_resolve)
from activestorage.stores.http import AsyncHTTPStore

BLOB = bytes(range(256)) * 64  # 16 KiB


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class Raw:
    """A loopback server answering each request with ``answer(head, n)``: a list of byte pieces
    (written with a drain and ``pause`` seconds between them) or None to close unanswered.
    ``close_after``: close the connection after that many answers. Counts connections."""

    def __init__(self, answer, pause: float = 0.0, close_after: int | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.pause, self.close_after, self.tls = answer, pause, close_after, tls
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> "Raw":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    break
                self.requests.append(head)
                pieces = self.answer(head, len(self.requests))
                if pieces is None:
                    break
                for p in pieces:
                    writer.write(p)
                    await writer.drain()
                    if self.pause:
                        await asyncio.sleep(self.pause)
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()


def response(body: bytes, *, status: str = "206 Partial Content", headers: str = "",
             length: bool = True) -> bytes:
    h = f"HTTP/1.1 {status}\r\n{headers}"
    if length:
        h += f"Content-Length: {len(body)}\r\n"
    return (h + "\r\n").encode() + body


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, i = [], 0
    for n in sizes:
        if i >= len(body):
            break
        piece = body[i:i + n]
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        i += n
    if i < len(body):
        out.append(b"%x\r\n" % (len(body) - i) + body[i:] + b"\r\n")
    return b"".join(out) + b"0\r\nX-Trailer: 1\r\n\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


async def get(port: int, cap: int = 1 << 20, pool: Pool | None = None, path: str = "/obj",
              method: str = "GET") -> Response:
    pool = pool or Pool(system_resolve)
    return await pool.request(method, "http", "127.0.0.1", port, path, {}, lambda r: cap)


LOOP = {"factory": None}


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request):
    """Every case on asyncio's loop and on uvloop's (the one uvicorn runs the server on)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop comes with uvicorn[standard]")
        LOOP["factory"] = uvloop.new_event_loop
    yield request.param
    LOOP["factory"] = None


def run(coro):
    with asyncio.Runner(loop_factory=LOOP["factory"]) as runner:
        return runner.run(coro)


# ----------------------------------------------------------------------------- framing

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, len(BLOB)), cuts=st.lists(st.integers(0, 1 << 20), max_size=6),
       sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
       framing=st.sampled_from(["length", "chunked", "close"]))
def test_bodies_arrive_whole_however_they_are_framed_and_split(size, cuts, sizes, framing):
    body = BLOB[:size]
    if framing == "length":
        raw = response(body)
    elif framing == "chunked":
        raw = response(chunked(body, sizes), headers="Transfer-Encoding: chunked\r\n",
                       length=False)
    else:
        raw = response(body, length=False)

    async def main():
        async with Raw(lambda h, n: split(raw, cuts),
                       close_after=1 if framing == "close" else None) as srv:
            pool = Pool(system_resolve)
            first = await get(srv.port, pool=pool)
            assert first.status == 206 and bytes(first.body) == body
            assert first.body.readonly and not first.overflow
            if framing != "close":  # a framed body leaves the connection reusable
                again = await get(srv.port, pool=pool)
                assert bytes(again.body) == body and srv.connections == 1
            pool.close()
    run(main())


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("cap", [0, 1, 999, 1000])
def test_a_body_longer_than_the_cap_is_cut_there(framing, cap):
    body = BLOB[:1000]
    raw = {"length": response(body),
           "chunked": response(chunked(body, [300]), headers="Transfer-Encoding: chunked\r\n",
                               length=False),
           "close": response(body, length=False)}[framing]

    async def main():
        async with Raw(lambda h, n: [raw], close_after=1 if framing == "close" else None) as srv:
            resp = await get(srv.port, cap=cap)
            assert bytes(resp.body) == body[:cap]
            assert resp.overflow == (cap < len(body))
    run(main())


def test_headers_split_byte_by_byte_and_interim_answers_are_skipped():
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"abc", headers="ETag: \"e\"\r\n"
                                                      "X-Two: a\r\nx-two: b\r\n")

    async def main():
        async with Raw(lambda h, n: [raw[i:i + 1] for i in range(len(raw))]) as srv:
            resp = await get(srv.port)
            assert (resp.status, bytes(resp.body)) == (206, b"abc")
            assert resp.headers["etag"] == '"e"' and resp.headers["x-two"] == "a, b"
            assert resp.reason == "Partial Content"
    run(main())


def test_long_headers_are_read_and_overlong_ones_refused():
    async def main():
        big = "X-Big: " + "a" * 30000 + "\r\n"
        async with Raw(lambda h, n: [response(b"ok", headers=big)]) as srv:
            resp = await get(srv.port)
            assert bytes(resp.body) == b"ok" and len(resp.headers["x-big"]) == 30000
        async with Raw(lambda h, n: [response(b"ok", headers=big * 3)]) as srv:
            with pytest.raises(ProtocolError, match="longer than"):
                await get(srv.port)
    run(main())


def test_a_truncated_body_is_a_body_error():
    async def main():
        async with Raw(lambda h, n: [response(b"x" * 100)[:-50]], close_after=1) as srv:
            with pytest.raises(BodyError, match="50 of 100 bytes"):
                await get(srv.port)
        async with Raw(lambda h, n: [response(b"5\r\nabc", length=False,
                                              headers="Transfer-Encoding: chunked\r\n")],
                       close_after=1) as srv:
            with pytest.raises(BodyError, match="chunked"):
                await get(srv.port)
    run(main())


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2xx OK\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_answers_are_protocol_errors(raw):
    async def main():
        async with Raw(lambda h, n: [raw]) as srv:
            with pytest.raises(ProtocolError):
                await get(srv.port)
    run(main())


def test_head_requests_read_no_body():
    async def main():
        async with Raw(lambda h, n: [b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\nETag: e\r\n\r\n"]
                       ) as srv:
            pool = Pool(system_resolve)
            for _ in range(3):  # and the connection stays usable
                resp = await get(srv.port, method="HEAD", pool=pool, cap=0)
                assert resp.status == 200 and resp.headers["etag"] == "e" and not resp.body
            assert srv.connections == 1
    run(main())


# ----------------------------------------------------------------------------- connections

def test_a_stale_kept_alive_connection_is_retried_once_on_a_fresh_one():
    def answer(head, n):
        return None if n == 2 else [response(b"hello")]  # 2nd request: closed unanswered

    async def main():
        async with Raw(answer) as srv:
            pool = Pool(system_resolve)
            assert bytes((await get(srv.port, pool=pool)).body) == b"hello"
            assert bytes((await get(srv.port, pool=pool)).body) == b"hello"
            assert srv.connections == 2 and len(srv.requests) == 3
        # a FRESH connection closed unanswered is not retried
        async with Raw(lambda h, n: None) as srv:
            with pytest.raises(ProtocolError, match="before the response headers"):
                await get(srv.port)
            assert len(srv.requests) == 1
    run(main())


def test_connection_close_and_http10_answers_are_not_reused():
    answers = [response(b"a", headers="Connection: close\r\n"),
               response(b"b").replace(b"HTTP/1.1", b"HTTP/1.0"), response(b"c")]

    async def main():
        async with Raw(lambda h, n: [answers[(n - 1) % 3]]) as srv:
            pool = Pool(system_resolve)
            got = [bytes((await get(srv.port, pool=pool)).body) for _ in range(4)]
            assert got == [b"a", b"b", b"c", b"a"] and srv.connections == 3
    run(main())


def test_pooled_connections_are_bounded_and_reused():
    async def main():
        async with Raw(lambda h, n: [response(BLOB[:n * 10])], pause=0.001) as srv:
            store = AsyncHTTPStore(max_concurrency=4, read_timeout=10)
            from yarl import URL
            url = URL(f"http://127.0.0.1:{srv.port}/obj")

            async def one():
                return await store._send("GET", url, {}, "", "s", lambda r: 1 << 20)
            answers = await asyncio.gather(*(one() for _ in range(40)))
            assert sorted(len(a.body) for a in answers) == [10 * n for n in range(1, 41)]
            assert srv.connections <= 4 and len(srv.requests) == 40
            # another identity never gets these connections
            await store._send("GET", url, {}, "other", "s", lambda r: 1 << 20)
            assert srv.connections <= 5
            await store.aclose()
    run(main())


# ----------------------------------------------------------------------------- via the store

def read(answer, offset=0, size=4, *, pause=0.0, close_after=None, max_bytes=1 << 20, **kw):
    """Serve ``answer`` and read a range through AsyncHTTPStore (the server's error mapping)."""
    async def main():
        async with Raw(answer, pause=pause, close_after=close_after) as srv:
            from yarl import URL
            store = AsyncHTTPStore(**{"read_timeout": 5, **kw})
            rng = f"bytes={offset}-{offset + size - 1}" if size is not None else None
            try:
                return bytes(await store.read_range(
                    URL(f"http://127.0.0.1:{srv.port}/obj"), offset, size, max_bytes=max_bytes,
                    name="store/obj", store="store", headers=AsyncHTTPStore.headers(rng, None)))
            finally:
                await store.aclose()
    return run(main())


def test_range_reads_through_the_store():
    assert read(lambda h, n: [response(BLOB[5:9], headers="Content-Range: bytes 5-8/16384\r\n")],
                5, 4) == BLOB[5:9]


def test_a_dripping_store_is_a_504_within_the_one_deadline():
    raw = response(BLOB[:4], headers="Content-Range: bytes 0-3/16384\r\n")
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [raw[i:i + 1] for i in range(len(raw))], pause=0.05, read_timeout=0.5)
    assert e.value.status == 504 and "timed out" in str(e.value)


def test_200_for_a_range_is_refused_before_the_body_is_read():
    body = BLOB * 64  # 1 MiB that must not be read
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [response(body, status="200 OK")], 10, 4)
    assert e.value.status == 502 and "did not honour the range" in str(e.value)


def test_overlong_bodies_are_a_502_and_big_whole_objects_a_413():
    raw = response(chunked(BLOB[:9], [3]), length=False,
                   headers="Content-Range: bytes 0-3/16384\r\nTransfer-Encoding: chunked\r\n")
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [raw], 0, 4)
    assert e.value.status == 502 and "sent more than the 4 bytes" in str(e.value)
    for raw in (response(BLOB, status="200 OK"), response(BLOB, status="200 OK", length=False)):
        with pytest.raises(StorageError) as e:
            read(lambda h, n: [raw], 0, None, max_bytes=100, close_after=1)
        assert e.value.status == 413
    assert read(lambda h, n: [response(BLOB, status="200 OK", length=False)], 0, None,
                close_after=1) == BLOB


def test_redirects_are_not_followed():
    answer = [response(b"", status="302 Found", headers="Location: http://10.0.0.1/x\r\n")]
    with pytest.raises(StorageError) as e:
        read(lambda h, n: answer)
    assert e.value.status == 502 and "HTTP 302" in str(e.value)


def test_chunked_error_bodies_are_read_bounded_for_the_store_s_words():
    xml = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>" + b" " * 10000
    raw = response(chunked(xml, [7, 100]), status="404 Not Found", length=False,
                   headers="Transfer-Encoding: chunked\r\n")
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [raw])
    assert e.value.status == 400 and "NoSuchKey: gone" in str(e.value)


def test_a_refused_address_is_a_403_and_nothing_is_dialled():
    class Refused(OSError):
        pass

    class Resolver:
        async def resolve(self, host, port, family):
            raise Refused(f"upstream host {host!r} is not on this server's allow-list")
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [response(b"")], resolver=Resolver, refused=(Refused,))
    assert e.value.status == 403 and "allow-list" in str(e.value)


def test_a_connection_cut_mid_body_is_a_502_naming_the_store():
    raw = response(BLOB[:100], headers="Content-Range: bytes 0-99/16384\r\n")[:-10]
    with pytest.raises(StorageError) as e:
        read(lambda h, n: [raw], 0, 100, close_after=1)
    assert e.value.status == 502 and "store store is unreachable or failed (BodyError)" \
        in str(e.value)


# ----------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA and a certificate for 127.0.0.1 it signed, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")

    def sh(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
       "-days", "2", "-subj", "/CN=test CA")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
       "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


def test_tls_with_our_own_ca(tls_files):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_files / "srv.pem", tls_files / "srv.key")
    client_ctx = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    body = BLOB * 40  # several TLS records

    async def main(ctx):
        async with Raw(lambda h, n: split(response(body), [5, 70000]), tls=server_ctx) as srv:
            from yarl import URL
            store = AsyncHTTPStore(read_timeout=10, ssl=ctx)
            try:
                url = URL(f"https://127.0.0.1:{srv.port}/obj")
                out = []
                for _ in range(2):  # the second on the kept-alive TLS connection
                    resp = await store._send("GET", url, {}, "", "s", lambda r: 1 << 22)
                    out.append(bytes(resp.body))
                return out, srv.connections
            finally:
                await store.aclose()
    assert run(main(client_ctx)) == ([body, body], 1)
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know ours
        run(main(None))
