"""The pick microbenchmark keeps running (its timing is for the closing note, not for tests)."""

import pytest

from tests.performance import pick_bench


def test_every_strategy_is_timed_at_every_size() -> None:
    results = pick_bench.measure(picks=50, sizes=(3, 20))
    assert {"RoundRobin", "LeastConn", "RandomChoice", "PowerOfTwo"} <= set(results)
    for by_size in results.values():
        assert set(by_size) == {3, 20}
        assert all(microseconds > 0 for microseconds in by_size.values())


def test_the_table_has_a_row_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    pick_bench.main(["20"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["strategy", "3", "backends", "100"]
    assert {line.split()[0] for line in lines[3:]} >= {"RoundRobin", "LeastConn"}
