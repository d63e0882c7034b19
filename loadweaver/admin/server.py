"""The admin HTTP server: REST API, OpenAPI document, status page, probes and metrics.

It is outside the hot path, so aiohttp is fine here.
"""

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from loadweaver.admin.api import PREFIX, AdminApi
from loadweaver.admin.auth import token_matches
from loadweaver.admin.endpoints import ApiError, dispatcher, error_response
from loadweaver.admin.openapi import build_openapi
from loadweaver.admin.view import NodeView
from loadweaver.config.addresses import BindAddress

Middleware = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The page is self-contained and talks only to this node: nothing else may load or run.
STATUS_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SHUTDOWN_SECONDS = 2.0  # the longest a client of the admin API delays a node's stop


class AdminServer:
    def __init__(self, bind: BindAddress, registry: CollectorRegistry, view: NodeView) -> None:
        self._bind = bind
        self._registry = registry
        self._view = view
        self._closing = asyncio.Event()
        self._api = AdminApi(view, self._closing)
        self._runner: web.AppRunner | None = None
        self._page = resources.files("loadweaver.admin").joinpath("static/status.html").read_bytes()

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._authenticate])
        endpoints = self._api.endpoints()
        self._openapi = build_openapi(endpoints)
        for endpoint in endpoints:
            app.router.add_route(endpoint.method, endpoint.path, dispatcher(endpoint))
        app.router.add_get(f"{PREFIX}/openapi.json", self._openapi_document)
        app.router.add_get("/", self._status_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._closing.clear()
        self._runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_SECONDS,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind.host, self._bind.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Middleware) -> web.StreamResponse:
        """Every failure is a JSON error with a sentence; a bug is logged, never shown."""
        try:
            response = await handler(request)
        except ApiError as error:
            response = error.response()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = error_response(error.status, _http_reason(request, error))
            if "Allow" in error.headers:
                response.headers["Allow"] = error.headers["Allow"]
        except Exception:
            logger.exception("admin API: {} {} failed", request.method, request.path)
            response = error_response(500, "internal error; the node's log has the details")
        if request.path.startswith(PREFIX) and not response.prepared:
            response.headers["ETag"] = f'"{self._view.version}"'
        return response

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Middleware) -> web.StreamResponse:
        if request.path.startswith(PREFIX) and not token_matches(
            self._view.admin_token, request.headers.get("Authorization")
        ):
            response = error_response(401, "a valid admin token is required: Bearer TOKEN")
            response.headers["WWW-Authenticate"] = 'Bearer realm="loadweaver"'
            return response
        return await handler(request)

    async def _openapi_document(self, _: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    async def _status_page(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": STATUS_PAGE_POLICY,
                "Referrer-Policy": "no-referrer",
            },
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._view.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _http_reason(request: web.Request, error: web.HTTPException) -> str:
    if error.status == 404:
        return f"no such path: {request.path}"
    if error.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return error.reason
