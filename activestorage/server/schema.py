"""Request models for the OpenAPI document and /docs only.

Bodies are parsed and validated by :meth:`activestorage.request.ChunkRequest.from_wire` (one
validator for every client, with errors that name the field); these pydantic models just describe
the wire format to humans and code generators.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field

Dtype = Literal["int8", "uint8", "int16", "uint16", "int32", "int64", "uint32", "uint64",
                "float32", "float64"]


class _Common(BaseModel):
    dtype: Dtype = Field(description="element type of the stored data")
    byte_order: Optional[Literal["little", "big"]] = Field(None, description="default: native")
    offset: Optional[int] = Field(None, ge=0, description="byte offset in the object (default 0)")
    size: Optional[int] = Field(None, gt=0, description="bytes to read (default: to the end)")
    shape: Optional[list[int]] = Field(None, description="array shape (default: 1-D)")
    order: Optional[Literal["C", "F"]] = None
    selection: Optional[list[list[Optional[int]]]] = Field(
        None, description="one [start, end, stride] per dimension: exactly Python's "
                          "slice(start, end, stride); ends past the axis are clamped; only "
                          "stride 0 is refused")
    axis: Optional[Union[int, list[int]]] = Field(None, description="axes to reduce (default all)")
    compression: Optional[dict[str, Any]] = Field(
        None, description='{"id": "gzip"|"zlib"|"zstd"|"blosc"|"blosc2"|"lz4"|"bz2"}')
    filters: Optional[list[dict[str, Any]]] = Field(
        None, description='[{"id": "shuffle", "element_size": N}, {"id": "fletcher32"}]')
    missing: Optional[dict[str, Any]] = Field(
        None, description="missing_value, missing_values, valid_min, valid_max, valid_range "
                          "(several at once is an extension)")


class V1Request(_Common):
    """POST /v1/{operation}/ body."""

    source: str = Field(description="S3 endpoint URL, e.g. http://127.0.0.1:9000")
    bucket: str
    object: str


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


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema without ``$defs`` (so it can be put into ``openapi_extra``)."""
    return model.model_json_schema()


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
    return {"requestBody": {"required": True, "content": content}}
