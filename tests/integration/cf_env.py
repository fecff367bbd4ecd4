"""cf-python in a virtual environment of its own, with this repository installed editable into it.

cf-python pins its own stack (cfdm, cfunits, dask ...); installing it into the test environment
would let it constrain ours, so it gets a venv, made once and reused: ``$ACTIVESTORAGE_CF_VENV`` or
``~/.cache/activestorage-tests/venv-cf-<spec, python>``. Stamp files record the cf-python spec
(another spec: the venv is made again, minutes) and the checkout installed editable (another
checkout: only that is installed again). cf-python needs Debian's ``libudunits2-0``
(scripts/test installs it when root, and warms this venv before the tests run).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

CF_SPEC = "cf-python==3.21.*"
REPO = Path(__file__).resolve().parents[2]


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


if __name__ == "__main__":  # warm the cache: python tests/integration/cf_env.py
    print(ensure_cf_venv())
