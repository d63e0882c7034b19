"""Configuration: pydantic models, YAML loading with an env overlay, and validation errors."""

from loadweaver.config.loader import ConfigError, load_config, load_default_config
from loadweaver.config.models import Config

__all__ = ["Config", "ConfigError", "load_config", "load_default_config"]
