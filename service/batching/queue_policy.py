"""Triton's queue policy, for every protocol: a request's deadline, the server's default, and a bound on
the requests waiting in one process.

A request's **deadline** is its own timeout (V2's ``timeout`` parameter in microseconds as Triton reads
it, gRPC's call deadline, or the ``X-Timeout-Microseconds`` header on the other HTTP protocols) or
``DEFAULT_TIMEOUT_MICROSECONDS``, whichever is shorter (a request may shorten the server's, never
lengthen it: Triton's ``allow_timeout_override``), counted from when the server had the request. A
request whose deadline passes before its batch runs is **not computed**: it is answered at its
deadline (the batcher wakes it) with ``504 deadline_exceeded`` (gRPC ``DEADLINE_EXCEEDED``, as the
HTTP mapping of gRPC codes has it). A request that finds ``MAX_QUEUE_SIZE`` requests already waiting
in its process is refused at once with ``503 queue_full`` and ``Retry-After`` (gRPC ``UNAVAILABLE``),
before its body is parsed where the front end can (the inference middleware).

Each request in the data plane holds a :class:`Ticket`: *waiting* until its forward pass starts
(the batcher says so), then *running*. The per-model counts are the autoscaling signal,
``nn_requests_in_progress{model,state}`` (``service/observability/metrics.py``).
"""

from __future__ import annotations

import threading
import time

from service.errors import ServiceError
from service.observability import metrics

MAX_TIMEOUT_MICROSECONDS = 3_600_000_000  # an hour: any longer is a mistake, not a deadline


def deadline_exceeded(timeout_us: int) -> ServiceError:
    return ServiceError(504, "deadline_exceeded", f"the request's deadline ({timeout_us} µs) passed before its "
                        "batch ran; it was not computed")


def queue_full(limit: int) -> ServiceError:
    return ServiceError(503, "queue_full", f"{limit} requests are already waiting in this process "
                        "(MAX_QUEUE_SIZE); retry later or elsewhere", headers={"Retry-After": "1"})


def parse_timeout(value: object, where: str) -> int | None:
    """A client's timeout in microseconds (an integer, 0 for none), or a 400 naming ``where``."""
    if value is None:
        return None
    if isinstance(value, str):  # ASCII digits only ("²" is a digit to str.isdigit), and few (int() caps at 4300)
        text = value.strip()
        value = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT_MICROSECONDS:
        raise ServiceError(400, "bad_request", f"{where} must be a whole number of microseconds from 0 (none) "
                           f"to {MAX_TIMEOUT_MICROSECONDS}")
    return value or None


class Ticket:
    """One request's place in its process's data plane: its deadline, and whether it waits or runs."""

    __slots__ = ("deadline", "model", "policy", "running", "timeout_us")

    def __init__(self, policy: QueuePolicy, model: str, deadline: float | None, timeout_us: int) -> None:
        self.policy, self.model, self.deadline, self.timeout_us = policy, model, deadline, timeout_us
        self.running = False

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline; may be negative)."""
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def error(self) -> ServiceError:
        self.policy.shed("deadline")
        return deadline_exceeded(self.timeout_us)

    def start(self) -> None:
        """The request's forward pass starts: it no longer waits (called by the runner)."""
        if not self.running:
            self.running = True
            self.policy.move(self.model, "waiting", "running")


class QueuePolicy:
    """This process's queue policy and counts (``MAX_QUEUE_SIZE``, ``DEFAULT_TIMEOUT_MICROSECONDS``)."""

    def __init__(self, max_queue_size: int = 0, default_timeout_us: int = 0) -> None:
        self.max_queue_size = max_queue_size  # 0: unbounded
        self.default_timeout_us = default_timeout_us  # 0: none
        self.waiting = 0
        self.lock = threading.Lock()  # threads of a gRPC process; uncontended in a gevent worker

    def full(self) -> bool:
        """Whether a new request would be refused now (the inference middleware asks before parsing a body)."""
        return 0 < self.max_queue_size <= self.waiting

    def hold(self) -> None:
        """Count a request that was read and waits for its turn to be parsed (the HTTP worker's turns)
        among the waiting until :meth:`unhold`: MAX_QUEUE_SIZE bounds it too, and one that finds the
        queue full is refused before it waits."""
        with self.lock:
            self.waiting += 1  # held, not admitted: the model's gauge counts it once it is

    def unhold(self) -> None:
        with self.lock:
            self.waiting -= 1

    def admit(self, model: str, timeout_us: int | None, received: float | None) -> Ticket:
        """A ticket for a request to ``model`` (a name on record), or the refusal: queue full, or its
        deadline already past (then nothing is computed)."""
        timeouts = [t for t in (timeout_us, self.default_timeout_us) if t]
        timeout = min(timeouts) if timeouts else 0
        now = time.perf_counter()
        deadline = (received if received is not None else now) + timeout / 1e6 if timeout else None
        with self.lock:
            if self.full():
                refused = True
            else:
                refused = False
                self.waiting += 1
        if refused:
            self.shed("queue_full")
            raise queue_full(self.max_queue_size)
        ticket = Ticket(self, model, deadline, timeout)
        metrics.queue_gauge(model, "waiting").inc()
        if deadline is not None and now >= deadline:
            self.release(ticket)
            raise ticket.error()
        return ticket

    def move(self, model: str, old: str, new: str) -> None:
        with self.lock:
            self.waiting -= 1
        metrics.queue_gauge(model, old).dec()
        metrics.queue_gauge(model, new).inc()

    def release(self, ticket: Ticket) -> None:
        """The request left the data plane (answered, refused or failed)."""
        if ticket.running:
            metrics.queue_gauge(ticket.model, "running").dec()
        else:
            with self.lock:
                self.waiting -= 1
            metrics.queue_gauge(ticket.model, "waiting").dec()

    @staticmethod
    def shed(reason: str) -> None:
        metrics.SHED.labels(reason).inc()
