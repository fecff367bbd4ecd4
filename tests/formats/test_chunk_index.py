"""The compact chunk index: it behaves as the equivalent dict of locators (lookups, iteration,
requests), pickles small, pins cheaply, keeps HDF5 per-chunk filter masks, and stays ~12 bytes a
chunk."""

from __future__ import annotations

import itertools
import math
import pickle

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _oracle import assemble
from activestorage import Active
from activestorage.errors import FormatError, ObjectChangedError
from activestorage.formats import open_variable
from activestorage.formats.base import Locator, Variable
from activestorage.formats.chunk_index import ChunkIndex, pin_locators
from activestorage.formats.references import pin

URL = "/data/file.nc"
ZLIB = {"id": "zlib"}
SHUFFLE = {"id": "shuffle", "element_size": 4}


# ------------------------------------------------------------------ equivalence with a dict

@st.composite
def indexes(draw):
    """(grid, dict of locators): random grid, unwritten chunks and exceptions of every kind."""
    grid = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    chunks = {}
    for coords in np.ndindex(*grid):
        if not draw(st.booleans()):
            continue  # never written
        offset, size = draw(st.integers(0, 2**40)), draw(st.integers(1, 2**20))
        kind = draw(st.sampled_from(["plain"] * 4 + ["codecs", "raw", "url", "etag"]))
        loc = Locator(URL, offset, size)
        if kind == "codecs":
            loc = Locator(URL, offset, size, compression=None, filters=(SHUFFLE,),
                          no_compression=True)
        elif kind == "raw":
            loc = Locator(URL, offset, size, compression=ZLIB, filters=())
        elif kind == "url":
            loc = Locator("/data/other.nc", offset, size)
        elif kind == "etag":
            loc = Locator(URL, offset, size, etag="e1", version_id="v1")
        chunks[tuple(int(c) for c in coords)] = loc
    return grid, chunks


def _probes(grid):
    """Every grid position plus keys that are not: outside, negative, wrong length, not tuples."""
    yield from (tuple(int(c) for c in coords) for coords in np.ndindex(*grid))
    yield tuple(n for n in grid)
    if grid:
        yield (-1,) + (0,) * (len(grid) - 1)
        yield (0,) * (len(grid) + 1)
        yield (0,) * (len(grid) - 1)
        yield 0
        yield "0.0"
    else:
        yield (0,)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(indexes())
def test_behaves_as_the_equivalent_dict(case):
    grid, chunks = case
    index = ChunkIndex.from_mapping(grid, chunks)
    assert index.grid == grid
    assert len(index) == len(chunks)
    assert list(index) == sorted(chunks)  # C order
    assert all(type(c) is int for coords in index for c in coords)
    assert dict(index.items()) == chunks
    assert list(index.values()) == [chunks[k] for k in sorted(chunks)]
    assert index == chunks and chunks == index and index == ChunkIndex.from_mapping(grid, chunks)
    for key in _probes(grid):
        assert index.get(key) == chunks.get(key), key
        assert (key in index) == (key in chunks), key
        if key in chunks:
            assert index[key] == chunks[key]
        elif isinstance(key, tuple):
            with pytest.raises(KeyError):
                index[key]
    assert index.stored_bytes == sum(loc.size for loc in chunks.values())
    # exceptions hold only what differs from the shared defaults
    assert all(loc != Locator(index.url, loc.offset, loc.size, index.etag, index.version_id)
               for loc in index.exceptions.values())


@settings(max_examples=100, deadline=None)
@given(indexes(), st.sampled_from([None, ((0, 1, 1),) * 3]), st.sampled_from([None, (0,)]))
def test_requests_equal_those_from_a_dict(case, selection, axis):
    grid, chunks = case
    chunk_shape = (2,) * len(grid)
    shape = tuple(2 * n for n in grid)

    def variable(index):
        return Variable(name="v", source=URL, dtype=np.dtype("f4"), shape=shape,
                        chunk_shape=chunk_shape, chunks=index, compression=ZLIB,
                        filters=[SHUFFLE])  # a list: requests must still carry a tuple

    a, b = variable(chunks), variable(ChunkIndex.from_mapping(grid, chunks))
    sel = selection[:len(grid)] if selection else None
    for coords in np.ndindex(*grid):
        coords = tuple(int(c) for c in coords)
        want = a.request_for(coords, sel, axis)
        assert b.request_for(coords, sel, axis) == want
        one = [[c] for c in coords]
        assert b.chunks.stored(one) == ((want.size, 0) if want else (0, 1))
        if want is not None:
            assert type(want.filters) is tuple and type(want.offset) is int
    assert a.stored_bytes == b.stored_bytes
    # a planned selection: the outer product of per-axis chunk indices
    ids = [sorted({i for i in range(n) if i % 2 == 0} | {n - 1}) if n else [] for n in grid]
    touched = [tuple(int(i) for i in c) for c in itertools.product(*ids)]
    assert b.chunks.stored(ids) == (sum(chunks[c].size for c in touched if c in chunks),
                                    sum(c not in chunks for c in touched))


def test_zero_dimensional_and_empty_grids():
    scalar = ChunkIndex(URL, np.array(16), np.array(4))
    assert list(scalar) == [()] and scalar[()] == Locator(URL, 16, 4) and len(scalar) == 1
    assert scalar.get((0,)) is None
    unwritten = ChunkIndex(URL, np.array(-1), np.array(0))
    assert list(unwritten) == [] and () not in unwritten and len(unwritten) == 0
    empty = ChunkIndex(URL, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint32))
    assert list(empty) == [] and empty.stored_bytes == 0 and empty == {}


def test_arrays_are_read_only_and_exceptions_must_match_them():
    index = ChunkIndex(URL, np.array([0, -1, 40]), np.array([40, 0, 8]))
    with pytest.raises(ValueError):
        index.offsets[1] = 5
    with pytest.raises(ValueError, match="does not match"):
        ChunkIndex(URL, np.array([0, 40]), np.array([40, 8]),
                   exceptions={(1,): Locator(URL, 41, 8, compression=ZLIB)})
    with pytest.raises(ValueError, match="does not match"):  # an unwritten chunk
        ChunkIndex(URL, np.array([0, -1]), np.array([40, 0]),
                   exceptions={(1,): Locator(URL, 0, 8, compression=ZLIB)})


# ------------------------------------------------------------------ size, pickling, pinning

def _grid_index(grid, every=7):
    """A dense index over ``grid`` with every ``every``-th chunk unwritten and one exception."""
    n = math.prod(grid)
    offsets = (np.arange(n, dtype=np.int64) * 1000 + 512).reshape(grid)
    offsets.reshape(-1)[::every] = -1
    sizes = np.where(offsets >= 0, 1000, 0).astype(np.uint32)
    first = tuple(int(c) for c in np.argwhere(offsets >= 0)[0])
    exc = {first: Locator(URL, int(offsets[first]), 1000, compression=None, filters=(),
                          no_compression=True)}
    return ChunkIndex(URL, offsets, sizes, exceptions=exc)


def test_index_is_a_few_bytes_a_chunk():
    index = _grid_index((100, 100, 10))
    assert index.nbytes < 40 * 100_000, index.nbytes / 100_000
    assert index.sizes.dtype == np.uint32  # sizes fit: 4 bytes, offsets 8
    big = ChunkIndex(URL, np.array([0]), np.array([2**33]))
    assert big.sizes.dtype == np.int64 and big[(0,)].size == 2**33


def test_pickles_compactly_and_keeps_working():
    index = _grid_index((100, 100, 10))
    blob = pickle.dumps(index)
    assert len(blob) < index.nbytes + 4096
    back = pickle.loads(blob)
    assert back == index and back.exceptions == index.exceptions
    assert not back.offsets.flags.writeable
    var = Variable(name="v", source=URL, dtype=np.dtype("f4"), shape=(100, 100, 10),
                   chunk_shape=(1, 1, 1), chunks=index)
    var2 = pickle.loads(pickle.dumps(var))
    assert [var2.request_for(c) for c in [(0, 0, 0), (0, 0, 1), (99, 99, 9)]] == \
        [var.request_for(c) for c in [(0, 0, 0), (0, 0, 1), (99, 99, 9)]]


def test_pinning_shares_the_arrays_and_pins_every_chunk():
    index = _grid_index((20, 5))
    pinned = index.pinned("etag-1", "v7")
    assert pinned.offsets is index.offsets and pinned.sizes is index.sizes
    assert len(pinned) == len(index)
    assert all(loc.etag == "etag-1" and loc.version_id == "v7" for loc in pinned.values())
    assert all(loc.etag is None for loc in index.values())  # the original is unchanged
    (coords, exc), = pinned.exceptions.items()
    assert exc.no_compression and pinned[coords].etag == "etag-1"
    # the same function pins a plain dict
    as_dict = dict(index.items())
    pinned_dict = pin_locators(as_dict, "etag-1", "v7")
    assert isinstance(pinned_dict, dict) and pinned_dict == pinned
    assert isinstance(pin_locators(index, "e", None), ChunkIndex)


# ------------------------------------------------------------------ HDF5

def _h5(path, data, chunks, **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=chunks, **kw)
    return str(path)


def test_hdf5_index_is_compact_with_unwritten_chunks(tmp_path):
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(40, 30), chunks=(10, 10), dtype="f4", fillvalue=-5.0,
                              compression="gzip")
        ds[0:10, 0:10] = 1.0
        ds[30:40, 10:30] = 2.0
    var = open_variable(str(path), "v")
    assert isinstance(var.chunks, ChunkIndex) and var.chunks.grid == var.grid == (4, 3)
    assert sorted(var.chunks) == [(0, 0), (3, 1), (3, 2)] and not var.chunks.exceptions
    assert var.request_for((1, 1)) is None and var.chunks.stored([[1], [1]]) == (0, 1)
    assert var.chunks.stored([[0, 1, 2, 3], [0, 1, 2]]) == (var.stored_bytes, 9)
    assert var.stored_bytes == sum(loc.size for loc in var.chunks.values())
    want = np.full((40, 30), -5.0, "f4")
    want[0:10, 0:10], want[30:40, 10:30] = 1.0, 2.0
    np.testing.assert_array_equal(assemble(var).data, want)
    with Active(str(path), "v") as a:
        assert float(a.sum[...]) == float(want.sum())


def test_hdf5_sparse_grid_keeps_a_dict(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(1_000_000,), chunks=(1,), dtype="i4", fillvalue=0)
        ds[5] = 7
        ds[999_999] = 9
    var = open_variable(str(path), "v")
    assert isinstance(var.chunks, dict) and sorted(var.chunks) == [(5,), (999_999,)]
    assert var.request_for((999_999,)).size == 4


@pytest.mark.parametrize("mask,want_comp,want_filters", [
    (0b10, None, (SHUFFLE,)),  # deflate skipped: shuffled raw bytes
    (0b11, None, ()),          # both skipped: raw bytes
])
def test_hdf5_filter_mask_becomes_an_exception(tmp_path, mask, want_comp, want_filters):
    from numcodecs import Shuffle

    data = np.arange(40 * 30, dtype="<i4").reshape(40, 30)
    path = _h5(tmp_path / "m.h5", data, (10, 10), compression="gzip", shuffle=True)
    skipped = np.full((10, 10), -3, "<i4")
    raw = skipped.tobytes() if mask == 0b11 else Shuffle(elementsize=4).encode(skipped.tobytes())
    with h5py.File(path, "r+") as f:
        f["v"].id.write_direct_chunk((10, 20), bytes(raw), filter_mask=mask)
    data[10:20, 20:30] = -3
    var = open_variable(path, "v")
    assert isinstance(var.chunks, ChunkIndex) and len(var.chunks) == 12
    assert list(var.chunks.exceptions) == [(1, 2)]
    loc = var.chunks[(1, 2)]
    assert loc.no_compression and loc.compression == want_comp and loc.filters == want_filters
    req = var.request_for((1, 2))
    assert req.compression is None and req.filters == want_filters and req.size == len(raw)
    assert var.request_for((1, 1)).compression == {"id": "zlib"}
    np.testing.assert_array_equal(assemble(var).data, data)
    with Active(path, "v") as a:
        assert int(a.sum[...]) == int(data.sum())
        np.testing.assert_array_equal(a.min(axis=0)[...], data.min(axis=0))


def test_manifest_pin_checks_the_index_against_its_object(tmp_path):
    data = np.arange(40 * 30, dtype="<f8").reshape(40, 30)
    path = _h5(tmp_path / "p.h5", data, (10, 10))
    var = open_variable(path, "v")
    assert isinstance(var.chunks, ChunkIndex)
    far = max(var.chunks, key=lambda c: var.chunks[c].offset + var.chunks[c].size)
    end = var.chunks[far].offset + var.chunks[far].size
    with pytest.raises(FormatError, match=rf"chunk {far[0]}\.{far[1]}: .*past the end"):
        pin(open_variable(path, "v"), identities={path: {"size": end - 1}})
    pinned = pin(open_variable(path, "v"), identities={path: {"size": end, "etag": "abc"}})
    assert isinstance(pinned.chunks, ChunkIndex)
    assert all(loc.etag == "abc" for loc in pinned.chunks.values())
    with pytest.raises(ObjectChangedError):
        pin(pinned, identities={path: {"size": end, "etag": "changed"}})
