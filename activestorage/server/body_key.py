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


class Unkeyable(Exception):
    """The body holds a value of a type keys do not cover (validated the full way instead)."""


def value_key(v: Any) -> Hashable:
    """The key of one decoded JSON/CBOR value; :class:`Unkeyable` for any other type (a CBOR
    tag's object, a dict subclass, ...)."""
    t = type(v)
    if t is str or t is int or v is None:
        return v
    if t is list:  # strings and integers inline: no call per element of a shape
        out: list[Hashable] = [_LIST]
        for x in v:
            tx = type(x)
            out.append(x if tx is str or tx is int or x is None else value_key(x))
        return tuple(out)
    if t is dict:
        out = [_DICT]
        for k, x in v.items():
            out.append(k if type(k) is str else value_key(k))
            tx = type(x)
            out.append(x if tx is str or tx is int or x is None else value_key(x))
        return tuple(out)
    if t is float:  # by its bits: -0.0 and 0.0, or two NaNs, are different floats here
        return (_FLOAT, _pack_double(v))
    if t is bool:
        return (_BOOL, v)
    if t is bytes:
        return (_BYTES, v)
    raise Unkeyable(t.__name__)


def body_key(body: dict[str, Any], skip: Collection[str], *extra: Hashable) -> tuple[Hashable, ...]:
    """The key of a request body's fields other than ``skip`` (in the body's order), after
    ``extra``; :class:`Unkeyable` when a value has a type keys do not cover."""
    out: list[Hashable] = list(extra)
    append = out.append
    for k, v in body.items():
        if k in skip:
            continue
        append(k if type(k) is str else value_key(k))
        t = type(v)  # strings and integers (most fields) are their own keys
        append(v if t is str or t is int or v is None else value_key(v))
    return tuple(out)
