"""Server settings: one frozen object built from CLI flags with ``ACTIVESTORAGE_*`` env defaults.

Every knob is an explicit field passed to :func:`~activestorage.server.app.create_app`; there is no
module-level mutable configuration. :class:`Settings` is a pydantic-settings model: the
``ACTIVESTORAGE_<FIELD>`` variables are read and validated (types, booleans, the comma-separated
allow-list) by pydantic-settings in :meth:`Settings.from_env`, never implicitly, so ``Settings()``
is the documented defaults whatever the environment. ``parse_args`` is what ``activestorage
serve`` and ``python -m activestorage.server`` use: its flags' defaults come from
:meth:`Settings.from_env`.
"""

from __future__ import annotations

import argparse
import os
from typing import Annotated, Any, Literal, Mapping, Sequence

from pydantic import ValidationError, field_validator
from pydantic_settings import (BaseSettings, EnvSettingsSource, NoDecode,
                               PydanticBaseSettingsSource, SettingsConfigDict)

from ..argparsing import DefaultsHelpFormatter, OneLineErrorParser

ENV_PREFIX = "ACTIVESTORAGE_"
#: hosts the server may fetch from unless told otherwise: loopback only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    """What the server listens on, which upstream hosts it may read, and the limits it enforces."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid",
                                      case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    #: upstream hosts (``host`` or ``host:port``; ``*`` allows any) the server may fetch from.
    allow_upstream: Annotated[tuple[str, ...], NoDecode] = LOOPBACK_HOSTS
    #: largest accepted request body (JSON/CBOR), bytes.
    max_body_bytes: int = 1 << 20
    #: decoded + raw bytes of all requests in flight; beyond it requests wait, then get 503.
    max_bytes_in_flight: int = 1 << 30
    #: how long a request may wait for memory before a 503.
    memory_wait_seconds: float = 5.0
    #: concurrent upstream range GETs (per worker process).
    max_upstream_concurrency: int = 64
    #: threads running the numeric kernel.
    kernel_threads: int = 4
    #: seconds a client has to send a request's headers, and again its body (slowloris bound).
    client_timeout: float = 10.0
    #: largest request line + headers, bytes (431 beyond).
    max_header_bytes: int = 64 << 10
    #: seconds a client may leave a response unread (its connection's buffer full) before the
    #: connection is dropped and the response's memory released.
    write_timeout: float = 30.0
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 30.0
    #: most items in one /v2/batch request.
    max_batch: int = 1024
    #: serve our documented extension: the moments and minmax operations and weights (off: the
    #: Reductionist operations only, as a reference server; clients then compute those themselves)
    moments_extension: bool = True
    #: ranges of one object closer than this are fetched with one GET in a batch.
    coalesce_gap_bytes: int = 64 << 10
    #: a coalesced GET is never larger than this.
    coalesce_max_bytes: int = 16 << 20
    #: ranges this large are always fetched alone.
    coalesce_below_bytes: int = 1 << 20
    #: memory for the chunk cache of raw upstream ranges, bytes (0: no memory cache).
    chunk_cache_size: int = 256 << 20
    #: seconds a cached range may be served (memory and disk).
    chunk_cache_ttl: float = 3600.0
    #: most bytes one request may add to the chunk cache.
    chunk_cache_request_bytes: int = 128 << 20
    #: check each cached object once per request with a HEAD under the caller's credentials
    #: (ETag must be unchanged); off: serve entries until they are chunk_cache_ttl old.
    chunk_cache_revalidate: bool = True
    #: directory of the optional disk tier of the chunk cache (None: memory only).
    chunk_cache_dir: str | None = None
    #: bytes the disk tier may hold.
    chunk_cache_disk_size: int = 4 << 30
    #: region used for SigV4 signing of S3 requests.
    s3_region: str = "us-east-1"
    #: how S3 objects are addressed upstream: ``path`` (``host/bucket/key``, what every
    #: S3-compatible store takes) or ``virtual`` (``bucket.host/key``, AWS's virtual-hosted style).
    s3_addressing_style: Literal["path", "virtual"] = "path"
    #: PEM file of the CAs that upstream TLS certificates are checked against (instead of the
    #: system's), for stores with a private CA.
    upstream_ca_bundle: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"
    #: log one structured line per request.
    access_log: bool = True

    @field_validator("allow_upstream", mode="before")
    @classmethod
    def _host_list(cls, v: Any) -> Any:
        """``ACTIVESTORAGE_ALLOW_UPSTREAM="a, b:9000"``: a comma-separated list."""
        if isinstance(v, str):
            return tuple(h.strip() for h in v.split(",") if h.strip())
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   *_others: PydanticBaseSettingsSource,
                                   **_named: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: the environment is read explicitly, by :meth:`from_env`."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """The ``ACTIVESTORAGE_*`` variables of ``environ`` (``os.environ``) over the defaults;
        a malformed variable is a :class:`SystemExit` naming it."""
        env = os.environ if environ is None else environ
        try:
            return cls(**_MappingEnvSource(cls, env)())
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ENV_PREFIX + str(err["loc"][0]).upper() if err.get("loc") else "settings"
            raise SystemExit(f"activestorage serve: {name}: {err['msg']}") from None

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes``, validated."""
        return type(self)(**{**self.model_dump(), **changes})

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        return cls.model_validate_json(text)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``
    (so ``parse_args(argv, environ={})`` is reproducible whatever the process environment)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # names matched case-insensitively (Settings.model_config), as on os.environ
        return {k.lower(): v for k, v in self._environ.items()}


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``serve`` argument parser; defaults come from ``environ`` (``os.environ``)."""
    d = Settings.from_env(environ)
    p = OneLineErrorParser(
        prog="activestorage serve", formatter_class=DefaultsHelpFormatter,
        description="Run the Reductionist-compatible reduction server. Every flag also reads "
                    "ACTIVESTORAGE_<FLAG> (e.g. ACTIVESTORAGE_PORT, ACTIVESTORAGE_ALLOW_UPSTREAM); "
                    "the defaults shown include those variables.")
    a = p.add_argument
    a("--host", default=d.host, help="interface to listen on")
    a("--port", type=int, default=d.port, help="TCP port to listen on")
    a("--workers", type=int, default=d.workers,
      help="worker processes (the memory and upstream limits are shared out among them)")
    a("--allow-upstream", action="append", default=None, metavar="HOST[:PORT]",
      help="upstream host the server may read from (repeatable, or comma separated; '*' = any). "
           "Default: loopback only (ACTIVESTORAGE_ALLOW_UPSTREAM).")
    a("--max-body-bytes", type=int, default=d.max_body_bytes,
      help="largest request body accepted (JSON or CBOR), in bytes; larger gets 413")
    a("--max-bytes-in-flight", type=int,
      default=d.max_bytes_in_flight,
      help="bound on raw+decoded bytes of requests being served; beyond it requests wait then 503")
    a("--memory-wait-seconds", type=float,
      default=d.memory_wait_seconds,
      help="seconds a request may wait for memory under --max-bytes-in-flight before a 503")
    a("--max-upstream-concurrency", type=int,
      default=d.max_upstream_concurrency,
      help="concurrent range GETs to the object stores (per worker process)")
    a("--kernel-threads", type=int, default=d.kernel_threads,
      help="threads decoding chunks and running the reductions")
    a("--client-timeout", type=float, default=d.client_timeout,
      help="seconds a client may take to send request headers, and again the body")
    a("--max-header-bytes", type=int,
      default=d.max_header_bytes,
      help="largest request line plus headers in bytes; beyond it a 431")
    a("--write-timeout", type=float, default=d.write_timeout,
      help="seconds a client may stop reading a response before it is disconnected")
    a("--upstream-connect-timeout", type=float,
      default=d.upstream_connect_timeout,
      help="seconds to connect to an object store before a 504")
    a("--upstream-read-timeout", type=float,
      default=d.upstream_read_timeout,
      help="total seconds for one upstream read, connecting included, before a 504")
    a("--max-batch", type=int, default=d.max_batch,
      help="most chunk requests in one /v2/batch request")
    a("--chunk-cache-size", type=int, default=d.chunk_cache_size, metavar="BYTES",
      help="memory for the cache of raw upstream chunks (per server; shared out among "
           "--workers); 0 turns the memory cache off")
    a("--chunk-cache-ttl", type=float, default=d.chunk_cache_ttl, metavar="SECONDS",
      help="age after which a cached chunk is never served")
    a("--chunk-cache-request-bytes", type=int, default=d.chunk_cache_request_bytes,
      metavar="BYTES", help="most bytes one request may add to the chunk cache")
    a("--no-chunk-cache-revalidate", action="store_true", default=not d.chunk_cache_revalidate,
      help="serve cached chunks without the per-request HEAD (caller's credentials, ETag check); "
           "entries are then only bounded by --chunk-cache-ttl (default: revalidate)")
    a("--chunk-cache-dir", default=d.chunk_cache_dir, metavar="DIR",
      help="also keep cached chunks in this directory (default: memory only)")
    a("--chunk-cache-disk-size", type=int, default=d.chunk_cache_disk_size, metavar="BYTES",
      help="bytes the --chunk-cache-dir tier may hold")
    a("--no-chunk-cache", action="store_true", default=False,
      help="no chunk cache at all (same as --chunk-cache-size 0 without --chunk-cache-dir; "
           "default: the memory cache is on)")
    a("--no-moments-extension", action="store_true", default=not d.moments_extension,
      help="do not serve the moments/minmax operations and weights (our extension; clients "
           "then compute them from fetched bytes) (default: served; "
           "ACTIVESTORAGE_MOMENTS_EXTENSION=0 also turns it off)")
    a("--s3-region", default=d.s3_region,
      help="region used to sign (SigV4) requests to S3")
    a("--s3-addressing-style", default=d.s3_addressing_style, choices=["path", "virtual"],
      help="address S3 objects upstream as host/bucket/key (path) or bucket.host/key (virtual; "
           "the allow-list must then cover the bucket's host name)")
    a("--upstream-ca-bundle", default=d.upstream_ca_bundle, metavar="PEM",
      help="check upstream stores' TLS certificates against these CAs instead of the system's "
           "(default: the system's)")
    a("--tls-cert", default=d.tls_cert, metavar="PEM",
      help="serve HTTPS with this certificate (with --tls-key; default: plain HTTP)")
    a("--tls-key", default=d.tls_key, metavar="PEM",
      help="private key of --tls-cert (default: none)")
    a("--log-level", default=d.log_level,
      choices=["critical", "error", "warning", "info", "debug"], help="least severe level logged")
    a("--no-access-log", action="store_true",
      default=not d.access_log,
      help="do not log one structured line per request (default: log them; "
           "ACTIVESTORAGE_ACCESS_LOG=0 also turns it off)")
    p.set_defaults(_env_allow=d.allow_upstream)
    return p


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags, falling back to ``ACTIVESTORAGE_*`` variables."""
    ns = build_parser(environ).parse_args(argv)
    if ns.allow_upstream:
        allow = tuple(h.strip() for item in ns.allow_upstream for h in item.split(",") if h.strip())
    else:
        allow = tuple(ns._env_allow)
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise SystemExit("activestorage serve: --tls-cert and --tls-key go together")
    if ns.upstream_ca_bundle and not os.path.isfile(ns.upstream_ca_bundle):
        raise SystemExit(f"activestorage serve: --upstream-ca-bundle {ns.upstream_ca_bundle}: "
                         "no such file")
    return Settings(
        host=ns.host, port=int(ns.port), workers=max(1, int(ns.workers)), allow_upstream=allow,
        max_body_bytes=int(ns.max_body_bytes), max_bytes_in_flight=int(ns.max_bytes_in_flight),
        memory_wait_seconds=float(ns.memory_wait_seconds),
        max_upstream_concurrency=int(ns.max_upstream_concurrency),
        kernel_threads=max(1, int(ns.kernel_threads)),
        client_timeout=float(ns.client_timeout),
        max_header_bytes=int(ns.max_header_bytes), write_timeout=float(ns.write_timeout),
        upstream_connect_timeout=float(ns.upstream_connect_timeout),
        upstream_read_timeout=float(ns.upstream_read_timeout), max_batch=int(ns.max_batch),
        moments_extension=not ns.no_moments_extension,
        chunk_cache_size=0 if ns.no_chunk_cache else max(0, int(ns.chunk_cache_size)),
        chunk_cache_ttl=float(ns.chunk_cache_ttl),
        chunk_cache_request_bytes=max(0, int(ns.chunk_cache_request_bytes)),
        chunk_cache_revalidate=not ns.no_chunk_cache_revalidate,
        chunk_cache_dir=None if ns.no_chunk_cache else (ns.chunk_cache_dir or None),
        chunk_cache_disk_size=max(0, int(ns.chunk_cache_disk_size)),
        s3_region=ns.s3_region, s3_addressing_style=ns.s3_addressing_style,
        upstream_ca_bundle=ns.upstream_ca_bundle or None,
        tls_cert=ns.tls_cert or None, tls_key=ns.tls_key or None,
        log_level=ns.log_level, access_log=not ns.no_access_log)
