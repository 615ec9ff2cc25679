"""The OpenAPI 3.1 document of the API, generated from its operations' pydantic models.

JSON Schema 2020-12 is OpenAPI 3.1's own dialect, so pydantic's schemas go in as they are:
the answer's schema inline, every model it refers to under `components/schemas`. A query
model becomes one query parameter per field; a path parameter is an integer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import pydantic

_REF = "#/components/schemas/{model}"
_PARAMETER = re.compile(r"\{([a-z_]+)\}")
_STATUS_TEXT = {
    400: "the request does not fit (one line says how)",
    403: "not allowed: no role in the tenant, a role too low, or a cross-site request",
    404: "no such thing among the tenants you see",
    409: "not in its current state",
    503: "the database is not reachable (Retry-After)",
}


class Operation(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def response(self) -> Any: ...
    @property
    def path_model(self) -> type[pydantic.BaseModel] | None: ...
    @property
    def query(self) -> type[pydantic.BaseModel] | None: ...
    @property
    def body(self) -> type[pydantic.BaseModel] | None: ...
    @property
    def status(self) -> int: ...
    @property
    def refusals(self) -> tuple[int, ...]: ...


def route_path(path: str) -> str:
    """`/tasks/{task_id}` as an aiohttp route: the parameter is a number."""
    return _PARAMETER.sub(r"{\1:[0-9]{1,19}}", path)


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def schema(self, annotation: Any, mode: Any = "serialization") -> dict[str, Any]:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
        found = adapter.json_schema(ref_template=_REF, mode=mode)
        self.schemas.update(found.pop("$defs", {}))
        return found


def document(
    operations: Sequence[Operation], prefix: str, problem: Any, *, streams: Sequence[str] = ()
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations` (and of the event `streams`, paths of
    Server-Sent Events), mounted under `prefix`."""
    components = _Components()
    error = components.schema(problem)
    components.schemas[problem.__name__] = error
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        item = paths.setdefault(prefix + operation.path, {})
        item[operation.method.lower()] = _operation(operation, components, problem.__name__)
    for stream in streams:
        paths[prefix + stream] = {"get": _stream(stream, problem.__name__)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "appliance console", "version": "1"},
        "paths": paths,
        "components": {"schemas": components.schemas},
    }


def _operation(operation: Operation, components: _Components, problem: str) -> dict[str, Any]:
    answer = components.schema(operation.response)
    responses: dict[str, Any] = {
        str(operation.status): {
            "description": operation.summary,
            "content": {"application/json": {"schema": answer}},
        }
    }
    for status in (*operation.refusals, 503):
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=problem)}}},
        }
    found: dict[str, Any] = {
        "operationId": operation.name,
        "summary": operation.summary,
        "parameters": [
            *_parameters(operation.path_model, "path", components),
            *_parameters(operation.query, "query", components),
        ],
        "responses": responses,
    }
    if operation.body is not None:
        found["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": components.schema(operation.body, "validation")}
            },
        }
    return found


def _stream(path: str, problem: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model=problem)}}}}
    return {
        "operationId": "streamEvents",
        "summary": "What changed, as Server-Sent Events (resumable with Last-Event-ID)",
        "parameters": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            },
        ],
        "responses": {
            "200": {
                "description": f"the stream of {path}: id, event (its type), data (JSON)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {"description": _STATUS_TEXT[400], **error},
            "403": {"description": _STATUS_TEXT[403], **error},
            "503": {"description": _STATUS_TEXT[503], **error},
        },
    }


def _parameters(
    model: type[pydantic.BaseModel] | None, where: str, components: _Components
) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = components.schema(model, "validation")
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _plain(field),
            **({"description": field["description"]} if "description" in field else {}),
        }
        for name, field in schema.get("properties", {}).items()
    ]


def _plain(field: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema: an optional field's `null` branch dropped (leave it out instead)."""
    branches = field.get("anyOf")
    if isinstance(branches, list):
        kept = [branch for branch in branches if branch.get("type") != "null"]
        if len(kept) == 1:
            rest = {k: v for k, v in field.items() if k not in ("anyOf", "default", "title")}
            return {**kept[0], **rest}
    return {k: v for k, v in field.items() if k not in ("title",)}
