"""How every RPC of the gRPC codec answers: a ServiceError becomes its gRPC status (as Triton maps
its errors), a bug becomes INTERNAL with no text of ours, and each call is counted in ``/metrics``.

Also the request fields every RPC reads the same way: a model name (REST's pattern) and a version.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from model.repository import NAME_PATTERN
from service.dataplane.dataplane import DataPlane
from service.errors import ServiceError, bad_request, not_found, quote
from service.observability import metrics, tracing

SERVICE = "inference.GRPCInferenceService"
METHOD_PREFIX = f"/{SERVICE}/"
VERSION_TEXT = re.compile(r"[0-9]{1,9}")
SECONDS = re.compile(r"[0-9]{1,6}")  # a Retry-After in seconds
NAME = re.compile(NAME_PATTERN)  # what REST routes take as a model name
# Status -> gRPC code, as Triton maps its errors.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}
log = logging.getLogger("service.grpc")


class Calls:
    """The calls in flight in one servicer, so a stop can refuse new ones and wait for these."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.calls = threading.Condition()
        self.active, self.draining = 0, False

    def drain(self, deadline: float, quiet: float = 0.5) -> None:
        """Refuse new calls (UNAVAILABLE) and wait until none has run for ``quiet`` seconds or until
        ``deadline`` (``time.monotonic()``): grpcio's own stop cancels calls it has taken but not
        yet handed to a thread, so the server is stopped only once nothing is in flight."""
        with self.calls:
            self.draining = True
            idle_since = None
            while time.monotonic() < deadline:
                if self.active:
                    idle_since = None
                    self.calls.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= quiet:
                    return
                self.calls.wait(0.05)

    def attempt(self, endpoint: str, request: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` as one call in flight (refused with a 503 while draining), counted in /metrics
        under ``grpc:<endpoint>`` with the request's model on record (an unknown name counts as one).
        Raises ServiceError; a bug is logged and raised as a 500 with no text of ours."""
        start = time.perf_counter()
        status = 200
        server = server_span(endpoint, request, args[-1] if args else None) if tracing.ENABLED else None
        try:
            with self.calls:
                if self.draining:  # after SIGTERM: a call that arrives is told to go elsewhere (retryable)
                    raise ServiceError(503, "stopping", "the server is stopping; retry on another instance")
                self.active += 1
            try:
                return fn(*args)
            finally:
                with self.calls:
                    self.active -= 1
                    self.calls.notify_all()
        except ServiceError as exc:
            status = exc.status
            raise
        except Exception:  # a bug: the log has it, the client a status and no text of ours
            status = 500
            log.exception("gRPC %s failed", endpoint.rsplit("/", 1)[-1])
            raise ServiceError(500, "internal_error", "internal error") from None
        finally:
            name = getattr(request, "name", None) or getattr(request, "model_name", "")
            known = name if not name or self.plane.registry.snapshot.knows(name) else metrics.UNKNOWN_MODEL
            metrics.observe_request(f"grpc:{endpoint}", known, status, time.perf_counter() - start)
            if server is not None:
                code = grpc.StatusCode.OK if status < 400 else CODES.get(status, grpc.StatusCode.INTERNAL)
                server.finish(status >= 500, {"rpc.grpc.status_code": code.value[0]})


def server_span(endpoint: str, request: Any, context: Any) -> tracing.ServerSpan:
    """A call's server span (``service/observability/tracing.py``), parented on the ``traceparent`` of its
    invocation metadata; ``context`` is the call's ``grpc.ServicerContext`` (every RPC's last argument)."""
    service, _, method = endpoint[1:].rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    name = getattr(request, "name", None) or getattr(request, "model_name", None)
    if name and NAME.fullmatch(name):  # the span is made before the name is checked: a 4 MB one was kept
        attributes["model.name"] = name
    metadata = context.invocation_metadata() if hasattr(context, "invocation_metadata") else None
    return tracing.ServerSpan(endpoint[1:], tracing.metadata_header(metadata), attributes)


def answers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC whose ServiceError becomes its gRPC status (never a traceback), run by :meth:`Calls.attempt`."""
    endpoint = f"{METHOD_PREFIX}{fn.__name__}"

    @functools.wraps(fn)
    def rpc(self: Calls, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.attempt(endpoint, request, fn, self, request, context)
        except ServiceError as exc:
            if "Retry-After" in exc.headers:
                context.set_trailing_metadata(pushback(exc.headers["Retry-After"]))
            context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)

    return rpc


def pushback(retry_after: str) -> tuple[tuple[str, str], ...]:
    """HTTP's ``Retry-After`` (seconds) as gRPC says it: the ``grpc-retry-pushback-ms`` trailer, which a
    client's retry policy (one that retries UNAVAILABLE) obeys instead of its own backoff (gRFC A6).
    None for a value that is not whole seconds (an HTTP date)."""
    if not SECONDS.fullmatch(retry_after):
        return ()
    return (("grpc-retry-pushback-ms", str(int(retry_after) * 1000)),)


def model_name(text: str) -> str:
    """A model name as REST's routes take one (model/repository.py's pattern); anything else is no
    model here: NOT_FOUND, with the name quoted (escaped, cut) as every error message does."""
    if not NAME.fullmatch(text):
        raise not_found(f"unknown model {quote(text)}")
    return text


def version_of(text: str) -> int | None:
    if text == "":
        return None
    if not VERSION_TEXT.fullmatch(text):
        raise bad_request(f"model_version must be a version number, got {quote(text)}")
    return int(text)
