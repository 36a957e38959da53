"""What the machine is, recorded in every results file: CPU, cores, memory, BLAS and its kernel, versions.

A figure from this shared 2-core VM means little without the machine it came from: the CPU model
(``/proc/cpuinfo``), the cores, the memory (``/proc/meminfo``), the BLAS library with the kernel it
picked for this CPU and its threads in force (threadpoolctl), and the Python and NumPy versions.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where there is no ``/proc``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def memory_gib() -> float | None:
    """Total memory in GiB (``MemTotal`` of ``/proc/meminfo``), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def blas() -> str:
    """The BLAS library NumPy calls, its version and the kernel it chose for this CPU, e.g.
    ``openblas 0.3.31 SkylakeX``."""
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(" ".join(str(part) for part in (p["internal_api"], p.get("version"), p.get("architecture"))
                              if part) for p in pools)


def machine(torch=None, threads: int | None = None) -> dict[str, str]:
    """The machine, the thread pools actually in force and, given, torch's threads.

    Parameters
    ----------
    torch : module, optional
        PyTorch, when the benchmark uses it: its version and thread counts are recorded too.
    threads : int, optional
        The threads the benchmark asked for, recorded beside those in force.

    Returns
    -------
    dict of str to str
        ``cpu``, ``cores``, ``memory``, ``blas``, ``python``, ``numpy``, ``thread pools in force``
        (and ``threads asked``, ``torch`` when given).
    """
    gib = memory_gib()
    info = {"cpu": cpu_model(), "cores": str(os.cpu_count()),
            "memory": f"{gib:.1f} GiB" if gib is not None else "", "blas": blas(),
            "python": platform.python_version(), "numpy": np.__version__,
            "thread pools in force": ", ".join(
                f"{p['internal_api']} {p.get('version') or ''} ({Path(p['filepath']).name}) x{p['num_threads']}"
                for p in threadpool_info())}
    if threads is not None:
        info["threads asked"] = str(threads)
    if torch is not None:
        info["torch"] = (f"{torch.__version__}, intra-op threads {torch.get_num_threads()}, "
                         f"inter-op threads {torch.get_num_interop_threads()}")
    return info


def summary(info: dict[str, str]) -> str:
    """One line for a table's caption: ``2-core AMD EPYC, 23.5 GiB, openblas 0.3.31 Haswell, Python ..., numpy ...``."""
    parts = [f"{info.get('cores')}-core {info.get('cpu')}", info.get("memory"), info.get("blas"),
             f"Python {info.get('python')}", f"numpy {info.get('numpy')}"]
    if info.get("torch"):
        parts.append(f"PyTorch {info['torch'].split(',')[0]}")
    return ", ".join(p for p in parts if p)
