"""CPU time from /proc: of a process and its descendants, and of the whole machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def machine_busy_ticks(stat_text: str) -> int:
    """Busy ticks of all CPUs from /proc/stat's `cpu` line: everything but idle and iowait.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    already counted in user (and guest_nice in nice), so it is not added again."""
    line = stat_text.splitlines()[0].split()
    if line[0] != "cpu":
        raise ValueError(f"not a /proc/stat sample: {line[:1]}")
    values = [int(value) for value in line[1:9]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


@dataclass(frozen=True)
class ProcessTicks:
    """One line of /proc/PID/stat: its parent, and CPU ticks of the process (all threads) plus
    those of its children that exited and were waited for."""

    pid: int
    ppid: int
    ticks: int


def parse_pid_stat(text: str) -> ProcessTicks:
    """Fields of /proc/PID/stat; the command name (field 2) may hold spaces and parentheses,
    so the rest is split after its last ')'."""
    pid = int(text[: text.index(" ")])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(value) for value in rest[11:15])
    return ProcessTicks(pid, ppid, utime + stime + cutime + cstime)


def tree_ticks(samples: list[ProcessTicks], root: int) -> int:
    """Ticks of `root` and every live descendant (a subprocess that already exited is in its
    parent's cutime/cstime once waited for)."""
    children: dict[int, list[ProcessTicks]] = {}
    by_pid = {sample.pid: sample for sample in samples}
    for sample in samples:
        children.setdefault(sample.ppid, []).append(sample)
    if root not in by_pid:
        return 0
    total, stack = 0, [by_pid[root]]
    while stack:
        sample = stack.pop()
        total += sample.ticks
        stack.extend(children.get(sample.pid, []))
    return total


def all_processes() -> list[ProcessTicks]:
    samples = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            samples.append(parse_pid_stat((entry / "stat").read_text()))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return samples


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of each watched process tree, and busy seconds of the machine."""

    trees: dict[str, float]
    machine: float


def sample(roots: dict[str, int]) -> CpuSample:
    processes = all_processes()
    trees = {name: tree_ticks(processes, pid) / CLOCK_TICKS for name, pid in roots.items()}
    machine = machine_busy_ticks((PROC / "stat").read_text()) / CLOCK_TICKS
    return CpuSample(trees, machine)


def used(before: CpuSample, after: CpuSample) -> CpuSample:
    """CPU seconds spent between two samples."""
    trees = {name: after.trees[name] - before.trees[name] for name in before.trees}
    return CpuSample(trees, after.machine - before.machine)
