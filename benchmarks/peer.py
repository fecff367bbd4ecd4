"""PyActiveStorage (the peer) in its own virtual environment, and running its timings there.

Its import name is ``activestorage``, the same as ours, so it cannot share our interpreter. The
venv lives in ``benchmarks/data/.venv-peer`` (gitignored), made with ``python -m venv`` and
``pip install pyactivestorage==0.8.*`` on first use (0.8 is what issue #9's figures are for; if
pip cannot get 0.8 the newest release is installed and the version is recorded in the results).
The timing script, ``peer_worker.py``, runs there as a plain script so that only its own folder
(``measure.py``) is on its path, never this repository's ``activestorage``. :func:`make_venv`
also serves the tests (tests/integration/test_peer_client.py keeps its venv in the temp dir).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PEER_SPEC = "pyactivestorage==0.8.*"
METHODS = ("peer_posix", "peer_posix_t2", "peer_reductionist")
WORKER = Path(__file__).resolve().parent / "peer_worker.py"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed_version(python: Path) -> str | None:
    r = subprocess.run([str(python), "-c", "from importlib.metadata import version; "
                        "print(version('pyactivestorage'))"], capture_output=True, text=True,
                       timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def test_cache_venv() -> Path:
    """Where the tests keep their peer venv (tests/integration/test_peer_client.py)."""
    import tempfile

    tag = PEER_SPEC.replace("=", "").replace("*", "x").replace(".", "_")
    return (Path(tempfile.gettempdir()) / "activestorage-test-cache"
            / f"{tag}-py{sys.version_info[0]}{sys.version_info[1]}" / "venv")


def ensure_venv(data_dir: Path, timeout: float = 900.0) -> tuple[Path, str]:
    """The peer venv's interpreter and the installed PyActiveStorage version (made if needed)."""
    return make_venv(data_dir / ".venv-peer", PEER_SPEC, timeout)


def make_venv(venv: Path, spec: str = PEER_SPEC, timeout: float = 900.0) -> tuple[Path, str]:
    """A venv at ``venv`` with ``spec`` installed (kept and reused while it works).

    Fast path: ``python -m venv --without-pip`` and this interpreter's pip installing into it
    (``pip --python``, pip >= 22.3), which skips bootstrapping pip into the venv (~20 s); falls
    back to a venv with its own pip. If ``spec`` cannot be installed the newest pyactivestorage
    is, and the version says which. A lock file beside the venv makes concurrent callers (two
    pytest runs, a benchmark) wait for one creation instead of racing."""
    import fcntl

    python = venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():
            have = _installed_version(python)
            if have:
                return python, have
        log.info("creating the peer venv %s (pip install %s)", venv, spec)
        quiet = ["--quiet", "--disable-pip-version-check"]
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)],
                       check=True, timeout=300)
        pip = [sys.executable, "-m", "pip", "--python", str(python), "install"] + quiet
        r = subprocess.run(pip + [spec], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 and "--python" in r.stderr:  # an old pip: bootstrap the venv's own
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                           timeout=300)
            pip = [str(python), "-m", "pip", "install"] + quiet
            r = subprocess.run(pip + [spec], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            log.warning("pip could not install %s (%s); installing the newest pyactivestorage",
                        spec, r.stderr.strip().splitlines()[-1:] or "no message")
            subprocess.run(pip + ["pyactivestorage"], check=True, timeout=timeout)
        have = _installed_version(python)
        if not have:
            raise RuntimeError(f"pyactivestorage did not install into {venv}")
        return python, have


def worker_command(python: Path, method: str, config: Path, out: Path) -> list[str]:
    """The command that times ``method`` in the peer's interpreter (run it with cwd outside
    this repository, so the repo's ``activestorage`` is not importable)."""
    return [str(python), str(WORKER), method, str(config), str(out)]
