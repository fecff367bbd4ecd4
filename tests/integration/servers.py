"""Real servers on loopback for integration tests and benchmarks: moto S3, nginx, our server.

Each ``start_*`` function launches a separate process on a free 127.0.0.1 port, waits until it
answers HTTP, and returns a handle whose ``stop()`` ends exactly that process (by PID: terminate,
then kill after a grace period). Nothing here is pytest-specific, so benchmarks and other tests can
reuse it; the fixtures in ``conftest.py`` wrap these with session scope.

    moto = start_moto(tmp)            # moto.url; s3_client(moto.url) -> boto3 S3 client
    web = start_nginx(tmp, docroot)   # web.url; web.private_url + web.auth for Basic auth
    srv = start_active_server(tmp)    # srv.url; srv.log_path has its log
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
#: credentials moto accepts (it checks none unless auth is switched on).
S3_KEY, S3_SECRET = "testing-key", "testing-secret"
NGINX_USER, NGINX_PASSWORD = "reader", "s3cr3t-pw"


class ServerStartError(RuntimeError):
    """A helper server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A started server process; ``stop()`` ends it by PID."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _wait_http(proc: ServerProcess, path: str, timeout: float, ok: Sequence[int] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    url = proc.url + path
    last = ""
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise ServerStartError(f"{proc.name} exited with {proc.proc.returncode}:\n"
                                   f"{_tail(proc.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    proc.stop()
    raise ServerStartError(f"{proc.name} did not answer {url} within {timeout}s ({last}):\n"
                           f"{_tail(proc.log_path)}")


def _spawn(name: str, cmd: list[str], log_path: Path, port: int,
           env: dict[str, str] | None = None) -> ServerProcess:
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(log_path.parent))
    finally:
        log.close()
    handle = ServerProcess(name, proc, port, log_path)
    atexit.register(handle.stop)  # never leak a server if the caller dies before stop()
    return handle


# --------------------------------------------------------------------------------------- moto

def start_moto(workdir: Path, env: dict[str, str] | None = None, timeout: float = 30.0) -> ServerProcess:
    """moto's standalone S3 server (``python -m moto.server``) on a free loopback port."""
    port = free_port()
    e = dict(os.environ)
    e.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
              "AWS_DEFAULT_REGION": "us-east-1"})
    e.update(env or {})
    workdir.mkdir(parents=True, exist_ok=True)
    proc = _spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  workdir / f"moto-{port}.log", port, e)
    _wait_http(proc, "/moto-api/", timeout)
    return proc


def start_moto_with_auth(workdir: Path, timeout: float = 30.0) -> ServerProcess:
    """A moto server that checks credentials (SigV4 signature, known access key).

    The first few requests are unauthenticated (``INITIAL_NO_AUTH_ACTION_COUNT``); they create an
    IAM user with an allow-all policy, whose key pair is in ``extra["key"]``/``extra["secret"]``.
    """
    import json

    proc = start_moto(workdir, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}, timeout=timeout)
    import boto3

    iam = boto3.client("iam", endpoint_url=proc.url, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")
    iam.create_user(UserName="reader")
    policy = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    iam.attach_user_policy(UserName="reader", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    proc.extra.update(key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    return proc


def s3_client(endpoint: str, key: str = S3_KEY, secret: str = S3_SECRET) -> Any:
    """A boto3 S3 client for a loopback endpoint (path-style addressing)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


# -------------------------------------------------------------------------------------- nginx

def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
         if os.access(p, os.X_OK)), None)


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 75;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
        location /private/ {{
            auth_basic "activestorage test";
            auth_basic_user_file {tmp}/htpasswd;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, docroot: Path, users: dict[str, str] | None = None,
                workers: int = 1, timeout: float = 15.0) -> ServerProcess:
    """nginx serving ``docroot`` with Range support; ``/private/`` needs Basic auth of ``users``.

    The htpasswd file uses nginx's ``{PLAIN}`` scheme (no crypt needed). Raises
    :class:`FileNotFoundError` when there is no nginx binary.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx binary not found (apt-get install -y nginx)")
    users = users or {NGINX_USER: NGINX_PASSWORD}
    port = free_port()
    tmp = (workdir / f"nginx-{port}").resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    (docroot / "private").mkdir(parents=True, exist_ok=True)
    (tmp / "htpasswd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 tmp dirs
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, workers=workers, tmp=tmp, port=port,
                                      root=Path(docroot).resolve()))
    proc = _spawn("nginx", [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                  tmp / "stdout.log", port)
    proc.extra.update(docroot=Path(docroot), users=users, error_log=tmp / "error.log")
    _wait_http(proc, "/", timeout, ok=(200, 403, 404))
    return proc


# ------------------------------------------------------------------------------- our server

def start_active_server(workdir: Path, *args: str, allow: Sequence[str] = ("127.0.0.1",),
                        env: dict[str, str] | None = None, timeout: float = 30.0) -> ServerProcess:
    """``python -m activestorage.server --port N --allow-upstream 127.0.0.1 ARGS``; waits for /healthz."""
    port = free_port()
    cmd = [sys.executable, "-m", "activestorage.server", "--host", "127.0.0.1", "--port", str(port)]
    for host in allow:
        cmd += ["--allow-upstream", host]
    cmd += list(args)
    e = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESTORAGE_")}
    e.update(env or {})
    workdir.mkdir(parents=True, exist_ok=True)
    proc = _spawn("activestorage server", cmd, workdir / f"server-{port}.log", port, e)
    _wait_http(proc, "/healthz", timeout)
    return proc


# ---------------------------------------------------------------------------------------- TLS

def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1/localhost, written to
    ``d`` as (ca.pem, server.pem, server.key): for TLS endpoints the clients verify."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "activestorage test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
