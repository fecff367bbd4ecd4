"""The memory-in-flight budget: waits, 503 after the deadline, 413 for what never fits, FIFO."""

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from activestorage.server.limits import ByteBudget, LimitError


def run(coro):
    return asyncio.run(coro)


def test_reserve_and_release():
    async def main():
        b = ByteBudget(100, 1.0)
        async with b.reserve(60):
            assert b.used == 60
            async with b.reserve(40):
                assert b.used == 100
        assert b.used == 0
    run(main())


def test_too_large_is_413_at_once():
    async def main():
        b = ByteBudget(100, 10.0)
        with pytest.raises(LimitError) as e:
            async with b.reserve(101):
                pass
        assert e.value.status == 413 and "max-bytes-in-flight" in str(e.value)
    run(main())


def test_waits_then_503():
    async def main():
        b = ByteBudget(100, 0.05)
        async with b.reserve(80):
            with pytest.raises(LimitError) as e:
                async with b.reserve(30):
                    pass
            assert e.value.status == 503
        assert b.used == 0 and not b._waiters
    run(main())


def test_waiter_gets_in_when_memory_frees_in_fifo_order():
    async def main():
        b = ByteBudget(100, 2.0)
        order = []

        async def job(name, n, hold):
            async with b.reserve(n):
                order.append(name)
                assert b.used <= 100
                await asyncio.sleep(hold)

        await asyncio.gather(job("a", 90, 0.05), job("b", 50, 0.01), job("c", 10, 0.01))
        assert order == ["a", "b", "c"]  # c fits beside a, but must not overtake b
        assert b.used == 0
    run(main())


def test_cancelled_waiter_leaves_no_trace():
    async def main():
        b = ByteBudget(100, 5.0)
        async with b.reserve(100):
            t = asyncio.ensure_future(b.reserve(50).__aenter__())
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        assert b.used == 0 and not b._waiters
    run(main())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.floats(0, 0.003)), min_size=1, max_size=25))
def test_never_over_the_limit(jobs):
    async def main():
        b = ByteBudget(100, 0.02)
        peak = 0

        async def job(n, hold):
            nonlocal peak
            try:
                async with b.reserve(n):
                    peak = max(peak, b.used)
                    await asyncio.sleep(hold)
            except LimitError as e:
                assert e.status == (413 if n > 100 else 503)

        await asyncio.gather(*(job(n, h) for n, h in jobs))
        assert peak <= 100 and b.used == 0 and not b._waiters
    run(main())
