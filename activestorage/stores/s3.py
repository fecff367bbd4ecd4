"""S3 objects: ranged ``GetObject`` through one pooled, thread-safe botocore client.

Options are s3fs's (:func:`~activestorage.stores.urls.resolve_s3_options`). A pin is sent as
``IfMatch``/``VersionId``; a 412 or a differing ETag is :class:`ObjectChangedError`. The body is
read from botocore's ``_raw_stream`` (the urllib3 response under its ``StreamingBody``) straight
into the caller's buffer where it arrives as sent (:mod:`._body`); ``tests/test_stores.py`` fails if
botocore renames that attribute.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from ..errors import StorageError
from ._body import Consumer, _Body, _quote_etag, _read_body, _Transient
from .base import Account, ObjectInfo, RemoteStore, changed, same_etag, status_error
from .urls import resolve_s3_options, split_s3_url


def s3_error(exc: Any, url: str) -> StorageError:
    """The typed error for a botocore ``ClientError`` reading ``url``."""
    resp = exc.response if isinstance(exc.response, dict) else {}
    err = resp.get("Error", {})
    code = str(err.get("Code", ""))
    msg = str(err.get("Message", "")) or str(exc)
    http = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("PreconditionFailed", "412"):
        http = 412
    elif code in ("NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"):
        http = 404
    elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        http = 403
    return status_error(url, http, code=code, message=msg, s3=True,
                        causes=[f"{code}: {msg}"])


def sign_s3(url: str, headers: dict[str, str], auth: tuple[str, str], region: str,
            method: str = "GET") -> dict[str, str]:
    """``headers`` with a SigV4 signature of a GET (or ``method``) of ``url`` (as it will be
    sent) for the access key and secret ``auth``: how the server's async reads reach S3 with the
    caller's credentials (:mod:`.sigv4`: botocore's signature, without its per-request cost)."""
    from .sigv4 import sign_v4

    return sign_v4(url, headers, auth, region, method)


class S3Store(RemoteStore):
    """Ranged reads of ``s3://bucket/key`` objects. ``pool_size``: connections kept."""

    kind = "s3"

    def __init__(self, storage_options: Mapping[str, Any] | None = None, *, pool_size: int = 16,
                 timeout: float = 30.0, retries: int = 3, verify: bool | str = True,
                 env: Mapping[str, str] | None = None, account: Account | None = None) -> None:
        super().__init__(timeout=timeout, retries=retries, account=account)
        self.storage_options = dict(storage_options or {})
        self.pool_size = pool_size
        self.verify = verify
        self._env = env
        self._lock = threading.Lock()
        self._client: Any = None

    def client(self) -> Any:
        """The botocore client, made on first use."""
        with self._lock:
            if self._client is None:
                import botocore.session
                from botocore import UNSIGNED
                from botocore.config import Config

                opts = resolve_s3_options(self.storage_options, self._env)
                client_kwargs = dict(opts.get("client_kwargs") or {})
                region = client_kwargs.pop("region_name", None)
                verify = client_kwargs.pop("verify", self.verify)
                settings: dict[str, Any] = {
                    "max_pool_connections": self.pool_size, "connect_timeout": self.timeout,
                    "read_timeout": self.timeout,
                    "retries": {"max_attempts": self.retries + 1, "mode": "standard"}}
                settings.update(opts.get("config_kwargs") or {})  # s3fs's: the user's win
                s3 = dict(settings.pop("s3", None) or {})
                if opts.get("endpoint_url"):  # S3-compatible stores: path-style unless told
                    s3.setdefault("addressing_style", "path")
                if opts.get("anon"):
                    settings["signature_version"] = UNSIGNED
                session = botocore.session.Session(profile=opts.get("profile"))
                self._client = session.create_client(
                    "s3", endpoint_url=opts.get("endpoint_url"),
                    region_name=region or session.get_config_variable("region") or "us-east-1",
                    aws_access_key_id=opts.get("key"), aws_secret_access_key=opts.get("secret"),
                    aws_session_token=opts.get("token"), verify=verify,
                    config=Config(s3=s3 or None, **settings), **client_kwargs)
            return self._client

    def _get(self, url: str, start: int, end: int, etag: str | None, version_id: str | None,
             consume: Consumer | None) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_url(url)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = _quote_etag(etag)
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            resp = self.client().get_object(**kwargs)
            body = resp["Body"]
            if not same_etag(etag, resp.get("ETag")):  # before any of the body is used
                body.close()
                raise changed(url)

            def cut(exc: BaseException) -> Exception:  # reset/cut body: urllib3 or botocore
                return _Transient(f"reading {url}: body cut short: {exc}", status=502,
                                  store=url, causes=[f"{type(exc).__name__}: {exc}"])

            def read(k: int) -> bytes:
                try:
                    return body.read(k)
                except Exception as exc:  # noqa: BLE001
                    raise cut(exc) from exc
            try:
                got_body = _Body(read, end - start, getattr(body, "_raw_stream", None), cut)
                data = (consume or _read_body)(got_body)
            finally:
                body.close()
        except ClientError as exc:
            raise s3_error(exc, url) from exc
        except BotoCoreError as exc:
            raise _botocore_error(exc, url) from exc
        return data

    def head(self, url: str) -> ObjectInfo:
        bucket, key = split_s3_url(url)
        with self._errors(url):
            info = self.client().head_object(Bucket=bucket, Key=key)
        return ObjectInfo(int(info["ContentLength"]), info.get("ETag"), info.get("VersionId"))

    def read_object(self, url: str) -> bytes:
        bucket, key = split_s3_url(url)
        with self._errors(url):
            body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        self._account(bytes_read=len(data), bytes_received=len(data), requests=1)
        return data

    def _pages(self, url: str, **kwargs: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """``(bucket, prefix, page)`` of a ListObjectsV2 of the prefix (directory) ``url``."""
        parts = urlsplit(url)
        bucket, key = parts.netloc, parts.path.strip("/")
        prefix = key + "/" if key else ""
        with self._errors(url):
            for page in self.client().get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix, **kwargs):
                self._account(requests=1)
                yield bucket, prefix, page

    def find(self, url: str) -> dict[str, ObjectInfo]:
        return {f"s3://{bucket}/{obj['Key']}": ObjectInfo(int(obj["Size"]), obj.get("ETag"))
                for bucket, _, page in self._pages(url) for obj in page.get("Contents", ())}

    def list_dir(self, url: str) -> list[str]:
        out = []
        for _, prefix, page in self._pages(url, Delimiter="/"):
            out.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", ()))
            out.extend(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", ()))
        return out

    def bucket_versioned(self, bucket: str) -> bool:
        """Whether versioning is enabled on ``bucket`` (objects then have version ids)."""
        with self._errors(f"s3://{bucket}"):
            return self.client().get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"

    def write_object(self, url: str, data: bytes) -> None:
        """Store ``data`` as the object ``url`` (manifests written to S3)."""
        bucket, key = split_s3_url(url)
        with self._errors(url):
            self.client().put_object(Bucket=bucket, Key=key, Body=data)

    @contextmanager
    def _errors(self, url: str) -> Iterator[None]:
        """botocore's failures inside the block as the typed errors naming ``url``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            raise s3_error(exc, url) from exc
        except BotoCoreError as exc:
            raise _botocore_error(exc, url) from exc

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _botocore_error(exc: Exception, url: str) -> StorageError:
    """A botocore transport failure reading ``url`` as the typed error: 504 for a timeout."""
    timeout = "timeout" in type(exc).__name__.lower()
    return StorageError(f"reading {url}: {exc}", status=504 if timeout else 502, store=url,
                        causes=[str(exc)])
