"""What the formats ask of a remote byte store besides ranges -- whole objects, listings, bucket
versioning, writing a manifest -- against moto (S3) and nginx (HTTP) on loopback."""

from __future__ import annotations

import pytest
from servers import S3_KEY, S3_SECRET

from activestorage.errors import StorageError, UnsupportedError
from activestorage.stores import open_store
from activestorage.stores.s3 import S3Store

BUCKET = "stores-listing"
PLAIN = "stores-plain"
KEYS = {"p/zarr.json": b"{}", "p/a/0.0": b"x" * 10, "p/a/0.1": b"y" * 20, "p/a/sub/1": b"z",
        "pother/k": b"no"}


@pytest.fixture(scope="module")
def bucket(s3, moto_server):
    for b in (BUCKET, PLAIN):
        try:
            s3.create_bucket(Bucket=b)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for k, body in KEYS.items():
        s3.put_object(Bucket=BUCKET, Key=k, Body=body)
    so = {"key": S3_KEY, "secret": S3_SECRET,
          "client_kwargs": {"endpoint_url": moto_server.url, "region_name": "us-east-1"}}
    with S3Store(so) as store:
        yield store


def test_s3_find_lists_every_object_under_a_prefix_with_sizes_and_etags(bucket, s3):
    found = bucket.find(f"s3://{BUCKET}/p")
    assert {u: i.size for u, i in found.items()} == {
        f"s3://{BUCKET}/{k}": len(v) for k, v in KEYS.items() if k.startswith("p/")}
    etag = s3.head_object(Bucket=BUCKET, Key="p/a/0.0")["ETag"]
    assert found[f"s3://{BUCKET}/p/a/0.0"].etag == etag
    assert len(bucket.find(f"s3://{BUCKET}")) == len(KEYS)  # a bucket's root


def test_s3_list_dir_names_objects_and_prefixes_one_level_down(bucket):
    assert sorted(bucket.list_dir(f"s3://{BUCKET}/p")) == ["a", "zarr.json"]
    assert sorted(bucket.list_dir(f"s3://{BUCKET}/p/a")) == ["0.0", "0.1", "sub"]
    assert bucket.list_dir(f"s3://{BUCKET}/nothing") == []


def test_s3_whole_objects_versioning_and_writes(bucket):
    assert bucket.read_object(f"s3://{BUCKET}/p/a/0.1") == b"y" * 20
    with pytest.raises(StorageError) as err:
        bucket.read_object(f"s3://{BUCKET}/p/absent")
    assert err.value.status == 404 and "p/absent" in str(err.value)
    assert bucket.bucket_versioned(BUCKET) and not bucket.bucket_versioned(PLAIN)
    bucket.write_object(f"s3://{PLAIN}/m.json", b'{"a": 1}')
    assert bucket.read_object(f"s3://{PLAIN}/m.json") == b'{"a": 1}'
    with pytest.raises(StorageError) as err:
        bucket.bucket_versioned("no-such-bucket-here")
    assert err.value.status == 404


def test_http_whole_objects_and_no_listing(nginx_server):
    (nginx_server.extra["docroot"] / "whole.bin").write_bytes(b"0123456789")
    url = f"{nginx_server.url}/absent-object.bin"
    with open_store(url) as store:
        assert store.read_object(f"{nginx_server.url}/whole.bin") == b"0123456789"
        with pytest.raises(StorageError) as err:
            store.read_object(url)
        assert err.value.status == 404
        with pytest.raises(UnsupportedError):
            store.list_dir(nginx_server.url)
