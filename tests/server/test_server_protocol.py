"""protocol.CorkedTransport: a response's head goes out with its body in one write, and the bytes
on the wire are always the same and in the same order, whatever follows the head."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings, strategies as st

from activestorage.server.protocol import CorkedTransport


class Wire:
    """A transport that records each write (unit-test fake: no sockets)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_head_and_small_body_are_one_write() -> None:
    async def main() -> Wire:
        wire = Wire()
        t = CorkedTransport(wire, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        assert wire.writes == []  # held
        t.write(b"abcd")
        await asyncio.sleep(0)
        return wire

    wire = asyncio.run(main())
    assert wire.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd"]


def test_a_held_head_goes_out_at_the_next_loop_turn() -> None:
    async def main() -> tuple[Wire, list[bytes]]:
        wire = Wire()
        t = CorkedTransport(wire, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        first = list(wire.writes)
        t.write(b"head")
        t.write(b"body")
        return wire, first

    wire, first = asyncio.run(main())
    assert first == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert wire.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"head", b"body"]


def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    async def main() -> tuple[Wire, Wire]:
        loop = asyncio.get_running_loop()
        a, b = Wire(), Wire()
        ta, tb = CorkedTransport(a, loop), CorkedTransport(b, loop)
        ta.write(b"head")
        ta.close()
        tb.write(b"head")
        tb.abort()
        await asyncio.sleep(0)
        assert ta.is_closing() and ta.get_extra_info("peername") == "info:peername"
        return a, b

    a, b = asyncio.run(main())
    assert a.writes == [b"head"] and a.closed
    assert b.writes == [] and b.aborted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3 * CorkedTransport.JOIN_BYTES // 2)
                | st.just(b"x" * (CorkedTransport.JOIN_BYTES + 1)), min_size=1, max_size=5),
       st.integers(0, 5))
def test_the_bytes_on_the_wire_are_the_same(pieces: list[bytes], turn_after: int) -> None:
    """Any sequence of writes (a loop turn after some of them): the same bytes in order; a
    large body is not copied into the head's write."""
    async def main() -> Wire:
        wire = Wire()
        t = CorkedTransport(wire, asyncio.get_running_loop())
        for i, p in enumerate(pieces):
            t.write(p)
            if i == turn_after:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        return wire

    wire = asyncio.run(main())
    assert b"".join(wire.writes) == b"".join(pieces)
    assert all(len(w) <= len(pieces[0]) + CorkedTransport.JOIN_BYTES
               or w in pieces for w in wire.writes)
