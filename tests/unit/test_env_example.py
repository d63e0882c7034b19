"""`.env.example` lists every variable loadweaver reads, so it cannot fall behind the schema."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from loadweaver.config.models import Config

EXAMPLE = Path(__file__).parents[2] / ".env.example"
STANDALONE = [
    "LOADWEAVER_ENV",
    "LOADWEAVER_STICKY_SECRET",
    "LOADWEAVER_ADMIN_TOKEN",
    "LOADWEAVER_ADMIN_URL",
    "LOADWEAVER_REDIS_PASSWORD",
]
# Lists and maps of records are set in YAML; the example shows how, once each.
STRUCTURED = {
    "listeners",
    "pools",
    "routes",
    "rate_limits",
    "logging.sinks",
    "alerts.webhooks",
    "alerts.rules",
}


def scalar_settings(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _model_in(field.annotation)
        if path in STRUCTURED:
            continue
        if nested is not None:
            yield from scalar_settings(nested, f"{path}.")
        else:
            yield path


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return None


def variables_in_example() -> set[str]:
    return set(re.findall(r"^#?\s*(LOADWEAVER_[A-Z0-9_]+)=", EXAMPLE.read_text(), re.MULTILINE))


def test_every_scalar_setting_has_its_variable_in_the_example() -> None:
    expected = {"LOADWEAVER_" + path.upper().replace(".", "__") for path in scalar_settings(Config)}
    missing = sorted(expected - variables_in_example())
    assert not missing, f".env.example lacks {missing}"


def test_the_example_names_no_variable_that_does_not_exist() -> None:
    known = {"LOADWEAVER_" + path.upper().replace(".", "__") for path in scalar_settings(Config)}
    structured = {"LOADWEAVER_" + path.upper().replace(".", "__") for path in STRUCTURED}
    unknown = sorted(variables_in_example() - known - structured - set(STANDALONE))
    assert not unknown, f".env.example names variables loadweaver does not read: {unknown}"


def test_the_standalone_variables_are_listed() -> None:
    assert set(STANDALONE) <= variables_in_example()
