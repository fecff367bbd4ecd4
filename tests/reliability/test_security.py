"""Security of the server and SDK, against real processes on loopback.

* Credentials (S3 secrets, HTTP Basic passwords, in headers or URL userinfo) never appear in the
  server's log (debug level, access log on) nor in any response, and never in SDK errors.
* The upstream allow-list blocks every host not on it: other loopback addresses and ports, names
  that resolve to a blocked address (``localhost`` and this machine's name from /etc/hosts),
  numeric/encoded IP spellings, userinfo/fragment tricks, redirects to other hosts, link-local and
  metadata addresses, ``file://`` and other schemes. A counting proxy proves nothing was fetched.
* A caller whose credentials cannot read an object never gets it, even right after an authorised
  caller read it (moto with IAM enforced: two users; nginx Basic auth), also concurrently.
* TLS: ``activestorage serve --tls-cert/--tls-key`` with a CA generated here; the SDK verifies it
  with ``verify=<ca bundle>`` and refuses without.
* A wrong secret is refused by the store and reported as 401.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cbor2
import numpy as np
import pytest
import requests

from faultproxy import FaultProxy
from relhelp import error_body, server_alive
from servers import (NGINX_PASSWORD, NGINX_USER, ServerProcess, free_port, make_ca_and_cert,
                     s3_client, start_active_server, start_moto)

from activestorage.backends.server import ServerBackend
from activestorage.errors import ServerError
from activestorage.request import make_request

pytestmark = pytest.mark.timeout(300)

TIMEOUT = (5, 30)
MARK = "Zq7-LEAKCHECK-"  # every fake secret carries it, so a leak is easy to find


# ------------------------------------------------------------------------ moto with IAM

@pytest.fixture(scope="module")
def iam_moto(rel_dir):
    """moto enforcing auth: 'admin' may do anything, 'limited' may only read bucket 'open'."""
    import boto3

    proc = start_moto(rel_dir / "iam-moto", env={"INITIAL_NO_AUTH_ACTION_COUNT": "6"})
    iam = boto3.client("iam", endpoint_url=proc.url, aws_access_key_id="x",
                       aws_secret_access_key="x", region_name="us-east-1")
    keys = {}
    for user, stmt in [("admin", {"Effect": "Allow", "Action": "*", "Resource": "*"}),
                       ("limited", {"Effect": "Allow", "Action": "s3:GetObject",
                                    "Resource": "arn:aws:s3:::open/*"})]:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [stmt]}))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    admin = s3_client(proc.url, *keys["admin"])
    data = np.arange(1024, dtype="<i4")
    for bucket in ("open", "closed"):
        admin.create_bucket(Bucket=bucket)
        admin.put_object(Bucket=bucket, Key="a.bin", Body=data.tobytes())
    yield {"url": proc.url, "keys": keys, "data": data}
    proc.stop()


@pytest.fixture(scope="module")
def sec_server(rel_dir):
    """Our server at debug log level with the access log on: the most it will ever log."""
    proc = start_active_server(rel_dir / "sec-server", "--log-level", "debug")
    yield proc
    proc.stop()


def _post(server_url, path, body, auth=None, headers=None, verify=True):
    h = {"content-type": "application/json", **(headers or {})}
    return requests.post(server_url + path, data=json.dumps(body), auth=auth, headers=h,
                         timeout=TIMEOUT, verify=verify)


def _value(resp) -> int:
    m = cbor2.loads(resp.content)
    return int(np.frombuffer(m["bytes"], m["dtype"])[0])


def test_wrong_secret_is_401_and_no_credential_is_ever_echoed(sec_server, iam_moto, store,
                                                              rel_nginx):
    key, secret = iam_moto["keys"]["admin"]
    fake = MARK + "wrong-secret-value"
    s3_body = {"interface_type": "s3", "url": f"{iam_moto['url']}/open/a.bin", "dtype": "int32",
               "shape": [1024]}
    v1_body = {"source": iam_moto["url"], "bucket": "open", "object": "a.bin", "dtype": "int32",
               "shape": [1024]}
    priv = {"interface_type": "http", "url": f"{store.nginx}/private/f64.bin",
            "dtype": "float64", "shape": [4096]}
    responses = []

    r = _post(sec_server.url, "/v2/sum", s3_body, auth=(key, secret))
    assert r.status_code == 200 and _value(r) == int(iam_moto["data"].sum())
    responses.append(r)
    for body, path in ((s3_body, "/v2/sum"), (v1_body, "/v1/sum/")):
        r = _post(sec_server.url, path, body, auth=(key, fake))
        assert r.status_code == 401, r.content[:300]
        assert "credentials" in error_body(r)["message"]
        responses.append(r)
        r = _post(sec_server.url, path, body, auth=(MARK + "no-such-key", fake))
        assert r.status_code == 401, r.content[:300]
        responses.append(r)
    # HTTP store: Basic auth passed through; wrong password -> 401
    r = _post(sec_server.url, "/v2/max", priv, auth=(NGINX_USER, NGINX_PASSWORD))
    assert r.status_code == 200
    r = _post(sec_server.url, "/v2/max", priv, auth=(NGINX_USER, fake))
    assert r.status_code == 401 and "credentials" in error_body(r)["message"]
    responses.append(r)
    # credentials in URL userinfo, in a failing request
    leaky = dict(priv, url=f"http://{NGINX_USER}:{fake}@127.0.0.1:{rel_nginx.port}/private/nope")
    responses.append(_post(sec_server.url, "/v2/max", leaky))
    leaky_s3 = dict(s3_body, url=f"http://{key}:{fake}@{iam_moto['url'][7:]}/closed/a.bin")
    responses.append(_post(sec_server.url, "/v2/max", leaky_s3))
    # malformed Authorization headers carrying a secret
    for header in (f"Bearer {fake}", f"Basic {fake}",
                   "Basic " + base64.b64encode(fake.encode()).decode(),
                   "Basic " + base64.b64encode(b"\xff" + fake.encode()).decode()):
        r = _post(sec_server.url, "/v2/sum", s3_body, headers={"authorization": header})
        assert r.status_code == 401, (header, r.content[:200])
        responses.append(r)
    for r in responses:
        text = r.content.decode("latin-1") + json.dumps(dict(r.headers))
        assert MARK not in text and secret not in text, text[:500]
    time.sleep(0.3)  # let the log flush
    log = sec_server.log_text()
    assert "POST" in log, "the access log is on: requests must be logged"
    for s in (MARK, secret, NGINX_PASSWORD, base64.b64encode(f"{key}:{secret}".encode()).decode()):
        assert s not in log, f"credential {s[:6]}... found in the server log"


def test_sdk_errors_do_not_echo_credentials(sec_server, iam_moto):
    key, _ = iam_moto["keys"]["admin"]
    fake = MARK + "sdk-secret"
    req = make_request("int32", (1024,), offset=0, size=4096, url="s3://open/a.bin")
    with ServerBackend(sec_server.url, username=key, password=fake, env={},
                       s3_endpoint_url=iam_moto["url"], batch=False) as b:
        assert MARK not in repr(b)
        with pytest.raises(ServerError) as ei:
            b.reduce_chunk(req, "sum")
    assert ei.value.status == 401
    assert MARK not in str(ei.value) and MARK not in json.dumps(ei.value.body)


def test_unreadable_object_never_served_from_shared_state(sec_server, iam_moto):
    """'admin' reads closed/a.bin; 'limited' asking for the same range right after (and
    concurrently) is refused every time, while its own bucket works."""
    admin, limited = iam_moto["keys"]["admin"], iam_moto["keys"]["limited"]
    want = int(iam_moto["data"].sum())
    closed = {"interface_type": "s3", "url": f"{iam_moto['url']}/closed/a.bin", "dtype": "int32",
              "shape": [1024]}
    opened = dict(closed, url=f"{iam_moto['url']}/open/a.bin")
    for _ in range(3):
        r = _post(sec_server.url, "/v2/sum", closed, auth=admin)
        assert r.status_code == 200 and _value(r) == want
        r = _post(sec_server.url, "/v2/sum", closed, auth=limited)
        assert r.status_code == 401, r.content[:200]
        r = _post(sec_server.url, "/v2/sum", closed)  # anonymous
        assert r.status_code == 401, r.content[:200]
        r = _post(sec_server.url, "/v2/sum", opened, auth=limited)
        assert r.status_code == 200 and _value(r) == want

    def one(i):
        who = (admin, limited, None)[i % 3]
        r = _post(sec_server.url, "/v2/sum", closed, auth=who)
        return i % 3, r.status_code

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(150)))
    for who, status in results:
        assert status == (200 if who == 0 else 401), results


def test_nginx_basic_auth_not_shared_between_callers(sec_server, store):
    priv = {"interface_type": "http", "url": f"{store.nginx}/private/i32.bin", "dtype": "int32",
            "shape": [16, 64]}
    good, bad = (NGINX_USER, NGINX_PASSWORD), (NGINX_USER, MARK + "x")

    def one(i):
        who = (good, bad, None)[i % 3]
        r = _post(sec_server.url, "/v2/max", priv, auth=who)
        return i % 3, r.status_code

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(150)))
    for who, status in results:
        assert status == (200 if who == 0 else 401), results


# ---------------------------------------------------------------------------- allow-list

@pytest.fixture(scope="module")
def allow_setup(rel_dir, rel_nginx):
    """A counting proxy on 127.0.0.1 (nginx behind it), a redirecting proxy, and a server whose
    allow-list is only the redirecting proxy's exact host:port."""
    target = FaultProxy("127.0.0.1", rel_nginx.port)
    redirector = FaultProxy("127.0.0.1", rel_nginx.port)
    srv = start_active_server(rel_dir / "allow", allow=(f"127.0.0.1:{redirector.port}",))
    yield srv, target, redirector
    srv.stop()
    target.close()
    redirector.close()


def _blocked_urls(port: int) -> list[str]:
    host = socket.gethostname()
    urls = [f"http://127.0.0.1:{port}/f64.bin", f"http://localhost:{port}/f64.bin",
            f"http://LOCALHOST:{port}/f64.bin", f"http://2130706433:{port}/f64.bin",
            f"http://0x7f000001:{port}/f64.bin", f"http://0177.0.0.1:{port}/f64.bin",
            f"http://127.1:{port}/f64.bin", f"http://[::ffff:127.0.0.1]:{port}/f64.bin",
            f"http://[::1]:{port}/f64.bin", f"http://0.0.0.0:{port}/f64.bin",
            f"http://127.0.0.1.:{port}/f64.bin",
            f"http://evil.invalid#@127.0.0.1:{port}/f64.bin", "file:///etc/passwd",
            "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x", "dict://127.0.0.1:11211/",
            f"https://127.0.0.1:{port}/f64.bin", "//127.0.0.1/f64.bin", "/etc/passwd"]
    try:  # a DNS name (from /etc/hosts) resolving to the blocked loopback address
        if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            urls.append(f"http://{host}:{port}/f64.bin")
    except (OSError, ValueError):
        pass
    return urls


def test_allow_list_blocks_everything_else(allow_setup):
    srv, target, redirector = allow_setup
    target.reset_counts()
    urls = _blocked_urls(target.port)
    for url in urls:
        for kind in ("http", "s3"):
            body = {"interface_type": kind, "url": url, "dtype": "float64", "shape": [4096]}
            r = _post(srv.url, "/v2/sum", body)
            assert r.status_code in (400, 403), (url, r.status_code, r.content[:200])
            err = error_body(r)
            assert "allow-list" in err["message"] or "url" in err["message"], err
        v1 = {"source": url.rsplit("/", 1)[0] if "://" in url else url, "bucket": "b",
              "object": "f64.bin", "dtype": "float64", "shape": [4096]}
        r = _post(srv.url, "/v1/sum/", v1)
        assert r.status_code in (400, 403), (url, r.status_code, r.content[:200])
    assert target.requests == 0, target.paths
    # the allowed proxy itself works
    ok = {"interface_type": "http", "url": f"{redirector.url}/f64.bin", "dtype": "float64",
          "shape": [4096]}
    assert _post(srv.url, "/v2/sum", ok).status_code == 200


def test_redirects_to_other_hosts_are_not_followed(allow_setup, rel_nginx):
    srv, target, redirector = allow_setup
    target.reset_counts()
    for status in (301, 302, 303, 307, 308):
        for location in (f"{target.url}/f64.bin", f"http://localhost:{target.port}/f64.bin",
                         "file:///etc/passwd"):
            redirector.redirect(location, status=status)
            body = {"interface_type": "http", "url": f"{redirector.url}/f64.bin",
                    "dtype": "float64", "shape": [4096]}
            r = _post(srv.url, "/v2/sum", body)
            redirector.heal()
            assert r.status_code != 200 and r.status_code in (400, 403, 502), r.content[:200]
            assert location not in error_body(r)["message"] or "allow" in r.text
    assert target.requests == 0, target.paths


# Addresses off loopback are checked in-process only (check_allowed is what the server calls
# before any connection), so no test ever sends a packet to a metadata or private address.
METADATA = ["http://169.254.169.254/latest/meta-data/", "http://169.254.170.2/v2/credentials",
            "http://[fd00:ec2::254]/latest/meta-data/", "http://metadata.google.internal/x",
            "http://100.100.100.200/latest/meta-data/", "http://[fe80::1]/x",
            "http://10.0.0.1/x", "http://192.168.1.1/x"]


@pytest.mark.parametrize("url", METADATA)
def test_allow_list_blocks_private_and_metadata_addresses(url):
    from activestorage.errors import ActiveStorageError
    from activestorage.server.upstream import check_allowed

    with pytest.raises(ActiveStorageError) as ei:
        check_allowed(url, ("127.0.0.1", "localhost"))
    assert getattr(ei.value, "status", 400) in (400, 403)


@pytest.mark.parametrize("url", METADATA[:2] + ["http://[fe80::1]/x"])
def test_wildcard_allow_list_still_blocks_metadata(url):
    from activestorage.errors import ActiveStorageError
    from activestorage.server.upstream import check_allowed

    with pytest.raises(ActiveStorageError):
        check_allowed(url, ("*",))


# -------------------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_server(rel_dir):
    ca, cert, key = make_ca_and_cert(rel_dir / "tls")
    port = free_port()
    log = rel_dir / "tls" / "server.log"
    with open(log, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "activestorage", "serve", "--host", "127.0.0.1",
                              "--port", str(port), "--allow-upstream", "127.0.0.1",
                              "--tls-cert", str(cert), "--tls-key", str(key)],
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc = ServerProcess("tls server", p, port, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(ca),
                            timeout=2).status_code == 200:
                break
        except requests.RequestException:
            if time.monotonic() > deadline or p.poll() is not None:
                proc.stop()
                pytest.fail(f"TLS server did not start:\n{proc.log_text()[-2000:]}")
            time.sleep(0.1)
    yield proc, ca
    proc.stop()


def test_tls_with_self_signed_ca(tls_server, store, monkeypatch):
    # requests would let these override a session's verify= (see the next test)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    proc, ca = tls_server
    url = f"https://127.0.0.1:{proc.port}"
    f64 = store.arrays["f64.bin"]
    req = make_request("float64", (4096,), offset=0, size=32768, url=store.http_url("f64.bin"))
    with ServerBackend(url, env={}, verify=str(ca), batch=False) as b:
        p = b.reduce_chunk(req, "max")
    assert float(p.values.reshape(-1)[0]) == float(f64.max())
    with ServerBackend(url, env={"ACTIVESTORAGE_CA_BUNDLE": str(ca)}) as b:  # env default
        parts = b.reduce_chunks([req, req], "sum")
    assert [float(q.values.reshape(-1)[0]) for q in parts] == pytest.approx([f64.sum()] * 2)
    with ServerBackend(url, env={}, verify=True, retries=0, batch=False) as b, \
            pytest.raises(ServerError) as ei:
        b.reduce_chunk(req, "max")  # the system CAs do not know our CA
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value) or "SSL" in str(ei.value)
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to a TLS port
        requests.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5)
    server_alive(proc)


def test_tls_verify_argument_wins_over_env_bundle(tls_server, store, monkeypatch):
    proc, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    req = make_request("float64", (4096,), offset=0, size=32768, url=store.http_url("f64.bin"))
    with ServerBackend(f"https://127.0.0.1:{proc.port}", env={}, verify=str(ca), batch=False,
                       retries=0) as b:
        p = b.reduce_chunk(req, "max")
    assert float(p.values.reshape(-1)[0]) == float(store.arrays["f64.bin"].max())


def test_security_servers_survived(sec_server):
    server_alive(sec_server)
