"""The README is true: its commands and its notebook example run, as separate processes.

The two install commands at the top are what CI itself runs, so they are only checked for form.
"""

from __future__ import annotations

import importlib.util
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

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
TOP_COMMANDS = ['pip install -e ".[demo]" && activestorage demo', "./scripts/test"]


def blocks(lang: str) -> list[str]:
    text = README.read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def test_two_commands_at_the_top():
    text = README.read_text()
    first = blocks("bash")[0]
    assert commands(first) == TOP_COMMANDS
    assert text.index(first) < text.index("## "), "the two commands come before the first section"
    preface = text[:text.index(first)]
    assert "python3 -m venv" in preface and "3.11" in preface, "say to make a virtualenv first"
    assert (ROOT / "scripts" / "test").stat().st_mode & 0o111, "scripts/test must be executable"


def test_links_point_to_files():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def cli_ran(workdir) -> Path:
    """Run every command of every later bash block, in order, in one directory."""
    for block in blocks("bash")[1:]:
        for cmd in commands(block):
            r = subprocess.run(cmd, shell=True, cwd=workdir, env=env(), capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0, f"README command failed: {cmd}\n{r.stdout}\n{r.stderr}"
    return workdir


def test_readme_commands_run(cli_ran):
    assert (cli_ran / "tos.nc").exists()
    assert len([c for b in blocks("bash")[1:] for c in commands(b)]) >= 4


def test_notebook_example_runs_against_real_servers(cli_ran):
    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto not installed (the [demo] extra); the example needs a local S3 server")
    from activestorage.demo import start_moto, start_reduction_server, upload

    (code,) = blocks("python")
    assert len(code.strip().splitlines()) <= 25, "the notebook example stays about 20 lines"
    children = []
    try:
        moto = start_moto(cli_ran)
        children.append(moto)
        server = start_reduction_server(cli_ran)
        children.append(server)
        upload(cli_ran / "tos.nc", moto.url)
        assert "http://127.0.0.1:9000" in code and "http://127.0.0.1:8080" in code
        code = code.replace("http://127.0.0.1:9000", moto.url).replace("http://127.0.0.1:8080",
                                                                       server.url)
        r = subprocess.run([sys.executable, "-c", code], cwd=cli_ran, env=env(),
                           capture_output=True, text=True, timeout=120)
    finally:
        for c in children:
            c.stop()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    with netCDF4.Dataset(cli_ran / "tos.nc") as ds:
        x = ds["tos"][...].astype(np.float64)
    assert float(lines[0]) == pytest.approx(float(x.mean()), rel=1e-5)
    assert float(lines[1]) == pytest.approx(float(x[0:12, 40:80, 100:200].mean()), rel=1e-5)
    assert lines[2] == "(180, 360)"
    assert lines[3].startswith(str(x.count()))
    assert float(lines[4]) == pytest.approx(float(x[0:12].mean()), rel=1e-5)
    moved, without = map(int, re.findall(r"\d+", lines[5]))
    assert 0 < moved < without / 10, "the server moved far fewer bytes than the chunks hold"


def s3_part(code: str) -> str:
    """The notebook snippet from its S3 comment on (it needs nothing from the local part but the
    import)."""
    lines = code.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# S3"))
    return "\n".join([lines[0]] + lines[start:]) + "\n"


@pytest.mark.integration
def test_notebook_s3_part_runs_as_written_against_the_demo(tmp_path):
    """`activestorage demo --keep-running` prints its endpoints first; the snippet's S3 part then
    runs as written (ports 9000/8080, unless the demo announced it had to take others)."""
    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto not installed (the [demo] extra); the demo needs a local S3 server")
    code = s3_part(blocks("python")[0])
    assert "activestorage demo --keep-running" in code and "demo's own sample" in code
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "activestorage", "demo", "--size-mb", "4",
                             "--keep-running", "--workdir", str(work)], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # up to the "S3 object:" line, the last of the block
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            assert not line.startswith("backend "), "comparisons before the endpoints:\n" + line
            m = re.match(r"\s+(S3 \(moto\)|reduction server):\s+(http://\S+)", line)
            if m:
                urls[m.group(1)] = m.group(2)
            if line.lstrip().startswith("S3 object:"):
                break
        out = "".join(seen)
        assert set(urls) == {"S3 (moto)", "reduction server"}, f"no endpoints first:\n{out}"
        assert "the demo's own sample dataset, not your file" in out
        moto, server = urls["S3 (moto)"], urls["reduction server"]
        if moto != "http://127.0.0.1:9000":  # taken on this machine: the demo must have said so
            assert f"uses port {moto.rsplit(':', 1)[1]} instead" in out, out
        if server != "http://127.0.0.1:8080":
            assert f"uses port {server.rsplit(':', 1)[1]} instead" in out, out
        code = code.replace("http://127.0.0.1:9000", moto).replace("http://127.0.0.1:8080", server)
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGINT)  # the demo stops its own servers on Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = r.stdout.splitlines()
    with netCDF4.Dataset(work / "tos.nc") as ds:
        x = ds["tos"][0:12].astype(np.float64)
    assert float(lines[0]) == pytest.approx(float(x.mean()), rel=1e-5)
    moved, without = map(int, re.findall(r"\d+", lines[1]))
    assert 0 < moved < without / 10, "the server moved far fewer bytes than the chunks hold"
    assert proc.returncode == 130, "".join(seen) + proc.stdout.read()


def test_docs_extra_installs_what_the_readme_runs():
    """The README says to run mkdocs: an extra must install it, and the README must name it."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"mkdocs\b", d) for d in extras["docs"])
    assert any(re.match(r"mkdocs\b", d) or "[docs" in d or ",docs" in d for d in extras["test"]), \
        "the test extra must bring mkdocs too (tests/test_docs.py builds the site)"
    text = README.read_text()
    assert "mkdocs build --strict" in text and 'pip install -e ".[docs]"' in text
