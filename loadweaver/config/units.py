"""Human units in config files: durations (`500ms`, `10s`, `2m`) and sizes (`64KiB`, `10MB`)."""

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as `500ms`, `10s`, `2m` or `1h`."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like 500ms, 10s, 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: "
            "use a number of seconds or a string like 500ms, 10s, 2m, 1h"
        )
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}: it must be a number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if math.isinf(seconds):
        raise ValueError(f"invalid duration {value!r}: it must be finite")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as `64KiB` or `10MB`."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like 64KiB, 10MB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match.group(2) or "b").lower()
        size = int(match.group(1)) * _SIZE_SCALE[unit]
    else:
        raise ValueError(
            f"invalid size {value!r}: use a number of bytes or a string like 64KiB, 10MB"
        )
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
    ]
}
SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+\s*([Bb]|[KkMmGg][Ii]?[Bb])?\s*$"},
    ]
}


def parse_fraction(value: object) -> object:
    """A fraction from a number (`0.1`) or a percentage (`"10%"`); other values pass through
    for the field's own type check."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


Fraction = Annotated[float, BeforeValidator(parse_fraction)]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
ByteSize = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_SCHEMA)]
