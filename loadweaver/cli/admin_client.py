"""A small synchronous client of a node's admin API, for the CLI.

Failures become two kinds of error with a sentence each: the node refused the request (its
reason is printed; exit code 1) or the node could not be reached (exit code 3).
"""

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"
TIMEOUT_SECONDS = 10.0


class RejectedError(Exception):
    """The node answered with an error status."""

    def __init__(self, status: int, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems

    def __str__(self) -> str:
        lines = [f"refused ({self.status}): {self.message}"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class UnreachableError(Exception):
    """No answer: the node is down, the URL is wrong, or the network failed."""


class AdminClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for 204); raises RejectedError or UnreachableError."""
        url = f"{self.base_url}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, method=method, headers=self._headers(body))
        if body is not None:
            request.data = json.dumps(body).encode()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise _rejection(error) from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            raise UnreachableError(_unreachable(self.base_url, error)) from None
        return json.loads(raw) if raw else None

    def _headers(self, body: object) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers


def _rejection(error: urllib.error.HTTPError) -> RejectedError:
    try:
        detail = json.loads(error.read())["error"]
        return RejectedError(error.code, str(detail["message"]), list(detail.get("problems", [])))
    except (ValueError, KeyError, TypeError):
        return RejectedError(error.code, error.reason or "no reason given", [])


def _unreachable(base_url: str, error: Exception) -> str:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ConnectionRefusedError):
        why = "the connection was refused (is the node running, and is this its admin.bind?)"
    elif isinstance(reason, socket.timeout | TimeoutError):
        why = f"no answer within {TIMEOUT_SECONDS:g} s"
    elif isinstance(reason, socket.gaierror):
        why = f"the host name does not resolve ({reason.strerror})"
    else:
        why = str(reason)
    return f"cannot reach the admin API at {base_url}: {why}"
