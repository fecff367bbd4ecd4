"""One method, one fresh process: ``python -m benchmarks.worker METHOD CONFIG.json OUT.json``.

Running each method in its own interpreter keeps methods from polluting each other's memory
figures and caches; the RSS baseline is taken right after the method's module (and with it every
library it uses) is imported.
"""

from __future__ import annotations

import importlib
import json
import sys

from .measure import emit, rss_kb, run_method

#: method name -> module defining it in FACTORIES (the peer's methods run in benchmarks.peer).
MODULES = {
    "limits": ("numpy_memory", "pread", "decode_1core", "decode_threads", "moto_get", "nginx_get"),
    "ours": ("ours_posix", "ours_fetch", "ours_server_chunk", "ours_server_batch"),
    "baselines": ("netcdf4_numpy", "xarray", "h5py_numpy"),
}


def module_of(method: str) -> str:
    for module, names in MODULES.items():
        if method in names:
            return module
    raise SystemExit(f"unknown method {method!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    method, config_path, out_path = argv
    module = importlib.import_module(f"benchmarks.{module_of(method)}")
    baseline = rss_kb()
    with open(config_path) as f:
        config = json.load(f)
    record = run_method(method, config, module.FACTORIES[method], baseline)
    emit(record, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
