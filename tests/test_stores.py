"""Byte stores: the factory, range reads against slicing, the one error translation, and guards
on the private attributes the body readers rely on (they fail when a dependency renames them)."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.errors import ObjectChangedError, StorageError, UnsupportedError
from activestorage.request import make_request
from activestorage.stores import merge_ranges, open_store, status_error
from activestorage.stores._body import _socket_reader
from activestorage.stores.http import HTTPStore
from activestorage.stores.local import LocalStore
from activestorage.stores.s3 import S3Store

BLOB = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "blob.bin"
    path.write_bytes(BLOB)
    return str(path)


@pytest.fixture(scope="module")
def http_url():
    """A loopback server answering Range GETs of BLOB with 206 and an ETag."""
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            if "Range" not in self.headers:  # a whole-object GET
                self.send_response(200)
                self.send_header("Content-Length", str(len(BLOB)))
                self.end_headers()
                self.wfile.write(BLOB)
                return
            a, b = self.headers["Range"].removeprefix("bytes=").split("-")
            body = BLOB[int(a):int(b) + 1]
            self.send_response(206)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"e1"')
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/blob"
    srv.shutdown()
    srv.server_close()


def test_open_store_picks_one_store_per_kind(blob_file, http_url):
    assert isinstance(open_store(blob_file), LocalStore)
    assert isinstance(open_store("file://" + blob_file), LocalStore)
    assert isinstance(open_store(http_url), HTTPStore)
    assert isinstance(open_store("s3://bucket/key", {"anon": True}), S3Store)
    with pytest.raises(StorageError, match="unsupported URL scheme"):
        open_store("ftp://host/x")


@settings(max_examples=100, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, len(BLOB) - 1), st.integers(1, 3000)),
                      min_size=1, max_size=20), gap=st.integers(0, 5000))
def test_local_read_ranges_equal_slicing(blob_file, spans, gap):
    spans = [(a, min(n, len(BLOB) - a)) for a, n in spans]
    reqs = [make_request("u1", (n,), offset=a, size=n, url=blob_file) for a, n in spans]
    counted = []
    with LocalStore(account=lambda **kw: counted.append(kw)) as store:
        got = store.read_ranges(reqs, max_gap=gap)
        assert store.size(blob_file) == len(BLOB)
    assert [bytes(g) for g in got] == [BLOB[a:a + n] for a, n in spans]
    assert len(counted) == len(merge_ranges(reqs, max_gap=gap))


def test_http_store_reads_pins_and_sizes(http_url):
    with open_store(http_url) as store:
        assert bytes(store.read_range(http_url, 10, 300)) == BLOB[10:300]
        assert bytes(store.read_range(http_url, 10, 300, etag="e1")) == BLOB[10:300]
        with pytest.raises(ObjectChangedError):
            store.read_range(http_url, 10, 300, etag="e2")
        assert store.size(http_url) == len(BLOB)


def test_local_store_errors_name_the_file(blob_file, tmp_path):
    with LocalStore() as store, pytest.raises(StorageError, match="cannot open") as ei:
        store.read_range(str(tmp_path / "nope"), 0, 4)
    assert ei.value.status == 400
    with LocalStore() as store, pytest.raises(StorageError, match="short read"):
        store.read_range(blob_file, len(BLOB) - 4, len(BLOB) + 4)


@pytest.mark.parametrize("http, status, kind", [
    (412, 409, ObjectChangedError), (404, 404, StorageError), (403, 401, StorageError),
    (401, 401, StorageError), (416, 400, StorageError), (500, 502, StorageError),
    (503, 502, StorageError), (504, 504, StorageError), (None, 502, StorageError)])
def test_one_translation_of_store_statuses(http, status, kind):
    err = status_error("s3://b/k", http, code="Code", message="words")
    assert type(err) is kind and err.status == status and "s3://b/k" in str(err)
    assert err.store == "s3://b/k"
    if http in (404, 401, 403, 500):
        assert "Code: words" in str(err)  # the store's own words
    server = status_error("http://h:1/b/k", http, store="http://h:1", not_found=400)
    assert server.store == "http://h:1" and "http://h:1/b/k" in str(server)
    assert server.status == (400 if http == 404 else status)


def test_s3_error_codes_translate_like_statuses():
    from botocore.exceptions import ClientError

    from activestorage.stores.s3 import s3_error

    for code, status in [("NoSuchKey", 404), ("AccessDenied", 401), ("PreconditionFailed", 409),
                         ("SlowDown", 502)]:
        exc = ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject")
        assert s3_error(exc, "s3://b/k").status == status


def test_urllib3_attributes_the_socket_reader_relies_on(http_url):
    """``_socket_reader`` reads urllib3's private ``_fp``, ``_fp_bytes_read`` and
    ``_decoded_buffer``: if urllib3 renames any, this fails (and the reader must be revisited)."""
    import requests

    with requests.get(http_url, headers={"Range": "bytes=0-99"}, stream=True) as resp:
        raw = resp.raw
        for name in ("_fp", "_fp_bytes_read", "_decoded_buffer"):
            assert hasattr(raw, name), name
        assert _socket_reader(raw) is not None  # an unread body sent as is: read from the socket
        raw.read(1)
        assert _socket_reader(raw) is None  # once the client has read some, it is the client's


def test_botocore_streaming_body_keeps_the_raw_stream():
    """The S3 store reaches the urllib3 response through ``StreamingBody._raw_stream``."""
    from botocore.response import StreamingBody

    raw = io.BytesIO(b"abc")
    assert StreamingBody(raw, 3)._raw_stream is raw


def test_local_store_lists_and_reads_whole_objects(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.json").write_bytes(b"{}")
    (tmp_path / "a" / "b" / "0.0").write_bytes(BLOB[:100])
    with LocalStore(missing_status=404) as store:
        found = store.find(str(tmp_path / "a"))
        assert {k: v.size for k, v in found.items()} == {
            str(tmp_path / "a" / "x.json"): 2, str(tmp_path / "a" / "b" / "0.0"): 100}
        assert sorted(store.list_dir(str(tmp_path / "a"))) == ["b", "x.json"]
        assert store.list_dir(str(tmp_path / "nowhere")) == []
        assert store.read_object(str(tmp_path / "a" / "b" / "0.0")) == BLOB[:100]
        with pytest.raises(StorageError) as err:
            store.read_object(str(tmp_path / "a" / "missing"))
        assert err.value.status == 404 and "missing" in str(err.value)


def test_http_store_reads_whole_objects_and_cannot_list(http_url):
    with HTTPStore() as store:
        assert bytes(store.read_object(http_url)) == BLOB
        with pytest.raises(UnsupportedError, match="cannot be listed"):
            store.find(http_url)
