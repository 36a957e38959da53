"""What a benchmark reads of a process from ``/proc``: its CPU time, children, memory and open files.

On a shared machine throughput measures the neighbours as much as the code; a process's own CPU time
per request does not. These readers are Linux's (proc(5)); the benchmarks run nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``state`` first, as proc(5) counts from 3)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process's children (a gunicorn master's workers), from ``pgrep -P``."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def children_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process's children (a worker that just exited counts 0)."""
    total = 0.0
    for child in children(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(child)
    return total


def rss_mb(pid: int) -> float:
    """The process's resident memory (``VmRSS``) in MB, or NaN where it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files(pid: int) -> int:
    """Open descriptors other than sockets (connections come and go; files and pipes must not grow)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count
