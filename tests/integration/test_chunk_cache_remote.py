"""The server's chunk cache against real processes: moto S3 (with credentials checked), nginx and
our server on loopback. A repeat reduction is answered from the cache (metrics say so, the store
sees no second GET); a caller the store refuses is refused even though the chunk is cached (other
credentials, no credentials, a grant revoked after the chunk was cached); option_disable_chunk_cache
reads upstream; an overwritten object is never served stale."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import cbor2
import numpy as np
import pytest
import requests

from servers import (S3_KEY, S3_SECRET, ServerProcess, s3_client, start_active_server,
                     start_moto_with_auth)

BUCKET = "cache"
X = np.arange(1000, dtype="<f8")


@pytest.fixture(scope="module")
def server(servers_dir: Path) -> Iterator[ServerProcess]:
    """Our server with the default (memory, revalidated) chunk cache."""
    proc = start_active_server(servers_dir / "cache-server")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def guarded(servers_dir: Path) -> Iterator[dict[str, Any]]:
    """moto checking credentials: ``reader`` may read everything, ``stranger`` nothing."""
    import boto3

    proc = start_moto_with_auth(servers_dir / "cache-moto-auth")
    key, secret = proc.extra["key"], proc.extra["secret"]
    iam = boto3.client("iam", endpoint_url=proc.url, aws_access_key_id=key,
                       aws_secret_access_key=secret, region_name="us-east-1")
    iam.create_user(UserName="stranger")
    k = iam.create_access_key(UserName="stranger")["AccessKey"]
    # an administrator (so revoking reader's grant does not lock the test out of IAM)
    arn = iam.list_attached_user_policies(UserName="reader")["AttachedPolicies"][0]["PolicyArn"]
    iam.create_user(UserName="admin")
    iam.attach_user_policy(UserName="admin", PolicyArn=arn)
    ak = iam.create_access_key(UserName="admin")["AccessKey"]
    iam = boto3.client("iam", endpoint_url=proc.url, aws_access_key_id=ak["AccessKeyId"],
                       aws_secret_access_key=ak["SecretAccessKey"], region_name="us-east-1")
    c = s3_client(proc.url, key, secret)
    c.create_bucket(Bucket="guarded")
    c.put_object(Bucket="guarded", Key="x.f8", Body=X.tobytes())
    yield {"proc": proc, "iam": iam, "s3": c, "reader": (key, secret),
           "stranger": (k["AccessKeyId"], k["SecretAccessKey"]),
           "url": f"{proc.url}/guarded/x.f8"}
    proc.stop()


def metrics(srv: ServerProcess) -> dict[str, float]:
    text = requests.get(srv.url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for m in re.finditer(r"^(activestorage_\w+)(\{[^}]*\})? (\S+)$", text, re.M):
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


HITS = 'activestorage_chunk_cache_hits_total{tier="memory"}'
MISSES = "activestorage_chunk_cache_misses_total"
GETS = "activestorage_upstream_requests_total"


def post(srv: ServerProcess, op: str, payload: Any, auth: Any) -> requests.Response:
    return requests.post(f"{srv.url}/v2/{op}", data=json.dumps(payload), auth=auth, timeout=30,
                         headers={"content-type": "application/json"})


def body(url: str, **kw: Any) -> dict[str, Any]:
    return {"interface_type": "s3", "url": url, "dtype": "float64", "size": 8000,
            "shape": [1000], **kw}


def value(r: requests.Response) -> float:
    assert r.status_code == 200, r.text
    return float(np.frombuffer(cbor2.loads(r.content)["bytes"], "<f8")[0])


def test_repeat_reduction_is_a_hit_and_the_option_bypasses(server, moto_server, s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="x.f8", Body=X.tobytes())
    url, auth = f"{moto_server.url}/{BUCKET}/x.f8", (S3_KEY, S3_SECRET)
    m0 = metrics(server)
    assert value(post(server, "sum", body(url), auth)) == X.sum()
    m1 = metrics(server)
    assert m1[GETS] == m0.get(GETS, 0) + 1 and m1[MISSES] == m0.get(MISSES, 0) + 1
    assert value(post(server, "max", body(url), auth)) == X.max()
    assert value(post(server, "min", body(url, selection=[[10, 20, 1]]), auth)) == 10.0
    m2 = metrics(server)
    assert m2[GETS] == m1[GETS] and m2[HITS] == m1.get(HITS, 0) + 2
    assert m2['activestorage_chunk_cache_bytes{tier="memory"}'] >= X.nbytes
    # option_disable_chunk_cache: read upstream, no lookup
    assert value(post(server, "sum", body(url, option_disable_chunk_cache=True), auth)) == X.sum()
    m3 = metrics(server)
    assert m3[GETS] == m2[GETS] + 1 and m3[HITS] == m2[HITS] and m3[MISSES] == m2[MISSES]


def test_overwritten_object_is_not_served_stale(server, moto_server, s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="w.f8", Body=X.tobytes())
    url, auth = f"{moto_server.url}/{BUCKET}/w.f8", (S3_KEY, S3_SECRET)
    assert value(post(server, "sum", body(url), auth)) == X.sum()
    assert value(post(server, "sum", body(url), auth)) == X.sum()  # cached
    s3.put_object(Bucket=BUCKET, Key="w.f8", Body=(X * 2).tobytes())  # same size, new ETag
    m0 = metrics(server)
    assert value(post(server, "sum", body(url), auth)) == 2 * X.sum()
    m1 = metrics(server)
    assert m1[GETS] == m0[GETS] + 1
    assert m1['activestorage_chunk_cache_evictions_total{reason="changed",tier="memory"}'] >= 1
    # and a client pinned to the old version gets the store's 409, not the old bytes
    old_etag = '"' + __import__("hashlib").md5(X.tobytes()).hexdigest() + '"'
    r = post(server, "sum", body(url, etag=old_etag), auth)
    assert r.status_code == 409, r.text


def test_callers_the_store_refuses_are_refused_although_cached(server, guarded):
    url = guarded["url"]
    assert value(post(server, "sum", body(url), guarded["reader"])) == X.sum()
    assert value(post(server, "sum", body(url), guarded["reader"])) == X.sum()  # cached
    hits = metrics(server)[HITS]
    for auth in (guarded["stranger"], (guarded["reader"][0], "not-the-secret"), None):
        r = post(server, "sum", body(url), auth)
        assert r.status_code in (401, 403), r.text
        assert "credentials" in r.json()["error"]["message"]
    assert metrics(server)[HITS] == hits
    # a grant revoked after the chunk was cached: the authorised HEAD sees it at once
    iam = guarded["iam"]
    arn = iam.list_attached_user_policies(UserName="reader")["AttachedPolicies"][0]["PolicyArn"]
    iam.detach_user_policy(UserName="reader", PolicyArn=arn)
    try:
        r = post(server, "sum", body(url), guarded["reader"])
        assert r.status_code in (401, 403), r.text
        assert metrics(server)[HITS] == hits
    finally:
        iam.attach_user_policy(UserName="reader", PolicyArn=arn)


def test_http_store_repeat_and_private_paths(server, nginx_server):
    root = nginx_server.extra["docroot"]
    (root / "c.f8").write_bytes(X.tobytes())
    (root / "private" / "c.f8").write_bytes(X.tobytes())
    pub = {"interface_type": "http", "url": f"{nginx_server.url}/c.f8", "dtype": "float64",
           "size": 8000}
    h0 = metrics(server).get(HITS, 0)
    assert value(post(server, "sum", pub, None)) == X.sum()
    assert value(post(server, "max", pub, None)) == X.max()
    assert metrics(server)[HITS] == h0 + 1
    from servers import NGINX_PASSWORD, NGINX_USER

    priv = dict(pub, url=f"{nginx_server.url}/private/c.f8")
    assert value(post(server, "sum", priv, (NGINX_USER, NGINX_PASSWORD))) == X.sum()
    assert value(post(server, "sum", priv, (NGINX_USER, NGINX_PASSWORD))) == X.sum()
    r = post(server, "sum", priv, (NGINX_USER, "wrong"))
    assert r.status_code == 401, r.text
    assert post(server, "sum", priv, None).status_code == 401


def test_batched_active_mean_twice_through_the_server(server, moto_server, s3, tmp_path):
    """The SDK's batched whole-variable reductions: the second is answered from the cache."""
    import netCDF4

    from activestorage import Active
    from activestorage.backends.server import ServerBackend

    path = tmp_path / "v.nc"
    data = np.random.default_rng(1).normal(size=(6, 40, 50)).astype("f4")
    with netCDF4.Dataset(path, "w") as ds:
        for n, s in zip("tyx", data.shape):
            ds.createDimension(n, s)
        v = ds.createVariable("v", "f4", ("t", "y", "x"), chunksizes=(1, 40, 50), zlib=True)
        v[:] = data
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(path), BUCKET, "v.nc")
    so = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": moto_server.url}}
    m0 = metrics(server)
    out = []
    for op in ("mean", "max"):
        with ServerBackend(server.url, storage_options=so, batch=True) as b, \
                Active(f"s3://{BUCKET}/v.nc", "v", storage_options=so, backend=b) as a:
            out.append(float(getattr(a, op)[...]))
    m1 = metrics(server)
    assert np.isclose(out[0], data.astype("f8").mean()) and out[1] == data.max()
    assert m1[GETS] - m0.get(GETS, 0) <= 6  # the first reduction's reads only
    assert m1[HITS] - m0.get(HITS, 0) == 6


def test_disk_tier_survives_a_restart_for_anonymous_entries_only(servers_dir, nginx_server):
    """Memory off, a directory on: hits come from disk; after a restart anonymous entries are
    still served (revalidated), a caller's are gone (their keys died with the process)."""
    from servers import NGINX_PASSWORD, NGINX_USER

    root = nginx_server.extra["docroot"]
    (root / "d.f8").write_bytes(X.tobytes())
    (root / "private" / "d.f8").write_bytes(X.tobytes())
    pub = {"interface_type": "http", "url": f"{nginx_server.url}/d.f8", "dtype": "float64",
           "size": 8000}
    priv = dict(pub, url=f"{nginx_server.url}/private/d.f8")
    user = (NGINX_USER, NGINX_PASSWORD)
    cache_dir = servers_dir / "chunk-cache-disk"
    args = ("--chunk-cache-size", "0", "--chunk-cache-dir", str(cache_dir))
    disk_hits = 'activestorage_chunk_cache_hits_total{tier="disk"}'
    srv = start_active_server(servers_dir / "cache-disk-1", *args)
    try:
        for _ in range(2):
            assert value(post(srv, "sum", pub, None)) == X.sum()
            assert value(post(srv, "sum", priv, user)) == X.sum()
        assert metrics(srv)[disk_hits] == 2
        names = sorted(p.name[:2] for p in cache_dir.iterdir())
        assert names == ["a-", "u-"]
    finally:
        srv.stop()
    srv = start_active_server(servers_dir / "cache-disk-2", *args)
    try:
        assert sorted(p.name[:2] for p in cache_dir.iterdir()) == ["a-"]
        assert value(post(srv, "sum", pub, None)) == X.sum()
        assert value(post(srv, "sum", priv, user)) == X.sum()
        m = metrics(srv)
        assert m[disk_hits] == 1 and m[GETS] == 1
        for p in cache_dir.iterdir():
            assert NGINX_PASSWORD.encode() not in p.read_bytes()
    finally:
        srv.stop()
