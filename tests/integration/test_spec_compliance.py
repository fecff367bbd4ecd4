"""The reduction-server API spec (shared/api/reductionist-api.md) against real processes.

moto's S3 server and nginx hold the data, our server runs as its own process, requests go over
loopback as a Reductionist client sends them (JSON body, Basic auth, unencoded URLs), and every
answer is checked against NumPy. The in-process counterpart is
tests/server/test_server_spec_compliance.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from servers import S3_KEY, S3_SECRET, ServerProcess, s3_client, start_moto_with_auth
from helpers import SELECTABLE, assert_selected, decode_v1, decode_v2, spec_error

BUCKET = "spec"
X = (np.arange(60, dtype="<i4").reshape(6, 10) * 7) % 23 - 5
#: S3 keys as the Reductionist compliance suite names them, and other characters S3 allows.
KEYS = [
    "test--shape-[10, 10]-selection-[[0, 2, 1], [0, 10, 1]]-dtype-int32.bin",
    "a key with spaces.bin",
    "quotes-'single'-\"double\"-and,commas;semi:colon@at+plus=eq.bin",
    "percent-100%-done.bin",
    "unicode-é-☃/nested dir/x.bin",
    "brackets-{curly}-(round)-<angle>-^caret-`tick`-|pipe.bin",
]
AUTH = (S3_KEY, S3_SECRET)


@pytest.fixture(scope="module")
def env(s3, moto_server, active_server) -> dict[str, Any]:
    s3.create_bucket(Bucket=BUCKET)
    for key in KEYS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=X.tobytes())
    s3.put_object(Bucket=BUCKET, Key="x.i4", Body=X.tobytes())
    return {"moto": moto_server.url, "server": active_server.url}


def post(env: dict[str, Any], path: str, body: Any, auth: Any = AUTH) -> requests.Response:
    return requests.post(env["server"] + path, data=json.dumps(body), auth=auth, timeout=60,
                         headers={"content-type": "application/json"})


def v1_body(env: dict[str, Any], key: str = "x.i4", **fields: Any) -> dict[str, Any]:
    return {"source": env["moto"], "bucket": BUCKET, "object": key, "dtype": "int32",
            "shape": [6, 10], **fields}


def v2_body(env: dict[str, Any], key: str = "x.i4", **fields: Any) -> dict[str, Any]:
    return {"interface_type": "s3", "url": f"{env['moto']}/{BUCKET}/{key}", "dtype": "int32",
            "shape": [6, 10], **fields}








# -------------------------------------------------------------------- unencoded keys and URLs


@pytest.mark.parametrize("key", KEYS)
def test_v2_unencoded_and_encoded_urls_read_the_key(env, key):
    """Clients send the URL unencoded, built from the key; an encoded URL names the same key,
    except that a lone % must then be written %25 (a raw URL may keep it as it is)."""
    for url_key in (key, quote(key, safe="/")):
        r = post(env, "/v2/sum", v2_body(env, url_key))
        values, count = decode_v2(r)
        assert values == X.sum() and count == [60]


@pytest.mark.parametrize("key", KEYS)
def test_v1_object_is_the_raw_key(env, key):
    values, count = decode_v1(post(env, "/v1/max/", v1_body(env, key)))
    assert values == X.max() and count == [60]


@pytest.mark.parametrize("api_version", [1, 2])
def test_our_client_reads_such_keys(env, api_version):
    """Our SDK's server backend (s3:// URL, v1 raw key or v2 encoded URL) agrees."""
    from activestorage.backends.server import ServerBackend
    from activestorage.request import make_request

    opts = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": env["moto"]}}
    with ServerBackend(env["server"], storage_options=opts, api_version=api_version, env={},
                       batch=False) as b:
        for key in KEYS:
            req = make_request("int32", (6, 10), url=f"s3://{BUCKET}/{key}", size=X.nbytes,
                               axis=1)
            p = b.reduce_chunk(req, "max")
            np.testing.assert_array_equal(p.values.reshape(6), X.max(axis=1))
            # the same object by its (encoded) http URL under the S3 endpoint
            req = req.with_(url=f"{env['moto']}/{BUCKET}/{quote(key, safe='/')}")
            np.testing.assert_array_equal(b.reduce_chunk(req, "max").values.reshape(6),
                                          X.max(axis=1))


def test_http_store_with_unencoded_path(env, nginx_server):
    name = "shape-[10, 10] 'x',y.bin"
    (nginx_server.extra["docroot"] / name).write_bytes(X.tobytes())
    for it in ("http", "https"):  # some clients say https for http:// URLs
        r = post(env, "/v2/min", {"interface_type": it, "url": f"{nginx_server.url}/{name}",
                                  "dtype": "int32"}, auth=None)
        values, count = decode_v2(r)
        assert values == X.min() and count == [60]


def test_control_characters_in_url_are_refused(env):
    r = post(env, "/v2/sum", v2_body(env, "x\n.i4"))
    assert "control characters" in spec_error(r, 400)


# ------------------------------------------------------------------------------- selection



@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sel=st.tuples(*[st.tuples(SELECTABLE, SELECTABLE, st.integers(-4, 4).filter(bool))] * 2),
       op=st.sampled_from(["select", "sum", "min", "count"]), api=st.sampled_from([1, 2]))
def test_selection_is_python_slicing_with_clamping(env, sel, op, api):
    want = X[tuple(slice(*s) for s in sel)]
    body = (v1_body if api == 1 else v2_body)(env, selection=[list(s) for s in sel])
    values, count = (decode_v1 if api == 1 else decode_v2)(post(env, f"/v{api}/{op}/", body))
    assert_selected(values, count, want, op)


def test_spec_example_end_past_an_axis_of_one(env, s3):
    s3.put_object(Bucket=BUCKET, Key="one.i8", Body=np.arange(10, dtype="<i8").tobytes())
    body = {"source": env["moto"], "bucket": BUCKET, "object": "one.i8", "dtype": "int64",
            "shape": [1, 10], "selection": [[0, 2, 1], [0, 10, 1]]}
    values, count = decode_v1(post(env, "/v1/sum/", body))
    assert values == 45 and count == [10]
    assert post(env, "/v1/sum/", {**body, "selection": [[0, 2, 0], [0, 10, 1]]}).status_code == 400


# ---------------------------------------------------------------------------- v1 counts


@pytest.mark.parametrize("fields,count", [
    ({}, "[60]"),
    ({"axis": 0}, json.dumps([6] * 10, separators=(",", ":"))),
    ({"shape": [2, 3, 10], "axis": [2], "missing": {"valid_max": 10}},
     json.dumps(np.ma.masked_greater(X.reshape(2, 3, 10), 10).count(axis=2).reshape(-1).tolist(),
                separators=(",", ":"))),
])
@pytest.mark.parametrize("op", ["count", "max", "sum", "select"])
def test_v1_count_header_is_a_flat_list(env, fields, count, op):
    r = post(env, f"/v1/{op}/", v1_body(env, **fields))
    assert r.status_code == 200, r.text
    if op == "select":  # one total of the selected non-missing elements
        assert json.loads(r.headers["x-activestorage-count"]) == [sum(json.loads(count))]
    else:
        assert r.headers["x-activestorage-count"] == count


# ------------------------------------------------------------------------------ missing


@pytest.mark.parametrize("dtype,missing", [
    ("int32", {"missing_value": -1.0}), ("int32", {"missing_values": [3, 4.0]}),
    ("uint32", {"valid_min": 1.0}), ("int32", {"valid_range": [1, 1]}),
    ("int32", {"valid_range": [2, 1]}), ("int32", {"missing_value": 2**31}),
    ("float32", {"valid_max": 1e39}), ("int32", {"nodata": 1}), ("int32", [1]),
])
@pytest.mark.parametrize("api", [1, 2])
def test_strict_missing_validation(env, dtype, missing, api):
    body = (v1_body if api == 1 else v2_body)(env, dtype=dtype, missing=missing)
    assert "missing" in spec_error(post(env, f"/v{api}/sum/", body), 400)


@pytest.mark.parametrize("missing,mask", [
    ({"missing_value": 2}, X == 2), ({"missing_values": [2, 3]}, np.isin(X, [2, 3])),
    ({"valid_min": 0}, X < 0), ({"valid_max": 10}, X > 10),
    ({"valid_range": [0, 10]}, (X < 0) | (X > 10)),
])
def test_missing_kinds(env, missing, mask):
    m = np.ma.masked_array(X, mask)
    for api in (1, 2):
        body = (v1_body if api == 1 else v2_body)(env, missing=missing, axis=1)
        values, count = (decode_v1 if api == 1 else decode_v2)(post(env, f"/v{api}/sum/", body))
        assert count == m.count(axis=1).tolist()
        np.testing.assert_array_equal(values, m.sum(axis=1).filled(0))


# ------------------------------------------------------------------- defaults and errors


def test_no_shape_no_size_reads_the_whole_object(env):
    body = {"interface_type": "s3", "url": f"{env['moto']}/{BUCKET}/x.i4", "dtype": "int32"}
    values, count = decode_v2(post(env, "/v2/sum", body))
    assert values == X.sum() and count == [60]
    values, _ = decode_v2(post(env, "/v2/select", {**body, "offset": 200}))
    np.testing.assert_array_equal(values, X.reshape(-1)[50:])


def test_no_such_key_and_bucket_are_400(env):
    msg = spec_error(post(env, "/v2/sum", v2_body(env, "absent key [1].bin")), 400)
    assert "NoSuchKey" in msg and "absent" in msg
    body = {**v2_body(env), "url": f"{env['moto']}/no-such-bucket/x.i4"}
    assert "NoSuchBucket" in spec_error(post(env, "/v2/sum", body), 400)
    assert "NoSuchKey" in spec_error(post(env, "/v1/sum/", v1_body(env, "absent")), 400)


@pytest.mark.parametrize("path", ["/v1/mean/", "/v2/mean", "/v2/median/"])
def test_unknown_operation_is_404(env, path):
    assert "unknown operation" in spec_error(post(env, path, v2_body(env)), 404)


def test_malformed_json_is_400(env):
    r = requests.post(env["server"] + "/v2/sum", data=b'{"dtype":', timeout=30,
                      headers={"content-type": "application/json"})
    assert "malformed JSON" in spec_error(r, 400)


# ------------------------------------------------------------------------ 401 wording


@pytest.fixture(scope="module")
def guarded(servers_dir: Path, env) -> Iterator[tuple[ServerProcess, str, str]]:
    """moto checking credentials: an allow-all user (key, secret) and a guarded object."""
    proc = start_moto_with_auth(servers_dir / "moto-spec-auth")
    key, secret = proc.extra["key"], proc.extra["secret"]
    c = s3_client(proc.url, key, secret)
    c.create_bucket(Bucket="guarded")
    c.put_object(Bucket="guarded", Key="x [1].i4", Body=X.tobytes())
    yield proc, key, secret
    proc.stop()


def _no_rights_user(moto: ServerProcess, key: str, secret: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=moto.url, aws_access_key_id=key,
                       aws_secret_access_key=secret, region_name="us-east-1")
    iam.create_user(UserName="nobody")
    k = iam.create_access_key(UserName="nobody")["AccessKey"]
    return k["AccessKeyId"], k["SecretAccessKey"]


@pytest.mark.parametrize("api", [1, 2])
def test_401_carries_the_stores_own_words(env, guarded, api):
    moto, key, secret = guarded
    if api == 1:
        body = {"source": moto.url, "bucket": "guarded", "object": "x [1].i4", "dtype": "int32"}
    else:
        body = {"interface_type": "s3", "url": f"{moto.url}/guarded/x [1].i4", "dtype": "int32"}
    path = f"/v{api}/max/"
    assert post(env, path, body, auth=(key, secret)).status_code == 200
    msg = spec_error(post(env, path, body, auth=(key, "not-the-secret")), 401)
    assert "SignatureDoesNotMatch" in msg and "guarded/x" in msg
    assert "not-the-secret" not in msg
    msg = spec_error(post(env, path, body, auth=("AKIANOSUCHKEY0000000", "x")), 401)
    assert "InvalidAccessKeyId" in msg
    msg = spec_error(post(env, path, body, auth=None), 401)  # anonymous: private bucket
    assert "Access Denied" in msg or "AccessDenied" in msg


def test_401_access_denied_for_a_user_without_rights(env, guarded):
    moto, key, secret = guarded
    nobody = _no_rights_user(moto, key, secret)
    body = {"interface_type": "s3", "url": f"{moto.url}/guarded/x [1].i4", "dtype": "int32"}
    msg = spec_error(post(env, "/v2/sum", body, auth=nobody), 401)
    assert "Access Denied" in msg, msg
