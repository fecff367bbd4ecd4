"""Run in cf-python's venv by test_cf_python.py: collapse a field with active storage off and on.

argv[1] is a JSON object: ``dataset`` (path or s3:// URL), ``storage_options`` (for an
``s3fs.S3FileSystem``), ``backend`` (cf's reading library),
``dask_chunks``, ``active_storage_url``, ``methods``. Prints one JSON object: per method the
local and the active result (as lists), and how ``Active`` was used (``Active`` objects made,
``__getitem__`` calls, failures that made cf fall back to computing locally).
"""

import json
import sys

import numpy as np

import activestorage
import cf
from activestorage import Active

cfg = json.loads(sys.argv[1])
usage = {"made": 0, "calls": 0, "failures": [], "module": activestorage.__file__}
_init, _getitem = Active.__init__, Active.__getitem__


def counted_init(self, *args, **kwargs):
    usage["made"] += 1
    _init(self, *args, **kwargs)


def counted_getitem(self, key):
    usage["calls"] += 1
    try:
        return _getitem(self, key)
    except Exception as exc:  # cf falls back to a local reduction: the test must see it
        usage["failures"].append(f"{type(exc).__name__}: {exc}")
        raise


Active.__init__, Active.__getitem__ = counted_init, counted_getitem

kwargs = {}
if cfg.get("storage_options"):  # cf-python 3.21 opens remote datasets through a filesystem
    import s3fs

    kwargs["filesystem"] = s3fs.S3FileSystem(**cfg["storage_options"])
if cfg.get("backend"):
    kwargs["backend"] = cfg["backend"]
if cfg.get("dask_chunks") is not None:
    kwargs["dask_chunks"] = cfg["dask_chunks"]
f = cf.read(cfg["dataset"], **kwargs)[0]

out = {}
for method in cfg["methods"]:
    cf.active_storage(False)
    local = f.collapse(method).array
    with cf.configuration(active_storage=True, active_storage_url=cfg["active_storage_url"]):
        active = f.collapse(method).array
    out[method] = [np.ma.filled(local, np.nan).tolist(), np.ma.filled(active, np.nan).tolist()]
print(json.dumps({"results": out, "usage": usage, "cf": cf.__version__}))
