"""Session fixtures: real moto S3, nginx and activestorage server processes on loopback.

Use them from any integration test::

    def test_x(moto_server, s3, nginx_server, active_server): ...

``s3`` is a boto3 client for ``moto_server``; ``nginx_server.extra["docroot"]`` is the directory it
serves (``/private/`` needs Basic auth ``NGINX_USER``/``NGINX_PASSWORD``). All processes are stopped
by PID at the end of the session. nginx missing: skipped locally, a failure under ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from servers import (ServerProcess, nginx_binary, s3_client, start_active_server, start_moto,
                     start_nginx)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def moto_server(servers_dir: Path) -> Iterator[ServerProcess]:
    proc = start_moto(servers_dir / "moto")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def s3(moto_server: ServerProcess):
    """boto3 S3 client of the session's moto server."""
    return s3_client(moto_server.url)


def require_nginx() -> None:
    """Skip (locally) or fail (CI=true) when there is no nginx binary."""
    if nginx_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI=true (apt-get install -y nginx)")
        pytest.skip("nginx binary not found: apt-get install -y nginx to run HTTP-store tests")


@pytest.fixture(scope="session")
def nginx_server(servers_dir: Path) -> Iterator[ServerProcess]:
    require_nginx()
    docroot = servers_dir / "www"
    docroot.mkdir(exist_ok=True)
    proc = start_nginx(servers_dir / "nginx", docroot)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def active_server(servers_dir: Path) -> Iterator[ServerProcess]:
    """Our server, allowed to read from 127.0.0.1 only."""
    proc = start_active_server(servers_dir / "active")
    yield proc
    proc.stop()
