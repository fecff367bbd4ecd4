"""The zarr Store over our byte stores: zarr reads the same metadata through it as through its own
LocalStore; missing keys are None; byte ranges are the bytes of the object; listings match the
directory; other store failures come out as our typed errors."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="zarr is the [zarr] extra; install it to test the adapter")

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest  # noqa: E402
from zarr.core.buffer import default_buffer_prototype  # noqa: E402
from zarr.core.sync import sync  # noqa: E402

from activestorage.errors import StorageError  # noqa: E402
from activestorage.formats.zarr_store import ByteStoreZarr  # noqa: E402
from activestorage.stores.local import LocalStore  # noqa: E402


@pytest.fixture
def group(tmp_path):
    root = tmp_path / "g.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    a = g.create_array("t/tas", shape=(4, 6), chunks=(2, 3), dtype="f4", fill_value=-1)
    a[:] = np.arange(24, dtype="f4").reshape(4, 6)
    a.attrs["units"] = "K"
    g.create_array("lat", shape=(4,), chunks=(4,), dtype="f8")[:] = np.linspace(-60, 60, 4)
    return root


def _adapter(root):
    return ByteStoreZarr(LocalStore(missing_status=404), str(root))


def test_zarr_opens_the_same_hierarchy_as_through_its_own_store(group):
    ours = zarr.open(store=_adapter(group), mode="r")
    theirs = zarr.open(store=zarr.storage.LocalStore(str(group), read_only=True), mode="r")
    assert sorted(p for p, _ in ours.members(max_depth=None)) == \
        sorted(p for p, _ in theirs.members(max_depth=None))
    assert ours["t/tas"].metadata.to_dict() == theirs["t/tas"].metadata.to_dict()
    np.testing.assert_array_equal(ours["t/tas"][:], theirs["t/tas"][:])
    assert dict(ours["t/tas"].attrs) == {"units": "K"}


def test_reads_ranges_and_missing_keys(group):
    store, proto = _adapter(group), default_buffer_prototype()
    whole = (group / "zarr.json").read_bytes()
    assert sync(store.get("zarr.json", proto)).to_bytes() == whole
    assert sync(store.get("zarr.json", proto, RangeByteRequest(2, 9))).to_bytes() == whole[2:9]
    assert sync(store.get("zarr.json", proto, OffsetByteRequest(5))).to_bytes() == whole[5:]
    assert sync(store.get("zarr.json", proto, SuffixByteRequest(4))).to_bytes() == whole[-4:]
    assert sync(store.get("no/such/key", proto)) is None
    assert sync(store.exists("zarr.json")) and not sync(store.exists("nope.json"))
    got = sync(store.get_partial_values(proto, [("zarr.json", RangeByteRequest(0, 3)),
                                                ("absent", None)]))
    assert got[0].to_bytes() == whole[:3] and got[1] is None


def test_lists_like_the_directory(group):
    store = _adapter(group)

    async def collect(it):
        return [k async for k in it]

    keys = sync(collect(store.list()))
    on_disk = sorted(str(p.relative_to(group)) for p in group.rglob("*") if p.is_file())
    assert sorted(keys) == on_disk
    assert sorted(sync(collect(store.list_prefix("t/")))) == [k for k in on_disk
                                                              if k.startswith("t/")]
    assert sorted(sync(collect(store.list_dir("")))) == sorted(p.name for p in group.iterdir())
    assert sync(collect(store.list_dir("t"))) == ["tas", "zarr.json"]


def test_store_failures_other_than_missing_are_typed_errors(group):
    class Refusing(LocalStore):
        def read_object(self, url):
            raise StorageError(f"store refused the credentials for {url}", status=401, store=url)

    store = ByteStoreZarr(Refusing(), str(group))
    with pytest.raises(StorageError) as err:
        zarr.open(store=store, mode="r")
    assert err.value.status == 401 and "zarr.json" in str(err.value)


def test_is_read_only(group):
    store, proto = _adapter(group), default_buffer_prototype()
    assert not store.supports_writes and store.read_only
    with pytest.raises(Exception):
        sync(store.set("x", proto.buffer.from_bytes(b"1")))
    same = ByteStoreZarr(store.store, str(group))
    assert store == same and store != ByteStoreZarr(store.store, str(group / "t"))
