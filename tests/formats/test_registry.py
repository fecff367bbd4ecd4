"""The one registry of format readers: every built-in reader has the one interface, every entry
point (open_variable, the CLI's variable list, manifests, the default variable) dispatches through
it, and a plug-in registered under the ``activestorage.formats`` entry-point group is used."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import zarr

from activestorage import Active
from activestorage.cli import list_variables as cli_list_variables
from activestorage.errors import FormatError
from activestorage.formats import Locator, Variable, open_variable, registry
from activestorage.formats.choose import Candidate
from activestorage.formats.manifest import write_manifest

from helpers import write_nc


def test_every_built_in_reader_has_the_one_interface():
    names = [r.name for r in registry.READERS]
    assert names == ["netcdf3", "hdf5", "zarr", "json"]
    proto = registry.FormatReader
    for reader in registry.READERS:
        assert isinstance(reader, proto), reader
        for method in ("can_open", "open", "list_variables"):
            want = list(inspect.signature(getattr(proto, method)).parameters)[1:]
            got = list(inspect.signature(getattr(reader, method)).parameters)
            assert got == want, (reader.name, method, got)


@pytest.fixture
def datasets(tmp_path) -> dict[str, Path]:
    """One small dataset of each built-in format holding the same variable ``v``."""
    data = np.arange(1, 13, dtype="f4").reshape(3, 4)  # no 0: Zarr's fill value
    nc4 = write_nc(tmp_path / "v4.nc", data, chunks=(1, 4))
    nc3 = tmp_path / "v3.nc"
    with netCDF4.Dataset(nc3, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("d0", 3)
        ds.createDimension("d1", 4)
        ds.createVariable("v", "f4", ("d0", "d1"))[:] = data
        ds.createVariable("label", "S1", ("d1",))  # text: listed, never chosen or reduced
    store = tmp_path / "g.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    arr = group.create_array("v", shape=(3, 4), chunks=(1, 4), dtype="<f4", compressors=None)
    arr[:] = data
    arr.attrs["_ARRAY_DIMENSIONS"] = ["d0", "d1"]
    manifest = tmp_path / "m.json"
    write_manifest(str(nc4), ["v"], str(manifest))
    return {"netcdf3": nc3, "hdf5": nc4, "zarr": store, "json": manifest}


def test_each_format_is_found_listed_opened_and_chosen_through_the_registry(datasets):
    for kind, path in datasets.items():
        with registry.probe(str(path)) as (reader, f):
            assert reader.name == kind
            assert (f is None) == (kind == "zarr")
        cands = registry.list_variables(str(path))
        assert all(isinstance(c, Candidate) for c in cands)
        assert "v" in [c.name for c in cands]
        assert [c.name for c in cands] == cli_list_variables(str(path))
        assert registry.default_variable(str(path)) == "v"
        var = open_variable(str(path))
        assert var.name == "v" and var.shape == (3, 4)
        assert Active(str(path)).mean()[...] == pytest.approx(6.5), kind
    nc3 = {c.name: c for c in registry.list_variables(str(datasets["netcdf3"]))}
    assert nc3["label"].dtype == "char" and nc3["v"].dtype == "float32"


def test_an_unknown_format_names_every_registered_one(tmp_path):
    path = tmp_path / "x.grb"
    path.write_bytes(b"GRIB" + bytes(100))
    with pytest.raises(FormatError, match=r"is not a netCDF-3, netCDF-4/HDF5, Zarr or manifest "
                                          r"file \(it starts with b'GRIB"):
        open_variable(str(path), "v")
    assert registry.detect_format(b"GRIB", str(path)) == "unknown"


class FakeReader:
    """A plug-in format: files starting with ``FAKE`` hold one float64 variable ``f`` of 4 zeros
    stored right after the 8-byte header."""

    name = "fake"
    title = "fake"

    def can_open(self, head: bytes, url: str) -> bool:
        return head.startswith(b"FAKE")

    def open(self, source, ncvar, storage_options=None, *, file=None) -> Variable:
        return Variable(name=ncvar, source=source, dtype=np.dtype("f8"), shape=(4,),
                        chunk_shape=(4,), chunks={(0,): Locator(source, 8, 32)}, format="fake")

    def list_variables(self, source, storage_options=None, *, file=None) -> list[Candidate]:
        return [Candidate("f", ("x",), {}, dtype="float64")]


class NotAReader:
    name = "broken"


@pytest.fixture
def plugins(monkeypatch):
    """Register FakeReader (and a broken plug-in, which must be ignored) as entry points."""
    eps = [EntryPoint("fake", f"{__name__}:FakeReader", registry.ENTRY_POINT_GROUP),
           EntryPoint("broken", f"{__name__}:NotAReader", registry.ENTRY_POINT_GROUP),
           EntryPoint("missing", f"{__name__}:NoSuchThing", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [e for e in eps if e.group == group])
    registry.readers.cache_clear()
    yield
    registry.readers.cache_clear()


def test_a_plug_in_reader_registered_as_an_entry_point_is_used(tmp_path, plugins):
    assert [r.name for r in registry.readers()] == ["netcdf3", "hdf5", "zarr", "json", "fake"]
    path = tmp_path / "data.fake"
    path.write_bytes(b"FAKE\0\0\0\0" + np.array([1.0, 2.0, 4.0, 8.0]).tobytes())
    assert registry.detect_format(path.read_bytes(), str(path)) == "fake"
    assert cli_list_variables(str(path)) == ["f"]
    assert open_variable(str(path)).format == "fake"
    assert Active(str(path), "f").sum()[...] == 15.0


def test_manifest_listing_matches_the_readers_for_kerchunk_references(tmp_path):
    meta = json.dumps({"zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "<i4",
                       "compressor": None, "filters": None, "fill_value": 0, "order": "C"})
    doc = {"version": 1, "refs": {"v/.zarray": meta, "v/.zattrs": '{"_ARRAY_DIMENSIONS": ["x"]}',
                                  "v/0": ["f", 0, 8]}}
    (cand,) = registry.ReferencesReader().list_variables(doc)
    assert (cand.name, cand.dimensions, cand.dtype) == ("v", ("x",), "int32")
    assert registry.default_variable(doc) == "v"


def test_a_local_first_call_loads_no_plug_in_lookup_nor_http_client(tmp_path):
    """A fresh process opening and reducing a local netCDF-4/HDF5 file (the first call a user
    waits for) never imports importlib.metadata (plug-ins are looked up only for a dataset no
    built-in reader reads: 20-40 ms) nor http.client with the email package (~10 ms)."""
    import h5py

    path = tmp_path / "v.nc"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.arange(24, dtype="f4").reshape(4, 6), chunks=(2, 3))
    code = ("import sys\nfrom activestorage import Active\n"
            f"a = Active({str(path)!r}, 'v')\nassert float(a.sum[...]) == 276.0\n"
            "print(sorted(m for m in ('importlib.metadata', 'http.client', 'email.parser')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plug_ins_are_still_asked_when_no_built_in_reader_knows_the_dataset(tmp_path, plugins):
    """The lazy lookup still finds a plug-in for a file the built-ins do not read, and the error
    for a file nobody reads names the plug-in's format too."""
    path = tmp_path / "data.fake"
    path.write_bytes(b"FAKE\0\0\0\0" + np.array([1.0, 2.0, 4.0, 8.0]).tobytes())
    assert registry.detect_format(path.read_bytes(), str(path)) == "fake"
    other = tmp_path / "data.bin"
    other.write_bytes(b"NOPE" * 8)
    with pytest.raises(FormatError, match="fake"):
        open_variable(str(other), "v")
