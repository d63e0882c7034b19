"""The admin API's bearer token: where it comes from, and the rule for running without one."""

import hmac
import ipaddress
from collections.abc import Mapping
from pathlib import Path

from loadweaver.config.addresses import BindAddress, parse_bind
from loadweaver.config.loader import variable
from loadweaver.config.models import AdminConfig


class AdminTokenError(Exception):
    """The token cannot be read, or the admin API would be open to the network."""


def resolve_token(
    admin: AdminConfig, environ: Mapping[str, str] | None = None, dotenv: str | Path = ".env"
) -> str | None:
    """The token from `admin.token_file`, else `admin.token_env` (environment, then `.env`)."""
    if admin.token_file is not None:
        return _read_token_file(Path(admin.token_file))
    token = variable(admin.token_env, environ, dotenv)
    token = token.strip() if token else None
    return token or None


def _read_token_file(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AdminTokenError(
            f"admin.token_file: cannot read {path}: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise AdminTokenError(f"admin.token_file: {path} is not UTF-8 text") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise AdminTokenError(f"admin.token_file: {path} is empty; put the token on its first line")
    return token


def check_exposure(admin: AdminConfig, token: str | None) -> None:
    """Without a token, the API is open: refuse to offer it beyond this machine."""
    if token is not None:
        return
    bind = parse_bind(admin.bind)
    if not _is_loopback(bind):
        raise AdminTokenError(
            f"admin.bind is {admin.bind}, which other machines can reach, and no admin token is "
            f"set: set {admin.token_env} (or admin.token_file), or bind the admin API to "
            "127.0.0.1"
        )


def _is_loopback(bind: BindAddress) -> bool:
    if bind.host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(bind.host).is_loopback
    except ValueError:
        return False


def token_matches(expected: str | None, authorization: str | None) -> bool:
    """True when no token is configured, or `authorization` is `Bearer <expected>`."""
    if expected is None:
        return True
    if authorization is None:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        presented_bytes = presented.strip().encode()
    except UnicodeEncodeError:  # undecodable header bytes: cannot be the token
        return False
    return hmac.compare_digest(presented_bytes, expected.encode())
