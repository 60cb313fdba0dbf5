"""The pure parts of bench/e2e: percentiles, /proc parsing, the table, the profile summary."""

from __future__ import annotations

import math

from bench.e2e.cpu import ProcessTicks, machine_busy_ticks, parse_pid_stat, tree_ticks
from bench.e2e.report import RateResult, held_rate, percentile, row, table
from bench.e2e.stacks import epoch
from bench.e2e.topframes import count_frames


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_machine_busy_ticks_leave_out_idle_and_iowait() -> None:
    sample = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 3 0\nintr 1\n"
    assert machine_busy_ticks(sample) == 100 + 5 + 50 + 3 + 2 + 1


def test_pid_stat_with_a_command_name_holding_spaces_and_parentheses() -> None:
    fields = ["S", "42"] + ["0"] * 9 + ["11", "7", "5", "3"] + ["0"] * 30
    parsed = parse_pid_stat("1234 (python (x) y) " + " ".join(fields))
    assert parsed == ProcessTicks(pid=1234, ppid=42, ticks=11 + 7 + 5 + 3)


def test_tree_ticks_sum_the_process_and_its_descendants_only() -> None:
    samples = [
        ProcessTicks(10, 1, 100),  # serve
        ProcessTicks(11, 10, 20),  # its decoder subprocess
        ProcessTicks(12, 11, 3),  # a grandchild
        ProcessTicks(13, 1, 999),  # the simulator, a sibling
    ]
    assert tree_ticks(samples, 10) == 123
    assert tree_ticks(samples, 13) == 999
    assert tree_ticks(samples, 99) == 0


def result(
    rate: float, p99_seconds: float, *, ok: bool = True, mode: str = "one process"
) -> RateResult:
    latencies = [0.01] * 98 + [p99_seconds] * 2  # the 99th of 100 by nearest rank
    code = "bare" if mode == "bare" else "AFTER abc1234"
    return RateResult(
        code, mode, "postgresql", rate, sent=100, tasks=100, succeeded=100 if ok else 99,
        latencies=latencies, drain=1.25, service_cpu={"serve": 2.0}, machine_cpu=3.0,
    )  # fmt: skip


def test_a_rate_is_held_when_every_task_succeeded_under_a_second_at_p99() -> None:
    assert result(10, 0.5).held
    assert not result(10, 1.5).held
    assert not result(10, 0.5, ok=False).held
    undrained = result(10, 0.5)
    undrained.drain = None
    assert not undrained.held


def test_row_shows_milliseconds_and_cpu_per_task() -> None:
    line = row(result(25, 0.5))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells == [
        "AFTER abc1234", "one process", "postgresql", "25", "100/100", "100",
        "10", "10", "500", "500", "1.2", "20.0", "30.0", "yes",
    ]  # fmt: skip


def test_table_gives_the_held_rate_as_a_ratio_of_the_bare_pipelines() -> None:
    results = [result(10, 0.1), result(50, 0.2), result(100, 3.0)]
    results += [result(rate, 0.05, mode="bare") for rate in (10, 50, 100)]
    assert held_rate(results[:3]) == 50
    text = table(results)
    assert "gateway 50/s, bare 100/s, ratio 0.50" in text
    assert text.splitlines()[0].count("|") == text.splitlines()[2].count("|")


def test_sqlite_completion_text_is_read_as_utc() -> None:
    assert epoch("1970-01-01 00:00:10.500000") == 10.5
    assert epoch(3.25) == 3.25
    assert epoch(None) is None


def test_topframes_count_self_and_inclusive_samples() -> None:
    lines = ["main;handle;execute 5", "main;handle 2", "main;poll;execute 3", "garbage"]
    own, inclusive, total = count_frames(lines)
    assert total == 10
    assert own == {"execute": 8, "handle": 2}
    assert inclusive["main"] == 10
    assert inclusive["execute"] == 8
    assert inclusive["handle"] == 7
