"""This project's ``Active``, with default settings, through each backend.

- ``ours_posix``: the local file (``os.pread``/mmap, kernel in-process).
- ``ours_fetch``: range GETs from the remote store (moto S3 or nginx, ``--store``) into this
  process, kernel in-process.
- ``ours_server_chunk``: our reduction server (reading the same store) with one request per
  chunk, as any Reductionist client would talk to it.
- ``ours_server_batch``: the same server with its ``/v2/batch`` extension (detected by default;
  forced on here so the two server rows differ only in batching).

One ``Active`` per dataset, opened before timing (metadata read once, as in a notebook).
"""

from __future__ import annotations

from typing import Any

# Imported here, not lazily, so the worker's RSS baseline includes every library the backends use
# (and that opening a remote file uses: fsspec's HTTP filesystem with aiohttp, or s3fs; ~10 MiB).
import activestorage.backends.fetch  # noqa: F401
import activestorage.backends.server  # noqa: F401
import botocore.session  # noqa: F401
import fsspec.implementations.http  # noqa: F401
import h5py  # noqa: F401  (the netCDF-4/HDF5 reader opens files with it)
import requests  # noqa: F401
import s3fs  # noqa: F401
from activestorage import Active

from . import data


class _Ours:
    checks_result = True
    skip: str | None = None
    backend = "posix"
    options: dict[str, Any] = {}

    def __init__(self, ds: dict[str, Any], config: dict[str, Any]) -> None:
        if self.backend == "posix":
            self.active = Active(ds["path"], data.VAR)
        else:
            s3 = config.get("s3")
            storage_options = None if config["store"] != "s3" else {
                "key": s3["key"], "secret": s3["secret"],
                "client_kwargs": {"endpoint_url": s3["endpoint"]}}
            self.active = Active(ds["remote_url"], data.VAR, storage_options=storage_options,
                                 backend=self.backend, backend_options=dict(self.options),
                                 active_storage_url=config.get("server_url"))

    def run(self, case: dict[str, Any]) -> Any:
        sel = data.box_slices(case["box"])
        if case["axis"] is None:
            return self.active.mean[sel]
        return self.active.mean(axis=tuple(case["axis"]))[sel]

    def bytes_moved(self, case: dict[str, Any]) -> int | None:
        st = self.active.stats
        if st is None:
            return None
        return st.bytes_read if self.backend == "posix" else st.bytes_received

    def extra(self, case: dict[str, Any]) -> dict[str, Any]:
        st = self.active.stats
        return {} if st is None else {"requests": st.requests, "chunks": st.chunks_touched}

    def close(self) -> None:
        self.active.close()


class Posix(_Ours):
    backend = "posix"


class Fetch(_Ours):
    backend = "fetch"


class ServerChunk(_Ours):
    backend = "server"
    options = {"batch": False}


class ServerBatch(_Ours):
    backend = "server"
    options = {"batch": True}


FACTORIES = {
    "ours_posix": Posix,
    "ours_fetch": Fetch,
    "ours_server_chunk": ServerChunk,
    "ours_server_batch": ServerBatch,
}
