"""Upstream reads against an in-process aiohttp store on loopback: status mapping, ranges, short
reads, ETags, SigV4 signing, timeouts; and the allow-list / Basic-auth helpers."""

import asyncio
import base64
import socket

import pytest
from aiohttp import web

from activestorage.errors import ObjectChangedError, RequestValidationError, StorageError
from activestorage.server.upstream import (Target, Upstream, check_allowed, parse_basic_auth,
                                           s3_url)

DATA = bytes(range(200))


def ranged(request: web.Request, etag: str = '"abc"') -> web.Response:
    rng = request.headers.get("range")
    if not rng:
        return web.Response(body=DATA, headers={"etag": etag})
    a, b = rng.removeprefix("bytes=").split("-")
    a, b = int(a), min(int(b) if b else len(DATA) - 1, len(DATA) - 1)
    if a >= len(DATA):
        return web.Response(status=416, headers={"content-range": f"bytes */{len(DATA)}"})
    return web.Response(status=206, body=DATA[a:b + 1], headers={
        "content-range": f"bytes {a}-{b}/{len(DATA)}", "etag": etag})


async def serve_and_read(handler, target: Target, offset, size, max_bytes=10_000, **kw):
    """Serve ``handler`` on a loopback port (``{port}`` in the target's URL becomes it) and read
    ``target`` through a fresh Upstream made with ``kw``."""
    async def h(request):
        out = handler(request)
        return await out if asyncio.iscoroutine(out) else out
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", h)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    t = Target(target.kind, target.url.replace("{port}", str(port)), target.auth, target.etag,
               target.version_id)
    up = Upstream(**{"max_concurrency": 4, **kw})
    try:
        return await up.read(t, offset, size, max_bytes=max_bytes)
    finally:
        await up.aclose()
        await runner.cleanup()


def read(handler, offset, size, max_bytes=10_000, target=None, **kw):
    """Serve ``handler`` on a loopback port and read through a fresh Upstream."""
    t = target or Target("http", "http://127.0.0.1/obj")
    t = Target(t.kind, t.url.replace("127.0.0.1", "127.0.0.1:{port}", 1), t.auth, t.etag,
               t.version_id)
    return asyncio.run(serve_and_read(handler, t, offset, size, max_bytes, **kw))


def test_range_reads_and_whole_object():
    assert read(ranged, 10, 5) == DATA[10:15]
    assert read(ranged, 190, None) == DATA[190:]
    assert read(ranged, 0, None) == DATA
    with pytest.raises(StorageError) as e:
        read(ranged, 0, None, max_bytes=100)
    assert e.value.status == 413


def test_store_ignoring_range_is_refused():
    """A 200 with the whole object is accepted only when the whole object was asked for."""
    assert read(lambda r: web.Response(body=DATA), 0, len(DATA)) == DATA
    for off, size in ((50, 4), (0, 4), (0, len(DATA) - 1)):
        with pytest.raises(StorageError) as e:
            read(lambda r: web.Response(body=DATA), off, size)
        assert e.value.status == 502 and "did not honour the range" in str(e.value)
        assert "127.0.0.1" in str(e.value)


@pytest.mark.parametrize("content_range", ["bytes 0-7/100000", "bytes 1000-1008/100000",
                                           "bytes 999-1006/100000", "bytes */100000", "",
                                           "bytes 1000-1007/100000, bytes 0-1/2"])
def test_206_with_the_wrong_content_range_is_a_502(content_range):
    def wrong(request):
        return web.Response(status=206, body=DATA[:8], headers={"content-range": content_range})
    with pytest.raises(StorageError) as e:
        read(wrong, 1000, 8)
    assert e.value.status == 502 and "did not honour the range bytes=1000-1007" in str(e.value)


def test_206_with_the_exact_content_range_is_accepted():
    def right(request):
        return web.Response(status=206, body=DATA[:8],
                            headers={"content-range": "bytes 1000-1007/100000"})
    assert read(right, 1000, 8) == DATA[:8]


def test_past_the_end_and_short_reads():
    for off, size in ((195, 10), (300, 4)):
        with pytest.raises(StorageError) as e:
            read(ranged, off, size)
        assert e.value.status == 400 and "past the end" in str(e.value) and "/obj" in str(e.value)

    async def truncated(request):
        resp = web.StreamResponse(status=206, headers={"content-range": "bytes 0-9/200"})
        await resp.prepare(request)
        await resp.write(DATA[:3])
        return resp
    with pytest.raises(StorageError) as e:
        read(truncated, 0, 10)
    assert e.value.status == 502 and "short read" in str(e.value)


@pytest.mark.parametrize("status,body,want,words", [
    (404, b"<Error><Code>NoSuchKey</Code></Error>", 400, "object not found"),
    (404, b"<Error><Code>NoSuchBucket</Code></Error>", 400, "bucket not found"),
    (403, b"<Error><Code>AccessDenied</Code></Error>", 401, "refused the credentials"),
    # the store's own words are in the message itself, as clients and tests look for them
    (403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>", 401,
     "AccessDenied: Access Denied"),
    (403, b"<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided "
          b"does not exist in our records.</Message></Error>", 401,
     "InvalidAccessKeyId: The AWS Access Key Id you provided does not exist"),
    (403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we "
          b"calculated does not match</Message></Error>", 401, "SignatureDoesNotMatch: The request"),
    (401, b"", 401, "refused the credentials"),
    (401, b"", 401, "HTTP 401 Unauthorized"),
    (412, b"", 409, "object changed since manifest was written"),
    (500, b"boom", 502, "failed to serve"),
    (503, b"", 502, "failed to serve"),
    (504, b"", 504, "timed out"),
])
def test_status_mapping(status, body, want, words):
    with pytest.raises(StorageError) as e:
        read(lambda r: web.Response(status=status, body=body), 0, 4)
    assert e.value.status == want and words in str(e.value)
    assert "127.0.0.1:" in str(e.value) and "/obj" in str(e.value)
    if want == 409:
        assert isinstance(e.value, ObjectChangedError)


def test_slow_store_is_504():
    async def slow(request):
        await asyncio.sleep(2)
        return ranged(request)
    with pytest.raises(StorageError) as e:
        read(slow, 0, 4, read_timeout=0.2)
    assert e.value.status == 504 and "timed out" in str(e.value)


def test_unreachable_store_is_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = Upstream()
    with pytest.raises(StorageError) as e:
        asyncio.run(up.read(Target("http", f"http://127.0.0.1:{port}/x"), 0, 4, max_bytes=4))
    assert e.value.status == 502 and e.value.store == f"http://127.0.0.1:{port}"


def test_etag_pinning_sends_if_match_and_checks_the_answer():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return ranged(request, etag='"current"')
    assert read(handler, 0, 4, target=Target("http", "http://127.0.0.1/obj",
                                             etag="current")) == DATA[:4]
    assert seen["If-Match"] == '"current"'
    with pytest.raises(ObjectChangedError) as e:
        read(handler, 0, 4, target=Target("http", "http://127.0.0.1/obj", etag="old"))
    assert e.value.status == 409


def test_s3_requests_are_signed_and_versioned_without_leaking_the_secret():
    seen = {}

    def handler(request):
        seen["headers"] = dict(request.headers)
        seen["url"] = str(request.rel_url)
        return ranged(request)
    t = Target("s3", "http://127.0.0.1/bucket/a%20key", auth=("AKIDEXAMPLE", "very-secret"),
               version_id="v 1")
    read(handler, 0, 4, target=t)
    auth = seen["headers"]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "very-secret" not in str(seen) and "very-secret" not in repr(t)
    assert seen["url"] == "/bucket/a%20key?versionId=v%201"  # sent exactly as signed
    assert seen["headers"]["X-Amz-Content-SHA256"]


def test_http_basic_auth_passes_through():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return ranged(request)
    read(handler, 0, 4, target=Target("http", "http://127.0.0.1/obj", auth=("u", "p:w")))
    assert base64.b64decode(seen["Authorization"].split()[1]) == b"u:p:w"


def test_parse_basic_auth():
    tok = base64.b64encode(b"key:sec:ret").decode()
    assert parse_basic_auth(f"Basic {tok}") == ("key", "sec:ret")
    assert parse_basic_auth(None) is None
    for bad in ("Bearer x", "Basic ***", "Basic " + base64.b64encode(b"nocolon").decode()):
        with pytest.raises(StorageError) as e:
            parse_basic_auth(bad)
        assert e.value.status == 401


def test_allow_list():
    check_allowed("http://127.0.0.1:9000/b/k", ["127.0.0.1"])
    check_allowed("http://127.0.0.1:9000/b/k", ["127.0.0.1:9000"])
    check_allowed("https://[::1]:8443/x", ["[::1]:8443"])
    check_allowed("https://s3.example.org/x", ["*"])
    check_allowed("http://LOCALHOST/x", ["localhost:80"])
    for url, allow in (("http://127.0.0.1:9001/x", ["127.0.0.1:9000"]),
                       ("http://10.0.0.1/x", ["127.0.0.1", "localhost"]),
                       ("http://127.0.0.1.evil.com/x", ["127.0.0.1"])):
        with pytest.raises(StorageError) as e:
            check_allowed(url, allow)
        assert e.value.status == 403 and "allow-list" in str(e.value)
    for url in ("ftp://127.0.0.1/x", "127.0.0.1/x", "http://", "http://127.0.0.1:99999/x"):
        with pytest.raises(RequestValidationError):
            check_allowed(url, ["*"])


def test_s3_url_quotes_keys():
    assert s3_url("http://h:9/", "b", "dir/a b+c.nc") == "http://h:9/b/dir/a%20b%2Bc.nc"


def test_wildcard_does_not_reach_link_local_or_metadata():
    check_allowed("http://s3.example.org/x", ["*"])
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x",
                "http://[::ffff:169.254.169.254]/x", "http://metadata.google.internal/x",
                "http://100.100.100.200/x"):
        with pytest.raises(StorageError) as e:
            check_allowed(url, ["*"])
        assert e.value.status == 403
    check_allowed("http://169.254.169.254/x", ["*", "169.254.169.254"])  # explicit: allowed


@pytest.mark.parametrize("url", ["http://127.0.0.1/x\x00", "http://127.0.0.1/x\r\nX-Injected: 1",
                                 "http://127.0.0.1/x\ud800"])
def test_urls_with_control_characters_are_refused(url):
    with pytest.raises(RequestValidationError) as e:
        check_allowed(url, ["*"])
    assert e.value.field == "url"


def test_unencoded_keys_are_accepted():
    """The spec sends v2 URLs unencoded: spaces, brackets, commas and quotes in the key pass."""
    check_allowed('http://127.0.0.1:9000/b/a b[1],"q\'.nc', ["127.0.0.1"])


def test_virtual_hosted_urls():
    from activestorage.server.upstream import virtual_hosted

    assert virtual_hosted("https://s3.example.org/my-bucket/a/b%20c.nc?versionId=1") == \
        "https://my-bucket.s3.example.org/a/b%20c.nc?versionId=1"
    assert virtual_hosted("http://store.test:9000/bkt/k") == "http://bkt.store.test:9000/k"
    for bad in ("http://127.0.0.1:9000/bkt/k", "http://[::1]:9000/bkt/k",
                "http://store.test/Bad_Bucket/k", "http://store.test/my.bucket/k",
                "http://store.test/bkt"):
        with pytest.raises(RequestValidationError) as e:
            virtual_hosted(bad)
        assert "virtual" in str(e.value)  # RequestValidationError: a 400 naming the field


def test_virtual_hosted_s3_reads_dial_the_bucket_host_and_sign_it():
    """--s3-addressing-style virtual: the object is read from bucket.host/key, signed for that
    host, and only when the allow-list covers the bucket's host name."""
    from activestorage.server.allowlist import AllowList

    seen = {}

    async def handler(request):
        seen.update(host=request.headers["Host"], path=request.rel_url.path,
                    auth=request.headers.get("Authorization", ""))
        return ranged(request)

    async def fake_dns(host, port):
        assert host in ("bkt.store.test", "store.test")
        return ["127.0.0.1"]

    def main(entries):
        t = Target("s3", "http://store.test:{port}/bkt/a%20key", auth=("AKID", "secret"))
        return serve_and_read(handler, t, 2, 4, 100, addressing_style="virtual",
                              allow=AllowList(entries, resolve=fake_dns))

    assert asyncio.run(main(["store.test", "bkt.store.test"])) == DATA[2:6]
    assert seen["host"].startswith("bkt.store.test:") and seen["path"] == "/a key"
    assert seen["auth"].startswith("AWS4-HMAC-SHA256 ")
    with pytest.raises(StorageError) as e:  # the bucket's host is not on the allow-list
        asyncio.run(main(["store.test"]))
    assert e.value.status == 403 and "bkt.store.test" in str(e.value)
