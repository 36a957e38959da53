"""``python -m service`` with gRPC on: gunicorn (HTTP) and the gRPC server processes, side by side.

This process starts gunicorn and ``GRPC_WORKERS`` gRPC processes (``service/grpc/server.py``),
passes every signal gunicorn acts on to gunicorn and the stop signals to the gRPC processes too,
restarts a gRPC process that dies while serving, and exits when gunicorn does: after stopping the
gRPC processes, with gunicorn's status or, when that is 0, the first non-zero status of a gRPC
process. Each child gets SIGTERM if this process dies (``PR_SET_PDEATHSIG``), so none outlives it.

Restarts back off as Kubernetes backs off a crashing container (:class:`Backoff`): a process that
dies soon after its start is restarted after 1 s, then 2, 4 ... at most 30 s after each further
quick death, and one that ran a minute or more counts as healthy again. Each restart is a JSON log
line on stderr (the server's shape) naming the process, its status, how long it ran, how many deaths
in a row, and the delay. HTTP keeps serving meanwhile, and a stop signal during a delay stops at once
(no restart follows). A gRPC process that ends takes its live gauges (``nn_requests_in_progress``,
the drift windows) out of ``/metrics`` with it, as gunicorn's ``child_exit`` does for a worker.

Every child's ``Popen`` is kept until this process reaps it: one dropped while its process runs is
reaped by ``subprocess`` itself at the next start, and its death never reaches the loop here.

This process stays for the server's whole life, so it stays small: ``python -m service`` validates the
settings (pydantic, and the modules the settings check need, numpy among them) and then replaces itself
with ``python -m service.supervisor`` (:func:`main`, same pid), which imports the standard library and
``service.observability.grpc_readiness`` only: 24 MB PSS before, 6 after (``bench/footprint.py``).
What it needs comes on its command line; the environment (``STATE_DIR``, ``PROMETHEUS_MULTIPROC_DIR``,
the BLAS threads) passes through the exec to the children.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from service.observability import grpc_readiness

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
GUNICORN_SIGNALS = STOP_SIGNALS | {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
                                   signal.SIGWINCH}
PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.1  # how often children are reaped while a restart waits for its time


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


CHILDREN: dict[int, subprocess.Popen] = {}  # pid -> its Popen, until reaped (see the module's docstring)


def spawn(argv: list[str]) -> int:
    child = subprocess.Popen(argv, preexec_fn=die_with_parent)  # preexec_fn: this process runs no threads
    CHILDREN[child.pid] = child
    return child.pid


def reaped(pid: int, code: int) -> None:
    """``pid`` was reaped here with ``code``: its Popen knows, and is let go (it will not wait again)."""
    child = CHILDREN.pop(pid, None)
    if child is not None:
        child.returncode = code


def signal_child(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # ended meanwhile (reaped, not yet seen by the loop)
        os.kill(pid, sig)


def forget_gauges(pid: int) -> None:
    """A dead process's live gauges out of ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
    ``mark_process_dead``, without importing it here)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob(f"gauge_live*_{pid}.db"):
            with contextlib.suppress(OSError):
                path.unlink()


def log(level: str, message: str, **fields: object) -> None:
    """One JSON line on stderr, in the shape of the server's others (``service/observability/logs.py``)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+00:00"
    print(json.dumps({"ts": stamp, "level": level, "logger": "service.supervisor", "pid": os.getpid(),
                      "message": message, **fields}), file=sys.stderr, flush=True)


class Backoff:
    """The restart delays of one gRPC process slot: ``first`` doubling per death in a row up to ``cap``;
    a run of ``stable`` seconds or more starts the count again. (A plain class: ``dataclasses`` would
    import ``inspect``, a megabyte of this long-lived process.)"""

    def __init__(self, first: float = 1.0, cap: float = 30.0, stable: float = 60.0, deaths: int = 0) -> None:
        self.first, self.cap, self.stable = first, cap, stable
        self.deaths = deaths  # in a row

    def delay(self, ran: float) -> float:
        """Seconds from now until the restart of a process that died after running ``ran`` seconds."""
        if ran >= self.stable:
            self.deaths = 0
        self.deaths += 1
        if self.deaths == 1:
            return max(0.0, self.first - ran)  # at most one start a second, as gunicorn does its workers
        return min(self.cap, self.first * 2 ** (self.deaths - 1))


def reap(next_restart: Callable[[], float | None]) -> tuple[int, int] | None:
    """(pid, exit code as a shell says it) of the next child to end, or None when the time
    ``next_restart()`` gives (``time.monotonic()``) comes first. Asked again at each poll, so a stop
    signal that cancels the restarts meanwhile turns this into a plain wait."""
    while True:
        due = next_restart()
        if due is None:
            pid, wait_status = os.wait()
            break
        pid, wait_status = os.waitpid(-1, os.WNOHANG)
        if pid:
            break
        left = due - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(POLL_SECONDS, left))
    code = os.waitstatus_to_exitcode(wait_status)
    return pid, 128 - code if code < 0 else code  # killed by signal N: 128 + N


def supervise(gunicorn_argv: list[str], grpc_processes: int, state_dir: Path | None = None) -> int:
    """Run gunicorn and the gRPC processes until gunicorn ends; ``state_dir`` (``STATE_DIR``) is where
    the gRPC processes say they serve, for HTTP's readiness (``service/observability/grpc_readiness.py``)."""
    grpc_argv = [sys.executable, "-m", "service.grpc.server"]
    if state_dir is not None:
        grpc_readiness.expect(state_dir)
    backoffs = [Backoff() for _ in range(grpc_processes)]
    grpc: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
    pending: dict[int, float] = {}  # slot -> when it restarts

    def start(slot: int) -> None:
        pid = spawn(grpc_argv)
        grpc[pid] = (slot, time.monotonic())
        if stopping:  # a stop signal came while it started: the handler did not know its pid
            signal_child(pid, signal.SIGTERM)

    stopping = False
    status = 0
    for slot in range(grpc_processes):
        start(slot)
    gunicorn = spawn(gunicorn_argv)

    def stop_grpc() -> None:
        nonlocal stopping
        stopping = True
        pending.clear()
        for pid in list(grpc):
            signal_child(pid, signal.SIGTERM)

    def forward(sig: int, frame) -> None:
        if sig in STOP_SIGNALS:
            stop_grpc()
        if gunicorn:
            signal_child(gunicorn, sig)

    for sig in GUNICORN_SIGNALS:
        signal.signal(sig, forward)
    while gunicorn or grpc:
        ended = reap(lambda: min(pending.values(), default=None))
        if ended is None:  # a restart's time has come
            now = time.monotonic()
            for slot in [s for s, due in pending.items() if due <= now]:
                if stopping:  # a stop signal came during an earlier start: no more
                    break
                pending.pop(slot, None)
                start(slot)
            continue
        pid, code = ended
        reaped(pid, code)
        if pid == gunicorn:
            gunicorn, status = 0, code if code != 0 else status
            if not stopping:  # gunicorn ended by itself: the server is over
                stop_grpc()
        elif pid in grpc:
            slot, started = grpc.pop(pid)
            grpc_readiness.unmark(state_dir, pid)  # ended without saying so (killed): it serves no more
            forget_gauges(pid)
            if stopping:
                status = status or code
            else:
                ran = time.monotonic() - started
                delay = backoffs[slot].delay(ran)
                log("warning", f"gRPC process {pid} exited with {code} after {ran:.1f} s ({backoffs[slot].deaths} in "
                    f"a row); restarting it in {delay:.1f} s", exit_code=code, ran_seconds=round(ran, 1),
                    deaths_in_a_row=backoffs[slot].deaths, restart_in_seconds=round(delay, 1))
                pending[slot] = time.monotonic() + delay
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m service.supervisor GRPC_PROCESSES STATE_DIR GUNICORN_ARGV...``: what ``python -m service``
    runs once the settings are valid (``STATE_DIR`` empty: no readiness marks)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or not args[0].isdigit() or int(args[0]) < 1:
        print("usage: python -m service.supervisor GRPC_PROCESSES STATE_DIR GUNICORN_ARGV... "
              "(started by python -m service)", file=sys.stderr)
        return 2
    processes, state_dir, *gunicorn_argv = args
    return supervise(gunicorn_argv, int(processes), Path(state_dir) if state_dir else None)


if __name__ == "__main__":
    sys.exit(main())
