"""#21 operations on remote datasets through the fetch backend (moto S3 and nginx HTTP on
loopback, the fixtures of test_remote_backends): var/std/range/rms/sum_of_squares and weighted
means against numpy.ma on netCDF4-python's read of the same file, with and without coalescing."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest

from activestorage import Active, OperationNotAvailableError

from helpers import MOMENT_OPS, assert_moments, moments_oracle
from test_remote_backends import (files, make_backend, moto, nginx, s3_files, server,  # noqa: F401
                                  storage_options, workdir)

pytestmark = pytest.mark.integration

FETCH = {"fetch-s3": ("s3", {}), "fetch-s3-nocoalesce": ("s3", {"coalesce": False}),
         "fetch-http": ("http", {})}


@pytest.mark.parametrize("bname", list(FETCH))
def test_moments_and_weights_through_fetch(bname, files, s3_files, nginx, moto):  # noqa: F811
    store, opts = FETCH[bname]
    urls = s3_files if store == "s3" else nginx
    with make_backend("fetch", opts, moto, None) as backend:
        for name in ("ints.nc", "floats.nc"):
            path, var = files[name]
            with netCDF4.Dataset(path) as ds:
                x = ds[var][...]
            with Active(urls[name], var, storage_options=storage_options(moto),
                        backend=backend) as a:
                for op in MOMENT_OPS:
                    assert_moments(getattr(a, op)[...], moments_oracle(x, op), op, x.dtype)
                key = (slice(1, None, 2), slice(None, None, -3))
                for op in ("var", "range"):
                    assert_moments(getattr(a, op)(axis=0)[key],
                                   moments_oracle(x[key], op, 0), op, x.dtype)
                coslat = np.cos(np.linspace(-1.2, 1.2, x.shape[1]))
                wx = np.broadcast_to(coslat[:, None], x.shape)
                for op in ("mean", "var"):
                    got = getattr(a, op)(axis=(1, 2), weights={1: coslat})[...]
                    assert_moments(got, moments_oracle(x, op, (1, 2), weights=wx), op, x.dtype)
                nd = np.random.default_rng(0).random(x.shape[1:])
                got = a.std(axis=(0, 2), weights=nd, ddof=1)[::2]
                assert_moments(got, moments_oracle(x[::2], "std", (0, 2), weights=nd, ddof=1),
                               "std", x.dtype)


def test_server_backend_says_moments_are_not_available(files, s3_files, server, moto):  # noqa: F811
    path, var = files["floats.nc"]
    with make_backend("server", {}, moto, server) as backend:
        with Active(s3_files["floats.nc"], var, storage_options=storage_options(moto),
                    backend=backend) as a:
            with pytest.raises(OperationNotAvailableError, match="var"):
                a.var[...]
            assert a.mean[...] is not None  # the other operations still go to the server
