"""The reduction routes' OpenAPI description, generated from the request model's constants.

Bodies are parsed and validated by :meth:`activestorage.request.ChunkRequest.from_wire` (one
validator for every client, with errors that name the field); these pydantic models only describe
the wire format to humans, code generators and fuzzers. Every closed set they list (operations,
dtypes, compression and filter ids, the ``missing`` keys) is taken from :mod:`activestorage.request`,
so the document cannot drift from what the server accepts (``tests/server/test_server_schema.py``
checks it). :func:`reduction_paths` is the OpenAPI ``paths`` entry of each reduction route of
:data:`ROUTES`, the one table the HTTP layer (:mod:`.app`) registers its routes from.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..request import COMPRESSION_IDS, FILTER_IDS, MISSING_KEYS, OPERATIONS, WIRE_DTYPES
from ..wire_extension import REFERENCE_OPERATIONS

Dtype = Literal[WIRE_DTYPES]  # type: ignore[valid-type]
CompressionId = Literal[COMPRESSION_IDS]  # type: ignore[valid-type]
FilterId = Literal[FILTER_IDS]  # type: ignore[valid-type]
Number = Union[int, float]

#: what each key of ``missing`` holds (the keys themselves are request.MISSING_KEYS)
_MISSING_FIELDS: dict[str, tuple[Any, str]] = {
    "missing_value": (Number, "elements equal to this are missing"),
    "missing_values": (list[Number], "elements equal to any of these are missing"),
    "valid_min": (Number, "elements below this are missing"),
    "valid_max": (Number, "elements above this are missing"),
    "valid_range": (list[Number], "[min, max]: elements outside are missing"),
}
if set(_MISSING_FIELDS) != set(MISSING_KEYS):  # a new key in request.py must be described here
    raise ImportError(f"server/schema.py describes missing keys {sorted(_MISSING_FIELDS)}, "
                      f"request.MISSING_KEYS has {sorted(MISSING_KEYS)}")


class Compression(BaseModel):
    """The codec the chunk's bytes are compressed with."""

    model_config = ConfigDict(extra="allow")
    id: CompressionId  # type: ignore[valid-type]


class Filter(BaseModel):
    """A filter applied before compression (undone after decompression, last first)."""

    id: FilterId  # type: ignore[valid-type]
    element_size: int = Field(None, ge=1, le=64, description="shuffle: bytes per "
                                        "element (default: the dtype's size)")
    outer: bool = Field(None, description="fletcher32: checksum of the compressed "
                                  "bytes rather than the raw ones")


Missing = create_model(  # type: ignore[call-overload]
    "Missing", __doc__="Missing-data description (several keys at once is an extension).",
    **{k: (_MISSING_FIELDS[k][0], Field(None, description=_MISSING_FIELDS[k][1],
                                        **({"min_length": 2, "max_length": 2}
                                           if k == "valid_range" else {})))
       for k in MISSING_KEYS})


class _Layout(BaseModel):
    dtype: Dtype = Field(description="element type of the stored data")  # type: ignore[valid-type]
    byte_order: Optional[Literal["little", "big"]] = Field(None, description="default: native")
    offset: Optional[int] = Field(None, ge=0, description="byte offset in the object (default 0)")
    size: Optional[int] = Field(None, gt=0, description="bytes to read (default: to the end)")
    shape: Optional[list[int]] = Field(None, description="array shape (default: 1-D)")
    order: Optional[Literal["C", "F"]] = None
    selection: Optional[list[list[Optional[int]]]] = Field(
        None, description="one [start, end, stride] per dimension: exactly Python's "
                          "slice(start, end, stride); ends past the axis are clamped; only "
                          "stride 0 is refused")
    compression: Optional[Compression] = Field(
        None, description="codec: " + ", ".join(COMPRESSION_IDS))
    filters: Optional[list[Filter]] = Field(None, description="filters: " + ", ".join(FILTER_IDS))


class _Common(_Layout):
    axis: Optional[Union[int, list[int]]] = Field(None, description="axes to reduce (default all)")
    missing: Optional[Missing] = Field(  # type: ignore[valid-type]
        None, description=", ".join(MISSING_KEYS) + " (several at once is an extension)")
    option_disable_chunk_cache: Optional[bool] = Field(
        None, description="neither read this range from the server's chunk cache nor add it")


class V1Request(_Common):
    """POST /v1/{operation}/ body."""

    source: str = Field(description="S3 endpoint URL, e.g. http://127.0.0.1:9000")
    bucket: str
    object: str


class WeightsArray(_Layout):
    """N-D weights read by the server from their own byte range (like the data; no axis or
    missing): its selected block is broadcast against the data's selected region."""

    interface_type: Optional[Literal["s3", "http", "https"]] = Field(
        None, description="default: the data's")
    url: str = Field(description="the weights' object URL (the data's allow-list and "
                                 "credentials apply)")


class WeightsValues(BaseModel):
    """N-D weights sent inline, broadcast against the data's selected region."""

    shape: list[int]
    data: Union[list[Number], bytes] = Field(
        description="C order; numbers, or little-endian float64 bytes in CBOR")


class Weights(BaseModel):
    """Extension, moments only: exactly one of axes, values, array. Weights must be finite and
    >= 0; missing elements drop their weight."""

    axes: Optional[dict[str, Optional[Union[list[Number], bytes]]]] = Field(
        None, description='separable: {"<axis>": weights over this chunk\'s selected elements '
                          'of that axis (numbers, or little-endian float64 bytes in CBOR)}')
    values: Optional[WeightsValues] = None
    array: Optional[WeightsArray] = None


class V2Request(_Common):
    """POST /v2/{operation} body (and one item of a batch)."""

    interface_type: Literal["s3", "http", "https"]
    url: str = Field(description="full object URL (S3 path-style or any HTTP URL with Range), "
                                 "sent unencoded (spaces, brackets, quotes are fine; %XX is an "
                                 "escape); only control characters are refused")
    option_shape_as_bytes: Optional[bool] = None
    option_count_as_bytes: Optional[bool] = None
    option_wide_sum: Optional[bool] = Field(
        None, description="extension: sum in int64/uint64 instead of the request dtype")
    etag: Optional[str] = Field(None, description="extension: object must have this ETag (409)")
    version_id: Optional[str] = Field(None, description="extension: read this S3 version")
    weights: Optional[Weights] = Field(
        None, description="extension, moments only: weights of this chunk's selected elements")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its nested models written in place (no ``$defs``/``$ref``), so
    each body's schema stands alone in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def batch_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["requests"], "title": "BatchRequest",
            "properties": {
                "requests": {"type": "array", "items": inline_schema(V2Request)},
                "fold": {"type": "array", "items": {"type": "integer"},
                         "description": "Optional, one id per request: results of requests "
                                        "sharing an id are combined on the server and returned "
                                        "for the first of them (the others are null). With "
                                        "fold, sums come back as float64 or (u)int64. Not "
                                        "for select."}}}


def body_doc(schema: dict[str, Any], cbor: bool = False) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    if cbor:
        content["application/cbor"] = {"schema": schema}
    return {"required": True, "content": content}


class Route(NamedTuple):
    """One reduction route: its path, which handler serves it, and what the docs say."""

    path: str
    api: str  # "v1", "v2" or "batch"
    summary: str
    description: str


#: every reduction route, once: the HTTP layer registers these (each also answers with the
#: trailing slash added or removed) and :func:`reduction_paths` documents them.
ROUTES = (
    Route("/v1/{operation}/", "v1", "V1",
          "Reductionist v1: S3 source/bucket/object; raw result bytes + x-activestorage-* headers."),
    Route("/v2/{operation}", "v2", "V2",
          "Reductionist v2: interface_type + url; CBOR {bytes, dtype, shape, count, byte_order}."),
    Route("/v2/batch/{operation}", "batch", "Batch",
          'Extension: many v2 bodies in one call; CBOR {"results": [...]} in request order.'),
)


def reduction_paths() -> dict[str, Any]:
    """OpenAPI ``paths`` for :data:`ROUTES`."""
    bodies = {"v1": body_doc(inline_schema(V1Request)), "v2": body_doc(inline_schema(V2Request)),
              "batch": body_doc(batch_schema(), cbor=True)}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        # v1 is the reference API; v2 and batch also serve the moments extension (when on)
        ops = REFERENCE_OPERATIONS if route.api == "v1" else OPERATIONS
        op_id = route.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
        paths[route.path] = {"post": {
            "summary": route.summary,
            "description": f"{route.description}\n\noperation: {', '.join(ops)}",
            "operationId": f"{op_id}_post",
            "parameters": [{"name": "operation", "in": "path", "required": True,
                            "schema": {"type": "string", "title": "Operation"}}],
            "requestBody": bodies[route.api],
            "responses": {}}}
    return paths
