"""The bundled Reductionist-compatible reduction server (``activestorage serve``).

``create_app(Settings(...))`` builds the ASGI app; ``serve_main(argv)`` runs it under uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .settings import Settings, parse_args

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Settings", "create_app", "parse_args", "serve_main"]


def create_app(settings: Settings | None = None) -> "FastAPI":
    from .app import create_app as _create

    return _create(settings)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Run the server with command-line ``argv`` (flags of ``activestorage serve``)."""
    from .serve import serve_main as _main

    return _main(argv)


