"""The server's work: reserve memory, read the upstream ranges, reduce them in the kernel's
thread pool, fold a batch's partials and encode the answer.

:class:`Service` holds the per-app state (settings, upstream pool, memory budget, kernel threads,
metrics). Its :meth:`~Service.single` and :meth:`~Service.batch` take decoded bodies (from
:mod:`.wire`) and return an :class:`Answer`: the response's pieces, written from the result
arrays' own memory, and the bytes of the budget they hold until the HTTP layer (:mod:`.app`) has
written them or the client has gone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Awaitable, Callable, NamedTuple

import cbor2
import numpy as np

from .. import __version__, wire_extension
from ..combine import Accumulator
from ..errors import (ActiveStorageError, DecodeError, RequestValidationError, StorageError,
                      UnsupportedError)
from ..coalesce import MAX_RUN_BYTES, reduce_run, runs
from ..kernel import Partial, decode, reduce_chunk, scratch_bytes
from ..request import NATIVE_BYTE_ORDER, ChunkRequest
from ..stores.base import merge_spans
from .chunk_cache import CacheSession, ChunkCache
from .limits import ByteBudget
from .metrics import Metrics
from .responses import Part, cbor_head, cbor_map_parts
from .settings import Settings
from .upstream import Target, Upstream
from .wire import (CBOR_NULL, OPTIONS, Item, Memo, Result, at_item, extensions, item_index,
                   prepare, prepare_batch, served_operations, v1_parts, v2_map, with_fields)


#: a single request whose stored and decoded bytes are both at most this is reduced on the event
#: loop: at 64 KiB the hand-over to a kernel thread (submit, wake-up, GIL) cost several times the
#: reduction itself in a py-spy profile (~17 % of the server's samples against ~2 % for the sum)
INLINE_BYTES = 128 << 10


class Answer(NamedTuple):
    """A computed answer: its pieces, media type, headers and the budget bytes it holds."""

    parts: list[Part]
    media_type: str
    headers: dict[str, str] | None
    held: int


# ------------------------------------------------------------------- numeric work (off the loop)

def compute(raw: bytes, item: Item, wide: bool = False,
            scratch: np.ndarray | None = None) -> Result:
    """Run the shared kernel and shape its keepdims partial into the API's result.

    ``wide``: keep sums in the accumulating dtype whatever the request asked (for folding)."""
    item = item.sized(len(raw))
    try:
        p: Partial = reduce_chunk(raw, item.req, item.operation, scratch)
    except (DecodeError, UnsupportedError) as exc:
        raise type(exc)(f"{item.target.name}: {exc}") from exc
    return _result(p, item, wide)


def _result(p: Partial, item: Item, wide: bool) -> Result:
    """One item's keepdims partial as the API's result (reduced axes dropped; a sum in the
    request's dtype unless ``wide`` or the item asked for wide sums)."""
    if item.operation == "select":
        return Result(np.asarray(p.values, order="C"), np.asarray(int(p.counts.sum())), True)
    axes = set(item.req.reduce_axes)
    nd = len(item.req.shape)
    # the reduced shape; the extension's partials keep their trailing axis (moments: 4 values)
    shape = tuple(n for i, n in enumerate(p.values.shape[:nd]) if i not in axes)
    values = p.values.reshape(shape + p.values.shape[nd:])
    if item.operation == "sum" and not (item.wide_sum or wide) and values.dtype != item.req.dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(item.req.dtype)  # the spec's result dtype (wraps like NumPy)
    return Result(np.asarray(values, order="C"), p.counts.reshape(shape), False)


def weigh(item: Item, raw: Any) -> Item:
    """``item`` with the N-D weights of its ``array`` reference, read into ``raw``, decoded,
    selected and checked (:func:`activestorage.wire_extension.resolve_array`)."""
    w = item.weights_item
    if w is None:
        return item
    w = w.sized(len(raw))
    try:
        block = reduce_chunk(raw, w.req, "select").values
    except (DecodeError, UnsupportedError) as exc:
        raise type(exc)(f"weights.array: {w.target.name}: {exc}") from exc
    weights = wire_extension.resolve_array(block, item.req.shape, item.req.selection)
    return replace(item, req=item.req._replace(weights=weights), weights_item=None)


def _compute_v1(raw: bytes, item: Item) -> tuple[memoryview, dict[str, str]]:
    return v1_parts(compute(raw, item), item.req.order)


def _compute_v2(raw: bytes, item: Item) -> list[Part]:
    return cbor_map_parts(v2_map(compute(raw, item), item))


def _decode_key(item: Item) -> tuple[Any, ...] | None:
    """What makes two items' decoded arrays equal (same bytes of the same object, same codecs
    and element layout), or None when decoding is free (no codecs, native order) or the size is
    only known once read."""
    r = item.req
    if item.whole or not (r.compression is not None or r.filters
                          or (r.byte_order != NATIVE_BYTE_ORDER and r.dtype.itemsize > 1)):
        return None
    return (item.target, r.offset, item.read_size, repr(r.compression), repr(r.filters),
            r.dtype.str, r.byte_order, r.shape)


def _compute_items(idx: list[int], raws: list[Any], items: list[Item],
                   slots: list[int] | None,
                   base: tuple[memoryview, int] | None = None) -> list[Result | None]:
    """The results of items ``idx`` (whose bytes have arrived), errors naming the item.

    ``slots``: the fold group of every item of a folding batch (None: no folding); sums are then
    kept in their accumulating dtype. ``base``: the body of the one GET the items were cut from
    and the offset it starts at. When folding, runs of small uncompressed chunks stored back to
    back in it are reduced stacked, each group's chunks folded inside NumPy
    (:mod:`activestorage.coalesce`, as the in-process backends do): the group's partial comes
    back for the first item of the run in it, None for the others. Items that decode the same
    chunk (several selections or reductions of one chunk in a batch) decode it once: the others
    reduce the decoded array, as uncompressed native-order bytes."""
    done: dict[int, Result | None] = {}
    wide = slots is not None
    if base is not None and slots is not None and len(idx) > 1 \
            and items[idx[0]].operation != "select":
        done = _stacked_results(idx, items, slots, *base)
    rest = [i for i in idx if i not in done]
    keys = [_decode_key(items[i]) for i in rest]
    repeated = {k for k in keys if k is not None and keys.count(k) > 1}
    decoded: dict[tuple[Any, ...], np.ndarray] = {}
    size = scratch_bytes(items[i].req for i, k in zip(rest, keys) if k not in repeated)
    scratch = np.empty(size, np.uint8) if size and len(rest) > 1 else None
    for i, k in zip(rest, keys):
        try:
            if k in repeated:
                item = items[i]
                if k not in decoded:
                    try:
                        decoded[k] = decode(raws[i], item.req)  # owned: not in the scratch
                    except (DecodeError, UnsupportedError) as exc:
                        raise type(exc)(f"{item.target.name}: {exc}") from exc
                plain = replace(item, req=item.req._replace(
                    compression=None, filters=(), byte_order=NATIVE_BYTE_ORDER))
                done[i] = compute(decoded[k], plain, wide=wide)
            else:
                done[i] = compute(raws[i], items[i], wide=wide, scratch=scratch)
        except ActiveStorageError as exc:
            raise at_item(exc, i) from exc
    return [done[i] for i in idx]


def _cached_runs(idx: list[int], items: list[Item], max_bytes: int = MAX_RUN_BYTES
                 ) -> tuple[list[list[int]], list[int]]:
    """Cached items of a folding batch split into runs of uncompressed ranges of one object
    stored back to back (at most ``max_bytes`` each; worth joining into one buffer and reducing
    stacked, :func:`_compute_joined`) and the rest."""
    order = sorted(idx, key=lambda i: (items[i].target.url, items[i].req.offset))
    out: list[list[int]] = []
    rest: list[int] = []
    run: list[int] = []
    end = total = 0
    for i in order:
        it = items[i]
        r = it.req
        size = it.read_size
        if size is None or r.compression is not None or r.filters or size >= max_bytes:
            rest.append(i)
            continue
        if run and (r.offset != end or it.target != items[run[0]].target
                    or total + size > max_bytes):
            (out.append(run) if len(run) > 1 else rest.extend(run))
            run, total = [], 0
        run.append(i)
        end, total = r.offset + size, total + size
    (out.append(run) if len(run) > 1 else rest.extend(run))
    return out, rest


def _compute_joined(idx: list[int], raws: list[Any], items: list[Item],
                    slots: list[int]) -> list[Result | None]:
    """:func:`_compute_items` of a run of cached ranges stored back to back (from
    :func:`_cached_runs`): their bytes copied into one buffer so that they are reduced stacked,
    as the one GET of a first read is (a 64 KiB chunk's copy costs a fraction of its own trip
    through the kernel)."""
    joined = memoryview(b"".join(raws[i] for i in idx))
    return _compute_items(idx, raws, items, slots, (joined, items[idx[0]].req.offset))


def _stacked_results(idx: list[int], items: list[Item], slots: list[int], body: memoryview,
                     start: int) -> dict[int, Result | None]:
    """Results of the items of ``idx`` that :func:`activestorage.coalesce.runs` finds in runs of
    two or more (``body`` holds the bytes from offset ``start`` of their one object), folded by
    ``slots``; a run the stacked path cannot reduce is left to the per-chunk path (which names
    the failing item)."""
    order = sorted(idx, key=lambda i: items[i].req.offset)
    shared: dict[Any, Any] = {}
    reqs = [_stackable(items[i], shared) for i in order]
    out: dict[int, Result | None] = {}
    for a, b in runs(reqs):
        if b - a < 2:
            continue
        run = reqs[a:b]
        end = run[-1].offset + (run[-1].size or 0)
        try:
            partials = reduce_run(body[run[0].offset - start:end - start], run,
                                  items[order[a]].operation, [slots[i] for i in order[a:b]])
        except ActiveStorageError:
            continue
        for i, p in zip(order[a:b], partials):
            out[i] = None if p is None else _result(p, items[i], True)
    return out


def _stackable(item: Item, shared: dict[Any, Any]) -> ChunkRequest:
    """The item's request as :func:`~activestorage.coalesce.runs` reads it: its size set when it
    is exactly the array's bytes, and equal missing specs one object (chunks are stacked only
    when theirs is the same object, as the requests of one variable are in-process)."""
    req = item.req
    if req.size is None and item.read_size == req.nbytes:
        req = with_fields(req, size=item.read_size)
    if req.missing is not None:
        try:
            req = with_fields(req, missing=shared.setdefault(req.missing, req.missing))
        except TypeError:  # an unhashable spec: this chunk is reduced on its own
            pass
    return req


def _encode_groups(groups: list[list[int]], results: list[Any], items: list[Item],
                   folding: bool) -> list[tuple[int, list[Part]]]:
    """One response map per group, for its first item; when ``folding``, the group's results
    folded in request order exactly as the client's accumulator would (float sums in float64,
    integer sums in (u)int64, min/max over the elements that have a value)."""
    out = []
    for group in groups:
        first = group[0]
        if not folding:
            out.append((first, cbor_map_parts(v2_map(results[first], items[first]))))
            continue
        acc: Accumulator | None = None
        for i in group:
            res = results[i]
            if res is None:  # folded into another item's result where it was computed
                continue
            if acc is None:
                # the extension's values have a trailing axis of fields the accumulator adds
                acc = Accumulator(items[i].operation, res.counts.shape, items[i].req.dtype)
            elif res.values.shape != acc.values.shape:
                raise at_item(RequestValidationError(
                    "fold", f"requests {first} and {i} share a fold id but their results have "
                            f"shapes {list(acc.values.shape)} and {list(res.values.shape)}"), i)
            acc.add((), Partial(res.values, res.counts))
        assert acc is not None
        out.append((first, cbor_map_parts(v2_map(Result(acc.values, acc.counts, False),
                                                  items[first]))))
    return out


# --------------------------------------------------------------------------- the service

class Service:
    """Per-app state (settings, upstream pool, memory budget, kernel threads, metrics) and the
    reductions themselves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.budget = ByteBudget(settings.max_bytes_in_flight, settings.memory_wait_seconds)
        self.upstream = Upstream(max_concurrency=settings.max_upstream_concurrency,
                                 connect_timeout=settings.upstream_connect_timeout,
                                 read_timeout=settings.upstream_read_timeout,
                                 region=settings.s3_region,
                                 allow=settings.allow_upstream,
                                 addressing_style=settings.s3_addressing_style,
                                 ca_bundle=settings.upstream_ca_bundle)
        self.pool = ThreadPoolExecutor(settings.kernel_threads, thread_name_prefix="as-kernel")
        #: validations of bodies seen before (a batch's alike items are validated once)
        self.memo = Memo(settings)
        self.cache = ChunkCache(max_bytes=settings.chunk_cache_size, ttl=settings.chunk_cache_ttl,
                                request_bytes=settings.chunk_cache_request_bytes,
                                revalidate=settings.chunk_cache_revalidate,
                                disk_dir=settings.chunk_cache_dir,
                                disk_bytes=settings.chunk_cache_disk_size,
                                registry=self.metrics.registry)

    def cache_session(self) -> CacheSession | None:
        """One request's view of the chunk cache (None when the cache is off)."""
        return self.cache.session(self.upstream.etag) if self.cache.enabled else None

    async def fetch(self, item: Item, cache: CacheSession | None = None,
                    lookup: bool = True) -> bytes | memoryview:
        """The item's raw bytes: from the chunk ``cache`` when it may answer (``lookup``), else
        upstream (a read-only view of the buffer they were received into, which the cache then
        keeps as it is)."""
        cache = None if item.no_cache else cache
        if cache is not None and lookup:
            hit = await cache.get(item.target, item.req.offset, item.read_size)
            if hit is not None:
                return hit
        meta: dict[str, Any] = {}
        data = await self.upstream.read(item.target, item.req.offset, item.read_size,
                                        max_bytes=item.max_raw,
                                        **({"meta": meta} if cache is not None else {}))
        self.metrics.bytes_in.inc(len(data))
        self.metrics.upstream_requests.inc()
        if cache is not None:
            await cache.put(item.target, item.req.offset, item.read_size, data, meta.get("etag"))
        return data

    async def single(self, body: Any, op: str, api: str,
                     auth: tuple[str, str] | None) -> Answer:
        """One v1 or v2 reduction of a decoded ``body`` (``op`` already checked)."""
        item = prepare(body, op, api, auth, self.settings, self.memo)
        loop = asyncio.get_running_loop()
        held = await self.budget.acquire(item.cost)
        try:
            self.metrics.in_flight.set(self.budget.used)
            if item.weights_item is not None:
                item = (await self._weigh([item]))[0]
            raw = await self.fetch(item, self.cache_session())
            work = _compute_v1 if api == "v1" else _compute_v2
            if len(raw) <= INLINE_BYTES and (item.whole or item.req.nbytes <= INLINE_BYTES):
                done: Any = work(raw, item)  # cheaper here than the hand-over to a thread
            else:
                done = await loop.run_in_executor(self.pool, work, raw, item)
            if api == "v1":
                body_v1, headers = done
                parts: list[Part] = [body_v1]
                media: str = "application/octet-stream"
            else:
                parts, headers, media = done, None, "application/cbor"
            del raw
        except BaseException:
            self.release(held)
            raise
        return Answer(parts, media, headers, held)

    def release(self, nbytes: int) -> None:
        """Give a request's reservation back (once its answer is written or abandoned)."""
        self.budget.release(nbytes)
        self.metrics.in_flight.set(self.budget.used)

    async def batch(self, body: Any, op: str, auth: tuple[str, str] | None) -> Answer:
        """A batch of v2 reductions (``op`` already checked); results sharing a ``fold`` id are
        combined here, in request order."""
        items, groups, folding = prepare_batch(body, op, auth, self.settings, self.memo)
        cache = self.cache_session()
        hits, todo, twins = await self._reuse(items, cache)
        jobs = self._plan(items, todo)
        # cached items are reduced by all the kernel threads: when folding, runs of ranges
        # stored back to back stacked (as a first read's GETs are), the rest in slices
        hit_idx = sorted(hits)
        joined, hit_idx = (_cached_runs(hit_idx, items) if folding and len(hit_idx) > 1
                           else ([], hit_idx))
        # what this batch holds at once: every fetched range (gaps included) + decoded arrays
        # + the copies of the cached runs being reduced (one per kernel thread at a time)
        total = sum(size if size is not None else items[run[0]].max_raw
                    for run, _t, _o, size in jobs) + sum(
            it.beyond_raw for it in items) + min(
            sum(items[i].read_size or 0 for run in joined for i in run),
            self.settings.kernel_threads * MAX_RUN_BYTES)
        loop = asyncio.get_running_loop()
        computed: list[Any] = [None] * len(items)
        slots: list[int] | None = None
        if folding:
            slots = [0] * len(items)
            for g, members in enumerate(groups):
                for i in members:
                    slots[i] = g

        async def ready(idx: list[int], raws: list[Any],
                        base: tuple[memoryview, int] | None = None, join: bool = False) -> None:
            """Reduce items as soon as their GET is in: kernels overlap the other GETs.
            ``join``: cached ranges stored back to back (:func:`_compute_joined`)."""
            for i in list(idx):
                for j in twins.get(i, ()):
                    raws[j] = raws[i]
                    idx.append(j)
            work: tuple[Any, ...] = ((_compute_joined, idx, raws, items, slots) if join else
                                     (_compute_items, idx, raws, items, slots, base))
            for i, res in zip(idx, await loop.run_in_executor(self.pool, *work)):
                computed[i] = res
                raws[i] = b""  # the bytes are no longer needed

        held = await self.budget.acquire(total)
        try:
            self.metrics.in_flight.set(self.budget.used)
            if any(it.weights_item is not None for it in items):
                items[:] = await self._weigh(items)
            hraws: list[Any] = [hits.get(i, b"") for i in range(len(items))]
            hits.clear()
            k = max(1, min(self.settings.kernel_threads, len(hit_idx)))
            cut = [len(hit_idx) * j // k for j in range(k + 1)]
            done = await asyncio.gather(
                *(ready(run, hraws, join=True) for run in joined),
                *(ready(hit_idx[cut[j]:cut[j + 1]], hraws) for j in range(k) if hit_idx),
                self._fetch(items, jobs, ready, cache), return_exceptions=True)
            errors = [e for e in done if isinstance(e, BaseException)]
            if errors:
                raise min(errors, key=item_index)
            n = max(1, min(self.settings.kernel_threads, len(groups)))
            parts = await asyncio.gather(
                *(loop.run_in_executor(self.pool, _encode_groups, groups[k::n], computed, items,
                                       folding) for k in range(n)), return_exceptions=True)
            errors = [p for p in parts if isinstance(p, BaseException)]
            if errors:
                raise min(errors, key=item_index)
            results: list[list[Part]] = [[CBOR_NULL]] * len(items)  # folded-away: null
            for part in parts:
                for i, m in part:  # type: ignore[union-attr]
                    results[i] = m
            # {"results": [...]} written piece by piece from the result arrays
            out: list[Part] = [cbor_head(5, 1), cbor2.dumps("results"), cbor_head(4, len(items))]
            for r in results:
                out.extend(r)
            del results, parts, computed[:]
        except BaseException:
            self.release(held)
            raise
        return Answer(out, "application/cbor", None, held)

    async def _weigh(self, items: list[Item]) -> list[Item]:
        """The items with their ``array`` weights references read and resolved (concurrently;
        an error names its batch item when there are several)."""
        loop = asyncio.get_running_loop()

        async def one(i: int, it: Item) -> Item:
            if it.weights_item is None:
                return it
            try:
                raw = await self.fetch(it.weights_item)
                return await loop.run_in_executor(self.pool, weigh, it, raw)
            except ActiveStorageError as exc:
                if len(items) == 1:
                    raise
                raise at_item(exc, i) from exc

        done = await asyncio.gather(*(one(i, it) for i, it in enumerate(items)),
                                    return_exceptions=True)
        errors = [d for d in done if isinstance(d, BaseException)]
        if errors:
            raise min(errors, key=item_index)
        return done  # type: ignore[return-value]

    @staticmethod
    async def _reuse(items: list[Item], cache: CacheSession | None
                     ) -> tuple[dict[int, bytes], list[int], dict[int, list[int]]]:
        """What a batch need not read: (bytes of the items the chunk ``cache`` answers, the
        items left to read, {item: its twins}); a twin reads the same range of the same object
        as an earlier item, so it is read once and handed the same bytes."""
        hits: dict[int, bytes] = {}
        if cache is not None:
            use = [i for i, it in enumerate(items) if not it.no_cache]
            for i, hit in zip(use, await cache.get_many(
                    [(items[i].target, items[i].req.offset, items[i].read_size) for i in use])):
                if hit is not None:
                    hits[i] = hit
        first: dict[tuple[Any, ...], int] = {}
        twins: dict[int, list[int]] = {}
        todo = []
        for i, it in enumerate(items):
            if i in hits:
                continue
            j = first.setdefault((it.target, it.req.offset, it.read_size, it.no_cache), i)
            if j == i:
                todo.append(i)
            else:
                twins.setdefault(j, []).append(i)
        return hits, todo, twins

    def _plan(self, items: list[Item], which: list[int] | None = None
              ) -> list[tuple[list[int], Target, int, int | None]]:
        """GETs to make for items ``which`` (all): (item indices, object, start, size); ranges of
        one object that are adjacent or within ``coalesce_gap_bytes`` share one GET of at most
        ``coalesce_max_bytes``."""
        s = self.settings
        jobs: list[tuple[list[int], Target, int, int | None]] = []
        small: list[int] = []
        for i in range(len(items)) if which is None else which:
            it = items[i]
            if it.read_size is None or it.read_size >= s.coalesce_below_bytes:
                # large ranges gain nothing from sharing a GET, and alone each is reduced as
                # soon as it arrives instead of waiting for its neighbours
                jobs.append(([i], it.target, it.req.offset, it.read_size))
            else:
                small.append(i)
        if small:
            starts = [items[i].req.offset for i in small]
            ends = [o + (items[i].read_size or 0) for o, i in zip(starts, small)]
            for target, run, start, end in merge_spans(
                    [items[i].target for i in small], starts, ends,
                    max_gap=s.coalesce_gap_bytes, max_range=s.coalesce_max_bytes):
                jobs.append(([small[j] for j in run], target, start, end - start))  # type: ignore[misc]
        return jobs

    async def _fetch(self, items: list[Item], jobs: list[tuple[list[int], Target, int, int | None]],
                     ready: Callable[..., Awaitable[None]],
                     cache: CacheSession | None = None) -> None:
        """Run the planned GETs concurrently (bounded by the upstream semaphore), handing each
        one's items to ``ready`` (with the bytes per item, and a shared GET's body and start
        offset) as soon as it is in; what was read is offered to the chunk ``cache`` (looked up
        before planning)."""
        raws: list[Any] = [b""] * len(items)

        async def each(run: list[int]) -> None:
            for i in sorted(run):
                try:
                    raws[i] = await self.fetch(items[i], cache, lookup=False)
                except ActiveStorageError as exc:
                    raise at_item(exc, i) from exc
                await ready([i], raws)

        async def one(run: list[int], target: Target, start: int, size: int | None) -> None:
            if size is None or len(run) == 1:
                await each(run)
                return
            meta: dict[str, Any] = {}
            try:
                data = await self.upstream.read(target, start, size, max_bytes=size,
                                                **({"meta": meta} if cache is not None else {}))
            except StorageError:
                # Find the culprit (and spare its neighbours): retry the items one by one.
                await each(run)
                return
            self.metrics.bytes_in.inc(len(data))
            self.metrics.upstream_requests.inc()
            view = memoryview(data)
            for i in run:
                o = items[i].req.offset - start
                raws[i] = view[o:o + items[i].read_size]  # type: ignore[operator]
            if cache is not None:
                await cache.put_many(target, [(items[i].req.offset, items[i].read_size, raws[i])
                                              for i in run if not items[i].no_cache],
                                     meta.get("etag"))
            await ready(run, raws, (view, start))

        results = await asyncio.gather(*(one(*j) for j in jobs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise min(errors, key=item_index)

    def capabilities(self) -> dict[str, Any]:
        caps = {"name": "activestorage", "version": __version__, "api": ["v1", "v2"],
                "batch": True, "max_batch": self.settings.max_batch, "fold": True,
                "operations": list(served_operations(self.settings, "v2")),
                "options": list(OPTIONS),
                # results of order-F requests come in Fortran order, as the spec says (older
                # versions of this server sent C order: clients check this before reading F)
                "result_order": "request"}
        ext = extensions(self.settings)
        if ext:  # what the moments extension serves (clients ask before sending moments)
            caps["extensions"] = {"moments": ext}
        return caps

    async def aclose(self) -> None:
        await self.upstream.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
