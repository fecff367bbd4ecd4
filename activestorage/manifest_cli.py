"""``activestorage manifest``: the command-line front of :func:`formats.manifest.write_manifest`."""

from __future__ import annotations

import json
import sys
from typing import Sequence

from .argparsing import OneLineErrorParser
from .errors import ActiveStorageError
from .formats.manifest import write_manifest


def manifest_main(argv: Sequence[str] | None = None) -> int:
    """``activestorage manifest DATASET [VAR ...] -o refs.json``; returns the exit status."""
    p = OneLineErrorParser(
        prog="activestorage manifest",
        description="Write a chunk manifest (locators, codecs, missing-data attributes, S3 ETags "
                    "and version ids) so the dataset opens later with no metadata reads.")
    p.add_argument("dataset", help="file, URL, Zarr store or glob pattern (quote it) of files to "
                                   "combine along --concat-dim")
    p.add_argument("variables", nargs="*", help="variables to record (default: all)")
    p.add_argument("-o", "--output", default="-", help="manifest path or s3:// URL ('-': stdout)")
    p.add_argument("--concat-dim", default=None,
                   help="dimension to combine several files along (default: each variable's first)")
    p.add_argument("--storage-options", default=None,
                   help="JSON object of s3fs options, e.g. '{\"endpoint_url\": \"http://...\"}'")
    p.add_argument("--no-pin", action="store_true",
                   help="do not record ETags/version ids or check locators against object sizes")
    args = p.parse_args(argv)
    try:
        so = json.loads(args.storage_options) if args.storage_options else None
        if so is not None and not isinstance(so, dict):
            raise ValueError("must be a JSON object")
    except ValueError as exc:
        print(f"activestorage manifest: --storage-options: {exc}", file=sys.stderr)
        return 2
    out = None if args.output == "-" else args.output
    try:
        doc = write_manifest(args.dataset, args.variables or None, out, storage_options=so,
                             concat_dim=args.concat_dim, pin_objects=not args.no_pin)
    except ActiveStorageError as exc:
        print(f"activestorage manifest: {exc}", file=sys.stderr)
        return 1
    if out is None:
        json.dump(doc, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        nchunks = sum(len(v["chunks"]) for v in doc["variables"].values())
        print(f"wrote {out}: {len(doc['variables'])} variables, {nchunks} chunks",
              file=sys.stderr)
    return 0
