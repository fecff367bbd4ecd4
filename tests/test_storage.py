"""storage: S3 option resolution, URL kinds, and open_url's counted, cached file objects."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.errors import StorageError
from activestorage.storage import (open_url, resolve_s3_options, s3_endpoint, split_s3_url,
                                   url_kind)


# --------------------------------------------------------------------------- options

def test_env_fills_in_what_options_do_not_say():
    env = {"AWS_ENDPOINT_URL": "http://env:9000", "AWS_ACCESS_KEY_ID": "EK",
           "AWS_SECRET_ACCESS_KEY": "ES", "AWS_SESSION_TOKEN": "ET", "AWS_DEFAULT_REGION": "eu-x-1"}
    o = resolve_s3_options(None, env)
    assert (o["endpoint_url"], o["key"], o["secret"], o["token"]) == ("http://env:9000", "EK", "ES", "ET")
    assert o["client_kwargs"] == {"region_name": "eu-x-1"} and o["anon"] is False
    assert resolve_s3_options(None, {**env, "AWS_REGION": "r2"})["client_kwargs"]["region_name"] == "r2"
    assert resolve_s3_options(None, {**env, "AWS_ENDPOINT_URL_S3": "http://s3only"})[
        "endpoint_url"] == "http://s3only"


def test_explicit_options_win_and_keep_s3fs_meaning():
    env = {"AWS_ENDPOINT_URL": "http://env:9000/", "AWS_ACCESS_KEY_ID": "EK",
           "AWS_SECRET_ACCESS_KEY": "ES", "AWS_REGION": "env-region"}
    o = resolve_s3_options({"key": "K", "secret": "S", "requester_pays": True,
                            "client_kwargs": {"endpoint_url": "http://mine:1/",
                                              "region_name": "mine"}}, env)
    assert (o["endpoint_url"], o["key"], o["secret"]) == ("http://mine:1", "K", "S")
    assert o["client_kwargs"] == {"region_name": "mine"} and o["requester_pays"] is True
    assert resolve_s3_options({"endpoint_url": "http://top"}, env)["endpoint_url"] == "http://top"
    anon = resolve_s3_options({"anon": True}, env)
    assert anon["anon"] is True and anon["key"] is None and anon["secret"] is None
    assert resolve_s3_options({}, {})["endpoint_url"] is None


def test_endpoint_and_url_helpers():
    assert s3_endpoint({"endpoint_url": "http://x:1/"}) == "http://x:1"
    assert s3_endpoint({"client_kwargs": {"region_name": "eu-west-2"}}) == \
        "https://s3.eu-west-2.amazonaws.com"
    assert s3_endpoint({}) == "https://s3.amazonaws.com"
    assert [url_kind(u) for u in ("s3://b/k", "http://h/x", "https://h/x", "/p", "file:///p",
                                  "rel/p")] == ["s3", "http", "https", "file", "file", "file"]
    assert split_s3_url("s3://bkt/a/b.nc") == ("bkt", "a/b.nc")
    with pytest.raises(StorageError):
        url_kind("gopher://h/x")
    with pytest.raises(StorageError):
        split_s3_url("s3://bucket-only")


# ------------------------------------------------------------------------ open_url

def test_local_file_counts_reads_and_h5py_reads_it(tmp_path):
    path = tmp_path / "f.h5"
    data = np.arange(1000, dtype="f4").reshape(10, 100)
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(5, 50))
    with open_url(str(path)) as fo, h5py.File(fo, "r") as h:
        np.testing.assert_array_equal(h["v"][...], data)
        assert fo.stats.requests > 0 and fo.stats.bytes_read > 0
    with pytest.raises(StorageError) as ei:
        open_url(str(tmp_path / "missing.nc"))
    assert ei.value.status == 404


class RangeServer:
    """An in-process HTTP server answering Range GETs over one object; counts GETs."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.gets = 0
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _headers(self, code: int, length: int, extra: dict) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"abc"')
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def _missing(self) -> bool:
                if self.path == "/obj":
                    return False
                self._headers(404, 0, {})
                return True

            def do_HEAD(self) -> None:
                if not self._missing():
                    self._headers(200, len(srv.blob), {})

            def do_GET(self) -> None:
                if self._missing():
                    return
                srv.gets += 1
                rng = self.headers.get("Range")
                if rng is None:
                    self._headers(200, len(srv.blob), {})
                    self.wfile.write(srv.blob)
                    return
                a, b = rng.split("=")[1].split("-")
                a, b = int(a), min(int(b), len(srv.blob) - 1)
                body = srv.blob[a:b + 1]
                self._headers(206, len(body),
                              {"Content-Range": f"bytes {a}-{b}/{len(srv.blob)}"})
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/obj"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def range_server():
    blob = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    srv = RangeServer(blob)
    yield srv
    srv.close()


@settings(max_examples=30, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 299_999), st.integers(0, 70_000)), min_size=1,
                      max_size=12))
def test_http_reads_are_exact_cached_and_counted(range_server, reads):
    before = range_server.gets
    with open_url(range_server.url, {"key": "ignored-s3-option"}, block_size=16384) as f:
        assert f.size == len(range_server.blob) and f.etag == "abc"
        blocks = set()
        for start, n in reads:
            f.seek(start)
            assert f.read(n) == range_server.blob[start:start + n]
            end = min(start + n, f.size)
            blocks.update(range(start // 16384, (end - 1) // 16384 + 1) if end > start else ())
        # every block is fetched once (cache), and the stats say exactly what crossed the wire
        assert f.stats.requests - 1 == range_server.gets - before == len(blocks)
        assert f.stats.bytes_read == sum(min(16384, f.size - b * 16384) for b in blocks)


def test_http_missing_or_down_is_typed(range_server):
    with pytest.raises(StorageError) as ei:
        open_url(range_server.url + "-missing")
    assert ei.value.status == 404 and "obj-missing" in str(ei.value)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError) as ei:
        open_url(f"http://127.0.0.1:{port}/x.nc", timeout=2)
    assert ei.value.status == 502 and f"127.0.0.1:{port}" in str(ei.value)
