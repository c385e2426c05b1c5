"""The Data API's OpenAPI document, as the pytest suite sees it.

Owns loading crates/gateway/src/dataapi/openapi.json (the document the gateway serves
at GET /openapi.json) and checking request and response bodies of `POST /action/{name}`
against it with jsonschema: `$ref`s to `#/components/...` are inlined and OpenAPI 3.0's
`nullable: true` becomes a JSON Schema type list before validating.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

SPEC_PATH = Path(__file__).resolve().parents[2] / "crates/gateway/src/dataapi/openapi.json"
MEDIA_TYPE = "application/json"


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def load_spec() -> dict[str, Any]:
    """The parsed document (a fresh copy; callers may change it)."""
    return copy.deepcopy(_spec())


def _lookup(pointer: str) -> Any:
    if not pointer.startswith("#/components/"):
        raise AssertionError(f"unsupported $ref {pointer!r}")
    node: Any = _spec()
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(node: Any) -> Any:
    """Follow a top-level $ref chain (response objects, schemas)."""
    while isinstance(node, dict) and "$ref" in node:
        node = _lookup(node["$ref"])
    return node


def to_json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema as a self-contained JSON Schema (refs inlined, nullable honoured)."""
    if isinstance(schema, list):
        return [to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = _deref(schema)
    out = {key: to_json_schema(value) for key, value in schema.items()
           if not (key == "nullable" and isinstance(value, bool))}
    if schema.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _operation(action: str) -> dict[str, Any]:
    path = f"/action/{action}"
    item = _spec()["paths"].get(path)
    if item is None or "post" not in item:
        raise AssertionError(f"the OpenAPI document has no POST {path}")
    return item["post"]


def _validate(what: str, schema: Any, body: Any) -> None:
    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        detail = "; ".join(f"at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        raise AssertionError(f"{what} does not match the OpenAPI document: {detail}\nbody: {body!r}")


def response_schema(action: str, status: int) -> dict[str, Any]:
    """The (unresolved) schema of `POST /action/{action}`'s `status` response."""
    responses = _operation(action)["responses"]
    response = responses.get(str(status), responses.get("default"))
    if response is None:
        raise AssertionError(f"{action}: status {status} is not documented (documented: {sorted(responses)})")
    try:
        return _deref(response)["content"][MEDIA_TYPE]["schema"]
    except KeyError:
        raise AssertionError(f"{action}: status {status} has no {MEDIA_TYPE} schema") from None


def request_schema(action: str) -> dict[str, Any]:
    """The (unresolved) request body schema of `POST /action/{action}`."""
    try:
        return _deref(_operation(action)["requestBody"])["content"][MEDIA_TYPE]["schema"]
    except KeyError:
        raise AssertionError(f"{action}: no {MEDIA_TYPE} request body schema") from None


def check_response(action: str, status: int, body: dict[str, Any]) -> None:
    """Raise AssertionError unless `body` is a valid `status` response of `action`."""
    _validate(f"{action} {status} response", response_schema(action, status), body)


def check_request(action: str, body: dict[str, Any]) -> None:
    """Raise AssertionError unless `body` is a valid request body of `action`."""
    _validate(f"{action} request", request_schema(action), body)
