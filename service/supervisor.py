"""``python -m service`` with gRPC on: gunicorn (HTTP) and the gRPC server processes, side by side.

This process starts gunicorn and ``GRPC_WORKERS`` gRPC processes (``service/grpc_server.py``),
passes every signal gunicorn acts on to gunicorn and the stop signals to the gRPC processes too,
restarts a gRPC process that dies while serving (at most once a second per slot, as gunicorn does
its workers), and exits when gunicorn does: after stopping the gRPC processes, with gunicorn's
status or, when that is 0, the first non-zero status of a gRPC process. Each child gets SIGTERM if
this process dies (``PR_SET_PDEATHSIG``), so none outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
GUNICORN_SIGNALS = STOP_SIGNALS | {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
                                   signal.SIGWINCH}
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str]) -> int:
    return subprocess.Popen(argv, preexec_fn=die_with_parent).pid  # preexec_fn: this process runs no threads


def supervise(gunicorn_argv: list[str], grpc_processes: int) -> int:
    grpc_argv = [sys.executable, "-m", "service.grpc_server"]
    grpc: dict[int, float] = {spawn(grpc_argv): time.monotonic() for _ in range(grpc_processes)}
    gunicorn = spawn(gunicorn_argv)
    stopping = False
    status = 0

    def forward(sig: int, frame) -> None:
        nonlocal stopping
        if sig in STOP_SIGNALS:
            stopping = True
            for pid in grpc:
                os.kill(pid, signal.SIGTERM)
        if gunicorn:
            os.kill(gunicorn, sig)

    for sig in GUNICORN_SIGNALS:
        signal.signal(sig, forward)
    while gunicorn or grpc:
        pid, wait_status = os.wait()
        code = os.waitstatus_to_exitcode(wait_status)
        code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
        if pid == gunicorn:
            gunicorn, status = 0, code if code != 0 else status
            if not stopping:  # gunicorn ended by itself: the server is over
                stopping = True
                for other in grpc:
                    os.kill(other, signal.SIGTERM)
        elif pid in grpc:
            started = grpc.pop(pid)
            if stopping:
                status = status or code
            else:
                print(f"gRPC process {pid} exited with {code}; restarting it", file=sys.stderr, flush=True)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
                grpc[spawn(grpc_argv)] = time.monotonic()
    return status
