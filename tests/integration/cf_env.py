"""cf-python in a virtual environment of its own, with this repository installed editable into it.

cf-python pins its own stack (cfdm, cfunits, dask ...); installing it into the test environment
would let it constrain ours, so it gets a venv, made once and reused: ``$ACTIVESTORAGE_CF_VENV`` or
``~/.cache/activestorage-tests/venv-cf-<spec>``. A stamp file records what was installed; a venv
whose stamp differs (another spec, another checkout) is made again. cf-python needs Debian's
``libudunits2-0`` (scripts/test installs it when root).
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
    tag = hashlib.sha1(f"{CF_SPEC} {REPO}".encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "activestorage-tests" / f"venv-cf-{tag}"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_cf_venv(timeout: float = 1500.0) -> Path:
    """The cf venv's interpreter, made (python -m venv; pip install cf-python + -e REPO) if
    missing or stale. Raises RuntimeError with pip's last lines when it cannot be made."""
    venv = venv_dir()
    python = python_of(venv)
    stamp = venv / "activestorage-stamp"
    want = f"{CF_SPEC}\n{REPO}\n"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           CF_SPEC, "-e", str(REPO)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"could not install {CF_SPEC} into {venv}:\n{tail}")
    check = subprocess.run([str(python), "-c", "import cf, activestorage; print(cf.__version__)"],
                           capture_output=True, text=True, timeout=300, cwd="/")
    if check.returncode != 0:
        raise RuntimeError(f"cf-python does not import in {venv}: {check.stderr[-2000:]}")
    stamp.write_text(want)
    return python


if __name__ == "__main__":  # warm the cache: python tests/integration/cf_env.py
    print(ensure_cf_venv())
