"""``activestorage serve`` / ``python -m activestorage.server``: run the app under uvicorn."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Sequence

from ..memory import reuse_freed_memory
from .metrics import MULTIPROC_ENV
from .settings import Settings, parse_args

log = logging.getLogger("activestorage.server")


def configure_logging(level_name: str) -> None:
    """Plain-text log lines on stderr (the access log lines are JSON objects after the name)."""
    level = level_name.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("activestorage").setLevel(level)
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _http_protocol() -> object:
    """httptools with a request-header deadline when httptools is installed, else uvicorn's h11."""
    try:
        from .protocol import DeadlineHttpToolsProtocol
    except ImportError:  # no httptools: the h11 protocol (no header deadline; put nginx in front)
        log.warning("httptools is not installed: no request-header deadline (slowloris)")
        return "h11"
    return DeadlineHttpToolsProtocol


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get up to 10 s to finish (graceful)."""
    import uvicorn

    configure_logging(settings.log_level)
    reuse_freed_memory()
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  access_log=False, timeout_graceful_shutdown=10, server_header=False,
                  ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                  timeout_keep_alive=30, log_config=None, http=_http_protocol())
    if settings.workers > 1:
        # Each worker process enforces its share of the process-wide limits.
        per = settings.replace(
            max_bytes_in_flight=max(1, settings.max_bytes_in_flight // settings.workers),
            max_upstream_concurrency=max(1, settings.max_upstream_concurrency // settings.workers),
            chunk_cache_size=settings.chunk_cache_size // settings.workers,
            chunk_cache_disk_size=settings.chunk_cache_disk_size // settings.workers)
        os.environ["ACTIVESTORAGE_SERVER_SETTINGS"] = per.to_json()
        # one metrics view: the workers record into files in a directory of this server's own
        # (prometheus_client's multiprocess mode), which /metrics of any worker sums
        metrics_dir = tempfile.mkdtemp(prefix="activestorage-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        try:
            uvicorn.run("activestorage.server.serve:app_from_env", factory=True,
                        workers=settings.workers, **common)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return
    from .app import create_app

    uvicorn.run(create_app(settings), **common)


def app_from_env() -> Any:
    """Factory for multi-worker uvicorn: settings come from ``ACTIVESTORAGE_SERVER_SETTINGS``."""
    from .app import create_app

    text = os.environ.get("ACTIVESTORAGE_SERVER_SETTINGS")
    settings = Settings.from_json(text) if text else Settings()
    configure_logging(settings.log_level)  # worker processes start with logging unconfigured
    reuse_freed_memory()  # a process-wide allocator setting: each worker sets its own
    return create_app(settings)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``activestorage serve ARGS`` (the CLI passes the arguments after ``serve``)."""
    run(parse_args(argv))
    return 0
