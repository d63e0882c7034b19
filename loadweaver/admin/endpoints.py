"""One table of endpoints drives both the aiohttp routes and the OpenAPI document.

Each endpoint names its body and response models; the dispatcher validates the body with the one
and shapes the answer with the other, so the published schema is what the code does.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from loadweaver.admin.schemas import ErrorBody, ErrorDetail
from loadweaver.config.loader import describe_validation_error


class ApiError(Exception):
    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.problems)


def error_response(status: int, message: str, problems: list[str] | None = None) -> web.Response:
    body = ErrorBody(error=ErrorDetail(status=status, message=message, problems=problems or []))
    return web.json_response(body.model_dump(mode="json"), status=status)


@dataclass(frozen=True)
class Call:
    """One API request as a handler sees it."""

    request: web.Request
    body: Any  # an instance of the endpoint's body model, or None
    if_match: int | None  # the config version the client expects; None: unconditional

    def param(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Call], Awaitable[BaseModel | web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    response: type[BaseModel] | None  # None: not JSON (a stream or a page)
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    conditional: bool = False  # takes If-Match
    query: tuple[str, ...] = ()
    media_type: str = "application/json"

    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")


def dispatcher(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await _parse_body(request, endpoint.body) if endpoint.body else None
        if_match = _if_match(request) if endpoint.conditional else None
        result = await endpoint.handler(Call(request, body, if_match))
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result.model_dump(mode="json"), status=endpoint.status)

    return dispatch


async def _parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    content_type = request.headers.get("Content-Type")
    if content_type is not None and not _is_json(request.content_type):
        raise ApiError(415, f"send the body as application/json, not {content_type!r}")
    raw = await request.read()
    try:
        data = json.loads(raw, parse_float=_json_number) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        # Strict: a JSON API takes JSON types as they are ("5" is not a weight, 0 not a bool).
        return model.model_validate(data, strict=True)
    except ValidationError as error:
        problems = describe_validation_error(error, model)
        raise ApiError(422, "the body is invalid", problems) from None


def _json_number(text: str) -> float | int:
    """JSON has one number type: 5.0 is the integer 5, as JSON Schema says, even when strict."""
    number = float(text)
    return int(number) if number.is_integer() else number


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()):
        raise ApiError(400, f'If-Match must be a config version such as "7", not {header!r}')
    return int(value)
