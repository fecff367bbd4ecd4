"""Store URLs and options: which store a URL names, and s3fs-style S3 options resolved against
the AWS environment variables (explicit ``storage_options`` win), so every reader of S3 agrees on
endpoint and credentials."""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..errors import StorageError


def url_kind(url: str) -> str:
    """``"s3"``, ``"http"``, ``"https"`` or ``"file"`` for a local path / ``file://`` URL."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("s3", "s3a"):
        return "s3"
    if scheme in ("http", "https"):
        return scheme
    if scheme in ("", "file"):
        return "file"
    raise StorageError(f"unsupported URL scheme {scheme!r} in {url}", status=400, store=url)


def local_path(url: str) -> str:
    """The filesystem path of a local path or ``file://`` URL."""
    return urlsplit(url).path if url.startswith("file://") else url


def public_name(url: str) -> str:
    """``url`` as messages may show it: no user info, query or fragment (a presigned URL's
    signature and credential are in its query)."""
    if "?" not in url and "@" not in url and "#" not in url:
        return url
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}"


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise StorageError(f"{url} is not an s3://bucket/key URL", status=400, store=url)
    return bucket, key


def resolve_s3_options(storage_options: Mapping[str, Any] | None = None,
                       env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs keyword arguments with the AWS environment variables filled in where not given.

    Explicit ``storage_options`` win over the environment (``env``, default ``os.environ``, read at
    call time). The result always has ``endpoint_url`` (None: AWS), ``key``/``secret``/``token``
    (None: let botocore's credential chain decide, or anonymous when ``anon`` is true), ``anon`` and
    ``client_kwargs`` (with ``region_name`` when known); other s3fs options pass through.
    """
    env = os.environ if env is None else env
    opts = dict(storage_options or {})
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    endpoint = (opts.pop("endpoint_url", None) or client_kwargs.pop("endpoint_url", None)
                or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None)
    region = (client_kwargs.get("region_name") or opts.pop("region_name", None)
              or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None)
    if region:
        client_kwargs["region_name"] = region
    style = opts.pop("addressing_style", None)  # a shorthand for config_kwargs' s3 section
    if style:
        config = dict(opts.get("config_kwargs") or {})
        config["s3"] = {**(config.get("s3") or {}), "addressing_style": style}
        opts["config_kwargs"] = config
    if not opts.get("profile") and env.get("AWS_PROFILE"):
        opts["profile"] = env["AWS_PROFILE"]
    anon = bool(opts.pop("anon", False))
    key = opts.pop("key", None) or opts.pop("username", None) or opts.pop("aws_access_key_id", None)
    secret = (opts.pop("secret", None) or opts.pop("password", None)
              or opts.pop("aws_secret_access_key", None))
    token = opts.pop("token", None) or opts.pop("aws_session_token", None)
    if anon:
        key = secret = token = None
    elif key is None and secret is None and not opts.get("profile"):  # a profile's keys win
        key = env.get("AWS_ACCESS_KEY_ID") or None
        secret = env.get("AWS_SECRET_ACCESS_KEY") or None
        token = token or env.get("AWS_SESSION_TOKEN") or None
    opts.update(endpoint_url=endpoint.rstrip("/") if endpoint else None, key=key, secret=secret,
                token=token, anon=anon, client_kwargs=client_kwargs)
    return opts
