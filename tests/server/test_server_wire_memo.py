"""wire.Memo (validate alike bodies once) against the full validation: over generated valid and
invalid bodies, a body validated through a memo that has seen its look-alikes gives exactly what
the full path gives (the same item, or the same error: type, field, message, status); and
body_key tells apart values that ``==`` confuses."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from activestorage.errors import ActiveStorageError
from activestorage.server.body_key import Unkeyable, body_key, value_key
from activestorage.server.settings import Settings
from activestorage.server.wire import Memo, _prepare, prepare, prepare_batch

SETTINGS = Settings(allow_upstream=["127.0.0.1", "example.org"], max_batch=64)
AUTH = ("key", "secret")

#: odd values of every kind, tried in every field: wrong types, edge numbers, look-alikes of
#: valid values (1.0 for 1, True for 1, -0.0 for 0, big and negative integers, NaN)
ODD_VALUES = [None, True, False, 0, 1, -1, 2, 3, 1.0, 0.0, -0.0, 1.5, math.nan,
                       math.inf, 2**63, 2**63 - 1, 2**64, "", "x", "float32", "little", "C",
                       "F", "big", "zlib", "s3", "http", [], [1], [1.0], [None], {}, {"id": 1},
                       b"ab", [[0, 1, 1]], [[0, 2, 0]]]
ODD = st.sampled_from(ODD_VALUES)
GOOD_URLS = ["http://127.0.0.1:8080/a.nc", "http://127.0.0.1:8080/b c[1].nc",
             "http://127.0.0.1:9/a%20b.nc", "http://example.org/x.nc"]
BAD_URLS = ["http://10.0.0.1/x.nc", "http://127.0.0.1:8080/a\x01.nc", "ftp://127.0.0.1/a",
            "127.0.0.1/a", ""]
URLS = st.one_of(st.sampled_from(GOOD_URLS), st.sampled_from(GOOD_URLS),
                 st.sampled_from(GOOD_URLS), st.sampled_from(BAD_URLS))
DTYPES = st.sampled_from(["float32", "float64", "int16", "uint8", "int64"])


@st.composite
def described(draw: Any) -> dict[str, Any]:
    """A body describing a chunk: mostly valid, sometimes with odd values in any field."""
    dtype = draw(DTYPES)
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    body: dict[str, Any] = {"interface_type": draw(st.sampled_from(["http", "https", "s3"])),
                            "url": draw(URLS), "dtype": dtype, "shape": shape}
    if draw(st.booleans()):
        body["byte_order"] = draw(st.sampled_from(["little", "big"]))
    if draw(st.booleans()):
        body["order"] = draw(st.sampled_from(["C", "F"]))
    if draw(st.booleans()):
        body["compression"] = {"id": draw(st.sampled_from(["zlib", "gzip", "blosc"]))}
    if draw(st.booleans()):
        body["selection"] = [[draw(st.integers(-3, 3)), draw(st.integers(-5, 5)),
                              draw(st.sampled_from([1, 2, -1]))] for _ in shape]
    if draw(st.booleans()):
        body["axis"] = draw(st.sampled_from([0, [0], list(range(len(shape))), [-1]]))
    if draw(st.booleans()):
        key = draw(st.sampled_from(["missing_value", "valid_min", "valid_max"]))
        body["missing"] = {key: draw(st.sampled_from([0, 1, -1, 1.5, 1e20, -0.0, math.nan]))}
    if draw(st.booleans()):
        body["filters"] = [draw(st.sampled_from([{"id": "shuffle"}, {"id": "fletcher32"},
                                                 {"id": "shuffle", "element_size": 2}]))]
    for flag in ("option_wide_sum", "option_disable_chunk_cache", "option_count_as_bytes"):
        if draw(st.integers(0, 4)) == 0:
            body[flag] = draw(st.sampled_from([True, False, 1, None]))
    if draw(st.integers(0, 4)) == 0:
        body["etag"] = draw(st.sampled_from(['"abc"', '"abc"', "x\x02", 5]))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # odd values anywhere
        body[draw(st.sampled_from(sorted(body) + ["offset", "size", "weights", "extra"]))] = \
            draw(ODD)
    return body


@st.composite
def placed(draw: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` at another place: the per-item fields redrawn (usually valid, sometimes odd)."""
    out = dict(body)
    import numpy as np

    try:
        itemsize = np.dtype(body.get("dtype")).itemsize if isinstance(body.get("dtype"), str) \
            else 4
        n = math.prod(body["shape"]) if isinstance(body.get("shape"), list) and all(
            type(x) is int and 0 < x < 100 for x in body["shape"]) else 1
    except TypeError:
        itemsize, n = 4, 1
    checksums = 4 * sum(1 for f in body.get("filters") or [] if isinstance(f, dict)
                        and f.get("id") == "fletcher32") if isinstance(body.get("filters"),
                                                                       list) else 0
    choice = draw(st.integers(0, 9))
    if choice < 6:
        out["offset"] = draw(st.integers(0, 2**40))
    elif choice < 9:
        out["offset"] = draw(ODD)
    else:
        out.pop("offset", None)
    choice = draw(st.integers(0, 9))
    if choice < 5:
        out["size"] = n * itemsize + checksums
    elif choice < 7:
        out["size"] = draw(st.integers(1, 5000))
    elif choice < 9:
        out["size"] = draw(ODD)
    else:
        out.pop("size", None)
    if draw(st.integers(0, 3)) == 0:
        out["url"] = draw(st.one_of(URLS, ODD))
    return out


def fields(item: Any) -> tuple[Any, ...]:
    """Everything an item carries (its target's credentials included)."""
    t = item.target
    return (repr(item.req), item.operation, item.read_size, item.max_raw, item.whole,
            item.wide_sum, item.shape_as_bytes, item.count_as_bytes, item.no_cache,
            item.weights_item is not None, (t.kind, t.url, t.auth, t.etag, t.version_id))


def outcome(fn: Any) -> Any:
    """What validating gives: the item's (or a batch's items') fields, or the error's type,
    field, message and status (the pieces every answer is made of)."""
    try:
        got = fn()
    except ActiveStorageError as exc:
        return ("error", type(exc).__name__, getattr(exc, "field", None), str(exc),
                getattr(exc, "status", None))
    if isinstance(got, tuple):  # prepare_batch: (items, groups, folding)
        return ("batch", [fields(it) for it in got[0]], got[1], got[2])
    return ("item", fields(got))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), api=st.sampled_from(["v2", "v2", "v1"]))
def test_memo_agrees_with_full_validation(data: Any, api: str) -> None:
    base = data.draw(described())
    if api == "v1":
        base = {k: v for k, v in base.items() if k not in ("interface_type", "url")}
        base.update(source="http://127.0.0.1:9000", bucket="b", object="k")
    op = data.draw(st.sampled_from(["sum", "min", "select", "moments"]))
    memo = Memo(SETTINGS)
    seen = [data.draw(placed(base)) for _ in range(data.draw(st.integers(1, 3)))]
    for body in seen:  # the memo learns from these (valid or not)
        assert outcome(lambda: prepare(body, op, api, AUTH, SETTINGS, memo)) == \
            outcome(lambda: _prepare(body, op, api, AUTH, SETTINGS))
    later = data.draw(placed(base))
    assert outcome(lambda: prepare(later, op, api, AUTH, SETTINGS, memo, {})) == \
        outcome(lambda: _prepare(later, op, api, AUTH, SETTINGS))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_batch_through_memo_agrees(data: Any) -> None:
    """A whole batch: the same items, or the same first error naming the same item."""
    base = data.draw(described())
    bodies = [data.draw(placed(base)) for _ in range(data.draw(st.integers(1, 6)))]
    memo = Memo(SETTINGS)
    for _ in range(2):  # the second time every description is known to the memo
        assert outcome(lambda: prepare_batch({"requests": bodies}, "sum", AUTH, SETTINGS,
                                             memo)) == \
            outcome(lambda: prepare_batch({"requests": bodies}, "sum", AUTH, SETTINGS))


BASES = [{"interface_type": "http", "url": "http://127.0.0.1:8080/a.nc", "dtype": "float32",
          "shape": [2, 2], "size": 16, "offset": 8},
         {"interface_type": "s3", "url": "http://127.0.0.1:8080/a.nc", "dtype": "int16",
          "shape": [4], "size": 5, "offset": 0, "compression": {"id": "zlib"}},
         {"interface_type": "https", "url": "http://127.0.0.1:8080/a.nc", "dtype": "uint8",
          "shape": [3], "filters": [{"id": "fletcher32"}]}]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("field", ["offset", "size", "url"])
@pytest.mark.parametrize("value", ODD_VALUES + [-1, 2**63 - 1, 7, 16, 20, "http://10.0.0.1/x",
                                                "http://example.org/y", "drop"])
def test_per_item_fields_after_a_hit(base: dict[str, Any], field: str, value: Any) -> None:
    """Each per-item field, valid or not, in a body whose description the memo knows."""
    memo = Memo(SETTINGS)
    prepare(base, "sum", "v2", AUTH, SETTINGS, memo)
    assert memo._items
    body = {k: v for k, v in base.items() if k != field}
    if value != "drop":
        body[field] = value
    assert outcome(lambda: prepare(body, "sum", "v2", AUTH, SETTINGS, memo, {})) == \
        outcome(lambda: _prepare(body, "sum", "v2", AUTH, SETTINGS))


def test_memo_hit_shares_targets_and_keeps_no_credentials() -> None:
    memo = Memo(SETTINGS)
    body = {"interface_type": "http", "url": "http://127.0.0.1:8080/a.nc", "dtype": "float32",
            "shape": [4], "size": 16, "offset": 0}
    targets: dict[Any, Any] = {}
    first = prepare(body, "sum", "v2", AUTH, SETTINGS, memo, targets)
    second = prepare({**body, "offset": 16}, "sum", "v2", AUTH, SETTINGS, memo, targets)
    assert second.req.offset == 16 and second.target is first.target
    assert second.target.auth == AUTH
    assert all(t.target.auth is None for t in memo._items.values())
    assert memo._items  # it did learn


def test_memo_is_bounded() -> None:
    memo = Memo(SETTINGS, max_entries=4)
    for n in range(1, 20):
        prepare({"interface_type": "http", "url": f"http://127.0.0.1/{n}", "dtype": "uint8",
                 "shape": [n]}, "sum", "v2", None, SETTINGS, memo)
    assert len(memo._items) <= 4 and len(memo._urls) <= 4


@pytest.mark.parametrize("a, b", [(1, 1.0), (1, True), (0.0, -0.0), ([1], (1,)), ({"a": 1}, ["a", 1]),
                                  ("1", 1), (b"a", "a"), (math.nan, -math.nan)])
def test_value_key_tells_apart_what_equality_confuses(a: Any, b: Any) -> None:
    try:
        kb = value_key(b)
    except Unkeyable:
        return  # a type keys do not cover: never matched at all
    assert value_key(a) != kb


def test_body_key_skips_per_item_fields_and_refuses_unknown_types() -> None:
    a = {"dtype": "float32", "offset": 1, "size": 4, "url": "u1"}
    b = {"dtype": "float32", "offset": 2, "size": 8, "url": "u2"}
    assert body_key(a, {"offset", "size", "url"}) == body_key(b, {"offset", "size", "url"})
    assert body_key(a, ()) != body_key(b, ())
    with pytest.raises(Unkeyable):
        body_key({"shape": {1, 2}}, ())


@pytest.mark.parametrize("extra", [{"note": "x" * 300}, {f"f{i}": i for i in range(70)},
                                   {"junk": list(range(300))}, {"junk": 2**70},
                                   {"junk": [[0] * 100] * 3}, {"junk": b"\0" * 300}])
def test_large_bodies_are_validated_but_not_remembered(extra: dict[str, Any]) -> None:
    """Unknown fields are allowed (the spec ignores them), so a client could make every
    remembered key large: beyond the limits a body is validated the full way and not kept."""
    body = {"interface_type": "http", "url": "http://127.0.0.1:8080/a.nc", "dtype": "float32",
            "shape": [4], "size": 16, **extra}
    memo = Memo(SETTINGS)
    for offset in (0, 16):
        placed_body = {**body, "offset": offset}
        assert outcome(lambda: prepare(placed_body, "sum", "v2", AUTH, SETTINGS, memo)) == \
            outcome(lambda: _prepare(placed_body, "sum", "v2", AUTH, SETTINGS))
    assert not memo._items
    with pytest.raises(Unkeyable):
        body_key(body, PER_ITEM)


PER_ITEM = {"offset", "size", "url"}


def test_long_urls_are_checked_each_time_not_kept() -> None:
    memo = Memo(SETTINGS)
    url = "http://127.0.0.1:8080/" + "a" * 5000
    body = {"interface_type": "http", "url": url, "dtype": "uint8", "shape": [2], "size": 2}
    for offset in (0, 2):
        placed_body = {**body, "offset": offset}
        assert outcome(lambda: prepare(placed_body, "sum", "v2", AUTH, SETTINGS, memo)) == \
            outcome(lambda: _prepare(placed_body, "sum", "v2", AUTH, SETTINGS))
    assert memo._items and not memo._urls
