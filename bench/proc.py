"""Processes read from /proc: trees, CPU and RSS, nothing installed to measure them.

A process tree is a process we started and all its descendants (prefork children
included). CPU is utime + stime of each, plus cutime + cstime (its reaped children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of each of its threads), recursively."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


_TREES: dict[int, tuple[float, list[int]]] = {}
TREE_MAX_AGE_S = 2.0


def process_tree(pid: int) -> list[int]:
    """``descendants(pid)``, walked again at most every TREE_MAX_AGE_S: a threads-pool worker
    has hundreds of threads, each a /proc file to read, and the probe samples twice a second
    on the machine it measures. (A process reaped meanwhile still counts: its CPU goes to its
    parent's cutime/cstime.)"""
    now = time.monotonic()
    cached = _TREES.get(pid)
    if cached is None or now - cached[0] > TREE_MAX_AGE_S:
        cached = _TREES[pid] = (now, descendants(pid))
    return cached[1]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stat_cpu_s(stat: str, clk_tck: int = CLK_TCK) -> float:
    """CPU seconds in one /proc/<pid>/stat line: utime + stime + cutime + cstime.

    The command name (field 2) may hold spaces and parentheses: fields are counted after
    its last ``)``.
    """
    fields = stat.rsplit(")", 1)[1].split()  # fields from 3 on: state is fields[0]
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / clk_tck


def cpu_s(pid: int) -> float:
    """utime + stime, plus those of its reaped children (cutime + cstime); 0 once gone."""
    try:
        return stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


class CpuLedger:
    """CPU seconds of a set of process trees, each pid counted at the last value seen, so
    a process that exits between two readings keeps what it used."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def update(self, readings: dict[int, float]) -> float:
        for pid, seconds in readings.items():  # a gone process reads 0: its last value stands
            self.seen[pid] = max(seconds, self.seen.get(pid, 0.0))
        return self.total()

    def total(self) -> float:
        return sum(self.seen.values())


def tree_cpu(roots: list[int]) -> dict[int, float]:
    """CPU seconds of every process in the trees under ``roots``, by pid."""
    return {pid: cpu_s(pid) for root in roots for pid in process_tree(root)}


def tree_rss_mb(roots: list[int]) -> float:
    return sum(rss_kb(pid) for root in roots for pid in process_tree(root)) / 1024


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        for pid in reversed(descendants(proc.pid)):
            with_pid_kill(pid)
        proc.wait()


def with_pid_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
