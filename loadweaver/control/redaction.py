"""Secrets never leave the node: the API shows a marker; the marker sent back keeps the secret."""

import copy
from collections.abc import Mapping
from typing import Any

from loadweaver.config.addresses import without_password

REDACTED = "<redacted secret>"  # long enough to pass the secret's own length check


class RedactionError(ValueError):
    """The marker was sent for a pool that has no secret to keep."""


def redact_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of config data (full or dynamic part) with every secret replaced: sticky secrets,
    alert webhooks' header values (Authorization, say) and passwords in their URLs."""
    redacted = copy.deepcopy(dict(data))
    for pool in (redacted.get("pools") or {}).values():
        sticky = pool.get("sticky") if isinstance(pool, dict) else None
        if isinstance(sticky, dict) and sticky.get("secret"):
            sticky["secret"] = REDACTED
    alerts = redacted.get("alerts")
    for hook in (alerts.get("webhooks") or []) if isinstance(alerts, dict) else []:
        if isinstance(hook, dict):
            hook["headers"] = dict.fromkeys(hook.get("headers") or {}, REDACTED)
            hook["url"] = without_password(str(hook.get("url", "")), REDACTED)
    return redacted


def restore_secrets(pools: Mapping[str, Any], current_pools: Mapping[str, Any]) -> dict[str, Any]:
    """`pools` with each REDACTED secret replaced by the current pool's secret."""
    restored = copy.deepcopy(dict(pools))
    for name, pool in restored.items():
        sticky = pool.get("sticky") if isinstance(pool, dict) else None
        if not isinstance(sticky, dict) or sticky.get("secret") != REDACTED:
            continue
        current = ((current_pools.get(name) or {}).get("sticky") or {}).get("secret")
        if not current:
            raise RedactionError(
                f"pools.{name}.sticky.secret: {REDACTED!r} keeps the current secret, "
                f"but pool {name!r} has none; send the secret itself"
            )
        sticky["secret"] = current
    return restored
