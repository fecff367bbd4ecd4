"""Per-chunk overhead of the kernel, and whether zlib+shuffle decoding scales over threads.

Not a test: ``python -m benchmarks.kernel_hotpath``. Prints (1) reduce_chunk on a 64 KiB float32
chunk (uncompressed, nothing missing, every axis) against np.add.reduce on the same array, and
(2) the time to reduce 100 zlib+shuffle chunks of 1 MiB with one thread and with two. Per-chunk
times are process CPU time; the thread figure is wall time, so it needs idle cores (on a busy
machine run it under ``nice -n -15`` and compare with a GIL-free control such as hashlib).
"""

from __future__ import annotations

import time
import timeit
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from activestorage.kernel import reduce_chunk
from activestorage.request import Missing, make_request


def _best(fn, number: int, repeat: int = 15) -> float:
    # CPU time of this process: the figure that matters, and steady on a busy machine
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number


def hot_path() -> None:
    x = np.random.default_rng(0).random((64, 256), dtype=np.float32)  # 64 KiB
    raw = x.tobytes()
    req = make_request(np.float32, x.shape)
    masked = make_request(np.float32, x.shape, missing=Missing(values=(np.float32(-1),)))
    part = make_request(np.float32, x.shape, axis=(1,))
    flat = x.reshape(-1)
    cases = [
        ("np.add.reduce(x)", lambda: np.add.reduce(flat)),
        ("reduce_chunk sum", lambda: reduce_chunk(raw, req, "sum")),
        ("np.maximum.reduce(x)", lambda: np.maximum.reduce(flat)),
        ("reduce_chunk max", lambda: reduce_chunk(raw, req, "max")),
        ("reduce_chunk sum, missing_value", lambda: reduce_chunk(raw, masked, "sum")),
        ("np.add.reduce(x, axis=1)", lambda: np.add.reduce(x, axis=1)),
        ("reduce_chunk sum axis=1", lambda: reduce_chunk(raw, part, "sum")),
    ]
    times = {name: [] for name, _ in cases}
    for _ in range(3):  # interleave, keep the best: the machine may be busy
        for name, fn in cases:
            times[name].append(_best(fn, 2000))
    print("64 KiB float32 chunk, uncompressed:")
    for name, ts in times.items():
        print(f"  {name:34s} {min(ts) * 1e6:8.2f} us")
    print(f"  overhead sum: {(min(times['reduce_chunk sum']) - min(times['np.add.reduce(x)'])) * 1e6:.2f} us, "
          f"max: {(min(times['reduce_chunk max']) - min(times['np.maximum.reduce(x)'])) * 1e6:.2f} us")


def threads(nchunks: int = 100) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(2**18) * 10).round(2).astype(np.float32)  # 1 MiB, compressible
    shuffled = x.view(np.uint8).reshape(-1, 4).T.tobytes()
    raw = zlib.compress(shuffled, 1)
    req = make_request(np.float32, x.shape, compression={"id": "zlib"},
                       filters=({"id": "shuffle", "element_size": 4},))
    exact = float(np.sum(x, dtype=np.float64))  # the kernel's sum is at least this close
    assert abs(reduce_chunk(raw, req, "sum").values.item() - exact) <= 1e-6 * abs(exact)

    def run(workers: int) -> float:
        with ThreadPoolExecutor(workers) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda _: reduce_chunk(raw, req, "sum"), range(nchunks)))
            return time.perf_counter() - t0

    run(2)
    one = min(run(1) for _ in range(5))
    two = min(run(2) for _ in range(5))
    print(f"{nchunks} zlib+shuffle chunks of 1 MiB (compressed {len(raw) / 2**20:.2f} MiB each):")
    print(f"  1 thread {one * 1e3:.0f} ms, 2 threads {two * 1e3:.0f} ms: speed-up x{one / two:.2f}")


if __name__ == "__main__":
    hot_path()
    threads()
