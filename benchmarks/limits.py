"""The machine's limits, measured in the same run as the methods they bound.

- ``numpy_memory``: one NumPy pass over the decoded array already in memory (the ceiling for any
  reader: no I/O, no decode, no masking).
- ``pread``: raw ``os.pread`` of the touched chunks' stored bytes from the page cache, one thread.
- ``decode_1core`` / ``decode_threads``: zlib + unshuffle of the touched chunks (bytes preloaded
  into memory) on one thread, and on a pool of one thread per core; the ideal "decode x cores"
  is ``decode_1core`` / cores (reported by the summary). Only the compressed dataset has these.
- ``moto_get`` / ``nginx_get``: raw range GETs of every touched chunk (8 concurrent connections,
  one GET per chunk, no reduction) from moto's S3 server and from nginx. Measured on the two
  uncompressed layouts only, where the number and size of ranges is what differs.

None of these has a result to check against the oracle (``checks_result = False``).
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numcodecs

from . import data

GET_THREADS = 8
GET_DATASETS = ("plain", "small")


class _Limit:
    checks_result = False
    skip: str | None = None

    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        self.ds = ds
        self.config = config
        self.path = Path(ds["path"])
        self.chunks = tuple(ds["chunks"])
        self.index = data.chunk_index(self.path)
        self._last_bytes: int | None = None

    def ranges(self, case: dict[str, Any]) -> list[tuple[int, int]]:
        return data.touched(self.index, self.chunks, case["box"])

    def bytes_moved(self, case: dict[str, Any]) -> int | None:
        return self._last_bytes

    def close(self) -> None:
        pass


class NumpyMemory(_Limit):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        with h5py.File(self.path, "r") as f:
            self.x = f[data.VAR][...]

    def run(self, case: dict[str, Any]) -> Any:
        x = self.x[data.box_slices(case["box"])]
        return x.mean() if case["axis"] is None else x.mean(axis=tuple(case["axis"]))

    def bytes_moved(self, case: dict[str, Any]) -> int | None:
        return 0


class Pread(_Limit):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        self.fd = os.open(self.path, os.O_RDONLY)

    def run(self, case: dict[str, Any]) -> Any:
        n = 0
        for off, size in self.ranges(case):
            n += len(os.pread(self.fd, size, off))
        self._last_bytes = n
        return n

    def close(self) -> None:
        os.close(self.fd)


class Decode(_Limit):
    threads = 1

    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        if not ds.get("zlib"):
            self.skip = "decode limits apply to the compressed dataset only"
            return
        with open(self.path, "rb") as f:
            self.raw = {off: (f.seek(off), f.read(size))[1] for _o, off, size in self.index}
        self.zlib = numcodecs.Zlib()
        self.shuffle = numcodecs.Shuffle(elementsize=4)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _one(self, off: int) -> int:
        out = self.shuffle.decode(self.zlib.decode(self.raw[off]))
        return len(out)

    def run(self, case: dict[str, Any]) -> Any:
        offs = [off for off, _size in self.ranges(case)]
        self._last_bytes = sum(len(self.raw[o]) for o in offs)
        if self.pool is None:
            return sum(self._one(o) for o in offs)
        return sum(self.pool.map(self._one, offs))

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()


class DecodeThreads(Decode):
    threads = os.cpu_count() or 1


class _Get(_Limit):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        if ds["name"] not in GET_DATASETS:
            self.skip = f"range-GET rates are measured on {' and '.join(GET_DATASETS)} only"
            return
        self.pool: ThreadPoolExecutor | None = ThreadPoolExecutor(GET_THREADS)
        self._requests = 0

    def get(self, off: int, size: int) -> int:
        raise NotImplementedError

    def run(self, case: dict[str, Any]) -> Any:
        rs = self.ranges(case)
        n = sum(self.pool.map(lambda r: self.get(*r), rs))
        self._last_bytes = n
        self._requests = len(rs)
        return n

    def extra(self, case: dict[str, Any]) -> dict[str, Any]:
        return {"requests": self._requests}

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()


class MotoGet(_Get):
    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        if self.skip:
            return
        import boto3
        from botocore.config import Config

        s3 = config.get("s3")
        if not s3:
            self.skip = "moto not started (--store http): moto reads the whole object per GET"
            return
        self.bucket, self.key = ds["s3_url"][len("s3://"):].split("/", 1)
        self.client = boto3.client(
            "s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["key"],
            aws_secret_access_key=s3["secret"], region_name="us-east-1",
            config=Config(max_pool_connections=GET_THREADS, s3={"addressing_style": "path"}))

    def get(self, off: int, size: int) -> int:
        r = self.client.get_object(Bucket=self.bucket, Key=self.key,
                                   Range=f"bytes={off}-{off + size - 1}")
        body = r["Body"].read()
        assert len(body) == size, (len(body), size)
        return size


class NginxGet(_Get):
    """Range GETs with ``http.client``, one keep-alive connection per thread: the least a Python
    client can spend per GET (``requests`` costs ~1 ms of CPU per call, which would make this
    limit a measure of the GIL rather than of the store)."""

    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(ds, config)
        if self.skip:
            return
        u = urllib.parse.urlsplit(ds["http_url"])
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path
        self._local = threading.local()

    def get(self, off: int, size: int) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", self.path, headers={"Range": f"bytes={off}-{off + size - 1}"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 206 and len(body) == size, (r.status, len(body), size)
        return size


FACTORIES = {
    "numpy_memory": NumpyMemory,
    "pread": Pread,
    "decode_1core": Decode,
    "decode_threads": DecodeThreads,
    "moto_get": MotoGet,
    "nginx_get": NginxGet,
}
