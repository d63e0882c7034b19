"""The OpenAPI 3.1 document, built from the endpoint table and its pydantic models."""

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from loadweaver import __version__
from loadweaver.admin.endpoints import Endpoint
from loadweaver.admin.schemas import ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
IF_MATCH_PATTERN = r'^\s*(\*|(W/)?"?[0-9]+"?)\s*$'
REASONS = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "The body or a header is malformed",
    401: "The bearer token is missing or wrong",
    404: "No such resource",
    409: "Conflicts with the current state",
    412: "If-Match names an old config version",
    415: "The body is not application/json",
    422: "Invalid: the problems name each field path",
    503: "The cluster store is down: nothing was changed",
}


def build_openapi(endpoints: list[Endpoint]) -> dict[str, Any]:
    references, components = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation = _operation(endpoint, references)
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loadweaver admin API",
            "version": __version__,
            "description": "Runtime control of a loadweaver node. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


References = dict[tuple[type[BaseModel], JsonSchemaMode], Any]


def _schemas(endpoints: list[Endpoint]) -> tuple[References, dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for endpoint in endpoints:
        if endpoint.body is not None:
            wanted.append((endpoint.body, "validation"))
        if endpoint.response is not None:
            wanted.append((endpoint.response, "serialization"))
    found, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE)
    references: References = {key: schema for key, schema in found.items() if key in wanted}
    return references, top.get("$defs", {})


def _operation(endpoint: Endpoint, references: References) -> dict[str, Any]:
    error_schema = references[(ErrorBody, "serialization")]
    responses: dict[str, Any] = {str(endpoint.status): _success(endpoint, references)}
    errors = (*endpoint.errors, 415) if endpoint.body is not None else endpoint.errors
    if endpoint.conditional and 400 not in errors:
        errors = (400, *errors)  # a malformed If-Match
    for status in (*errors, 401):
        responses[str(status)] = {
            "description": REASONS[status],
            "content": {"application/json": {"schema": error_schema}},
        }
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id(),
        "summary": endpoint.summary,
        "parameters": _parameters(endpoint),
        "responses": responses,
    }
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": references[(endpoint.body, "validation")]}},
        }
    return operation


def _success(endpoint: Endpoint, references: References) -> dict[str, Any]:
    success: dict[str, Any] = {"description": REASONS.get(endpoint.status, "OK")}
    if endpoint.response is not None:
        schema = references[(endpoint.response, "serialization")]
        success["content"] = {"application/json": {"schema": schema}}
    elif endpoint.status != 204:
        success["content"] = {endpoint.media_type: {"schema": {"type": "string"}}}
    return success


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in endpoint.query
    ]
    if endpoint.conditional:
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": 'The config version the change expects, such as "7", or *',
                "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
            }
        )
    return parameters
