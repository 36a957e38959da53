"""Slow clients: connections that trickle a body a byte a second or stay silent, beside a well-behaved one.

The serving benchmark's slow-clients row and its worker comparison (``bench/serve_load.py``), and
``tests/integration/test_slow_clients.py``, run :class:`SlowClients` against the real server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from bench.harness import Server, wrk


class SlowClients:
    """``trickle`` connections sending a request body a byte a second and ``silent`` ones sending
    nothing; each reconnects when the server closes it (as an attacker would), counted in ``closed``."""

    def __init__(self, host: str, port: int, path: str, body: bytes, trickle: int = 64, silent: int = 16) -> None:
        self.addr, self.trickle, self.silent = (host, port), trickle, silent
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.body, self.closed, self.stop = body, 0, threading.Event()
        self.trickling = threading.Event()  # every attacker connected, and the trickling ones sent a byte
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self, trickling: bool) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=5)
        s.setblocking(False)
        if trickling:
            s.send(self.head)
        return s

    @staticmethod
    def is_closed(s: socket.socket) -> bool:
        """The server closed it (or answered it, e.g. with a 408): either way this attacker is done."""
        try:
            return s.recv(65536, socket.MSG_PEEK) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True

    def run(self) -> None:
        # [socket, bytes of the body sent, trickling?]
        conns = [[self.connect(True), 0, True] for _ in range(self.trickle)]
        conns += [[self.connect(False), 0, False] for _ in range(self.silent)]
        while not self.stop.wait(1.0):
            for conn in conns:
                sock, sent, trickling = conn
                if self.is_closed(sock):
                    self.closed += 1
                    sock.close()
                    conn[:] = [self.connect(trickling), 0, trickling]
                elif trickling and sent < len(self.body) - 1:  # never the last byte: the request never completes
                    with contextlib.suppress(OSError):
                        sock.send(self.body[sent:sent + 1])
                        conn[1] = sent + 1
            self.trickling.set()
        for conn in conns:
            conn[0].close()

    def __enter__(self) -> SlowClients:
        self.thread.start()
        if not self.trickling.wait(30):
            raise RuntimeError("the slow clients could not connect and start trickling within 30 s")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def slow_client_row(srv: Server, body: Path, requests: int = 200, seconds: float = 8) -> dict:
    """``requests`` sequential ``/predict`` requests (wrk, one connection) while 64 connections trickle and
    16 stay silent: wrk's summary with ``attackers_closed_by_server`` and no rate."""
    host, port = srv.url.split("//")[1].split(":")
    with SlowClients(host, int(port), "/predict", body.read_bytes()) as attack:
        r = wrk(f"{srv.url}/predict", body, 1, seconds, max_requests=requests, timeout=5)
    r["rps"] = None  # one connection in turn with the attackers: latencies are the point, not a rate
    r["attackers_closed_by_server"] = attack.closed
    return r
