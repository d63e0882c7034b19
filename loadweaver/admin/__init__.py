"""The admin listener (aiohttp): liveness, readiness and metrics now; the REST API later."""
