"""PyActiveStorage's ``activestorage.config`` names, for code that imports them.

This package does not read them: ``Active`` takes the server and the store from its arguments
(``active_storage_url=``, ``storage_options=``) and the environment. Each name is read once, at
import, from the environment variable this package uses for the same thing, with the peer's
development defaults (a local MinIO and Reductionist) when unset.
"""

from __future__ import annotations

import os

#: whether PyActiveStorage's own tests put their data on S3 (``$ACTIVESTORAGE_USE_S3``)
USE_S3: bool = os.environ.get("ACTIVESTORAGE_USE_S3", "").lower() in ("1", "true", "yes")
#: the reduction server (``$ACTIVESTORAGE_URL``)
S3_ACTIVE_STORAGE_URL: str = os.environ.get("ACTIVESTORAGE_URL") or "http://localhost:8080"
#: a CA bundle for the server (``$ACTIVESTORAGE_CA_BUNDLE``); None: the system's
S3_ACTIVE_STORAGE_CACERT: str | None = os.environ.get("ACTIVESTORAGE_CA_BUNDLE") or None
#: the S3 endpoint (``$AWS_ENDPOINT_URL``)
S3_URL: str = os.environ.get("AWS_ENDPOINT_URL") or "http://localhost:9000"
#: S3 credentials (``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY``)
S3_ACCESS_KEY: str = os.environ.get("AWS_ACCESS_KEY_ID") or "minioadmin"
S3_SECRET_KEY: str = os.environ.get("AWS_SECRET_ACCESS_KEY") or "minioadmin"
#: the bucket PyActiveStorage's tests use
S3_BUCKET: str = os.environ.get("ACTIVESTORAGE_S3_BUCKET") or "pyactivestorage"
#: whether the server is remote (informational)
REMOTE_RED: bool = False

__all__ = ["USE_S3", "S3_ACTIVE_STORAGE_URL", "S3_ACTIVE_STORAGE_CACERT", "S3_URL",
           "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET", "REMOTE_RED"]
