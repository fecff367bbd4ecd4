"""HTTP(S) resources: ranged GETs through one pooled ``requests.Session``.

``storage_options``: ``headers`` and ``username``/``password`` (basic auth). GETs are retried by
urllib3 (``Retry``) on 429/502/503/504; a pin is sent as ``If-Match`` and a 412 or a differing ETag
is :class:`ObjectChangedError`. A server that ignores ``Range`` (200) is read only up to the end of
the range asked for.
"""

from __future__ import annotations

import functools
import io
import threading
from typing import Any, Mapping

from ..errors import StorageError
from ._body import Consumer, _Body, _http_body_error, _quote_etag, _read_body, _Transient
from .base import Account, RemoteStore, changed, same_etag, status_error


class HTTPStore(RemoteStore):
    """Ranged reads of ``http(s)://`` URLs. ``pool_size``: connections kept per host."""

    kind = "http"

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *, pool_size: int = 16,
                 timeout: float = 30.0, retries: int = 3, verify: bool | str = True,
                 account: Account | None = None) -> None:
        super().__init__(timeout=timeout, retries=retries, account=account)
        self.storage_options = dict(storage_options or {})
        self.pool_size = pool_size
        self.verify = verify
        self._lock = threading.Lock()
        self._session: Any = None

    def session(self) -> Any:
        """The ``requests.Session``, made on first use."""
        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter
                from urllib3.util.retry import Retry

                s = requests.Session()
                retry = Retry(total=self.retries, backoff_factor=0.2,
                              status_forcelist=(429, 502, 503, 504), allowed_methods=["GET"])
                adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size,
                                      max_retries=retry)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.verify = self.verify
                s.headers.update(self.storage_options.get("headers") or {})
                user = self.storage_options.get("username")
                if user is not None:
                    s.auth = (user, self.storage_options.get("password") or "")
                self._session = s
            return self._session

    def _get(self, url: str, start: int, end: int, etag: str | None, version_id: str | None,
             consume: Consumer | None) -> Any:
        import requests
        import urllib3

        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = _quote_etag(etag)
        try:
            with self.session().get(url, headers=headers, stream=True,
                                    timeout=self.timeout) as resp:
                if resp.status_code not in (200, 206):
                    raise status_error(url, resp.status_code,
                                       f"HTTP {resp.status_code} {resp.reason}",
                                       causes=[f"HTTP {resp.status_code}"])
                if not same_etag(etag, resp.headers.get("ETag")):
                    raise changed(url)
                try:
                    if resp.status_code == 206:
                        return (consume or _read_body)(_Body(
                            functools.partial(resp.raw.read, decode_content=True), end - start,
                            resp.raw, functools.partial(_http_body_error, url, self.timeout)))
                    # 200: the server ignored Range; read (bounded) up to the end of our range.
                    data = resp.raw.read(end, decode_content=True)[start:end]
                    return data if consume is None else consume(
                        _Body(io.BytesIO(data).read, end - start))
                except urllib3.exceptions.ReadTimeoutError as exc:
                    raise StorageError(f"reading {url} timed out after {self.timeout}s",
                                       status=504, store=url, causes=[str(exc)]) from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise _Transient(f"reading {url}: body cut short: {exc}", status=502,
                                     store=url, causes=[f"{type(exc).__name__}: {exc}"]) from exc
        except requests.Timeout as exc:
            raise StorageError(f"reading {url} timed out after {self.timeout}s", status=504,
                               store=url, causes=[str(exc)]) from exc
        except requests.RequestException as exc:
            raise StorageError(f"reading {url} failed: {exc}", status=502, store=url,
                               causes=[str(exc)]) from exc

    def size(self, url: str) -> int:
        resp = self.session().head(url, timeout=self.timeout, allow_redirects=True)
        if resp.status_code != 200 or "Content-Length" not in resp.headers:
            raise status_error(url, resp.status_code if resp.status_code != 200 else None,
                               f"HTTP {resp.status_code}: no size")
        return int(resp.headers["Content-Length"])

    def close(self) -> None:
        with self._lock:
            s, self._session = self._session, None
        if s is not None:
            s.close()
