"""The ``activestorage`` command line, run as real processes, checked against netCDF4 + NumPy."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activestorage.cli import UsageError, main, parse_axis, parse_selection
from activestorage.demo import make_sample

DATA = Path(__file__).resolve().parent / "data"  # real climate files (tests/data/README.md)


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "activestorage", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("cli") / "tos.nc", size_mb=4)


def oracle(path: Path, var: str, sel: tuple) -> np.ma.MaskedArray:
    with netCDF4.Dataset(path) as ds:
        return np.ma.asarray(ds[var][sel])


def error_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage block."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.startswith(("usage:", " "))]


# ----------------------------------------------------------------------------- parsing (in-process)

@given(st.lists(st.one_of(
    st.integers(-5, 4),
    st.tuples(st.one_of(st.none(), st.integers(-7, 7)), st.one_of(st.none(), st.integers(-7, 7)),
              st.one_of(st.none(), st.integers(-3, 3).filter(bool)))), min_size=1, max_size=3))
def test_parse_selection_matches_numpy_indexing(parts):
    key = tuple(slice(*p) if isinstance(p, tuple) else p for p in parts)
    text = ",".join(p if isinstance(p, str) else str(p) if isinstance(p, int) else
                    ":".join("" if x is None else str(x) for x in p) for p in parts)
    x = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    try:
        want = x[key]
    except IndexError:
        with pytest.raises(IndexError):
            x[parse_selection(text)]
        return
    np.testing.assert_array_equal(x[parse_selection(text)], want)


def test_parse_selection_ellipsis_and_errors():
    assert parse_selection(None) == (Ellipsis,)
    assert parse_selection("...,-1") == (Ellipsis, -1)
    assert parse_selection("::2") == (slice(None, None, 2),)
    for bad, word in (("0:a", "'0:a'"), ("1:2:3:4", "too many"), ("0::0", "zero"),
                      ("...,...", "at most one"), ("1,,2", "empty")):
        with pytest.raises(UsageError, match=word):
            parse_selection(bad)
    assert parse_axis("0,2") == (0, 2)
    assert parse_axis(None) is None
    with pytest.raises(UsageError, match="repeats"):
        parse_axis("1,1")
    with pytest.raises(UsageError, match="'x'"):
        parse_axis("x")


OPS = {"mean": np.ma.mean, "min": np.ma.min, "max": np.ma.max, "sum": np.ma.sum,
       "count": np.ma.count}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(sorted(OPS)),
       t=st.tuples(st.integers(0, 7), st.integers(1, 8), st.integers(1, 3)),
       y=st.tuples(st.integers(-180, 179), st.integers(1, 60)),
       axis=st.sampled_from([None, "0", "1,2", "0,2"]))
def test_reduce_json_matches_netcdf4_oracle(sample, capsys, op, t, y, axis):
    """``reduce --json`` in-process over random selections and axes against a masked read."""
    (t0, tn, ts), (y0, yn) = t, y
    y1 = min(y0 + yn, 180) if y0 >= 0 else min(y0 + yn, 0) or None
    sel = (slice(t0, t0 + tn, ts), slice(y0, y1), slice(None, None, -7))
    text = f"{t0}:{t0 + tn}:{ts},{y0}:{'' if y1 is None else y1},::-7"
    args = ["reduce", str(sample), "tos", "--op", op, "--sel", text, "--json"]
    if axis:
        args += ["--axis", axis]
    data = oracle(sample, "tos", sel)
    if data.size == 0:
        return
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ax = None if axis is None else tuple(int(a) for a in axis.split(","))
    if op == "count":
        want = np.ma.count(data, axis=ax)
    else:
        want = OPS[op](data.astype(np.float64), axis=ax)
    got = np.ma.masked_invalid(np.array(out["result"], dtype=np.float64))
    want = np.ma.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    np.testing.assert_allclose(got.filled(0), want.filled(0), rtol=1e-5)
    assert out["stats"]["chunks_touched"] >= 1


# ----------------------------------------------------------------------------- as processes

@pytest.mark.parametrize("cmd", [[], ["demo"], ["reduce"], ["info"]])
def test_help_everywhere(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: activestorage" in r.stdout


def test_serve_help_describes_every_option_with_its_default(monkeypatch):
    """Each serve option says what it does and what it is when not given (env defaults included)."""
    pytest.importorskip("activestorage.server.settings")
    from activestorage.server.settings import build_parser

    parser = build_parser({"ACTIVESTORAGE_PORT": "8123"})
    text = " ".join(parser.format_help().split())
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 15
    for action in options:
        assert action.help, f"{action.option_strings[0]} has no description"
        formatter = parser._get_formatter()
        shown = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
        assert "default" in shown.lower(), f"{action.option_strings[0]}: {shown}"
    assert "TCP port to listen on (default: 8123)" in text
    r = run("serve", "--help")
    assert r.returncode == 0 and "(default: 127.0.0.1)" in r.stdout, r.stdout + r.stderr


def test_info_names_the_dimension_of_coordinate_variables(sample):
    r = run("info", str(sample), "lat")
    assert r.returncode == 0, r.stderr
    assert "  lat(lat)  float32" in r.stdout, r.stdout


def test_directory_without_zarr_says_which_extra(tmp_path):
    """As if the [zarr] extra were missing: one line naming activestorage[zarr], exit 1."""
    store = tmp_path / "store.zarr"
    store.mkdir()
    code = ("import sys; sys.modules['zarr'] = None\n"
            "from activestorage.cli import main; sys.exit(main(sys.argv[1:]))")
    for args in (["info", str(store)], ["reduce", str(store), "x", "--op", "mean"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "pip install 'activestorage[zarr]'" in lines[0], r.stderr
        assert "No module named" not in r.stderr


def test_demo_port_falls_back_when_taken(capsys):
    import socket

    from activestorage.demo import pick_port

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        got = pick_port(taken, "S3 (moto)")
        assert got != taken
    out = capsys.readouterr().out
    assert f"Port {taken} on 127.0.0.1 is taken; S3 (moto) uses port {got} instead" in out
    assert pick_port(got, "S3 (moto)") == got and capsys.readouterr().out == ""


def test_demo_port_taken_while_starting_is_retried_once(tmp_path, capsys):
    """Two demos may both find 9000 free; the one whose child then fails to bind moves on."""
    from activestorage.demo import free_port, start_on_port

    wanted, calls = free_port(), []

    def start(logdir, port):  # the child's bind failing, as start_child reports it
        calls.append(port)
        if port == wanted:
            raise RuntimeError("moto exited with code 1 while starting: Address already in use")
        return port

    got = start_on_port(start, tmp_path, wanted, "S3 (moto)")
    assert calls == [wanted, got] and got != wanted
    assert f"was taken while S3 (moto) started; it uses port {got} instead" in capsys.readouterr().out
    with pytest.raises(RuntimeError):  # any free port was asked for: nothing to fall back from
        start_on_port(lambda d, p: (_ for _ in ()).throw(RuntimeError("boom")), tmp_path, 0, "x")


def test_version_and_console_script():
    r = run("--version")
    assert r.returncode == 0 and re.match(r"activestorage \d", r.stdout)
    exe = Path(sys.executable).with_name("activestorage")
    if exe.exists():  # the installed entry point is the same program
        r2 = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
        assert r2.stdout == r.stdout


def test_reduce_process_matches_oracle(sample):
    r = run("reduce", str(sample), "tos", "--op", "mean", "--sel", "0:12,:,10:20", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = oracle(sample, "tos", (slice(0, 12), slice(None), slice(10, 20))).astype(np.float64)
    assert got["shape"] == [] and got["op"] == "mean"
    assert got["result"] == pytest.approx(float(want.mean()), rel=1e-6)
    human = run("reduce", str(sample), "tos", "--op", "count", "--sel", "0")
    assert human.returncode == 0, human.stderr
    n = int(human.stdout.rsplit("=", 1)[1])
    assert n == oracle(sample, "tos", (0,)).count()
    assert "chunks" in human.stderr  # the work summary


def test_info_reports_layout(sample):
    r = run("info", str(sample), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    by_name = {v["name"]: v for v in info["variables"]}
    assert {"tos", "lat", "lon", "time"} <= set(by_name)
    tos = by_name["tos"]
    with netCDF4.Dataset(sample) as ds:
        v = ds["tos"]
        assert tos["shape"] == list(v.shape)
        assert tos["chunk_shape"] == list(v.chunking())
        assert tos["dtype"] == "float32"
        filters = v.filters()
    grid = [-(-n // c) for n, c in zip(tos["shape"], tos["chunk_shape"])]
    assert tos["chunks_total"] == tos["chunks_allocated"] == int(np.prod(grid))
    assert "zlib" in tos["codecs"] and ("shuffle" in tos["codecs"]) == bool(filters["shuffle"])
    assert "_FillValue=1e+20" in tos["missing"] and "-999" in tos["missing"]
    stored = tos["chunk_bytes_stored"]
    assert stored["min"] <= stored["median"] <= stored["max"] and stored["total"] < sample.stat().st_size
    assert tos["mean_moves_without_active_storage"] == stored["total"]
    text = run("info", str(sample), "tos")
    assert text.returncode == 0 and "shuffle + zlib" in text.stdout and "without active storage" in text.stdout


@pytest.mark.parametrize("name", ["CMIP6_IPSL-CM6A-LR_tas.nc", "cesm2_native.nc", "daily_data_masked.nc"])
def test_info_and_reduce_on_real_files(name):
    path = DATA / name
    r = run("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    variables = json.loads(r.stdout)["variables"]
    big = max(variables, key=lambda v: int(np.prod(v["shape"])))
    r = run("reduce", str(path), big["name"], "--op", "max", "--json")
    assert r.returncode == 0, r.stderr
    with netCDF4.Dataset(path) as ds:
        want = ds[big["name"]][...].max()
    assert json.loads(r.stdout)["result"] == pytest.approx(float(want), rel=1e-6)


def test_real_files_without_a_variable_name():
    """CMIP6 tas (with bounds and a scalar height coordinate) is its one data variable; the CESM2
    history file has many, and the error lists them."""
    from activestorage import Active
    from activestorage.errors import VariableNotFoundError

    path = DATA / "CMIP6_IPSL-CM6A-LR_tas.nc"
    with netCDF4.Dataset(path) as ds:
        want = ds["tas"][0:2].astype(np.float64).mean()
    with Active(str(path)) as a:
        assert a.variable.name == "tas"
        assert float(a.mean[0:2]) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(VariableNotFoundError, match=r"data variables: TREFHT, .*gw"):
        Active(str(DATA / "cesm2_native.nc"))


BAD = [
    (["reduce", "{s}", "tos", "--op", "mean", "--sel", "0:a"], 2, "'0:a'"),
    (["reduce", "{s}", "tos", "--op", "median"], 2, "invalid choice: 'median'"),
    (["reduce", "{s}", "tos", "--op", "mean", "--axis", "one"], 2, "--axis"),
    (["reduce", "{s}", "tos", "--op", "mean", "--sel", "0,999"], 2, "out of bounds"),
    (["reduce", "{s}", "tos", "--op", "mean", "--axis", "5"], 2, "axis 5"),
    (["reduce", "{s}", "tos"], 2, "--op"),
    (["reduce", "/nonexistent/x.nc", "tos", "--op", "mean"], 1, "/nonexistent/x.nc"),
    (["reduce", "{s}", "nosuchvar", "--op", "mean"], 1, "nosuchvar"),
    (["info", "/nonexistent/x.nc"], 1, "/nonexistent/x.nc"),
    (["info", "{s}", "nosuchvar"], 1, "nosuchvar"),
    (["info", "/etc/hostname"], 1, "is not a netCDF-3, netCDF-4/HDF5, Zarr or manifest"),
    (["nosuchcommand"], 2, "invalid choice"),
    (["reduce", "{s}", "tos", "--op", "mean", "--frobnicate"], 2, "--frobnicate"),
    (["demo", "--backends", "posix,ftp"], 2, "ftp"),
    (["reduce", "{s}", "tos", "--op", "mean", "--threads", "0"], 2, "--threads"),
    (["demo", "--size-mb", "-1"], 2, "--size-mb"),
    (["demo", "--s3-port", "70000"], 2, "--s3-port"),
    (["demo", "--server-port", "http"], 2, "--server-port"),
    (["serve", "--port", "abc"], 2, "--port"),
    (["serve", "--frobnicate"], 2, "--frobnicate"),
    (["manifest", "{s}", "--frobnicate"], 2, "--frobnicate"),
    ([], 2, "COMMAND"),
]


@pytest.mark.parametrize("args,code,needle", BAD,
                         ids=[" ".join(b[0][:1] + b[0][2:]) or "no-command" for b in BAD])
def test_bad_input_one_line_error(sample, args, code, needle):
    args = [a.format(s=sample) for a in args]
    r = run(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr  # no usage block: the one line the README promises
    assert "error" in lines[0] and needle in lines[0], lines[0]
    if code == 2:
        assert re.search(r"\(see 'activestorage( \w+)? --help'\)$", lines[0]), lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(sample):
    r = run("reduce", str(sample), "nosuchvar", "--op", "mean", "--debug")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "nosuchvar" in r.stderr


def test_unreachable_server_is_a_runtime_error(sample):
    """A server URL with a local file, or an S3 dataset whose store does not answer: exit 1."""
    r = run("reduce", "s3://bucket/x.nc", "tos", "--op", "mean", "--endpoint-url",
            "http://127.0.0.1:9", "--server", "http://127.0.0.1:9", "-o", "key=k", "-o", "secret=s",
            timeout=120)
    assert r.returncode == 1, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert "127.0.0.1:9" in lines[0] or "s3://bucket/x.nc" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd,module,func", [("serve", "activestorage.server", "serve_main"),
                                             ("manifest", "activestorage.manifest_cli",
                                              "manifest_main")])
def test_delegated_commands(cmd, module, func):
    try:
        present = importlib.util.find_spec(module) is not None and hasattr(
            importlib.import_module(module), func)
    except ImportError:
        present = False
    r = run(cmd, "--help")
    if present:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
    else:
        assert r.returncode == 1
        assert "not available" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- the demo

def _parts_present() -> dict[str, bool]:
    def has(mod: str, attr: str | None = None) -> bool:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            return False
        return attr is None or hasattr(m, attr)
    return {"fetch": has("activestorage.backends.fetch") and has("moto"),
            "server": has("activestorage.backends.server") and has("activestorage.server", "serve_main")
            and has("moto")}


@pytest.mark.integration
def test_demo_end_to_end(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "activestorage", "demo", "--size-mb", "8",
                             "--s3-port", "0", "--server-port", "0"],  # the README test uses 9000
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=55)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the demo stops its servers; a kill would orphan them
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"demo did not finish within 55 s:\n{out}\n{err}")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, out + err
    assert elapsed < 50, f"demo took {elapsed:.0f}s"
    assert re.search(r"All \d+ results agree with netCDF4 \+ NumPy", out)
    assert "MISMATCH" not in out and "ERROR" not in out
    present = _parts_present()
    for backend in ("posix", "fetch", "server"):
        rows = [ln for ln in out.splitlines() if ln.startswith(backend + " ")]
        if backend == "posix" or present[backend]:
            assert len(rows) == 5 and all(ln.rstrip().endswith("ok") for ln in rows), out
        else:
            assert f"{backend}: skipped" in out
    if present["server"]:
        assert "active storage saved" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("moto") is None, reason="moto not installed ([demo] extra)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_demo_keep_running_stops_children_on_signal(tmp_path, sig):
    """Ctrl-C and SIGTERM stop the servers in ``finally``; after a SIGKILL the kernel does (Linux)."""
    if sig == signal.SIGKILL and not sys.platform.startswith("linux"):
        pytest.skip("parent-death signals are Linux-only")
    work = tmp_path / "work"
    # the Ctrl-C case runs the full set and checks the printed notebook snippet works
    with_server = sig == signal.SIGINT and _parts_present()["server"]
    backends = "posix,fetch,server" if with_server else "posix,fetch"
    proc = subprocess.Popen([sys.executable, "-m", "activestorage", "demo", "--size-mb", "1",
                             "--backends", backends, "--keep-running", "--workdir", str(work),
                             "--s3-port", "0", "--server-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, pids = [], []
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            pids += [int(p) for p in re.findall(r"pid (\d+)", line)]
            if line.startswith("    a.mean"):
                break
        assert pids, "".join(lines) + proc.stderr.read()
        assert all(_alive(p) for p in pids)
        assert "Active('s3://" in "".join(lines)
        if with_server:
            start = next(i for i, ln in enumerate(lines) if ln.startswith("In a notebook"))
            snippet = [ln[4:] for ln in lines[start + 1:] if ln.startswith("    ")]
            assert "active_storage_url=" in snippet[2]
            code = "".join(snippet[:-1]) + "r = " + snippet[-1] + "print(r[0], r[1].backend)\n"
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, code + r.stderr
            value, backend = r.stdout.split()
            assert backend == "server"
            want = oracle(work / "tos.nc", "tos", (slice(0, 12), slice(40, 80), slice(100, 200)))
            assert float(value) == pytest.approx(float(want.astype(np.float64).mean()), rel=1e-5)
        proc.send_signal(sig)
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), proc.stderr.read()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "child servers survived the signal"


# ----------------------------------------------------------------------------- remote, real servers

@pytest.fixture(scope="module")
def s3_and_server(sample, tmp_path_factory):
    """moto S3 with the sample uploaded, and our reduction server: separate processes on loopback."""
    present = _parts_present()
    if not present["server"]:
        pytest.skip("needs moto, the server extra and the server backend")
    from activestorage.demo import BUCKET, KEY, start_moto, start_reduction_server, upload

    logs = tmp_path_factory.mktemp("servers")
    children = []
    try:
        moto = start_moto(logs)
        children.append(moto)
        upload(sample, moto.url)
        server = start_reduction_server(logs)
        children.append(server)
        yield moto.url, server.url, f"s3://{BUCKET}/{KEY}"
    finally:
        for c in children:
            c.stop()


def aws_env() -> dict[str, str]:
    from activestorage.demo import S3_KEY_ID, S3_SECRET

    return dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET)


@pytest.mark.integration
def test_reduce_through_server_matches_oracle(sample, s3_and_server):
    endpoint, server, url = s3_and_server
    sel = (slice(2, 14), slice(None), slice(10, 20))
    want = oracle(sample, "tos", sel).astype(np.float64)
    for extra in ([], ["--server", server]):
        r = run("reduce", url, "tos", "--op", "mean", "--sel", "2:14,:,10:20", "--axis", "0",
                "--endpoint-url", endpoint, "--json", *extra, env=aws_env())
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["stats"]["backend"] == ("server" if extra else "fetch")
        got = np.ma.masked_invalid(np.array(out["result"], dtype=np.float64))
        np.testing.assert_array_equal(got.mask, want.mean(axis=0).mask)
        np.testing.assert_allclose(got.filled(0), want.mean(axis=0).filled(0), rtol=1e-5)
    r = run("info", url, "tos", "--endpoint-url", endpoint, "--json", env=aws_env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["variables"][0]["chunk_shape"] == [10, 90, 180]


@pytest.mark.integration
def test_unreachable_reduction_server_is_one_line_exit_1(s3_and_server):
    from activestorage.demo import free_port

    endpoint, _server, url = s3_and_server
    dead = f"http://127.0.0.1:{free_port()}"
    r = run("reduce", url, "tos", "--op", "max", "--endpoint-url", endpoint, "--server", dead,
            env=aws_env(), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and dead in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- other formats

def test_info_and_reduce_netcdf3(tmp_path):
    path = tmp_path / "classic.nc"
    rng = np.random.default_rng(1)
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 7)
        v = ds.createVariable("v", "i2", ("t", "x"), fill_value=-1)
        v.valid_max = np.int16(900)
        v[0:5] = rng.integers(-1, 1000, (5, 7))
    r = run("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    (info,) = json.loads(r.stdout)["variables"]
    assert info["name"] == "v" and info["shape"] == [5, 7] and info["dtype"] == "int16"
    r = run("reduce", str(path), "v", "--op", "sum", "--axis", "0", "--json")
    assert r.returncode == 0, r.stderr
    want = oracle(path, "v", (Ellipsis,)).sum(axis=0)
    got = json.loads(r.stdout)["result"]
    assert got == [None if m else int(x) for x, m in zip(want.filled(0), np.ma.getmaskarray(want))]


def test_manifest_round_trip(sample, tmp_path):
    manifest = tmp_path / "tos.json"
    r = run("manifest", str(sample), "tos", "-o", str(manifest))
    if r.returncode == 1 and "not available" in r.stderr:
        pytest.skip("the manifest writer is not in this build")
    assert r.returncode == 0, r.stderr
    r = run("info", str(manifest), "--json")
    assert r.returncode == 0, r.stderr
    assert [v["name"] for v in json.loads(r.stdout)["variables"]] == ["tos"]
    r = run("reduce", str(manifest), "tos", "--op", "min", "--sel", "3:9,::3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == pytest.approx(
        float(oracle(sample, "tos", (slice(3, 9), slice(None, None, 3))).min()))


@pytest.mark.skipif(importlib.util.find_spec("zarr") is None, reason="zarr not installed ([zarr] extra)")
def test_info_and_reduce_zarr(tmp_path):
    import zarr

    store = tmp_path / "data.zarr"
    x = np.arange(6 * 8, dtype="f8").reshape(6, 8)
    z = zarr.create_array(str(store), name="a", shape=x.shape, chunks=(4, 3), dtype="f8")
    z[...] = x
    r = run("info", str(store), "--json")
    assert r.returncode == 0, r.stderr
    (info,) = json.loads(r.stdout)["variables"]
    assert info["name"] == "a" and info["chunk_shape"] == [4, 3] and info["chunks_total"] == 6
    r = run("reduce", str(store), "a", "--op", "max", "--sel", "1:5,2:7", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == x[1:5, 2:7].max()


# ------------------------------------------------------- #21: --op var/std/..., --ddof, --weights

@pytest.mark.parametrize("op,extra", [
    ("var", ["--ddof", "1"]), ("std", []), ("range", []), ("rms", []), ("sum_of_squares", []),
    ("mean", ["--weights", "coslat:lat"]), ("var", ["--weights", "coslat:lat", "--ddof", "1"])])
def test_reduce_second_moments_and_weights(sample, capsys, op, extra):
    from helpers import assert_moments, moments_oracle

    sel = (slice(2, 9, 3), slice(10, 170), slice(None, None, -5))
    args = ["reduce", str(sample), "tos", "--op", op, "--sel", "2:9:3,10:170,::-5",
            "--axis", "1,2", "--json", *extra]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    data = oracle(sample, "tos", sel)
    with netCDF4.Dataset(sample) as ds:
        lat = ds["lat"][10:170].astype(np.float64)
    w = (np.broadcast_to(np.cos(np.deg2rad(lat))[None, :, None], data.shape)
         if "--weights" in extra else None)
    ddof = int(extra[extra.index("--ddof") + 1]) if "--ddof" in extra else 0
    want = moments_oracle(data, op, (1, 2), weights=w, ddof=ddof)
    got = np.ma.masked_invalid(np.array(out["result"], dtype=np.float64))
    assert_moments(got, want, op, np.float32)


@pytest.mark.parametrize("args,needle", [
    (["--op", "mean", "--ddof", "1"], "--ddof applies to var and std, not mean"),
    (["--op", "min", "--weights", "area"], "--weights applies to mean, sum, var and std"),
    (["--op", "mean", "--weights", "coslat:latitude"], "has no dimension 'latitude'"),
])
def test_reduce_moments_usage_errors(sample, capsys, args, needle):
    assert main(["reduce", str(sample), "tos", *args]) == 2
    assert needle in capsys.readouterr().err
