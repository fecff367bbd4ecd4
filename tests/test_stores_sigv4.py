"""The server's SigV4 signer (activestorage.stores.sigv4) against botocore's S3SigV4Auth: the same
Authorization, X-Amz-Date and X-Amz-Content-SHA256 for any URL, headers, method, region and time
(hypothesis), and AWS's own published example."""

from __future__ import annotations

import datetime

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from activestorage.stores.sigv4 import sign_v4


def botocore_sign(url, headers, auth, region, method, now, monkeypatch):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: now)
    req = AWSRequest(method=method, url=url, headers=dict(headers))
    S3SigV4Auth(Credentials(*auth), "s3", region).add_auth(req)
    return dict(req.headers.items())


_seg = st.text("abcXYZ019-_.~%20+!$&'()*,;=:@", min_size=1, max_size=12)
_host = st.sampled_from(["127.0.0.1", "s3.example.org", "Bucket.S3.Example.org", "[::1]",
                         "localhost"])
_port = st.sampled_from(["", ":80", ":443", ":9000"])
_query = st.sampled_from(["", "?versionId=v%201", "?b=2&a=1&a=0", "?x", "?versionId=abc&partNumber=1"])


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["http", "https"]), host=_host, port=_port,
       path=st.lists(_seg, min_size=1, max_size=4), query=_query,
       rng=st.one_of(st.none(), st.tuples(st.integers(0, 10**12), st.integers(0, 10**6))),
       etag=st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=32)),
       extra=st.sampled_from([{}, {"User-Agent": "x"}, {"X-Amz-Meta-A": "  two   spaces "},
                              {"Connection": "keep-alive"}]),
       method=st.sampled_from(["GET", "HEAD"]),
       region=st.sampled_from(["us-east-1", "eu-west-2", "local"]),
       key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=20),
       secret=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
       seconds=st.integers(0, 2 * 10**9))
def test_signatures_equal_botocore_s(scheme, host, port, path, query, rng, etag, extra, method,
                                     region, key, secret, seconds):
    url = f"{scheme}://{host}{port}/" + "/".join(path) + query
    headers = {"Accept-Encoding": "identity", **extra}
    if rng is not None:
        headers["Range"] = f"bytes={rng[0]}-{rng[0] + rng[1]}"
    if etag is not None:
        headers["If-Match"] = f'"{etag}"'
    now = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    with pytest.MonkeyPatch.context() as mp:
        want = botocore_sign(url, headers, (key, secret), region, method, now, mp)
    got = sign_v4(url, headers, (key, secret), region, method,
                  now=now.replace(tzinfo=datetime.timezone.utc))
    assert got == want


def test_aws_published_example():
    """AWS's "GET Object" example for Signature Version 4 (examplebucket, range 0-9)."""
    got = sign_v4("https://examplebucket.s3.amazonaws.com/test.txt",
                  {"Range": "bytes=0-9"},
                  ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                  "us-east-1", now=datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc))
    assert got["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
