"""Human units in config files: `parse_duration` and `parse_size`."""

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadweaver.config.units import parse_duration, parse_size

DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE_SCALE = {
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


# ---- durations ----


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("0ms", 0.0),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("250", 250.0),
        (" 10s ", 10.0),
    ],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(5, 5.0), (0.5, 0.5), (0, 0.0), (0.0, 0.0)])
def test_duration_numbers_are_seconds(value: float, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == seconds


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "10x", "5 parsecs", "1.5.2s", "s", "ms10", "10 s s", "1e3s", "10sec", "-5s"],
)
def test_invalid_duration_strings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, -1e-9])
def test_negative_durations_are_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_a_duration(value: bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [1], {"s": 1}, b"10s"])
def test_other_types_are_not_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_nan_is_not_a_duration() -> None:
    """YAML `.nan` is a float; a NaN timeout would never fire and must be refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(math.nan)


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(sorted(DURATION_SCALE)))
def test_duration_round_trip_integers(amount: int, unit: str) -> None:
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * DURATION_SCALE[unit])


@given(
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(DURATION_SCALE)),
)
def test_duration_round_trip_decimals(amount: Decimal, unit: str) -> None:
    text = f"{amount:f}{unit}"
    expected = float(str(amount)) * DURATION_SCALE[unit]
    assert parse_duration(text) == pytest.approx(expected)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_number_round_trip(value: float) -> None:
    assert parse_duration(value) == value


@given(st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=True))
def test_any_negative_number_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**6))
def test_seconds_suffix_and_bare_number_agree(amount: int) -> None:
    assert parse_duration(f"{amount}s") == parse_duration(str(amount)) == parse_duration(amount)


# ---- sizes ----


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 64 * 1024),
        ("10MB", 10_000_000),
        ("1MiB", 1024**2),
        ("2GB", 2 * 1000**3),
        ("1GiB", 1024**3),
        ("32KB", 32_000),
        ("100B", 100),
        ("100", 100),
        ("0", 0),
        ("64kib", 64 * 1024),
        (" 8 KiB ", 8 * 1024),
    ],
)
def test_size_strings(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [1024, 0, 10**12])
def test_size_integers_are_bytes(value: int) -> None:
    assert parse_size(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1.5MB", "10XB", "10 K", "KiB", "-5KiB", "10MB extra", 1.5, None, True, False],
)
def test_invalid_sizes_are_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(SIZE_SCALE)))
def test_size_round_trip(amount: int, unit: str) -> None:
    assert parse_size(f"{amount}{unit}") == amount * SIZE_SCALE[unit]


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(SIZE_SCALE)))
def test_size_units_are_case_insensitive(amount: int, unit: str) -> None:
    expected = amount * SIZE_SCALE[unit]
    assert parse_size(f"{amount}{unit.lower()}") == expected
    assert parse_size(f"{amount}{unit.upper()}") == expected


@given(st.integers(min_value=0, max_value=2**62))
def test_size_integer_round_trip(value: int) -> None:
    assert parse_size(value) == value
    assert parse_size(str(value)) == value
