"""Loads a Config from YAML, overlays `LOADWEAVER_*` environment variables, and explains failures.

Precedence, lowest first: built-in defaults, the YAML file, `config.<LOADWEAVER_ENV>.yaml`
beside it, a `.env` file in the working directory, then the process environment.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from loadweaver.config.models import Config
from loadweaver.config.sources import DOTENV, ENVIRONMENT, value_sources

ENV_PREFIX = "LOADWEAVER_"
MIN_SECRET_LENGTH = 16


class ConfigError(Exception):
    """An invalid configuration: the source it came from and one sentence per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = problems

    def __str__(self) -> str:
        lines = [f"{self.source}: invalid configuration ({len(self.problems)} problem(s))"]
        lines += [f"  {self.source}: {problem}" for problem in self.problems]
        return "\n".join(lines)


class _EnvironmentOverlay(Config, BaseSettings):
    """Config with the environment layered over the values it is given."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, _OwnKeysOnly(settings_cls, dotenv_settings), init_settings


class _OwnKeysOnly(PydanticBaseSettingsSource):
    """A `.env` is shared with other programs: only keys that name a config section count."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {key: value for key, value in self._inner().items() if key in fields}


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    sources: dict[str, str]  # dotted path -> the file or variable layer it came from


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """The validated config in `path` with overlays applied; raises ConfigError on any problem."""
    return load_config_layers(path, environ).config


def load_config_layers(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """As load_config, and which layer each value came from."""
    environ = os.environ if environ is None else environ
    source = Path(path)
    data = _read_yaml(source)
    layers: list[tuple[str, Mapping[str, Any]]] = [(str(source), data)]
    layer_path = environment_layer_path(source, environ)
    if layer_path is not None and layer_path.exists():
        layer = _read_yaml(layer_path)
        layers.append((str(layer_path), layer))
        data = _deep_merge(data, layer)
    config = build_config(data, str(source))
    layers += _variable_layers()
    return LoadedConfig(config, value_sources(layers))


def environment_layer_path(path: Path, environ: Mapping[str, str]) -> Path | None:
    """`config.production.yaml` beside `config.yaml` when LOADWEAVER_ENV=production."""
    environment_name = environ.get(f"{ENV_PREFIX}ENV")
    if not environment_name:
        return None
    return path.with_name(f"{path.stem}.{environment_name}{path.suffix}")


def _variable_layers() -> list[tuple[str, Mapping[str, Any]]]:
    """The values `.env` and the process environment contribute, as build_config reads them."""
    dotenv = _OwnKeysOnly(_EnvironmentOverlay, DotEnvSettingsSource(_EnvironmentOverlay))()
    environment = EnvSettingsSource(_EnvironmentOverlay)()
    return [(DOTENV, dotenv), (ENVIRONMENT, environment)]


def load_default_config() -> Config:
    """The demo-safe default: 127.0.0.1:8080, admin on 127.0.0.1:9090, one empty pool."""
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:8080"}],
        "pools": {"default": {"backends": []}},
        "routes": [
            {"name": "default", "match": {"host": "*", "path_prefix": "/"}, "pool": "default"}
        ],
    }
    return build_config(data, "<built-in default>")


def build_config(data: Mapping[str, Any], source: str) -> Config:
    """`data` with the environment (and `.env`) layered over it, validated."""
    try:
        return _EnvironmentOverlay(**data)
    except ValidationError as error:
        raise ConfigError(source, describe_validation_error(error)) from None


def validate_config(data: Mapping[str, Any], source: str) -> Config:
    """`data` validated as it is: for configs whose environment layer was applied already."""
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError, model: type[BaseModel] = Config) -> list[str]:
    """One sentence per problem, each starting with its field path within `model`."""
    problems = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"][:-1])
            message = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif item["type"] == "missing":
            message = "this field is required"
        if location and not message.startswith(location):
            problems.append(f"{location}: {message}")
        else:
            problems.append(message)
    return problems


def _allowed_keys(root: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    model: Any = root
    for part in location:
        model = _without_none(model)
        if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(part, str):
            field = model.model_fields.get(part)
            model = field.annotation if field else None
        else:
            model = _element_type(model)
    while not (isinstance(model, type) and issubclass(model, BaseModel)):
        if model is None or not get_args(model):
            return []
        model = _element_type(model)
    return sorted(model.model_fields)


def _without_none(annotation: Any) -> Any:
    """X for `X | None`; anything else unchanged."""
    args = get_args(annotation)
    if type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _element_type(annotation: Any) -> Any:
    """The model inside list[X], dict[str, X] or X | None."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is dict:
        return args[-1] if args else None
    return args[0] if args else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["the file does not exist"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        raise ConfigError(str(path), [f"{where}not valid YAML: {reason}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of sections such as pools:"])
    return data


def _deep_merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


STICKY_SECRET_VARIABLE = f"{ENV_PREFIX}STICKY_SECRET"


def variable(
    name: str, environ: Mapping[str, str] | None = None, dotenv: str | Path = ".env"
) -> str | None:
    """A variable from the environment, else from the `.env` file (the environment wins)."""
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    if value is None and Path(dotenv).is_file():
        value = dotenv_values(dotenv).get(name)
    return value


def sticky_secret_from_environment(
    environ: Mapping[str, str] | None = None, dotenv: str | Path = ".env"
) -> str | None:
    """The node-wide sticky cookie key: the environment first, then the `.env` file."""
    secret = variable(STICKY_SECRET_VARIABLE, environ, dotenv)
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            STICKY_SECRET_VARIABLE, [f"the key must be at least {MIN_SECRET_LENGTH} characters"]
        )
    return secret
