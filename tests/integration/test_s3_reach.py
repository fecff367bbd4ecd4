"""S3 reach through ``storage_options`` with s3fs's names, against moto on loopback: shared
config/credentials files and profiles (``profile=``, ``AWS_PROFILE``), region from config,
addressing style, ``anon``, session tokens, presigned URLs in place of a URL, and a custom CA
bundle for a TLS endpoint."""

from __future__ import annotations

import subprocess
import sys
import time

import netCDF4
import numpy as np
import pytest
import requests
from servers import (S3_KEY, S3_SECRET, free_port, make_ca_and_cert, s3_client,
                     start_moto_with_auth)

from activestorage import Active
from activestorage.errors import ServerError, StorageError
from activestorage.stores.s3 import S3Store

BUCKET = "reach"
DATA = np.arange(6 * 20 * 30, dtype="f4").reshape(6, 20, 30)


def _netcdf(path):
    with netCDF4.Dataset(path, "w") as ds:
        for i, n in enumerate(DATA.shape):
            ds.createDimension(f"d{i}", n)
        ds.createVariable("v", "f4", ("d0", "d1", "d2"), chunksizes=(2, 10, 30))[...] = DATA
    return path.read_bytes()


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    """moto checking signatures, a bucket with a netCDF file, and AWS shared files naming a
    profile ``reach`` (region eu-west-3) with the valid key and ``wrong`` with a bad secret."""
    d = tmp_path_factory.mktemp("reach")
    proc = start_moto_with_auth(d / "moto")
    key, secret = proc.extra["key"], proc.extra["secret"]
    s3 = s3_client(proc.url, key, secret)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="d.nc", Body=_netcdf(d / "d.nc"))
    (d / "credentials").write_text(f"[reach]\naws_access_key_id = {key}\n"
                                   f"aws_secret_access_key = {secret}\n"
                                   f"[wrong]\naws_access_key_id = {key}\n"
                                   "aws_secret_access_key = not-the-secret\n")
    (d / "config").write_text("[profile reach]\nregion = eu-west-3\n[profile wrong]\n")
    yield {"url": proc.url, "key": key, "secret": secret, "s3": s3, "dir": d}
    proc.stop()


@pytest.fixture
def aws_files(authed, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(authed["dir"] / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(authed["dir"] / "config"))
    return authed


def _sent_headers(store: S3Store) -> list[dict]:
    """The headers of every request the store's client sends (botocore's public event hook)."""
    seen: list[dict] = []
    store.client().meta.events.register(
        "before-send.s3", lambda request, **_: seen.append(
            {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}))
    return seen


def test_profile_and_region_from_the_shared_files(aws_files):
    url, obj = aws_files["url"], f"s3://{BUCKET}/d.nc"
    with S3Store({"profile": "reach", "endpoint_url": url}, env={}) as store:
        assert store.client().meta.region_name == "eu-west-3"  # from the profile's config
        assert store.size(obj) > 0 and len(store.read_range(obj, 0, 8)) == 8
    with S3Store({"endpoint_url": url}, env={"AWS_PROFILE": "reach"}) as store:
        assert len(store.read_range(obj, 0, 8)) == 8
    with S3Store({"profile": "wrong", "endpoint_url": url}, env={}) as store, \
            pytest.raises(StorageError) as ei:
        store.read_range(obj, 0, 8)
    assert ei.value.status == 401 and obj in str(ei.value)
    opts = {"profile": "reach", "endpoint_url": url}
    with Active(obj, "v", storage_options=opts, backend="fetch") as a:  # metadata and chunks
        np.testing.assert_allclose(a.mean[1:5, 3:17], DATA[1:5, 3:17].astype("f8").mean())


def test_addressing_style_reaches_the_client(aws_files):
    url = aws_files["url"]
    for opts, style in [({}, "path"), ({"addressing_style": "virtual"}, "virtual"),
                        ({"config_kwargs": {"s3": {"addressing_style": "virtual"}}}, "virtual"),
                        ({"addressing_style": "path"}, "path")]:
        with S3Store({"profile": "reach", "endpoint_url": url, **opts}, env={}) as store:
            assert store.client().meta.config.s3["addressing_style"] == style
            seen = _sent_headers(store)
            if style == "path":  # a virtual-hosted bucket name does not resolve on loopback
                assert len(store.read_range(f"s3://{BUCKET}/d.nc", 0, 8)) == 8 and seen


def test_anon_sends_unsigned_requests_and_a_token_is_sent(aws_files):
    url, obj = aws_files["url"], f"s3://{BUCKET}/d.nc"
    with S3Store({"anon": True, "endpoint_url": url}, env={}) as store:
        seen = _sent_headers(store)
        with pytest.raises(StorageError) as ei:  # this moto checks signatures: refused, typed
            store.read_range(obj, 0, 8)
        assert ei.value.status == 401
        assert seen and not any("Authorization" in h for h in seen)
    opts = {"key": aws_files["key"], "secret": aws_files["secret"], "token": "session-tok",
            "endpoint_url": url}
    with S3Store(opts, env={}) as store:
        seen = _sent_headers(store)
        with pytest.raises(StorageError):
            store.read_range(obj, 0, 8)  # moto knows no such session: refused
        assert seen and all(h.get("X-Amz-Security-Token") == "session-tok" for h in seen)


def test_presigned_url_is_read_without_credentials(moto_server, s3, active_server, tmp_path,
                                                   monkeypatch):
    """A presigned URL given in place of the URL is read as it is, with no credentials (and its
    signature is never shown in a message). (moto checking signatures does not take presigned
    URLs, so this is the session's moto, which checks none.)"""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    s3.create_bucket(Bucket="presign")
    s3.put_object(Bucket="presign", Key="d.nc", Body=_netcdf(tmp_path / "d.nc"))
    presigned = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "presign", "Key": "d.nc"}, ExpiresIn=600)
    assert "Signature=" in presigned and presigned.startswith("http://127.0.0.1")
    with Active(presigned, "v", backend="fetch") as a:
        np.testing.assert_allclose(a.max[...], DATA.max())
        np.testing.assert_allclose(a.sum[2:4], DATA[2:4].astype("f8").sum())
    with Active(presigned, "v", active_storage_url=active_server.url) as a:  # the server too
        assert a.backend.name == "server"
        np.testing.assert_allclose(a.min[1:3, 4:9], DATA[1:3, 4:9].min())
    missing = presigned.replace("/d.nc?", "/nope.nc?")
    with pytest.raises(StorageError) as ei:
        Active(missing, "v", backend="fetch").max[...]
    assert "nope.nc" in str(ei.value) and "Signature" not in str(ei.value)


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory):
    """moto over TLS with a certificate from a throwaway CA."""
    d = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_cert(d)
    port = free_port()
    log = open(d / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port), "-c", str(cert), "-k", str(key)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/moto-api/", verify=str(ca), timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"moto over TLS did not start: {(d / 'moto.log').read_text()}")
                time.sleep(0.2)
        import boto3

        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=S3_KEY,
                          aws_secret_access_key=S3_SECRET, region_name="us-east-1",
                          verify=str(ca))
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="d.nc", Body=_netcdf(d / "d.nc"))
        yield url, str(ca)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_custom_ca_bundle(tls_moto):
    url, ca = tls_moto
    obj = f"s3://{BUCKET}/d.nc"
    opts = {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": url}
    with S3Store({**opts, "client_kwargs": {"verify": ca}}, env={}, retries=0) as store:
        assert len(store.read_range(obj, 0, 8)) == 8
    with S3Store(opts, env={}, retries=0) as store, pytest.raises(StorageError) as ei:
        store.read_range(obj, 0, 8)  # the system's CAs do not know ours
    assert ei.value.status == 502
    with Active(obj, "v", storage_options={**opts, "client_kwargs": {"verify": ca}},
                backend="fetch") as a:
        np.testing.assert_allclose(a.min[...], DATA.min())


def test_server_reaches_a_tls_store_through_its_ca_bundle_path_style(tls_moto, tmp_path):
    """The server reads S3 over TLS from a store whose certificate only ``--upstream-ca-bundle``
    vouches for, addressing it path-style as told; without the bundle the read is a 502."""
    from servers import start_active_server

    url, ca = tls_moto
    obj = f"s3://{BUCKET}/d.nc"
    opts = {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": url,
            "client_kwargs": {"verify": ca}}  # the client's own metadata reads
    good = start_active_server(tmp_path / "good", "--upstream-ca-bundle", ca,
                               "--s3-addressing-style", "path")
    bare = start_active_server(tmp_path / "bare")
    try:
        with Active(obj, "v", storage_options=opts, active_storage_url=good.url) as a:
            assert a.backend.name == "server"
            np.testing.assert_allclose(a.max[2:5, 1:9], DATA[2:5, 1:9].max())
            np.testing.assert_allclose(a.sum[...], DATA.astype("f8").sum(), rtol=1e-6)
        with Active(obj, "v", storage_options=opts, active_storage_url=bare.url) as a, \
                pytest.raises(ServerError) as ei:
            a.max[...]  # the system's CAs do not know the store's
        assert "HTTP 502" in str(ei.value) and "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
    finally:
        good.stop()
        bare.stop()
