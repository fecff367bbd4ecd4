"""``activestorage demo``: see active storage save bytes, end to end, on this machine.

Creates a sample sea-surface-temperature-like dataset (float32, zlib + shuffle, chunked, land points
missing), starts a local S3 server (moto, a subprocess) and our reduction server (a subprocess that
may only fetch from loopback), uploads the file, runs a few reductions through each backend (posix:
read the local file; fetch: byte ranges from S3 into this process; server: the reduction server reads
S3 and sends back only results), checks every result against a netCDF4 + NumPy oracle and prints a
table. Exit code 1 if any result disagrees. Child processes are stopped on exit, error and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

VARIABLE = "tos"
BUCKET = "activestorage-demo"
KEY = "sample/tos.nc"
S3_KEY_ID = S3_SECRET = "testing"  # moto accepts any credentials; these are the usual dummies
NLAT, NLON = 180, 360
CHUNK = (10, 90, 180)
FILL = np.float32(1.0e20)


# ------------------------------------------------------------------------------ sample data

def make_sample(path: str | os.PathLike, size_mb: float = 128.0, seed: int = 0) -> Path:
    """Write a netCDF-4 file with ``tos(time, lat, lon)`` of about ``size_mb`` MiB decoded.

    Smooth latitude gradient + seasonal cycle + weather noise (kept to 0.01 K like real products),
    land points set to ``_FillValue``, and a few observations flagged with ``missing_value``.
    """
    import netCDF4

    path = Path(path)
    if not path.parent.is_dir():  # netCDF-C would report this as "Permission denied"
        raise FileNotFoundError(f"{path.parent}: no such directory")
    ntime = max(2, round(size_mb * 2**20 / (NLAT * NLON * 4)))
    rng = np.random.default_rng(seed)
    lat = np.linspace(-89.5, 89.5, NLAT, dtype=np.float32)
    lon = np.linspace(0.5, 359.5, NLON, dtype=np.float32)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    base = 271.5 + 30.0 * np.cos(la) ** 2
    land = (np.sin(2 * lo) * np.cos(3 * la) > 0.55) | (np.abs(lat)[:, None] > 80)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.title = "activestorage demo: synthetic sea surface temperature"
        ds.createDimension("time", ntime)
        ds.createDimension("lat", NLAT)
        ds.createDimension("lon", NLON)
        ds.createVariable("lat", "f4", ("lat",))[:] = lat
        ds.createVariable("lon", "f4", ("lon",))[:] = lon
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(ntime, dtype=np.float64)
        v = ds.createVariable(VARIABLE, "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                              shuffle=True, chunksizes=(min(CHUNK[0], ntime),) + CHUNK[1:],
                              fill_value=FILL)
        v.standard_name = "sea_surface_temperature"
        v.units = "K"
        v.missing_value = np.float32(-999.0)
        v.set_auto_maskandscale(False)  # write raw values; the fill/missing markers are ours
        step = CHUNK[0] * 4
        for t0 in range(0, ntime, step):
            n = min(step, ntime - t0)
            days = np.arange(t0, t0 + n)[:, None, None]
            season = 2.0 * np.sin(2 * np.pi * days / 365.25) * np.sign(la)[None]
            block = base[None] + season + rng.normal(0.0, 0.8, (n, NLAT, NLON))
            block = np.round(block, 2).astype(np.float32)
            block[:, land] = FILL
            flagged = rng.random(block.shape) < 1e-4
            block[flagged & ~land[None]] = np.float32(-999.0)
            v[t0:t0 + n] = block
    return path


# ------------------------------------------------------------------------------ processes

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: the ports the README's notebook snippet uses; the demo asks for them first
DEFAULT_S3_PORT, DEFAULT_SERVER_PORT = 9000, 8080


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(wanted: int | None, what: str, out: Any = None) -> int:
    """``wanted`` if it is free (0 or None: any free port), else a free port and a line saying so.

    The README's snippet hard-codes the default ports, so a fallback is announced: the user must
    use the printed URL instead.
    """
    if not wanted:
        return free_port()
    if port_is_free(wanted):
        return wanted
    port = free_port()
    print(f"Port {wanted} on 127.0.0.1 is taken; {what} uses port {port} instead "
          f"(use http://127.0.0.1:{port} where the README says :{wanted})",
          file=out or sys.stdout, flush=True)
    return port


@dataclass
class Child:
    """A server subprocess we started (in its own session so a terminal Ctrl-C reaches only us)."""

    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log_tail(self, n: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-n:])
        return ""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM this child if the demo dies without cleaning up (SIGKILL).

    The kernel sends it when the *thread* that started the child ends: the demo's work thread
    (:func:`wait_in_main_thread`), which outlives every use of the children."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_child(name: str, argv: list[str], url: str, ready_path: str, logdir: Path,
                timeout: float = 30.0, env: dict[str, str] | None = None) -> Child:
    """Start ``argv``, wait until ``url + ready_path`` answers HTTP (any status), or fail clearly."""
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    child = Child(name, url, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting: "
                               f"{child.log_tail()}")
        try:
            urllib.request.urlopen(url + ready_path, timeout=1.0).close()
            return child
        except urllib.error.HTTPError:
            return child  # it answers: that is all we need
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    child.stop()
    raise RuntimeError(f"{name} did not answer on {url} within {timeout:.0f}s: {child.log_tail()}")


def start_moto(logdir: Path, port: int | None = None) -> Child:
    """moto's S3 server on 127.0.0.1:``port`` (default: any free port)."""
    port = port or free_port()
    return start_child("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], f"http://127.0.0.1:{port}", "/", logdir)


def start_reduction_server(logdir: Path, port: int | None = None) -> Child:
    """Our server on 127.0.0.1:``port`` (default: any free port), allowed to fetch from loopback only."""
    port = port or free_port()
    argv = [sys.executable, "-m", "activestorage", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--allow-upstream", "127.0.0.1,localhost",
            "--no-access-log"]
    return start_child("reduction-server", argv, f"http://127.0.0.1:{port}", "/healthz", logdir)


def start_on_port(start: Callable[[Path, int], Child], logdir: Path, wanted: int | None,
                  what: str) -> Child:
    """``start(logdir, port)`` on ``wanted`` if free, else on a free port (announced); if another
    process takes ``wanted`` between the check and the child's bind, once more on a free port."""
    port = pick_port(wanted, what)
    try:
        return start(logdir, port)
    except RuntimeError:
        if not wanted or port != wanted:
            raise
    port = free_port()
    print(f"Port {wanted} on 127.0.0.1 was taken while {what} started; it uses port {port} instead "
          f"(use http://127.0.0.1:{port} where the README says :{wanted})", flush=True)
    return start(logdir, port)


def upload(path: Path, endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY_ID,
                      aws_secret_access_key=S3_SECRET, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(path), BUCKET, KEY)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt (as Ctrl-C is) so ``finally`` blocks stop the
    children; see :func:`wait_in_main_thread` for where that exception may be raised."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def wait_in_main_thread(work: Callable[[], int], stop: threading.Event,
                        on_interrupt: Callable[[], None] = lambda: None,
                        grace: float = 30.0) -> int:
    """Run ``work`` in a daemon thread and wait for it in this (the main) thread. On an exception
    here (Ctrl-C, or SIGTERM/SIGHUP under :func:`terminate_on_signals`): set ``stop``, call
    ``on_interrupt`` (stop what the work waits on), wait up to ``grace`` seconds for the work to
    return, and re-raise. The work must be over before the interpreter finalizes: a daemon
    thread still inside C code then can crash the process (SIGSEGV, seen once in 10 runs before
    this wait). A second interrupt ends the wait at once.

    Why: Python runs signal handlers in the main thread at whatever bytecode it is at. Had the
    demo's work run there, the KeyboardInterrupt could be raised anywhere inside the libraries it
    calls, and CPython does not always pass it on as raised: one raised inside ``exec()`` of
    generated source (dataclasses and namedtuples make such code at import) marks the interpreter
    to kill itself with SIGINT at exit, whatever exit code the program then asks for (-2, not
    130); class creation wraps one in a RuntimeError (``Error calling __set_name__``: exit code
    1); a finalizer would swallow it. Under load, with the demo still importing when SIGTERM came,
    the first two each happened about once in 60 runs. Waiting here, the exception can only be
    raised in this wait. ``work`` should look at ``stop`` between steps and return when it is set.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="activestorage-demo", daemon=True)
    try:
        thread.start()
        # with a timeout: a signal the kernel gave the work thread is handled here within 0.2 s
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:
        stop.set()
        on_interrupt()
        deadline = time.monotonic() + grace
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
        if thread.is_alive():
            log.warning("the demo's work did not stop within %.0f s of the interrupt", grace)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ------------------------------------------------------------------------------ reductions

@dataclass
class Case:
    """One reduction: a label, how to ask Active for it, and the NumPy oracle."""

    label: str
    run: Callable[[Any], Any]
    oracle: Callable[[np.ma.MaskedArray], Any]
    sel: tuple[Any, ...]
    exact: bool = False


def cases(ntime: int) -> list[Case]:
    q = max(1, ntime // 4)
    region = (slice(0, q), slice(40, 80), slice(100, 200))
    late = (slice(ntime // 2, None),)
    whole = (Ellipsis,)
    return [
        Case("mean (whole)", lambda a: a.mean[...], lambda x: x.mean(dtype=np.float64), whole),
        Case("mean (region, first quarter)", lambda a: a.mean[region],
             lambda x: x.mean(dtype=np.float64), region),
        Case("max (whole)", lambda a: a.max[...], lambda x: x.max(), whole, exact=True),
        Case("min (second half)", lambda a: a.min[late], lambda x: x.min(), late, exact=True),
        Case("area mean per time step", lambda a: a.mean(axis=(1, 2))[...],
             lambda x: x.mean(axis=(1, 2), dtype=np.float64), whole),
    ]


def agrees(got: Any, want: Any, exact: bool) -> bool:
    g, w = np.ma.asarray(got), np.ma.asarray(want)
    if g.shape != w.shape:
        return False
    gm, wm = np.ma.getmaskarray(g), np.ma.getmaskarray(w)
    if not np.array_equal(gm, wm):
        return False
    gd, wd = np.asarray(g.filled(0), np.float64), np.asarray(w.filled(0), np.float64)
    return bool(np.array_equal(gd, wd) if exact else np.allclose(gd, wd, rtol=2e-5, atol=0))


def show(x: Any) -> str:
    x = np.ma.asarray(x)
    if x.ndim == 0:
        return "masked" if x.mask is np.ma.masked or bool(np.ma.getmaskarray(x)) else f"{float(x):.4f}"
    flat = x.ravel()
    head = ", ".join("--" if m else f"{v:.2f}" for v, m in
                     zip(flat[:2].filled(0), np.ma.getmaskarray(flat[:2])))
    return f"[{head}, …] ({x.size} values)"


def human(n: float | None) -> str:
    from .argparsing import human_bytes

    return "-" if n is None else human_bytes(n)


def stat(stats: Any, *names: str) -> int | None:
    """The first of ``names`` present in Active's call record (whatever its type)."""
    for name in names:
        v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
        if v is not None:
            return int(v)
    return None


@dataclass
class Row:
    backend: str
    case: str
    result: str
    seconds: float | None
    moved: int | None
    requests: int | None
    ok: bool | None
    note: str = ""


@dataclass
class Backend:
    name: str
    describe: str
    open: Callable[[], Any]
    skip: str | None = None
    rows: list[Row] = field(default_factory=list)


#: failures meaning "this part of the system is not installed yet", not "this result is wrong"
MISSING_PART = (ImportError, NotImplementedError)


def run_backend(be: Backend, todo: list[Case], expected: list[Any],
                stop: threading.Event | None = None) -> None:
    """Run every case on ``be`` into ``be.rows``; the cases left when ``stop`` is set are not run."""
    try:
        active = be.open()
    except MISSING_PART as exc:
        be.skip = f"not available: {exc}"
        return
    for case, want in zip(todo, expected):
        if stop is not None and stop.is_set():
            return
        t0 = time.perf_counter()
        try:
            got = case.run(active)
        except MISSING_PART as exc:
            be.skip = f"not available: {exc}"
            return
        except Exception as exc:  # noqa: BLE001 - reported as a failed row, exit code 1
            be.rows.append(Row(be.name, case.label, "ERROR", None, None, None, False,
                               f"{type(exc).__name__}: {exc}"))
            continue
        dt = time.perf_counter() - t0
        st = getattr(active, "stats", None)
        # posix reads the file in this process: everything it reads has "moved to the client"
        names = ("bytes_read",) if be.name == "posix" else ("bytes_received",)
        moved = stat(st, *names) if st is not None else None
        reqs = stat(st, "requests") if st is not None else None
        be.rows.append(Row(be.name, case.label, show(got), dt, moved, reqs,
                           agrees(got, want, case.exact)))


def print_table(rows: list[Row], out: Any = None) -> None:
    out = out or sys.stdout
    head = ("backend", "reduction", "result", "time", "moved to client", "requests", "check")
    table = [head] + [(r.backend, r.case, r.result,
                       "-" if r.seconds is None else f"{r.seconds * 1000:.0f} ms", human(r.moved),
                       "-" if r.requests is None else str(r.requests),
                       {True: "ok", False: "MISMATCH" if r.result != "ERROR" else "ERROR",
                        None: "-"}[r.ok]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        if r.note:
            print(f"  {r.backend} / {r.case}: {r.note}", file=out)


# ------------------------------------------------------------------------------ the demo

def run_demo(size_mb: float = 128.0, keep_running: bool = False, workdir: str | None = None,
             backends: str = "posix,fetch,server", s3_port: int | None = DEFAULT_S3_PORT,
             server_port: int | None = DEFAULT_SERVER_PORT) -> int:
    """Run the demo; returns the exit code (0 all results agree with NumPy, 1 otherwise).

    The servers listen on ``s3_port``/``server_port`` (the README's ports) when those are free, on
    free ports otherwise (announced); 0 or None means any free port.
    """
    wanted = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = set(wanted) - {"posix", "fetch", "server"}
    if unknown:
        from .argparsing import UsageError

        raise UsageError(f"--backends: unknown {', '.join(sorted(unknown))} "
                         f"(choose from posix, fetch, server)")
    if size_mb <= 0:
        from .argparsing import UsageError

        raise UsageError("--size-mb must be positive")
    for flag, port in (("--s3-port", s3_port), ("--server-port", server_port)):
        if port is not None and not 0 <= port <= 65535:
            from .argparsing import UsageError

            raise UsageError(f"{flag}: {port} is not a TCP port (0-65535; 0 = any free port)")
    made_tmp = workdir is None
    root = Path(tempfile.mkdtemp(prefix="activestorage-demo-")) if made_tmp else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stop = threading.Event()

    def stop_children() -> None:
        for c in reversed(children):
            c.stop()

    try:
        with terminate_on_signals():
            return wait_in_main_thread(
                lambda: _demo(root, size_mb, keep_running, wanted, children,
                              (s3_port, server_port), stop), stop, on_interrupt=stop_children)
    finally:
        stop_children()
        if made_tmp:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path, size_mb: float, keep_running: bool, wanted: list[str],
          children: list[Child], ports: tuple[int | None, int | None] = (None, None),
          stop: threading.Event | None = None) -> int:
    from . import Active

    stop = stop or threading.Event()  # set: interrupted, start nothing more (the caller cleans up)

    path = root / "tos.nc"
    t0 = time.perf_counter()
    make_sample(path, size_mb)
    if stop.is_set():
        return 130
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        var = ds[VARIABLE]
        ntime = var.shape[0]
        decoded = var.size * 4
    stored = path.stat().st_size
    print(f"Sample dataset: {path.name}  {VARIABLE}{(ntime, NLAT, NLON)} float32, "
          f"{human(decoded)} decoded, {human(stored)} on disk (zlib+shuffle, chunks {CHUNK}, "
          f"land = _FillValue) made in {time.perf_counter() - t0:.1f}s")

    todo = cases(ntime)
    expected, oracle_rows = [], []
    with netCDF4.Dataset(path) as ds:
        v = ds[VARIABLE]
        for case in todo:
            t0 = time.perf_counter()
            want = case.oracle(np.ma.asarray(v[case.sel]))
            oracle_rows.append(Row("netCDF4+numpy", case.label, show(want),
                                   time.perf_counter() - t0, None, None, None))
            expected.append(want)
    if stop.is_set():
        return 130

    s3_url = f"s3://{BUCKET}/{KEY}"
    moto = server = None
    server_problem = "the S3 server is not running"
    notes: list[str] = []
    if {"fetch", "server"} & set(wanted):
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
            notes.append("S3 backends skipped: moto is not installed (pip install -e '.[demo]')")
        else:
            moto = start_on_port(start_moto, root, ports[0], "S3 (moto)")
            children.append(moto)
            if stop.is_set():
                return 130
            upload(path, moto.url)
            print(f"Local S3 (moto) at {moto.url}: uploaded {s3_url}")
    if "server" in wanted and moto is not None and not stop.is_set():
        try:
            server = start_on_port(start_reduction_server, root, ports[1], "the reduction server")
            children.append(server)
            print(f"Reduction server at {server.url} (may fetch from loopback only)")
        except RuntimeError as exc:
            server_problem = str(exc)
    storage_options = None if moto is None else {
        "key": S3_KEY_ID, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": moto.url,
                                                                  "region_name": "us-east-1"}}
    if stop.is_set():
        return 130
    if keep_running and moto is not None:  # endpoints first: usable while the comparisons run
        print_endpoints(moto, server, s3_url, storage_options)

    table: list[Backend] = []
    if "posix" in wanted:
        table.append(Backend("posix", "read the local file in this process",
                             lambda: Active(str(path), VARIABLE)))
    if "fetch" in wanted:
        table.append(Backend("fetch", "byte ranges from S3 into this process",
                             lambda: Active(s3_url, VARIABLE, storage_options=storage_options),
                             skip=None if moto else "S3 server not running"))
    if "server" in wanted:
        table.append(Backend("server", "the reduction server reads S3, sends results",
                             lambda: Active(s3_url, VARIABLE, storage_options=storage_options,
                                            active_storage_url=server.url),
                             skip=None if server else server_problem))
    for be in table:
        if be.skip is None:
            run_backend(be, todo, expected, stop)
    if stop.is_set():  # interrupted: the main thread reports it and stops the children
        return 130

    rows = oracle_rows + [r for be in table for r in be.rows]
    print()
    print_table(rows)
    for be in table:
        if be.skip:
            print(f"  {be.name}: skipped ({be.skip})")
    for n in notes:
        print(f"  {n}")
    print_savings(table, stored)

    checked = [r for be in table for r in be.rows]
    bad = [r for r in checked if not r.ok]
    if bad:
        print(f"\nFAILED: {len(bad)} of {len(checked)} results disagree with NumPy or errored",
              file=sys.stderr)
    elif not checked:
        print("\nFAILED: no backend could run (see the notes above)", file=sys.stderr)
    else:
        print(f"\nAll {len(checked)} results agree with netCDF4 + NumPy.")
    if keep_running and moto is not None:
        wait_for_user(moto, server, stop)
    return 1 if bad or not checked else 0


def print_savings(table: list[Backend], stored: int) -> None:
    moved = {be.name: sum(r.moved or 0 for r in be.rows) for be in table
             if be.rows and all(r.moved is not None for r in be.rows)}
    if "server" in moved and "fetch" in moved and moved["fetch"]:
        saved = moved["fetch"] - moved["server"]
        print(f"\nBytes moved to the client over all reductions: fetch {human(moved['fetch'])}, "
              f"server {human(moved['server'])}: active storage saved {human(saved)} "
              f"({100 * saved / moved['fetch']:.2f}%).")
    elif moved:
        print("\nBytes moved to the client: " + ", ".join(f"{k} {human(v)}" for k, v in
                                                           moved.items()))


def print_endpoints(moto: Child, server: Child | None, s3_url: str, storage_options: Any) -> None:
    """The servers' URLs and a notebook snippet for them, printed as soon as they are up."""
    print("\nServers are up and stay up until Ctrl-C (--keep-running); the sample data is "
          "deleted then unless --workdir was given.")
    print(f"  S3 (moto):        {moto.url}  (access key {S3_KEY_ID!r}, secret {S3_SECRET!r}; "
          f"pid {moto.proc.pid})")
    if server is not None:
        print(f"  reduction server: {server.url}  (pid {server.proc.pid})")
    print(f"  S3 object:        {s3_url}  -- the demo's own sample dataset, not your file; "
          f"upload your own to the same endpoint to reduce it")
    print("\nIn a notebook:\n")
    print("    from activestorage import Active")
    print(f"    opts = {storage_options!r}")
    extra = f", active_storage_url={server.url!r}" if server is not None else ""
    print(f"    a = Active({s3_url!r}, {VARIABLE!r}, storage_options=opts{extra})")
    print("    a.mean[0:12, 40:80, 100:200], a.stats\n", flush=True)


def wait_for_user(moto: Child, server: Child | None, stop: threading.Event | None = None) -> None:
    """Keep the servers up until Ctrl-C/SIGTERM (``stop`` set) or until one of them exits."""
    where = moto.url + (f" and {server.url}" if server is not None else "")
    print(f"\nServers still running at {where}; press Ctrl-C to stop them.", flush=True)
    stop = stop or threading.Event()
    while not stop.wait(0.5):
        for c in (moto, server):
            if c is not None and c.proc.poll() is not None:
                print(f"{c.name} exited (code {c.proc.returncode}); stopping.", file=sys.stderr)
                return


__all__ = ["make_sample", "run_demo", "free_port", "pick_port", "start_child", "Child",
           "DEFAULT_S3_PORT", "DEFAULT_SERVER_PORT"]
