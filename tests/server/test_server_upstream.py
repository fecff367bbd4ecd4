"""Upstream reads with an in-process fake store (httpx.MockTransport): status mapping, ranges,
short reads, ETags, SigV4 signing; and the allow-list / Basic-auth helpers."""

import asyncio
import base64

import httpx
import pytest

from activestorage.errors import ObjectChangedError, RequestValidationError, StorageError
from activestorage.server.upstream import (Target, Upstream, check_allowed, parse_basic_auth,
                                           s3_url)

DATA = bytes(range(200))


def fake_store(handler):
    """An Upstream whose every client talks to ``handler`` instead of the network."""
    up = Upstream(max_concurrency=4)
    up._client = lambda target: httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return up


def ranged(request: httpx.Request, etag: str = '"abc"') -> httpx.Response:
    rng = request.headers.get("range")
    if not rng:
        return httpx.Response(200, content=DATA, headers={"etag": etag})
    a, b = rng.removeprefix("bytes=").split("-")
    a, b = int(a), min(int(b) if b else len(DATA) - 1, len(DATA) - 1)
    if a >= len(DATA):
        return httpx.Response(416, headers={"content-range": f"bytes */{len(DATA)}"})
    return httpx.Response(206, content=DATA[a:b + 1], headers={
        "content-range": f"bytes {a}-{b}/{len(DATA)}", "etag": etag})


def read(up, target, offset, size, max_bytes=10_000):
    return asyncio.run(up.read(target, offset, size, max_bytes=max_bytes))


T = Target("http", "http://127.0.0.1:9/obj")


def test_range_reads_and_whole_object():
    up = fake_store(ranged)
    assert read(up, T, 10, 5) == DATA[10:15]
    assert read(up, T, 190, None) == DATA[190:]
    assert read(up, T, 0, None) == DATA
    with pytest.raises(StorageError) as e:
        read(up, T, 0, None, max_bytes=100)
    assert e.value.status == 413


def test_store_ignoring_range_is_sliced():
    up = fake_store(lambda r: httpx.Response(200, content=DATA))
    assert read(up, T, 50, 4) == DATA[50:54]


def test_past_the_end_and_short_reads():
    up = fake_store(ranged)
    for off, size in ((195, 10), (300, 4)):
        with pytest.raises(StorageError) as e:
            read(up, T, off, size)
        assert e.value.status == 400 and "past the end" in str(e.value) and "/obj" in str(e.value)
    truncated = fake_store(lambda r: httpx.Response(206, content=DATA[:3], headers={
        "content-range": "bytes 0-9/200"}))
    with pytest.raises(StorageError) as e:
        read(truncated, T, 0, 10)
    assert e.value.status == 502 and "short read" in str(e.value)


@pytest.mark.parametrize("status,body,want,words", [
    (404, b"<Error><Code>NoSuchKey</Code></Error>", 400, "object not found"),
    (404, b"<Error><Code>NoSuchBucket</Code></Error>", 400, "bucket not found"),
    (403, b"<Error><Code>AccessDenied</Code></Error>", 401, "refused the credentials"),
    (401, b"", 401, "refused the credentials"),
    (412, b"", 409, "object changed since manifest was written"),
    (500, b"boom", 502, "failed to serve"),
    (503, b"", 502, "failed to serve"),
    (504, b"", 504, "timed out"),
])
def test_status_mapping(status, body, want, words):
    up = fake_store(lambda r: httpx.Response(status, content=body))
    with pytest.raises(StorageError) as e:
        read(up, T, 0, 4)
    assert e.value.status == want and words in str(e.value)
    assert "127.0.0.1:9" in str(e.value)
    if want == 409:
        assert isinstance(e.value, ObjectChangedError)


@pytest.mark.parametrize("exc,status", [(httpx.ReadTimeout("slow"), 504),
                                        (httpx.ConnectTimeout("slow"), 504),
                                        (httpx.ConnectError("refused"), 502),
                                        (httpx.RemoteProtocolError("junk"), 502)])
def test_transport_failures(exc, status):
    def boom(request):
        raise exc
    with pytest.raises(StorageError) as e:
        read(fake_store(boom), T, 0, 4)
    assert e.value.status == status and e.value.store == "http://127.0.0.1:9"


def test_etag_pinning_sends_if_match_and_checks_the_answer():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return ranged(request, etag='"current"')
    up = fake_store(handler)
    assert read(up, Target("http", T.url, etag="current"), 0, 4) == DATA[:4]
    assert seen["if-match"] == '"current"'
    with pytest.raises(ObjectChangedError) as e:
        read(up, Target("http", T.url, etag="old"), 0, 4)
    assert e.value.status == 409


def test_s3_requests_are_signed_and_versioned_without_leaking_the_secret():
    seen = {}

    def handler(request):
        seen["headers"] = dict(request.headers)
        seen["url"] = str(request.url)
        return ranged(request)
    t = Target("s3", "http://127.0.0.1:9/bucket/key", auth=("AKIDEXAMPLE", "very-secret"),
               version_id="v 1")
    read(fake_store(handler), t, 0, 4)
    auth = seen["headers"]["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "very-secret" not in str(seen) and "very-secret" not in repr(t)
    assert seen["url"].endswith("?versionId=v%201")
    assert seen["headers"]["x-amz-content-sha256"]


def test_http_basic_auth_passes_through():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return ranged(request)
    read(fake_store(handler), Target("http", T.url, auth=("u", "p:w")), 0, 4)
    assert base64.b64decode(seen["authorization"].split()[1]) == b"u:p:w"


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
