"""A real webhook receiver on loopback: records every POST, and can refuse the first few."""

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.ports import free_port


@dataclass
class WebhookReceiver:
    """Answers 500 to the first `refuse` POSTs, then 200; `bodies` holds what it accepted."""

    refuse: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> "WebhookReceiver":
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.refuse:
            return web.Response(status=500, text="not now")
        self.bodies.append(json.loads(await request.read()))
        return web.Response(text="ok")

    def statuses(self, rule: str | None = None) -> list[str]:
        """The status of every notification received, oldest first, for one rule or all."""
        return [
            body["status"]
            for body in self.bodies
            if rule is None or body["groupLabels"]["alertname"] == rule
        ]
