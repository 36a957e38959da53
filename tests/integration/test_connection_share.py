"""Client connections spread evenly over the workers (service/http_server/connection_share.py), on a real
server: one worker is frozen (SIGSTOP) while clients connect, so the other takes them all, as a worker busy
for a while would; once it runs again, the next connections must go to it until the two hold as many.
Without the share, whichever worker wakes first takes each new connection, and the split stays uneven for
as long as the connections are kept alive (measured under wrk: 76 / 180 of 256)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import LocalServer
from tests.integration.test_slow_clients import XOR, host_port, raw_request, read_response

pytestmark = pytest.mark.serial  # a handoff waits 2 ms for the other worker: run alone (Makefile)

EACH = 48  # connections opened while one worker is frozen, and again after


def children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def workers(server: LocalServer) -> list[int]:
    """gunicorn's workers: the children of the process started (gunicorn's master when gRPC is off)."""
    return sorted(children(server.proc.pid))


def established(port: int) -> set[str]:
    """Socket inodes of the established TCP connections to ``port`` (this host's side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def held(pid: int, port: int, besides: frozenset[str] = frozenset()) -> int:
    """Client connections to ``port`` the process ``pid`` holds open, other than those in ``besides``."""
    return len(held_sockets(pid, port) - besides)


def held_sockets(pid: int, port: int) -> frozenset[str]:
    """Socket inodes of the client connections to ``port`` the process ``pid`` holds open."""
    mine = established(port)
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in mine:
                found.add(target[8:-1])
    return frozenset(found)


def wait_until_idle(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` sleeps (state S: back in its event loop's poll after SIGCONT, not still catching up)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "S":
        assert time.monotonic() < deadline, f"worker {pid} never went idle"
        time.sleep(0.01)


def connect_and_ask(url: str) -> socket.socket:
    """A kept-alive connection, answered once (so a worker has accepted it)."""
    sock = socket.create_connection(host_port(url), timeout=30)
    sock.sendall(raw_request("/predict", XOR))
    assert read_response(sock)[0] == 200
    return sock


def test_new_connections_go_to_the_worker_holding_fewer(tmp_path):
    server = LocalServer(tmp_path, WORKERS="2", GRPC_PORT="0").start()
    socks: list[socket.socket] = []
    try:
        first, second = workers(server)
        # connections held before, the readiness check's kept alive: left out of the counts below, as
        # their client may close them at any time (its garbage collection)
        kept = held_sockets(first, server.port), held_sockets(second, server.port)
        old, before = kept[0] | kept[1], (len(kept[0]), len(kept[1]))
        os.kill(first, signal.SIGSTOP)  # frozen: the second worker must take every connection now
        try:
            socks += [connect_and_ask(server.url) for _ in range(EACH)]
        finally:
            os.kill(first, signal.SIGCONT)
        assert held(first, server.port, old) == 0 and held(second, server.port, old) == EACH
        wait_until_idle(first)  # a worker just woken may take over 2 ms to accept: what is tested is after
        socks += [connect_and_ask(server.url) for _ in range(EACH)]
        split = held(first, server.port, old), held(second, server.port, old)
        taken = split[0]
        print(f"\nconnections per worker: {split} ({before} before the first was frozen); "
              f"the first took {taken} of the last {EACH}")
        # the first takes new connections until it holds within SLACK of the second: ideally all of them,
        # the last one either way, and on a loaded host some fewer (a deferral lasts 2 ms, then the second
        # worker takes the connection). Measured: 46-48 of 48; 38-44 with three busy loops beside the test
        # on two cores; without the share 9-24 in eight runs.
        assert sum(split) == 2 * EACH and taken >= 2 * EACH // 3, split
    finally:
        for sock in socks:
            sock.close()
        assert server.stop() == 0
