"""Fixtures for the reliability and security suite: real processes on loopback.

Reuses ``tests/integration/servers.py`` (moto S3, nginx, our server as separate processes, stopped
by PID). The session's store holds small known objects (``data``: the arrays and their bytes) in
nginx's docroot and in a moto bucket, so every fuzz and fault test can also check numbers.
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

from servers import (ServerProcess, nginx_binary, s3_client, start_active_server,  # noqa: E402
                     start_moto, start_nginx)

BUCKET = "reliability"
#: the decompression bomb: this many zero bytes, zlib-compressed to a few hundred KiB.
BOMB_BYTES = 256 << 20


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class StoreData:
    """Objects served by both stores: name -> bytes, and the arrays behind them."""

    objects: dict[str, bytes] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    nginx: str = ""        # base URL of the public docroot
    moto: str = ""         # S3 endpoint
    bucket: str = BUCKET

    def http_url(self, name: str) -> str:
        return f"{self.nginx}/{name}"

    def s3_url(self, name: str) -> str:
        return f"{self.moto}/{self.bucket}/{name}"


def make_objects() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    rng = np.random.default_rng(8)
    f64 = rng.normal(size=4096)                        # 32 KiB
    i32 = rng.integers(-1000, 1000, size=(16, 64), dtype=np.int32)
    i32[3, :5] = -999                                  # some fill values
    big = rng.integers(0, 100, size=1 << 20, dtype=np.int16)  # 2 MiB, for truncation faults
    objects = {
        "f64.bin": f64.astype("<f8").tobytes(),
        "i32.bin": i32.astype("<i4").tobytes(),
        "i32.zlib": zlib.compress(i32.astype("<i4").tobytes()),
        "big.bin": big.astype("<i2").tobytes(),
        "bomb.zlib": zlib.compress(bytes(BOMB_BYTES), 9),
    }
    arrays = {"f64.bin": f64, "i32.bin": i32, "i32.zlib": i32, "big.bin": big}
    return objects, arrays


def require_nginx() -> None:
    if nginx_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI=true (apt-get install -y nginx)")
        pytest.skip("nginx binary not found: apt-get install -y nginx to run the HTTP-store tests")


@pytest.fixture(scope="session")
def rel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def rel_moto(rel_dir: Path) -> Iterator[ServerProcess]:
    proc = start_moto(rel_dir / "moto")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def rel_nginx(rel_dir: Path) -> Iterator[ServerProcess]:
    require_nginx()
    docroot = rel_dir / "www"
    docroot.mkdir(exist_ok=True)
    proc = start_nginx(rel_dir / "nginx", docroot)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def store(rel_nginx: ServerProcess, rel_moto: ServerProcess) -> StoreData:
    """The known objects, in nginx's docroot and in the moto bucket."""
    objects, arrays = make_objects()
    docroot = rel_nginx.extra["docroot"]
    s3 = s3_client(rel_moto.url)
    s3.create_bucket(Bucket=BUCKET)
    for name, blob in objects.items():
        (docroot / name).write_bytes(blob)
        (docroot / "private" / name).write_bytes(blob)
        s3.put_object(Bucket=BUCKET, Key=name, Body=blob)
    return StoreData(objects, arrays, nginx=rel_nginx.url, moto=rel_moto.url)


@pytest.fixture(scope="session")
def rel_server(rel_dir: Path) -> Iterator[ServerProcess]:
    """Our server (loopback allow-list, 1 MiB body limit), shared by the fuzz tests."""
    proc = start_active_server(rel_dir / "server", "--upstream-read-timeout", "5")
    yield proc
    proc.stop()
