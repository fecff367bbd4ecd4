"""Every error the issue lists, against real processes: validation rules, bad JSON, credentials,
missing objects, ranges past the end, unreachable and hanging stores, limits, pinned objects;
plus operability (metrics, OpenAPI, TLS) and that no secret ever reaches a log."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path
from typing import Any, Iterator

import cbor2
import numpy as np
import pytest
import requests

from servers import (NGINX_PASSWORD, NGINX_USER, S3_KEY, S3_SECRET, ServerProcess, free_port,
                     start_active_server, start_moto_with_auth)

BUCKET = "errors"
X = np.arange(10, dtype=np.float64)


@pytest.fixture(scope="module")
def env(s3, moto_server, nginx_server, active_server) -> dict[str, Any]:
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="x.f8", Body=X.tobytes())
    root = nginx_server.extra["docroot"]
    (root / "x.f8").write_bytes(X.tobytes())
    (root / "private" / "x.f8").write_bytes(X.tobytes())
    return {"s3": f"{moto_server.url}/{BUCKET}/x.f8", "http": f"{nginx_server.url}/x.f8",
            "private": f"{nginx_server.url}/private/x.f8", "moto": moto_server.url,
            "server": active_server.url}


def body(env: dict[str, Any], **changes: Any) -> dict[str, Any]:
    b = {"interface_type": "s3", "url": env["s3"], "dtype": "float64", "size": 80, "shape": [10]}
    b.update(changes)
    return {k: v for k, v in b.items() if v is not None}


def post(url: str, payload: Any, auth: Any = (S3_KEY, S3_SECRET), raw: bytes | None = None,
         **kw: Any) -> requests.Response:
    data = raw if raw is not None else json.dumps(payload)
    headers = kw.pop("headers", {"content-type": "application/json"})
    return requests.post(url, data=data, auth=auth, headers=headers, timeout=30, **kw)


def assert_error(r: requests.Response, status: int, *words: str) -> str:
    """The spec's error shape, the status, and the words the message must contain."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert isinstance(err["message"], str) and set(err) <= {"message", "caused_by"}
    text = err["message"] + " " + " ".join(err.get("caused_by", []))
    for w in words:
        assert w in text, (w, text)
    assert "Traceback" not in r.text
    return text


VALIDATION = [
    ({"dtype": None}, "dtype"),
    ({"dtype": "float16"}, "dtype"),
    ({"dtype": 5}, "dtype"),
    ({"byte_order": "middle"}, "byte_order"),
    ({"offset": -1}, "offset"),
    ({"offset": 1.5}, "offset"),
    ({"size": 0}, "size"),
    ({"size": 81, "shape": None}, "not a multiple"),
    ({"size": 72}, "do not match shape"),
    ({"shape": [0]}, "shape[0]"),
    ({"shape": []}, "shape"),
    ({"shape": "10"}, "shape"),
    ({"shape": None, "size": None, "compression": {"id": "zlib"}}, "shape"),
    ({"order": "X"}, "order"),
    ({"selection": [[0, 10, 0]]}, "stride must not be zero"),
    ({"selection": [[0, 10, 1], [0, 1, 1]]}, "shape has 1"),
    ({"selection": [[0, 10]]}, "selection[0]"),
    ({"shape": None, "selection": [[0, 10, 1]]}, "requires shape"),
    ({"axis": 1}, "out of range"),
    ({"axis": [0, 0], "shape": [2, 5]}, "duplicate"),
    ({"axis": "0"}, "axis"),
    ({"shape": None, "axis": 0}, "requires shape"),
    ({"compression": {"id": "lzma"}}, "compression"),
    ({"compression": "zlib"}, "compression"),
    ({"filters": [{"id": "foo"}]}, "filters[0]"),
    ({"filters": [{"id": "shuffle", "element_size": 0}]}, "filters[0]"),
    ({"dtype": "int8", "size": 10, "missing": {"missing_value": 300}}, "not representable"),
    ({"missing": {"fill": 1}}, "unknown key"),
    ({"missing": {"valid_range": [5, 1]}}, "strictly below"),
    ({"missing": {"valid_range": [5, 5]}}, "strictly below"),
    ({"dtype": "int64", "missing": {"missing_value": -1.0}}, "missing"),
    ({"missing": {"missing_values": []}}, "missing_values"),
    ({"missing": {"missing_value": "a"}}, "must be a number"),
    ({"interface_type": "ftp"}, "interface_type"),
    ({"interface_type": None}, "interface_type"),
    ({"url": None}, "url"),
    ({"url": "ftp://127.0.0.1/x"}, "url"),
    ({"interface_type": "https", "url": "s3://bucket/key"}, "url"),
    ({"option_wide_sum": "yes"}, "option_wide_sum"),
]


@pytest.mark.parametrize("change,words", VALIDATION, ids=[w for _, w in VALIDATION])
def test_validation_rules_give_400_naming_the_field(env, change, words):
    r = post(env["server"] + "/v2/sum", body(env, **change))
    assert_error(r, 400, words)


def test_https_interface_type_with_an_http_url_is_served(env):
    """PyActiveStorage 0.8 says interface_type "https" for every HTTP store; the URL decides."""
    ok = post(env["server"] + "/v2/sum", body(env, interface_type="http", url=env["http"]))
    assert ok.status_code == 200, ok.text
    r = post(env["server"] + "/v2/sum", body(env, interface_type="https", url=env["http"]))
    assert r.status_code == 200, r.text
    assert r.content == ok.content


@pytest.mark.parametrize("missing", ["source", "bucket", "object"])
def test_v1_routing_fields_are_required(env, missing):
    b = {"source": env["moto"], "bucket": BUCKET, "object": "x.f8", "dtype": "float64", "size": 80}
    del b[missing]
    assert_error(post(env["server"] + "/v1/sum/", b), 400, missing)


def test_bad_json_and_non_object_bodies(env):
    url = env["server"] + "/v2/sum"
    assert_error(post(url, None, raw=b'{"dtype": "float64",'), 400, "malformed JSON")
    assert_error(post(url, None, raw=b"\xff\xfe"), 400, "malformed JSON")
    assert_error(post(url, [1, 2]), 400, "body")
    assert_error(post(env["server"] + "/v2/batch/sum", None, raw=b"\x9f\x00",
                      headers={"content-type": "application/cbor"}), 400, "CBOR")
    assert_error(post(env["server"] + "/v2/batch/sum", {"requests": {}}), 400, "requests")


def test_unknown_operation_path_and_method(env):
    s = env["server"]
    assert_error(post(s + "/v2/mean", body(env)), 404, "unknown operation")
    assert_error(post(s + "/v1/median/", body(env)), 404, "unknown operation")
    assert_error(post(s + "/v2/batch/mean", {"requests": []}), 404, "unknown operation")
    assert_error(post(s + "/v3/sum", body(env)), 404, "/v3/sum")
    assert_error(requests.get(s + "/nowhere", timeout=10), 404)
    assert_error(requests.get(s + "/v2/sum", timeout=10), 405)


def test_wrong_credentials_http_store(env):
    url = env["server"] + "/v2/sum"
    ok = body(env, interface_type="http", url=env["private"])
    assert post(url, ok, auth=(NGINX_USER, NGINX_PASSWORD)).status_code == 200
    assert_error(post(url, ok, auth=(NGINX_USER, "wrong-password")), 401, "credentials",
                 env["private"].split("//")[1])
    assert_error(post(url, ok, auth=None), 401, "credentials")
    assert_error(post(url, ok, auth=None, headers={"content-type": "application/json",
                                                   "authorization": "Basic !!notbase64"}), 401,
                 "Basic")


@pytest.fixture(scope="module")
def moto_auth(servers_dir: Path) -> Iterator[ServerProcess]:
    proc = start_moto_with_auth(servers_dir / "moto-auth")
    yield proc
    proc.stop()


def test_wrong_credentials_s3_store(env, moto_auth):
    from servers import s3_client

    key, secret = moto_auth.extra["key"], moto_auth.extra["secret"]
    c = s3_client(moto_auth.url, key, secret)
    c.create_bucket(Bucket="guarded")
    c.put_object(Bucket="guarded", Key="x.f8", Body=X.tobytes())
    b = body(env, url=f"{moto_auth.url}/guarded/x.f8")
    url = env["server"] + "/v2/sum"
    r = post(url, b, auth=(key, secret))
    assert r.status_code == 200, r.text
    assert np.frombuffer(cbor2.loads(r.content)["bytes"], "<f8")[0] == X.sum()
    assert_error(post(url, b, auth=(key, "not-the-secret")), 401, "credentials", "guarded/x.f8",
                 "SignatureDoesNotMatch")
    assert_error(post(url, b, auth=("AKIANOSUCHKEY", "x")), 401, "InvalidAccessKeyId")
    v1 = {"source": moto_auth.url, "bucket": "guarded", "object": "x.f8", "dtype": "float64",
          "size": 80}
    assert_error(post(env["server"] + "/v1/max/", v1, auth=(key, "bad")), 401, "credentials")
    assert post(env["server"] + "/v1/max/", v1, auth=(key, secret)).status_code == 200


def test_anonymous_read_of_public_object(env, s3):
    s3.put_object(Bucket=BUCKET, Key="public.f8", Body=X.tobytes(), ACL="public-read")
    r = post(env["server"] + "/v2/max", body(env, url=f"{env['moto']}/{BUCKET}/public.f8"), auth=None)
    assert r.status_code == 200, r.text
    assert np.frombuffer(cbor2.loads(r.content)["bytes"], "<f8")[0] == 9.0
    assert_error(post(env["server"] + "/v2/max", body(env), auth=None), 401, "credentials")


def test_missing_object_and_bucket(env):
    url = env["server"] + "/v2/sum"
    assert_error(post(url, body(env, url=f"{env['moto']}/{BUCKET}/nope.f8")), 400,
                 "object not found", f"{BUCKET}/nope.f8", "NoSuchKey")
    assert_error(post(url, body(env, url=f"{env['moto']}/no-such-bucket/x.f8")), 400,
                 "bucket not found", "NoSuchBucket")
    assert_error(post(url, body(env, interface_type="http", url=env["http"] + ".missing")), 400,
                 "not found", "x.f8.missing")
    v1 = {"source": env["moto"], "bucket": BUCKET, "object": "nope", "dtype": "float64", "size": 8}
    assert_error(post(env["server"] + "/v1/sum/", v1), 400, "not found")


@pytest.mark.parametrize("where", ["s3", "http"])
def test_range_past_the_end(env, where):
    url = env["server"] + "/v2/sum"
    it = "s3" if where == "s3" else "http"
    assert_error(post(url, body(env, interface_type=it, url=env[where], offset=40)), 400,
                 "past the end", "x.f8")
    assert_error(post(url, body(env, interface_type=it, url=env[where], offset=800)), 400,
                 "past the end", "x.f8")


def test_unreachable_store(env):
    port = free_port()  # nothing listens here
    url = f"http://127.0.0.1:{port}/bucket/x.f8"
    assert_error(post(env["server"] + "/v2/sum", body(env, url=url)), 502, "unreachable",
                 f"127.0.0.1:{port}")


def test_store_not_on_allow_list(env):
    r = post(env["server"] + "/v2/sum", body(env, url="http://192.0.2.1/bucket/x.f8"))
    assert_error(r, 403, "allow-list", "192.0.2.1")
    r = post(env["server"] + "/v1/sum/", {"source": "http://192.0.2.1", "bucket": "b",
                                          "object": "o", "dtype": "float64", "size": 8})
    assert_error(r, 403, "allow-list")


# ------------------------------------------------------------ a server with tight limits

@pytest.fixture(scope="module")
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung store)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def limited(servers_dir: Path) -> Iterator[ServerProcess]:
    proc = start_active_server(
        servers_dir / "limited", "--upstream-read-timeout", "0.5", "--upstream-connect-timeout",
        "0.5", "--max-body-bytes", "4096", "--max-bytes-in-flight", "100000", "--max-batch", "4",
        "--client-timeout", "1", "--log-level", "debug")
    yield proc
    proc.stop()


def test_hanging_store_times_out_with_504(env, limited, black_hole):
    r = post(limited.url + "/v2/sum", body(env, url=f"http://127.0.0.1:{black_hole}/b/x.f8"))
    assert_error(r, 504, "timed out", f"127.0.0.1:{black_hole}")


def test_oversized_bodies_get_413(env, limited):
    big = body(env, padding="x" * 5000)
    assert_error(post(limited.url + "/v2/sum", big), 413, "4096")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit must hold while streaming
        data = json.dumps(big).encode()
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    r = requests.post(limited.url + "/v2/sum", data=chunks(), timeout=30,
                      headers={"content-type": "application/json"})
    assert_error(r, 413, "4096")


def test_memory_limit_refuses_what_can_never_fit(env, limited):
    r = post(limited.url + "/v2/sum", body(env, shape=[50000], size=400000))
    assert_error(r, 413, "max-bytes-in-flight")
    assert post(limited.url + "/v2/sum", body(env)).status_code == 200


def test_batch_limits_and_item_errors(env, limited):
    one = body(env)
    assert_error(post(limited.url + "/v2/batch/sum", {"requests": [one] * 5}), 413, "max_batch")
    r = post(limited.url + "/v2/batch/sum",
             {"requests": [one, one, body(env, selection=[[0, 10, 0]])]})
    assert_error(r, 400, "requests[2].selection[0]", "stride")
    r = post(limited.url + "/v2/batch/sum",
             {"requests": [one, body(env, url=f"{env['moto']}/{BUCKET}/gone.f8"), one]})
    assert_error(r, 400, "requests[1]", f"{BUCKET}/gone.f8")
    r = post(limited.url + "/v2/batch/sum", {"requests": [one, body(env, offset=800)]})
    assert_error(r, 400, "requests[1]", "past the end")
    r = post(limited.url + "/v2/batch/count", {"requests": []})
    assert r.status_code == 200 and cbor2.loads(r.content) == {"results": []}


def test_pinned_object_changed_gives_409(env, s3):
    key = "pinned.f8"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=X.tobytes())["ETag"].strip('"')
    b = body(env, url=f"{env['moto']}/{BUCKET}/{key}", etag=etag)
    assert post(env["server"] + "/v2/sum", b).status_code == 200
    s3.put_object(Bucket=BUCKET, Key=key, Body=(X + 1).tobytes())
    assert_error(post(env["server"] + "/v2/sum", b), 409,
                 "object changed since manifest was written", f"{BUCKET}/{key}")
    # nginx: a wrong ETag is refused the same way (412 from If-Match)
    r = post(env["server"] + "/v2/sum", body(env, interface_type="http", url=env["http"],
                                             etag="not-the-etag"))
    assert_error(r, 409, "object changed", "x.f8")


def test_version_id_reads_the_pinned_version(env, s3):
    s3.create_bucket(Bucket="versioned")
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="versioned", Key="x.f8", Body=X.tobytes())["VersionId"]
    s3.put_object(Bucket="versioned", Key="x.f8", Body=(X * 10).tobytes())
    url = f"{env['moto']}/versioned/x.f8"
    old = post(env["server"] + "/v2/sum", body(env, url=url, version_id=v1))
    new = post(env["server"] + "/v2/sum", body(env, url=url))
    assert np.frombuffer(cbor2.loads(old.content)["bytes"], "<f8")[0] == X.sum()
    assert np.frombuffer(cbor2.loads(new.content)["bytes"], "<f8")[0] == 10 * X.sum()


def test_corrupt_chunk_is_a_400_naming_the_object(env):
    r = post(env["server"] + "/v2/sum", body(env, compression={"id": "zlib"}, size=80))
    assert_error(r, 400, "x.f8", "zlib")


# --------------------------------------------------------------------------- operability

def test_metrics_openapi_docs_healthz(env):
    s = env["server"]
    assert requests.get(s + "/healthz", timeout=10).json()["status"] == "ok"
    text = requests.get(s + "/metrics", timeout=10).text
    for name in ("activestorage_requests_total", "activestorage_request_seconds_bucket",
                 "activestorage_upstream_bytes_total", "activestorage_response_bytes_total",
                 "activestorage_errors_total", "activestorage_bytes_in_flight"):
        assert name in text
    assert 'activestorage_errors_total{kind="validation"}' in text
    spec = requests.get(s + "/openapi.json", timeout=10).json()
    assert {"/v1/{operation}/", "/v2/{operation}", "/v2/batch/{operation}"} <= set(spec["paths"])
    v2 = spec["paths"]["/v2/{operation}"]["post"]["requestBody"]["content"]["application/json"]
    assert "interface_type" in v2["schema"]["properties"]
    assert "swagger" in requests.get(s + "/docs", timeout=10).text.lower()


def test_no_secret_in_any_log(env, limited, active_server, moto_auth):
    """Credentials sent (right or wrong) never appear in the servers' logs, even at debug."""
    secrets = [S3_SECRET, NGINX_PASSWORD, "wrong-password-zz9", "not-the-secret",
               moto_auth.extra["secret"]]
    for srv in (limited.url, env["server"]):
        for sec in secrets:
            post(srv + "/v2/sum", body(env), auth=(S3_KEY, sec))
            post(srv + "/v2/sum", body(env, interface_type="http", url=env["private"]),
                 auth=(NGINX_USER, sec))
            post(srv + "/v2/sum", body(env, url=f"{moto_auth.url}/guarded/x.f8"),
                 auth=(moto_auth.extra["key"], sec))
    for proc in (limited, active_server):
        log = proc.log_text()
        assert "/v2/sum" in log  # the access log is there ...
        for sec in secrets:
            assert sec not in log  # ... and the secrets are not


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(env, tmp_path):
    import subprocess
    import sys
    import time

    cert, key = _self_signed(tmp_path)
    port = free_port()
    log = open(tmp_path / "tls.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "activestorage.server", "--port", str(port),
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert), timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "tls.log").read_text()
                time.sleep(0.1)
        assert r.json()["status"] == "ok"
        r = requests.post(f"https://127.0.0.1:{port}/v2/max", data=json.dumps(body(env)),
                          auth=(S3_KEY, S3_SECRET), verify=str(cert), timeout=30)
        assert np.frombuffer(cbor2.loads(r.content)["bytes"], "<f8")[0] == 9.0
    finally:
        # uvicorn keeps TLS connections a client dropped without close_notify until its 10 s
        # graceful-shutdown timeout; don't spend that here (plain-HTTP shutdown is checked below).
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_graceful_shutdown(servers_dir):
    """SIGTERM: the server stops accepting, runs its shutdown (closing upstream clients), exits."""
    proc = start_active_server(servers_dir / "shutdown")
    assert requests.get(proc.url + "/healthz", timeout=10).status_code == 200
    proc.stop()
    assert proc.proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in proc.log_text()


def test_multiple_workers_serve_and_log(env, servers_dir):
    proc = start_active_server(servers_dir / "workers", "--workers", "2")
    try:
        for _ in range(4):
            r = post(proc.url + "/v2/max", body(env))
            assert np.frombuffer(cbor2.loads(r.content)["bytes"], "<f8")[0] == 9.0
    finally:
        proc.stop()
    assert proc.log_text().count('"path": "/v2/max"') == 4


def test_slow_clients_are_cut_off(limited):
    """Slowloris: headers dripped past --client-timeout close the connection; a dripped body is 408."""
    import time

    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        t0 = time.monotonic()
        closed_after = None
        for ch in b"POST /v2/sum HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([ch]))
                time.sleep(0.2)
                s.setblocking(False)
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - t0
                break
            finally:
                s.setblocking(True)
        assert closed_after is not None and closed_after < 5, closed_after

    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        s.sendall(b"POST /v2/sum HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        answer = b""
        while b"client-timeout" not in answer:  # headers and body may arrive separately
            part = s.recv(4096)
            if not part:
                break
            answer += part
        assert answer.startswith(b"HTTP/1.1 408") and b"client-timeout" in answer, answer[:300]
        assert time.monotonic() - t0 < 5
