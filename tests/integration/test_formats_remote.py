"""netCDF-3, Zarr v2/v3 and manifests over a real moto S3 server, through the fetch backend and
our reduction server; manifests pinned to ETag/version id fail loudly when an object changes."""

from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import zarr

from activestorage import Active
from activestorage.errors import ObjectChangedError, ServerError
from activestorage.formats.netcdf3 import open_netcdf3
from activestorage.formats.manifest import write_manifest
from activestorage.formats.zarr import open_zarr

from servers import S3_KEY, S3_SECRET

BUCKET = "formats"
VERSIONED = "formats-versioned"
OPS = ("mean", "min", "max", "sum", "count")


def storage_options(moto_server) -> dict:
    return {"key": S3_KEY, "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": moto_server.url, "region_name": "us-east-1"}}


def upload(s3, bucket: str, local: Path, key: str) -> str:
    if local.is_dir():
        for f in sorted(local.rglob("*")):
            if f.is_file():
                s3.put_object(Bucket=bucket, Key=f"{key}/{f.relative_to(local).as_posix()}",
                              Body=f.read_bytes())
    else:
        s3.put_object(Bucket=bucket, Key=key, Body=local.read_bytes())
    return f"s3://{bucket}/{key}"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, s3):
    """Local files + their oracles, uploaded to moto. {name: (s3 url, variable, oracle)}"""
    tmp = tmp_path_factory.mktemp("formats")
    for b in (BUCKET, VERSIONED):
        try:
            s3.create_bucket(Bucket=b)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    rng = np.random.default_rng(7)
    out = {}
    for fmt in ("NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"):
        p = tmp / f"{fmt}.nc"
        with netCDF4.Dataset(p, "w", format=fmt) as ds:
            ds.createDimension("time", None)
            ds.createDimension("lat", 6)
            ds.createDimension("lon", 7)
            v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), fill_value=np.float32(-999))
            data = rng.normal(280, 5, (9, 6, 7)).astype("f4")
            data[2, 3, :] = -999
            v[:] = data
            w = ds.createVariable("orog", "i2", ("lat", "lon"))
            w.valid_min = np.int16(10)
            w[:] = rng.integers(0, 100, (6, 7))
        with netCDF4.Dataset(p) as ds:
            out[f"{fmt}/tas"] = (upload(s3, BUCKET, p, p.name), "tas", ds["tas"][...])
            out[f"{fmt}/orog"] = (f"s3://{BUCKET}/{p.name}", "orog", ds["orog"][...])
    for fmt in (2, 3):
        p = tmp / f"v{fmt}.zarr"
        kw = {"shards": (4, 6)} if fmt == 3 else {}
        a = zarr.create_array(str(p), shape=(10, 6), chunks=(2, 3), dtype="f8", zarr_format=fmt,
                              fill_value=-9.0, **kw)
        a.attrs["_FillValue"] = -9.0
        a[:7] = rng.normal(0, 1, (7, 6))  # the last rows stay unwritten: missing chunks
        out[f"zarr{fmt}"] = (upload(s3, BUCKET, p, p.name), p.name,
                             np.ma.masked_equal(a[...], -9.0))
    return out


def check(got, want, op):
    if op == "count":
        assert int(got) == int(np.ma.count(want))
    else:
        np.testing.assert_allclose(float(got), float(getattr(np.ma, op)(want)), rtol=2e-6)


@pytest.mark.parametrize("backend", ["fetch", "server"])
def test_remote_formats_match_oracle(datasets, moto_server, active_server, backend):
    so = storage_options(moto_server)
    for name, (url, var, want) in datasets.items():
        kw = {"active_storage_url": active_server.url} if backend == "server" else {}
        with Active(url, var, storage_options=so, backend=backend, **kw) as a:
            for op in OPS:
                check(getattr(a, op)[...], want, op)
            check(a.max[1:5, 2], want[1:5, 2], "max")


def test_remote_locators_are_pinned_and_listing_is_one_request(datasets, moto_server):
    so = storage_options(moto_server)
    url, var, _ = datasets["NETCDF3_CLASSIC/tas"]
    v = open_netcdf3(url, var, storage_options=so)
    assert all(loc.etag for loc in v.chunks.values())
    assert v.metadata_requests == 2 and v.metadata_bytes > 0  # a HEAD and one block GET
    z = open_zarr(datasets["zarr2"][0], datasets["zarr2"][1], storage_options=so)
    assert len(z.chunks) == 4 * 2 and all(loc.etag and loc.offset == 0 for loc in z.chunks.values())
    s = open_zarr(datasets["zarr3"][0], datasets["zarr3"][1], storage_options=so)
    assert len({loc.url for loc in s.chunks.values()}) == 2  # two shards hold every inner chunk


@pytest.mark.parametrize("backend", ["fetch", "server"])
def test_manifest_round_trip_over_s3(datasets, moto_server, active_server, s3, tmp_path, backend):
    so = storage_options(moto_server)
    kw = {"active_storage_url": active_server.url} if backend == "server" else {}
    for name in ("NETCDF3_64BIT_OFFSET/tas", "zarr3"):
        url, var, want = datasets[name]
        ref = tmp_path / f"{var}.json"
        doc = write_manifest(url, [var], str(ref), storage_options=so)
        objs = doc["variables"][var]["objects"]
        assert objs and all(o["etag"] for o in objs)
        # the manifest itself can live in the store too
        s3.put_object(Bucket=BUCKET, Key=f"manifests/{var}.json", Body=ref.read_bytes())
        with Active(url, var, storage_options=so, backend=backend, **kw) as b:
            direct = {op: getattr(b, op)[...] for op in OPS}
        for m in (str(ref), f"s3://{BUCKET}/manifests/{var}.json"):
            with Active(m, var, storage_options=so, backend=backend, **kw) as a:
                for op in OPS:
                    got = getattr(a, op)[...]
                    assert np.ma.getdata(got) == np.ma.getdata(direct[op])
                    check(got, want, op)


def test_versioned_bucket_records_version_ids(datasets, s3, moto_server, tmp_path):
    so = storage_options(moto_server)
    p = tmp_path / "v.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 5)
        ds.createVariable("v", "f8", ("x",))[:] = np.arange(5.0)
    url = upload(s3, VERSIONED, p, "v.nc")
    doc = write_manifest(url, ["v"], None, storage_options=so)
    (obj,) = doc["variables"]["v"]["objects"]
    head = s3.head_object(Bucket=VERSIONED, Key="v.nc")
    assert obj["version_id"] == head["VersionId"] and obj["etag"] == head["ETag"].strip('"')
    # a new version of the object: the manifest still reads the version it was written against
    with netCDF4.Dataset(p, "a") as ds:
        ds["v"][:] = np.arange(5.0) * 100
    upload(s3, VERSIONED, p, "v.nc")
    doc["variables"]["v"]["objects"][0].pop("etag")  # pinned by version id alone
    with Active(doc, "v", storage_options=so, backend="fetch") as a:
        assert a.sum[...] == 10.0


@pytest.mark.parametrize("backend", ["fetch", "server"])
def test_changed_object_after_manifest_is_an_error(datasets, s3, moto_server, active_server,
                                                   tmp_path,
                                                   backend):
    so = storage_options(moto_server)
    p = tmp_path / "c.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 8)
        ds.createVariable("v", "f4", ("x",))[:] = np.arange(8.0)
    key = f"changing-{backend}.nc"
    url = upload(s3, BUCKET, p, key)
    doc = write_manifest(url, ["v"], None, storage_options=so)
    kw = {"active_storage_url": active_server.url} if backend == "server" else {}
    with Active(doc, "v", storage_options=so, backend=backend, **kw) as a:
        assert a.sum[...] == 28.0
    with netCDF4.Dataset(p, "a") as ds:
        ds["v"][:] = np.arange(8.0) + 1  # same size, different bytes
    upload(s3, BUCKET, p, key)
    with Active(doc, "v", storage_options=so, backend=backend, **kw) as a:
        with pytest.raises((ObjectChangedError, ServerError),
                           match="changed since manifest was written"):
            a.sum[...]


def test_zarr_manifest_in_versioned_bucket_pins_every_chunk_object(datasets, s3, moto_server,
                                                                  tmp_path):
    so = storage_options(moto_server)
    p = tmp_path / "vz.zarr"
    a = zarr.create_array(str(p), shape=(4, 4), chunks=(2, 2), dtype="i4", zarr_format=2)
    a[:] = np.arange(16).reshape(4, 4)
    url = upload(s3, VERSIONED, p, "vz.zarr")
    doc = write_manifest(url, ["vz.zarr"], None, storage_options=so)
    objs = doc["variables"]["vz.zarr"]["objects"]
    assert len(objs) == 4 and all(o["version_id"] and o["etag"] for o in objs)
    # in an unversioned bucket the listing's ETags suffice (no HEAD per chunk object)
    url2 = upload(s3, BUCKET, p, "vz.zarr")
    doc2 = write_manifest(url2, ["vz.zarr"], None, storage_options=so)
    objs2 = doc2["variables"]["vz.zarr"]["objects"]
    assert all(o["etag"] and "version_id" not in o for o in objs2)
    with Active(doc, "vz.zarr", storage_options=so, backend="fetch") as x:
        assert x.sum[...] == 120


@pytest.mark.parametrize("backend", ["fetch", "server"])
def test_manifest_locator_past_the_end_of_an_object_is_a_clear_error(
        datasets, moto_server, active_server, backend):
    from activestorage.errors import ActiveStorageError

    so = storage_options(moto_server)
    url, var, _ = datasets["NETCDF3_CLASSIC/orog"]
    doc = write_manifest(url, [var], None, storage_options=so)
    entry = doc["variables"][var]
    (key,) = entry["chunks"]
    entry["chunks"][key][1] += 10**6  # the object is a few KiB
    kw = {"active_storage_url": active_server.url} if backend == "server" else {}
    with Active(doc, var, storage_options=so, backend=backend, **kw) as a:
        with pytest.raises(ActiveStorageError, match="NETCDF3_CLASSIC.nc"):
            a.sum[...]


def test_netcdf3_over_http_range_reads(nginx_server, tmp_path):
    docroot = nginx_server.extra["docroot"]
    data = np.arange(60, dtype="f8").reshape(5, 12)
    with netCDF4.Dataset(docroot / "h.nc", "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 12)
        ds.createVariable("v", "f8", ("t", "x"))[:] = data
    url = f"{nginx_server.url}/h.nc"
    var = open_netcdf3(url, "v")
    assert var.shape == (5, 12) and all(loc.etag for loc in var.chunks.values())
    with Active(url, "v", backend="fetch") as a:
        assert a.sum[...] == data.sum() and a.max[2:4, 3:] == data[2:4, 3:].max()
    ref = write_manifest(url, ["v"], None)
    with Active(ref, "v", backend="fetch") as a:
        assert a.mean[...] == data.mean()


def test_kerchunk_references_to_s3_objects(datasets, moto_server, s3):
    """Kerchunk v1 references (templated URLs) to the chunk objects of a Zarr v2 store in S3."""
    so = storage_options(moto_server)
    url, var, want = datasets["zarr2"]
    bucket, prefix = url[len("s3://"):].split("/", 1)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    refs = {}
    for obj in listing:
        key = obj["Key"][len(prefix) + 1:]
        if key.startswith("."):
            refs[f"{var}/{key}"] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
        else:
            refs[f"{var}/{key}"] = ["{{u}}/" + key, 0, obj["Size"]]
    doc = {"version": 1, "templates": {"u": url}, "refs": refs}
    with Active(doc, var, storage_options=so) as a:
        for op in OPS:
            check(getattr(a, op)[...], want, op)


def test_manifest_cli_globs_s3_files_and_writes_to_s3(datasets, s3, moto_server, tmp_path):
    """`activestorage manifest 's3://bucket/series_*.nc' tas -o s3://.../refs.json` combines the
    files along time; Active on the S3 manifest equals numpy on the concatenated data."""
    from activestorage.manifest_cli import manifest_main

    so = storage_options(moto_server)
    parts = []
    for i in range(3):
        data = np.arange(24, dtype="f4").reshape(4, 6) + 100 * i
        p = tmp_path / f"series_{i}.nc"
        with netCDF4.Dataset(p, "w") as ds:
            ds.createDimension("time", None)
            ds.createDimension("x", 6)
            ds.createVariable("tas", "f4", ("time", "x"), chunksizes=(2, 6), zlib=True)[:] = data
        upload(s3, BUCKET, p, f"series/{p.name}")
        parts.append(data)
    out = f"s3://{BUCKET}/series/refs.json"
    assert manifest_main([f"s3://{BUCKET}/series/series_*.nc", "tas", "-o", out,
                          "--storage-options", json.dumps(so)]) == 0
    full = np.concatenate(parts)
    with Active(out, "tas", storage_options=so, backend="fetch") as a:
        assert a.shape == full.shape
        assert a.sum[...] == full.sum() and a.max[3:9] == full[3:9].max()


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_over_http_probes_chunk_objects(nginx_server, fmt):
    """An HTTP store cannot be listed: chunk objects are found with HEAD requests; absent ones
    read as the fill value; sharded arrays read their shard indexes with range GETs."""
    docroot = nginx_server.extra["docroot"]
    kw = {"shards": (4, 6)} if fmt == 3 else {}
    a = zarr.create_array(str(docroot / f"h{fmt}.zarr"), shape=(10, 6), chunks=(2, 3),
                          dtype="i4", zarr_format=fmt, fill_value=-1, **kw)
    a.attrs["_FillValue"] = -1
    a[:6] = np.arange(36, dtype="i4").reshape(6, 6)
    want = np.ma.masked_equal(a[...], -1)
    url = f"{nginx_server.url}/h{fmt}.zarr"
    var = open_zarr(url, f"h{fmt}")
    assert len(var.chunks) == 6 and all(loc.url.startswith("http://") for loc in var.chunks.values())
    with Active(url, f"h{fmt}", backend="fetch") as x:
        for op in OPS:
            check(getattr(x, op)[...], want, op)


def test_zarr_group_over_http_lists_from_consolidated_metadata_only(nginx_server):
    """A group's arrays are opened by name over HTTP either way; they are listed from
    consolidated metadata, and without it the error says what to do."""
    from activestorage.errors import UnsupportedError
    from activestorage.formats.zarr import ZarrReader

    docroot = nginx_server.extra["docroot"]
    for name, consolidated in (("plain-group.zarr", False), ("cons-group.zarr", True)):
        g = zarr.open_group(str(docroot / name), mode="w", zarr_format=2)
        g.create_array("tas", shape=(4, 3), chunks=(2, 3), dtype="f4")[:] = 1.5
        if consolidated:
            zarr.consolidate_metadata(str(docroot / name))
        url = f"{nginx_server.url}/{name}"
        with Active(url, "tas", backend="fetch") as x:
            assert x.sum[...] == 18.0
        if consolidated:
            assert [c.name for c in ZarrReader().list_variables(url)] == ["tas"]
        else:
            with pytest.raises(UnsupportedError, match="consolidated"):
                ZarrReader().list_variables(url)


def test_object_changed_between_open_and_manifest_is_refused(datasets, s3, moto_server, tmp_path):
    from activestorage.formats.references import pin

    so = storage_options(moto_server)
    p = tmp_path / "o.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 4)
        ds.createVariable("v", "i4", ("x",))[:] = [1, 2, 3, 4]
    url = upload(s3, BUCKET, p, "opened-then-changed.nc")
    var = open_netcdf3(url, "v", storage_options=so)
    with netCDF4.Dataset(p, "a") as ds:
        ds["v"][:] = [5, 6, 7, 8]
    upload(s3, BUCKET, p, "opened-then-changed.nc")
    with pytest.raises(ObjectChangedError, match="opened-then-changed.nc") as info:
        pin(var, so)
    assert info.value.status == 409


def test_remote_dataset_without_a_variable_name(datasets, s3, moto_server, tmp_path):
    """Active(url): an S3 Zarr array store is its array; a netCDF-4 object with one data variable
    is that variable; several data variables are listed in the error."""
    from activestorage.errors import VariableNotFoundError

    so = storage_options(moto_server)
    url, _var, want = datasets["zarr3"]
    with Active(url, storage_options=so) as a:
        check(a.mean[...], want, "mean")
    p = tmp_path / "one.nc"
    with netCDF4.Dataset(p, "w") as ds:
        ds.createDimension("x", 6)
        ds.createVariable("x", "f8", ("x",))[:] = np.arange(6.0)
        ds.createVariable("v", "i4", ("x",), chunksizes=(2,))[:] = [3, 1, 4, 1, 5, 9]
    with Active(upload(s3, BUCKET, p, "nameless/one.nc"), storage_options=so) as a:
        assert a.variable.name == "v" and int(a.sum[...]) == 23
    with pytest.raises(VariableNotFoundError, match="data variables: tas, orog"):
        Active(datasets["NETCDF3_CLASSIC/tas"][0], storage_options=so)
