"""cf-python in a virtual environment of its own, with this repository installed editable into it.

cf-python pins its own stack (cfdm, cfunits, dask ...); installing it into the test environment
would let it constrain ours, so it gets a venv, made once and reused: ``$ACTIVESTORAGE_CF_VENV`` or
``~/.cache/activestorage-tests/venv-cf-<spec, python>``. Stamp files record the cf-python spec
(another spec: the venv is made again, minutes) and the checkout installed editable (another
checkout: only that is installed again). cf-python needs Debian's ``libudunits2-0``
(scripts/test installs it when root, and warms this venv before the tests run).

The cf-python tests share the rest through here too: the ``cf_python`` fixture (the venv's
interpreter, after the libudunits2 check) and :func:`run_worker` (a worker script run there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CF_SPEC = "cf-python==3.21.*"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: where Debian (and a hand-built udunits) put libudunits2, which cfunits loads at import
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib")


def venv_dir() -> Path:
    explicit = os.environ.get("ACTIVESTORAGE_CF_VENV")
    if explicit:
        return Path(explicit)
    tag = hashlib.sha1(f"{CF_SPEC} {sys.version_info[:2]}".encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "activestorage-tests" / f"venv-cf-{tag}"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(python: Path, args: list[str], timeout: float, what: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"could not install {what}:\n{tail}")


def ensure_cf_venv(timeout: float = 1500.0) -> Path:
    """The cf venv's interpreter: made (python -m venv; pip install cf-python) when missing or
    made for another spec, and with this checkout installed editable into it (again when the
    checkout moved, e.g. a fresh CI clone: only that step then runs). Raises RuntimeError with
    pip's last lines when it cannot be made."""
    venv = venv_dir()
    python = python_of(venv)
    stamp, repo_stamp = venv / "activestorage-stamp", venv / "activestorage-repo"
    if not (python.exists() and stamp.exists() and stamp.read_text() == CF_SPEC):
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=300)
        _pip(python, [CF_SPEC, "-e", str(REPO)], timeout, f"{CF_SPEC} into {venv}")
        stamp.write_text(CF_SPEC)
        repo_stamp.write_text(str(REPO))
    elif not repo_stamp.exists() or repo_stamp.read_text() != str(REPO):
        _pip(python, ["-e", str(REPO)], timeout, f"{REPO} into {venv}")
        repo_stamp.write_text(str(REPO))
    check = subprocess.run([str(python), "-c", "import cf, activestorage; print(cf.__version__)"],
                           capture_output=True, text=True, timeout=300, cwd="/")
    if check.returncode != 0:
        repo_stamp.unlink(missing_ok=True)
        raise RuntimeError(f"cf-python does not import in {venv}: {check.stderr[-2000:]}")
    return python


@pytest.fixture(scope="session")
def cf_python() -> Path:
    """The cf venv's interpreter (made when missing: minutes). Without libudunits2 the cf tests
    skip, or fail under CI=true (scripts/test installs it there)."""
    if not any(Path(d, "libudunits2.so.0").exists() for d in LIB_DIRS):
        msg = "cf-python needs libudunits2-0 (apt-get install libudunits2-0; scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return ensure_cf_venv()


def run_worker(python: Path, worker: str, cfg: dict[str, Any], tmp_path: Path, *,
               timeout: float, this_checkout: bool = False) -> dict[str, Any]:
    """Run ``tests/integration/<worker>`` with ``python`` on ``cfg`` (JSON in argv[1]), copied
    to and run in ``tmp_path`` (outside this checkout, so the venv's own imports are what load;
    ``this_checkout``: put this checkout first on PYTHONPATH instead), without our ACTIVESTORAGE_*
    or AWS_* variables. Returns the JSON object the worker prints last."""
    script = tmp_path / worker
    shutil.copy(HERE / worker, script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIVESTORAGE_", "AWS_"))}
    if this_checkout:
        env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([str(python), str(script), json.dumps(cfg)], capture_output=True,
                       text=True, timeout=timeout, cwd=tmp_path, env=env)
    assert r.returncode == 0, f"{worker} failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # warm the cache: python tests/integration/cf_env.py
    print(ensure_cf_venv())
