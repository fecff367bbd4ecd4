"""Tell a dataset's format from its first bytes (and, for directories and JSON, its name).

Returns one of ``"netcdf3"``, ``"hdf5"``, ``"zarr"``, ``"json"`` (an activestorage manifest or a
kerchunk reference file; :mod:`.references` reads both) or ``"unknown"``.
"""

from __future__ import annotations

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: HDF5 allows a user block before the superblock; the superblock then sits at one of these.
HDF5_OFFSETS = (0, 512, 1024, 2048)
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
ZARR_NAMES = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")
#: how many leading bytes :func:`detect_format` wants to see
HEAD_BYTES = 4096


def detect_format(head: bytes, path: str) -> str:
    """The format of the dataset at ``path`` whose first bytes are ``head``.

    ``head`` may be empty for a directory (a Zarr store), in which case only ``path`` decides.
    """
    head = bytes(head or b"")
    if head[:4] in NETCDF3_MAGICS:
        return "netcdf3"
    for off in HDF5_OFFSETS:
        if head[off:off + 8] == HDF5_MAGIC:
            return "hdf5"
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    if name in ZARR_NAMES or name.endswith(".zarr"):
        return "zarr"
    stripped = head.lstrip()
    if stripped[:1] == b"{":
        # a zarr metadata document is JSON too: tell it from a manifest by its keys
        if b'"zarr_format"' in stripped[:512] and b'"refs"' not in stripped[:512]:
            return "zarr"
        return "json"
    return "unknown"
