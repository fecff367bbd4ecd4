"""AWS Signature Version 4 for the reduction server's bodiless S3 requests (GET and HEAD).

Why not botocore's signer: building an ``AWSRequest`` and an ``S3SigV4Auth`` for every upstream
read cost ~0.1-0.3 ms of CPU per request, a third of the server's whole budget for a 64 KiB
reduction. The algorithm is small and fixed (AWS's "Signature Version 4 signing process"), and
this module follows exactly what botocore's ``S3SigV4Auth`` produces for such requests, which
``tests/test_stores_sigv4.py`` checks header for header against botocore itself:

- the canonical URI is the URL's path as it will be sent (S3's paths are not normalised or
  encoded again), the canonical query its ``&``-separated pairs sorted as they are;
- every header given is signed (lower-cased, values with runs of white space made one space),
  plus ``host`` (from the URL, without a default port), ``x-amz-date`` and
  ``x-amz-content-sha256`` (the SHA-256 of the empty body: S3 signs the payload over plain HTTP
  and over HTTPS without a ``Content-MD5``).

The derived signing key depends on the secret, the day and the region only; it is kept (a few
per process, keyed by a digest of the secret, never the secret itself) instead of being derived
with four HMACs per request.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections import OrderedDict
from urllib.parse import SplitResult, urlsplit

__all__ = ["EMPTY_SHA256", "sign_v4"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: headers botocore never signs (hop-by-hop and tracing ones)
UNSIGNED = frozenset({"baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
                      "proxy-authorization", "te", "traceparent", "tracestate", "trailer",
                      "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id"})
#: headers the signature sets (any given are replaced)
_SET = ("authorization", "x-amz-date", "x-amz-content-sha256")
_KEYS: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()
_MAX_KEYS = 64


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    ref = (hashlib.sha256(secret.encode()).digest(), day, region, service)
    key = _KEYS.get(ref)
    if key is None:
        key = f"AWS4{secret}".encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        _KEYS[ref] = key
        while len(_KEYS) > _MAX_KEYS:
            _KEYS.popitem(last=False)
    return key


def _host(parts: SplitResult) -> str:
    """The ``host`` value botocore signs: lower case, IPv6 bracketed, no default port."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def sign_v4(url: str, headers: dict[str, str], auth: tuple[str, str], region: str,
            method: str = "GET", service: str = "s3",
            now: datetime.datetime | None = None) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-SHA256`` and ``Authorization`` signing a
    bodiless ``method`` of ``url`` (as it will be sent) with the access key and secret ``auth``."""
    access, secret = auth
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    out = {k: v for k, v in headers.items() if k.lower() not in _SET}
    out["X-Amz-Date"] = stamp
    out["X-Amz-Content-SHA256"] = EMPTY_SHA256
    signed: dict[str, list[str]] = {}
    for k, v in out.items():
        name = k.lower()
        if name not in UNSIGNED:
            signed.setdefault(name, []).append(" ".join(v.split()))
    parts = urlsplit(url)
    if "host" not in signed:
        signed["host"] = [_host(parts)]
    names = sorted(signed)
    query = "&".join(f"{k}={v}" for k, v in sorted(
        p.partition("=")[::2] for p in parts.query.split("&"))) if parts.query else ""
    canonical = "\n".join((
        method.upper(), parts.path, query,
        "".join(f"{n}:{','.join(signed[n])}\n" for n in names), ";".join(names), EMPTY_SHA256))
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = (f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
               f"{hashlib.sha256(canonical.encode()).hexdigest()}")
    signature = hmac.new(_signing_key(secret, stamp[:8], region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out
