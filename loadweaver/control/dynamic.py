"""The effective config of a node: its own file's static sections, the cluster's file layer
(the leader's pools, routes and rate limits, or the node's own before any was published) and the
API's overrides on top."""

from typing import Any

from loadweaver.cluster.state import DYNAMIC_SECTIONS, StoredConfig
from loadweaver.config.loader import validate_config
from loadweaver.config.models import Config
from loadweaver.control.overrides import Composition, compose


def own_dynamic(file_config: Config) -> dict[str, Any]:
    """What this node's file says about the parts the cluster shares."""
    data = file_config.model_dump(mode="json", exclude_unset=True)
    return {part: data[part] for part in DYNAMIC_SECTIONS if part in data}


def base_data(file_config: Config, stored: StoredConfig) -> dict[str, Any]:
    """The file layer the overrides compose over."""
    data = file_config.model_dump(mode="json", exclude_unset=True)
    if stored.base is not None:
        for part in DYNAMIC_SECTIONS:
            data.pop(part, None)
        data.update(stored.base)
    return data


def compose_config(file_config: Config, stored: StoredConfig) -> tuple[Config, Composition]:
    """The effective config; raises ConfigError when the result is invalid."""
    composition = compose(base_data(file_config, stored), stored)
    own = stored.base is None or stored.base == own_dynamic(file_config)
    if own and not composition.has_overrides:
        return file_config, composition  # keeps the file's values exactly, node.id included
    return validate_config(composition.data, "the cluster config"), composition
