"""The README is true: its commands and its notebook example run, as separate processes.

The two install commands at the top are what CI itself runs, so they are only checked for form.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
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
