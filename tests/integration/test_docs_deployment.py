"""The deployment recipe in docs/server/deployment.md works as written: nginx terminating TLS in
front of two reduction servers, failing over when one stops; and the server's own TLS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from servers import _spawn, free_port, nginx_binary, start_active_server

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "server" / "deployment.md"


def documented_nginx_block() -> str:
    (block,) = re.findall(r"```nginx\n(.*?)```", PAGE.read_text(), flags=re.S)
    return block


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from activestorage.demo import make_sample

    return make_sample(tmp_path_factory.mktemp("deploy") / "tos.nc", size_mb=2)


@pytest.fixture(scope="module")
def uploaded(sample, moto_server, s3):
    s3.create_bucket(Bucket="deploy-docs")
    s3.upload_file(str(sample), "deploy-docs", "tos.nc")
    return "s3://deploy-docs/tos.nc"


@pytest.fixture(autouse=True)
def no_ca_bundle_env(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a Session's ``verify`` (reported to
    the server-backend owner); these tests are about the deployment recipe, so use our CA only."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def opts(moto_url: str) -> dict:
    from servers import S3_KEY, S3_SECRET

    return {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": moto_url}}


def test_nginx_recipe_balances_terminates_tls_and_fails_over(tmp_path, sample, uploaded,
                                                             moto_server):
    if nginx_binary() is None or shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx and openssl are required under CI=true")
        pytest.skip("needs nginx and openssl")
    from activestorage import Active

    backends = [start_active_server(tmp_path / f"s{i}") for i in range(2)]
    cert, key = make_cert(tmp_path)
    port = free_port()
    block = documented_nginx_block()
    block = re.sub(r"server 10\.0\.0\.\d+:8080", lambda m, it=iter(backends):
                   f"server 127.0.0.1:{next(it).port}", block)
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = block.replace("/etc/ssl/reductionist.pem", str(cert)).replace(
        "/etc/ssl/reductionist.key", str(key))
    assert "10.0.0." not in block and "/etc/ssl" not in block
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{block}
}}
""")
    lb = _spawn("nginx", [nginx_binary(), "-p", str(tmp_path), "-c", str(conf), "-e",
                          str(tmp_path / "error.log")], tmp_path / "nginx.log", port)
    try:
        import time

        import requests

        for _ in range(100):  # nginx up?
            try:
                r = requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert), timeout=2)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                if lb.proc.poll() is not None:
                    pytest.fail(f"nginx exited: {(tmp_path / 'error.log').read_text()}")
                time.sleep(0.05)
        assert r.json()["status"] == "ok"
        url = f"https://127.0.0.1:{port}"
        with netCDF4.Dataset(sample) as ds:
            want = ds["tos"][0:8].astype(np.float64).mean()
        a = Active(uploaded, "tos", storage_options=opts(moto_server.url), active_storage_url=url,
                   backend_options={"verify": str(cert)})
        assert float(a.mean[0:8]) == pytest.approx(float(want), rel=1e-6)
        assert a.stats.backend == "server"
        backends[0].stop()  # one server goes away: nginx retries on the other
        for _ in range(4):
            assert float(a.mean[0:8]) == pytest.approx(float(want), rel=1e-6)
        a.close()
    finally:
        lb.stop()
        for b in backends:
            b.stop()


def test_server_speaks_tls_itself(tmp_path, sample, uploaded, moto_server):
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required under CI=true")
        pytest.skip("needs the openssl command")
    from activestorage import Active

    cert, key = make_cert(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "activestorage", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--tls-cert", str(cert), "--tls-key", str(key), "--no-access-log"]
    srv = _spawn("tls server", cmd, tmp_path / "tls.log", port)
    try:
        import time

        import requests

        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(cert), timeout=2)
                break
            except requests.ConnectionError:
                assert srv.proc.poll() is None, srv.log_text()
                assert time.monotonic() < deadline, "TLS server did not start"
                time.sleep(0.05)
        with netCDF4.Dataset(sample) as ds:
            want = ds["tos"][...].astype(np.float64).max()
        a = Active(uploaded, "tos", storage_options=opts(moto_server.url),
                   active_storage_url=f"https://127.0.0.1:{port}",
                   backend_options={"verify": str(cert)})
        assert float(a.max[...]) == pytest.approx(float(want))
        with pytest.raises(requests.exceptions.SSLError):  # and it really is TLS, verified
            requests.get(f"https://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        srv.stop()
