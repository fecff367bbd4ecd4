"""Type-exact hashable keys of decoded request bodies, for remembering what validated.

Two bodies with equal keys hold the same values of the same types in the same order, so any
validation of the fields a key covers gives the same outcome for both: :class:`.wire.Memo` uses
that to validate a batch's items (which usually differ only in ``offset``/``size``) once per
distinct description instead of once per item. Plain ``==`` is not enough: ``1 == 1.0 == True``
and ``0.0 == -0.0``, which validation tells apart.
"""

from __future__ import annotations

import struct
from typing import Any, Collection, Hashable

#: markers inside keys: objects equal only to themselves, so a list never matches a dict, nor a
#: float the int of the same value
_DICT, _LIST, _FLOAT, _BOOL, _BYTES = (object() for _ in range(5))
_pack_double = struct.Struct("<d").pack

#: a key holds at most this many values in lists and maps, strings and byte strings of at most
#: MAX_TEXT, integers of at most 64 bits, and a body at most MAX_FIELDS fields: anything larger
#: is :class:`Unkeyable`, so that a remembered key stays small whatever a client sends (unknown
#: fields are allowed by the API, and a body may be large)
MAX_VALUES = 256
MAX_TEXT = 256
MAX_FIELDS = 64
_BIG = 1 << 64


class Unkeyable(Exception):
    """The body holds a value keys do not cover, by type or size (validated the full way)."""


def value_key(v: Any, room: list[int] | None = None) -> Hashable:
    """The key of one decoded JSON/CBOR value; :class:`Unkeyable` for any other type (a CBOR
    tag's object, a dict subclass, ...) or beyond the size limits (``room``: the values the
    whole key may still take)."""
    if room is None:
        room = [MAX_VALUES]
    t = type(v)
    if t is str or t is bytes:
        if len(v) > MAX_TEXT:
            raise Unkeyable("a long string")
        return v if t is str else (_BYTES, v)
    if t is int:
        if not -_BIG < v < _BIG:
            raise Unkeyable("a large integer")
        return v
    if v is None:
        return v
    if t is list or t is dict:
        room[0] -= len(v)
        if room[0] < 0:
            raise Unkeyable("too many values")
        out: list[Hashable] = [_LIST if t is list else _DICT]
        # strings and integers inline: no call per element of a shape
        for x in (v if t is list else _flat_items(v)):
            tx = type(x)
            out.append(x if (tx is str and len(x) <= MAX_TEXT) or (tx is int and -_BIG < x < _BIG)
                       or x is None else value_key(x, room))
        return tuple(out)
    if t is float:  # by its bits: -0.0 and 0.0, or two NaNs, are different floats here
        return (_FLOAT, _pack_double(v))
    if t is bool:
        return (_BOOL, v)
    raise Unkeyable(t.__name__)


def _flat_items(d: dict[Any, Any]) -> Any:
    for k, x in d.items():
        yield k
        yield x


def body_key(body: dict[str, Any], skip: Collection[str], *extra: Hashable) -> tuple[Hashable, ...]:
    """The key of a request body's fields other than ``skip`` (in the body's order), after
    ``extra``; :class:`Unkeyable` when a value has a type keys do not cover or the body is
    beyond the size limits."""
    if len(body) > MAX_FIELDS:
        raise Unkeyable("too many fields")
    room = [MAX_VALUES]
    out: list[Hashable] = list(extra)
    append = out.append
    for k, v in body.items():
        if k in skip:
            continue
        append(k if type(k) is str and len(k) <= MAX_TEXT else value_key(k, room))
        t = type(v)  # strings and integers (most fields) are their own keys
        append(v if (t is str and len(v) <= MAX_TEXT) or (t is int and -_BIG < v < _BIG)
               or v is None else value_key(v, room))
    return tuple(out)
