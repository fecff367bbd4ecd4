"""The reduction-server client's retry policy: a urllib3 ``Retry`` mounted on the ``requests``
session's adapter.

What is retried (reductions are idempotent, so a POST may be sent again): the statuses 429, 502,
503 and 504; a connection that could not be made (refused, reset, connect timeout); a connection
lost before the answer began. What is not: a read timeout (the server has the request and is
working on it; sending it again would only add load) and any other status. Backoff before retry
``n`` is ``backoff * 2**(n-1)``, jittered by x0.5 to x1.5; a ``Retry-After`` header lengthens the
wait, up to :data:`MAX_RETRY_AFTER` seconds. Only POSTs are retried; other methods (``GET
/capabilities``) are tried once.
"""

from __future__ import annotations

import random
from types import TracebackType
from typing import Any

from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

#: statuses a POST is sent again after
RETRY_STATUSES = (429, 502, 503, 504)
#: the longest wait a ``Retry-After`` header can ask for, in seconds
MAX_RETRY_AFTER = 10.0


class ServerRetry(Retry):
    """:class:`urllib3.util.Retry` with the client's backoff and the failures it retries (above).

    An error raised when retries are exhausted (or not allowed) carries ``attempts``: the HTTP
    requests made, for the backend's accounting.
    """

    #: a Retry-After header makes only these statuses retryable (urllib3 adds 413: a batch that
    #: is too large is split by the client, not sent again)
    RETRY_AFTER_STATUS_CODES = frozenset(RETRY_STATUSES)

    def get_backoff_time(self) -> float:
        n = len(self.history)
        if n == 0:
            return 0.0
        return self.backoff_factor * 2 ** (n - 1) * (0.5 + random.random())

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        if after is None:
            return None
        return min(max(self.get_backoff_time(), after), MAX_RETRY_AFTER)

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None,
                  _pool: Any = None, _stacktrace: TracebackType | None = None) -> "ServerRetry":
        attempts = len(self.history) + 1
        if error is not None:
            error.attempts = attempts  # type: ignore[attr-defined]
            if isinstance(error, ReadTimeoutError):
                raise error.with_traceback(_stacktrace)
        policy: Retry = self
        if method is not None and method.upper() not in (self.allowed_methods or ()):
            # other methods are tried once, failing exactly as urllib3 fails without retries
            policy = self.new(total=0, read=False)
        try:
            return Retry.increment(policy, method, url, response, error, _pool,  # type: ignore[return-value]
                                   _stacktrace)
        except MaxRetryError as exc:
            exc.attempts = attempts  # type: ignore[attr-defined]
            raise


def server_retry(retries: int, backoff: float) -> ServerRetry:
    """The policy for ``retries`` retries with base delay ``backoff`` seconds."""
    return ServerRetry(total=retries, connect=None, read=None, redirect=None, status=None,
                       other=None, allowed_methods=frozenset({"POST"}),
                       status_forcelist=RETRY_STATUSES, backoff_factor=backoff,
                       raise_on_status=False, respect_retry_after_header=True)


def attempts_of(exc: BaseException) -> int:
    """HTTP requests made before ``exc`` (a requests or urllib3 error) was raised."""
    seen: BaseException | None = exc
    for _ in range(16):  # a short chain: requests' error wraps urllib3's, which has a reason
        if seen is None:
            break
        n = getattr(seen, "attempts", None)
        if isinstance(n, int):
            return n
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = inner or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    return 1
