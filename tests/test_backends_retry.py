"""The reduction-server client's retry policy (urllib3 Retry) in isolation: which failures are
retried, how long it waits, and the attempt count carried by the final error."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from hypothesis import given, strategies as st
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.response import HTTPResponse

from activestorage.backends.retry import (MAX_RETRY_AFTER, RETRY_STATUSES, attempts_of,
                                          server_retry)
from activestorage.backends.server import make_session


def _response(status: int, retry_after: str | None = None) -> HTTPResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return HTTPResponse(body=b"", headers=headers, status=status, preload_content=False)


@pytest.mark.parametrize("status", [200, 400, 404, 413, 500, 501] + list(RETRY_STATUSES))
def test_which_statuses_are_retried_and_only_for_post(status):
    r = server_retry(3, 0.1)
    for has_after in (False, True):
        assert r.is_retry("POST", status, has_after) == (status in RETRY_STATUSES)
        assert not r.is_retry("GET", status, has_after)


@given(st.integers(1, 6), st.floats(0.001, 2.0))
def test_backoff_doubles_with_jitter(n, backoff):
    r = server_retry(10, backoff)
    for _ in range(n):
        r = r.increment("POST", "/v2/sum", response=_response(503))
    base = backoff * 2 ** (n - 1)
    assert 0.5 * base <= r.get_backoff_time() <= 1.5 * base
    assert server_retry(10, backoff).get_backoff_time() == 0.0


def test_retry_after_lengthens_the_wait_up_to_a_bound():
    r = server_retry(3, 0.01).increment("POST", "/v2/sum", response=_response(503))
    assert r.get_retry_after(_response(503, "2")) == 2.0
    assert r.get_retry_after(_response(503, "3600")) == MAX_RETRY_AFTER
    assert 0.005 <= r.get_retry_after(_response(503, "0")) <= 0.015  # never below the backoff
    assert r.get_retry_after(_response(503)) is None


def test_exhaustion_and_unretried_errors_carry_the_attempts():
    r = server_retry(2, 0.0)
    refused = NewConnectionError(None, "refused")
    r = r.increment("POST", "/v2/sum", error=refused)
    r = r.increment("POST", "/v2/sum", error=ProtocolError("reset"))
    with pytest.raises(MaxRetryError) as ei:
        r.increment("POST", "/v2/sum", error=refused)
    assert attempts_of(requests.ConnectionError(ei.value)) == 3
    slow = ReadTimeoutError(None, "/v2/sum", "read timed out")
    with pytest.raises(ReadTimeoutError) as ei2:  # a read timeout is never sent again
        server_retry(3, 0.0).increment("POST", "/v2/sum", error=slow)
    assert attempts_of(requests.ReadTimeout(ei2.value)) == 1
    with pytest.raises(MaxRetryError) as ei3:  # nor is anything but a POST (failing as
        server_retry(3, 0.0).increment("GET", "/capabilities", error=refused)  # urllib3 does)
    assert ei3.value.reason is refused and attempts_of(ei3.value) == 1
    with pytest.raises(ProtocolError):
        server_retry(3, 0.0).increment("GET", "/capabilities", error=ProtocolError("reset"))


def test_a_get_to_a_dead_server_is_one_typed_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        make_session(retries=3, backoff=5.0).get(f"http://127.0.0.1:{port}/capabilities",
                                                 timeout=2)


def test_a_read_timeout_sends_the_request_once():
    """Through a real session: a server that accepts and never answers sees one request."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        s = make_session(retries=3, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            s.post(f"http://127.0.0.1:{srv.getsockname()[1]}/v2/sum", data=b"{}",
                   timeout=(1, 0.3))
        assert time.monotonic() - t0 < 1.0
        time.sleep(0.1)
        assert len(accepted) == 1
    finally:
        srv.close()
        for c in accepted:
            c.close()
