"""The ``activestorage`` command: demo, reduce, info, serve, manifest.

One entry point with argparse subcommands. Exit codes: 0 success, 1 the command was understood but
failed (missing file, unknown variable, unreachable server, index out of range), 2 the command line
itself is wrong (unknown option or operation, unparsable selection or axis). Errors are one line on
stderr; ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .argparsing import OneLineErrorParser, UsageError, human_bytes
from .errors import SelectionError
from .operations import METHODS
from . import operations

log = logging.getLogger(__name__)

#: the ``--op`` choices: the reductions of :mod:`activestorage.operations`
OPERATIONS = METHODS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


# ------------------------------------------------------------------------------ parsing helpers

def parse_selection(text: str | None) -> tuple[Any, ...]:
    """Parse ``"0:12,:,10:20"`` (NumPy basic indexing: ints, slices with steps, ``...``)."""
    if text is None or not text.strip():
        return (Ellipsis,)
    out: list[Any] = []
    for part in text.split(","):
        p = part.strip()
        if p in ("...", "…"):
            out.append(Ellipsis)
            continue
        pieces = p.split(":")
        if len(pieces) > 3:
            raise UsageError(f"--sel: {p!r} has too many ':' (expected start:stop:step)")
        try:
            nums = [int(x) if x.strip() else None for x in pieces]
        except ValueError:
            raise UsageError(f"--sel: {p!r} is not an index or start:stop:step of integers "
                             f"(in {text!r})") from None
        if len(pieces) == 1:
            if nums[0] is None:
                raise UsageError(f"--sel: empty index in {text!r} (use ':' for a whole axis)")
            out.append(nums[0])
        else:
            if len(nums) == 3 and nums[2] == 0:
                raise UsageError(f"--sel: step must not be zero in {p!r}")
            out.append(slice(*nums))
    if sum(1 for x in out if x is Ellipsis) > 1:
        raise UsageError(f"--sel: at most one '...' allowed in {text!r}")
    return tuple(out)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def parse_axis(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"0"`` or ``"0,2"`` into a tuple of axes (None: reduce over all axes)."""
    if text is None:
        return None
    try:
        axes = tuple(int(a) for a in text.split(","))
    except ValueError:
        raise UsageError(f"--axis: {text!r} is not an integer or comma-separated integers") from None
    if len(set(axes)) != len(axes):
        raise UsageError(f"--axis: {text!r} repeats an axis")
    return axes


def parse_weights(text: str | None, active: Any) -> Any:
    """``--weights``: ``NAME`` (a variable of the dataset, or a ``cell_measures`` key such as
    ``area``) or ``coslat:LAT`` (the cosine of coordinate variable ``LAT``, in degrees, along
    the data variable's dimension of that name). None: no weights."""
    if text is None:
        return None
    if not text.startswith("coslat:"):
        return text
    name = text.split(":", 1)[1]
    dims = tuple(active.variable.dimensions)
    if name not in dims:
        raise UsageError(f"--weights {text}: variable {active.ncvar!r} has no dimension "
                         f"{name!r} (its dimensions: {', '.join(dims) or 'unnamed'})")
    lat, _ = active._read_other(name)
    w = np.clip(np.cos(np.deg2rad(np.ma.filled(np.ma.asarray(lat, np.float64), np.nan))), 0, None)
    if not np.isfinite(w).all():
        raise UsageError(f"--weights {text}: {name!r} has missing values")
    ax = dims.index(name)
    return w.reshape(tuple(-1 if i == ax else 1 for i in range(len(dims))))


def parse_storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """fsspec/s3fs storage options from ``--endpoint-url``, ``--anon`` and ``-o key=value``.

    There are no credential flags (secrets on a command line land in shell history and process
    listings): credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``~/.aws``.
    """
    opts: dict[str, Any] = {}
    for item in args.option or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"-o/--storage-option: {item!r} is not KEY=VALUE")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    if args.endpoint_url:
        opts.setdefault("client_kwargs", {})["endpoint_url"] = args.endpoint_url
    if args.anon:
        opts["anon"] = True
    return opts or None


def format_selection(sel: tuple[Any, ...]) -> str:
    def one(x: Any) -> str:
        if x is Ellipsis:
            return "..."
        if isinstance(x, slice):
            s = "" if x.start is None else str(x.start)
            s += ":" + ("" if x.stop is None else str(x.stop))
            return s + (f":{x.step}" if x.step is not None else "")
        return str(x)
    return ",".join(one(x) for x in sel)


def to_jsonable(value: Any) -> Any:
    """A result (scalar, array, masked array) as JSON: masked elements become null, and NaN and
    infinities (which JSON cannot hold) the strings "NaN", "Infinity", "-Infinity"."""
    arr = np.ma.asarray(value)
    mask = np.ma.getmaskarray(arr)
    data = np.asarray(arr.filled(0) if np.ma.isMaskedArray(arr) else arr)
    out = np.empty(data.shape, dtype=object)
    for idx in np.ndindex(*data.shape):
        x = data[idx]
        if mask[idx]:
            out[idx] = None
        elif isinstance(x, np.floating) and not np.isfinite(x):
            out[idx] = "NaN" if np.isnan(x) else "Infinity" if x > 0 else "-Infinity"
        elif isinstance(x, np.float32):
            out[idx] = float(str(x))  # 304.4, not 304.3999938964844
        else:
            out[idx] = x.item()
    return out.tolist() if out.ndim else out[()]


def stats_dict(stats: Any) -> dict[str, Any]:
    """The Active call record as a plain dict, whatever record type it is."""
    if stats is None:
        return {}
    if isinstance(stats, dict):
        return dict(stats)
    if dataclasses.is_dataclass(stats):
        return dataclasses.asdict(stats)
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


def summarize_stats(stats: dict[str, Any]) -> str:
    """One line: backend, chunks, bytes read and received, requests, time."""
    parts = [f"{stats.get('backend') or 'backend'}:"]
    if "chunks_touched" in stats:
        parts.append(f"{stats['chunks_touched']} chunks,")
    for key, label in (("bytes_read", "read"), ("bytes_received", "received")):
        if isinstance(stats.get(key), int):
            parts.append(f"{label} {human_bytes(stats[key])},")
    if isinstance(stats.get("requests"), int):
        parts.append(f"{stats['requests']} requests,")
    if isinstance(stats.get("seconds"), (int, float)):
        parts.append(f"{stats['seconds']:.3f} s")
    return " ".join(parts).rstrip(",")


# ------------------------------------------------------------------------------ subcommands

def _open_active(args: argparse.Namespace, variable: str) -> Any:
    from .active import Active

    kwargs: dict[str, Any] = {}
    opts = parse_storage_options(args)
    if opts:
        kwargs["storage_options"] = opts
    if getattr(args, "server", None):
        kwargs["active_storage_url"] = args.server
    if getattr(args, "threads", None):
        kwargs["max_threads"] = args.threads
    return Active(args.dataset, variable, **kwargs)


def cmd_reduce(args: argparse.Namespace) -> int:
    sel = parse_selection(args.sel)
    axis = parse_axis(args.axis)
    op = operations.get(args.op)
    if args.ddof is not None and not op.ddof:
        raise UsageError(f"--ddof applies to var and std, not {args.op}")
    if args.weights is not None and op.weighted is None:
        raise UsageError(f"--weights applies to mean, sum, var and std, not {args.op}")
    with _open_active(args, args.variable) as active:
        method = getattr(active, args.op)
        kwargs: dict[str, Any] = {}
        if axis is not None:
            kwargs["axis"] = axis
        if args.ddof is not None:
            kwargs["ddof"] = args.ddof
        weights = parse_weights(args.weights, active)
        if weights is not None:
            kwargs["weights"] = weights
        result = (method(**kwargs) if kwargs else method)[sel]
        stats = stats_dict(active.stats)
    if args.json:
        arr = np.ma.asarray(result)
        print(json.dumps({
            "dataset": str(args.dataset), "variable": args.variable, "op": args.op,
            "selection": format_selection(sel), "axis": list(axis) if axis is not None else None,
            "dtype": str(arr.dtype), "shape": list(arr.shape), "result": to_jsonable(result),
            "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, type(None)))},
        }))
    else:
        label = f"{args.op}({args.variable}[{format_selection(sel)}]"
        label += f", axis={','.join(map(str, axis))})" if axis is not None else ")"
        if np.ndim(result) == 0:
            print(f"{label} = {result!s}")  # str: float32 prints as 288.75113, not 288.7511291...
        else:
            with np.printoptions(threshold=200, edgeitems=3):
                print(f"{label}, shape {list(np.shape(result))}:\n{result}")
        if stats:
            print(summarize_stats(stats), file=sys.stderr)
    return EXIT_OK


def list_variables(dataset: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the variables of any dataset format we read (bare netCDF dimensions left out)."""
    from .formats.registry import list_variables as listed

    return [c.name for c in listed(str(dataset), storage_options)]


def _fmt_codecs(var: Any) -> str:
    parts = []
    for f in var.filters or ():
        parts.append(str(f.get("id")))
    if var.compression:
        c = dict(var.compression)
        cid = c.pop("id", "?")
        parts.append(cid + (f"(level={c['level']})" if "level" in c else ""))
    return " + ".join(parts) if parts else "none"


def _num(x: Any, dtype: np.dtype) -> str:
    """A stored value printed at its own precision (1e+20, not 1.0000000200408773e+20)."""
    try:
        return str(np.asarray(x).astype(dtype)[()])
    except (TypeError, ValueError, OverflowError):
        return str(x)


def _fmt_missing(var: Any) -> str:
    m = var.missing
    items = []
    if var.fill_value is not None:
        items.append(f"_FillValue={_num(var.fill_value, var.dtype)}")
    vals = [v for v in (m.values if m else ()) if not (var.fill_value is not None
                                                       and _same(v, var.fill_value))]
    if vals:
        items.append("missing=" + ",".join(_num(v, var.dtype) for v in vals))
    if m is not None and m.valid_min is not None:
        items.append(f"valid_min={_num(m.valid_min, var.dtype)}")
    if m is not None and m.valid_max is not None:
        items.append(f"valid_max={_num(m.valid_max, var.dtype)}")
    if var.scale_factor is not None:
        items.append(f"scale_factor={var.scale_factor}")
    if var.add_offset is not None:
        items.append(f"add_offset={var.add_offset}")
    return ", ".join(items) if items else "none"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b or (np.isnan(a) and np.isnan(b)))
    except TypeError:
        return False


#: estimated bytes of one chunk's answer from a reduction server: sum value + count + HTTP headers
RESPONSE_BYTES_PER_CHUNK = 400


def describe_variable(var: Any) -> dict[str, Any]:
    """Everything ``info`` reports about one variable, as plain data."""
    sizes = sorted(loc.size for loc in var.chunks.values())
    decoded_chunk = math.prod(var.chunk_shape) * var.dtype.itemsize if var.chunk_shape else 0
    stored = sum(sizes)
    n = len(sizes)
    return {
        "name": var.name,
        "dimensions": list(var.dimensions),
        "shape": list(var.shape),
        "dtype": str(var.dtype),
        "byte_order": var.byte_order,
        "chunk_shape": list(var.chunk_shape),
        "codecs": _fmt_codecs(var),
        "missing": _fmt_missing(var),
        "chunks_total": var.nchunks,
        "chunks_allocated": n,
        "chunk_bytes_decoded": decoded_chunk,
        "chunk_bytes_stored": {
            "min": sizes[0] if sizes else 0, "median": sizes[n // 2] if sizes else 0,
            "max": sizes[-1] if sizes else 0, "total": stored},
        "mean_moves_without_active_storage": stored,
        "mean_moves_with_server_estimate": n * RESPONSE_BYTES_PER_CHUNK,
    }


def cmd_info(args: argparse.Namespace) -> int:
    opts = parse_storage_options(args)
    names = [args.variable] if args.variable else list_variables(args.dataset, opts)
    reports, skipped = [], []
    for name in names:
        try:
            with _open_active(args, name) as active:
                reports.append(describe_variable(active.variable))
        except Exception as exc:  # noqa: BLE001 - one unreadable variable must not hide the others
            if args.variable:
                raise
            skipped.append({"name": name, "reason": str(exc)})
    if args.json:
        print(json.dumps({"dataset": str(args.dataset), "variables": reports,
                          "skipped": skipped}, indent=2))
        return EXIT_OK
    print(f"{args.dataset}")
    for r in reports:
        cs = r["chunk_bytes_stored"]
        print(f"\n  {r['name']}({', '.join(r['dimensions'])})  {r['dtype']} ({r['byte_order']}-endian)")
        print(f"    shape        {r['shape']}")
        print(f"    chunks       {r['chunk_shape']}  ({r['chunks_allocated']} of "
              f"{r['chunks_total']} allocated, {human_bytes(r['chunk_bytes_decoded'])} decoded each)")
        print(f"    stored size  min {human_bytes(cs['min'])}, median {human_bytes(cs['median'])}, "
              f"max {human_bytes(cs['max'])}, total {human_bytes(cs['total'])}")
        print(f"    codecs       {r['codecs']}")
        print(f"    missing      {r['missing']}")
        print(f"    whole-variable mean moves {human_bytes(r['mean_moves_without_active_storage'])} "
              f"to the client without active storage, about "
              f"{human_bytes(r['mean_moves_with_server_estimate'])} with a reduction server")
    for s in skipped:
        print(f"\n  {s['name']}: skipped ({s['reason']})")
    return EXIT_OK


def _delegate(module: str, func: str, what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        try:
            target = getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("activestorage"):
                raise RuntimeError(f"'{what}' needs the package {exc.name!r}: "
                                   f"pip install 'activestorage[server]'") from exc
            raise RuntimeError(f"'{what}' is not available in this build "
                               f"({module}.{func} is not installed yet)") from exc
        except AttributeError as exc:
            raise RuntimeError(f"'{what}' is not available in this build "
                               f"({module}.{func} is not installed yet)") from exc
        rc = target(list(args.rest))
        return int(rc or 0)
    return run


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import make_sample, run_demo

    if args.write_sample:
        if args.size_mb <= 0:
            raise UsageError("--size-mb must be positive")
        path = make_sample(args.write_sample, args.size_mb)
        print(f"wrote {path} ({human_bytes(os.path.getsize(path))}); try: activestorage info {path}")
        return EXIT_OK
    try:
        return run_demo(size_mb=args.size_mb, keep_running=args.keep_running,
                        workdir=args.workdir, backends=args.backends, s3_port=args.s3_port,
                        server_port=args.server_port)
    except KeyboardInterrupt:
        # run_demo has stopped its servers and removed its files; the process ends here,
        # without interpreter finalization: the demo's work thread may still be inside
        # netCDF4/HDF5 C code, and finalizing around it crashed (SIGSEGV) or hung (> 12 s)
        # in a few runs in a hundred under load
        print("activestorage: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


# ------------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULT_S3_PORT, DEFAULT_SERVER_PORT  # demo.py imports only NumPy

    common = OneLineErrorParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress (INFO)")

    parser = OneLineErrorParser(
        prog="activestorage", parents=[common],
        description="Reductions over chunked netCDF-4/HDF5 data where the data lives.",
        epilog="Exit codes: 0 success, 1 the command failed, 2 bad command line. "
               "Run 'activestorage COMMAND --help' for each command.")
    parser.add_argument("--version", action="version", version=f"activestorage {__version__}")
    parser.set_defaults(debug=False, verbose=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def storage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", metavar="URL",
                       help="S3 endpoint for s3:// datasets (credentials come from the "
                            "AWS_* environment variables or ~/.aws)")
        p.add_argument("--anon", action="store_true", help="anonymous S3 access (public bucket)")
        p.add_argument("-o", "--storage-option", dest="option", action="append", metavar="KEY=VALUE",
                       help="extra fsspec/s3fs storage option (VALUE parsed as JSON if it can be)")

    p = sub.add_parser("demo", parents=[common], help="run the end-to-end demo on local servers",
                       description="Create a sample dataset, start a local S3 server (moto) and a "
                                   "reduction server, and compare backends on a few reductions.")
    p.add_argument("--size-mb", type=float, default=128.0,
                   help="decoded size of the sample variable in MiB (default 128)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the servers up (until Ctrl-C); their URLs and a notebook snippet "
                        "are printed as soon as they are up, before the comparisons")
    p.add_argument("--s3-port", type=int, default=DEFAULT_S3_PORT, metavar="PORT",
                   help=f"port of the local S3 server on 127.0.0.1 (default {DEFAULT_S3_PORT}, as "
                        f"in the README; a free port, announced, if taken; 0: any free port)")
    p.add_argument("--server-port", type=int, default=DEFAULT_SERVER_PORT, metavar="PORT",
                   help=f"port of the reduction server on 127.0.0.1 (default {DEFAULT_SERVER_PORT}"
                        f", as in the README; a free port, announced, if taken; 0: any free port)")
    p.add_argument("--workdir", metavar="DIR",
                   help="directory for the sample data (default: a temporary directory, removed)")
    p.add_argument("--backends", default="posix,fetch,server",
                   help="comma-separated backends to compare (default posix,fetch,server)")
    p.add_argument("--write-sample", metavar="PATH",
                   help="only write the sample netCDF-4 file to PATH (of --size-mb) and exit")
    p.set_defaults(func=cmd_demo, subparser=p)

    p = sub.add_parser("reduce", parents=[common], help="reduce one variable",
                       description="Compute a reduction of a variable, e.g. "
                                   "activestorage reduce data.nc tas --op mean --sel 0:12,:,10:20")
    p.add_argument("dataset", help="path or s3:// / https:// URL of a netCDF-4/HDF5 file")
    p.add_argument("variable", help="variable name")
    p.add_argument("--op", required=True, choices=OPERATIONS, help="the reduction")
    p.add_argument("--sel", metavar="INDEX",
                   help="NumPy-style selection, comma-separated per axis, e.g. '0:12,:,10:20' "
                        "or '-1,...' (default: everything)")
    p.add_argument("--axis", metavar="AXES", help="reduce over these axes only, e.g. '0' or '1,2'")
    p.add_argument("--ddof", type=int, metavar="N",
                   help="delta degrees of freedom of var/std (default 0; 1: the sample variance)")
    p.add_argument("--weights", metavar="W",
                   help="weights of mean/sum/var/std: a variable of the dataset, a cell_measures "
                        "key such as 'area', or 'coslat:LAT' (cosine of the latitude coordinate "
                        "LAT, in degrees)")
    p.add_argument("--server", metavar="URL", help="reduction server URL (active storage)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="parallel chunk tasks")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    storage_args(p)
    p.set_defaults(func=cmd_reduce, subparser=p)

    p = sub.add_parser("info", parents=[common], help="describe variables, chunking and codecs",
                       description="Show variables, shapes, dtypes, chunking, codecs, missing-data "
                                   "attributes, chunk sizes, and what a whole-variable mean would "
                                   "move with and without active storage.")
    p.add_argument("dataset", help="path or s3:// / https:// URL of a netCDF-4/HDF5 file")
    p.add_argument("variable", nargs="?", help="one variable (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    storage_args(p)
    p.set_defaults(func=cmd_info, subparser=p)

    for name, module, func, helptext in (
            ("serve", "activestorage.server", "serve_main", "run the reduction server"),
            ("manifest", "activestorage.manifest_cli", "manifest_main",
             "write a chunk manifest for a dataset")):
        p = sub.add_parser(name, help=helptext, add_help=False,
                           description=f"{helptext}; all arguments are passed on "
                                       f"(see 'activestorage {name} --help').")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module, func, name), subparser=p)
    return parser


# ------------------------------------------------------------------------------ main

def _error_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else type(exc).__name__
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)) and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("serve", "manifest"):
        args.rest = list(extra) + list(args.rest)
    elif extra:
        args.subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = bool(getattr(args, "debug", False))
    # serve/manifest parse their own options, including --debug
    if args.command in ("serve", "manifest"):
        debug = debug or "--debug" in args.rest
    level = logging.DEBUG if debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SelectionError as exc:  # an index that does not fit the data: the command line is wrong
        if debug:
            traceback.print_exc()
        print(f"activestorage {args.command}: error: {_error_line(exc)} "
              f"(see 'activestorage {args.command} --help')", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"activestorage {args.command}: error: {exc} "
              f"(see 'activestorage {args.command} --help')", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("activestorage: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if debug:
            traceback.print_exc()
        print(f"activestorage {args.command}: error: {_error_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
