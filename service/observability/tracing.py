"""OpenTelemetry tracing, the one home: configured from the standard ``OTEL_*`` variables, off unless they
name an exporter, and free when off (``docs/tracing.md`` has the spans, the settings and the cost).

Off (the default: no ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and no
``OTEL_TRACES_EXPORTER``, or ``OTEL_TRACES_EXPORTER=none``, or ``OTEL_SDK_DISABLED=true``), the request path
checks one module flag, :data:`ENABLED`, and creates nothing, not even a no-op span; the OpenTelemetry
packages are never imported (their modules would cost every worker memory).

On, :func:`start` builds the SDK's tracer provider in *each serving process after fork* (an HTTP worker in
``BufferingGeventWorker.run``, a gRPC process in its ``main``): the app is preloaded in gunicorn's master, and
a ``BatchSpanProcessor``'s export thread must not be made there and forked. :func:`shutdown` flushes what is
queued as the process stops. Spans go out over OTLP/HTTP with protobuf bodies (``opentelemetry-exporter-otlp-
proto-http``): in a gevent worker its ``requests`` socket yields to the event loop while a collector answers,
where grpcio's exporter would block the loop in its C core (the reason gRPC is served from processes of its
own).

What the front ends and the batchers call, each only behind ``if tracing.ENABLED``:

* :class:`ServerSpan` -- a request's server span, parented on the client's W3C ``traceparent`` /
  ``tracestate`` (or the propagators ``OTEL_PROPAGATORS`` names), current while the request is served;
* :func:`body_read` / the span ``read body`` -- the HTTP worker times a body it buffers before the app runs;
* :func:`between` -- a step timed by its caller (decode, encode), a child of the current span;
* :func:`span` -- a step as a context manager (gradcheck, explain; a shared no-op one when off);
* :func:`forward_pass` -- one forward pass: ONE ``batch`` span linked to every request it serves, and each
  waiting request's ``queue`` span (from joining the queue to the pass) under that request's own span;
* :func:`trace_id` -- the current trace id, for the request's JSON log line.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util as importlib_util
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

ENABLED = False  # the one flag the request path checks: True only in a process where start() built the SDK

EXPORTERS = ("otlp", "console")
PROTOCOL = "http/protobuf"  # the one OTLP protocol exported here (see the module's docstring)
DEFAULT_SERVICE_NAME = "numpy-nets"
TRUE = ("true", "1", "yes", "on")

_NOTHING = contextlib.nullcontext()  # span() when off: one shared object, nothing made per call
# (start, end) in ns of the body the HTTP worker read for the request being served (its greenlet's own)
_body: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("traced_body", default=None)

# Set by start(): the SDK's objects (None while off, so nothing of OpenTelemetry is imported)
_provider: Any = None
_tracer: Any = None
_trace: Any = None  # the opentelemetry.trace module
_context: Any = None  # the opentelemetry.context module
_propagate: Any = None  # the opentelemetry.propagate module
_Link: Any = None
_SERVER: Any = None  # SpanKind.SERVER
_ERROR: Any = None  # StatusCode.ERROR


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this server cannot do."""


def exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the standard variables ask for; empty: tracing is off.

    ``OTEL_TRACES_EXPORTER`` (a comma-separated list of ``otlp``, ``console``, or ``none``) decides when set;
    unset, an OTLP endpoint (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) turns
    OTLP on. (The specification's default for an unset ``OTEL_TRACES_EXPORTER`` is ``otlp``; here a server
    with no collector named sends nothing.) ``OTEL_SDK_DISABLED=true`` turns everything off.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in TRUE:
        return []
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        chosen = ["otlp"] if endpoint else []
    else:
        chosen = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
        if "none" in chosen:
            return []
        unknown = [n for n in chosen if n not in EXPORTERS]
        if unknown:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported (otlp, console "
                                     "or none)")
    if "otlp" in chosen:
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or PROTOCOL).strip().lower()
        if protocol != PROTOCOL:
            raise TracingConfigError(f"OTLP protocol {protocol!r} not supported: this server exports "
                                     f"{PROTOCOL} (to a collector's port 4318); docs/tracing.md says why")
    if chosen and not installed():
        raise TracingConfigError("the OTEL_* variables ask for tracing, but OpenTelemetry is not installed: "
                                 "pip install -r requirements-tracing.lock (or numpy-nets[tracing]); the image: "
                                 "docker build --build-arg LOCK=requirements-tracing.lock (docs/tracing.md)")
    return chosen


def installed() -> bool:
    """Whether the OpenTelemetry SDK and its OTLP exporter are installed (the ``tracing`` extra), without
    importing them."""
    try:
        return all(importlib_util.find_spec(name) is not None for name in
                   ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))
    except ModuleNotFoundError:  # a parent package missing
        return False


def start(environ: Mapping[str, str] | None = None) -> bool:
    """Build this process's tracer provider if the variables ask for tracing (after fork); True if on.

    Sampling (``OTEL_TRACES_SAMPLER`` / ``_ARG``), the resource (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``), the exporter (``OTEL_EXPORTER_OTLP_*``: endpoint, headers, timeout,
    compression, certificates) and the batch processor (``OTEL_BSP_*``) are read by the SDK itself."""
    env = os.environ if environ is None else environ
    chosen = exporters(env)
    if not chosen or ENABLED:
        return ENABLED
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # shutdown() flushes, once
    for name in chosen:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))  # its thread: this process's, made now
    trace.set_tracer_provider(provider)
    use(provider)
    return True


def use(provider: Any) -> None:
    """Trace into ``provider`` (an SDK ``TracerProvider``) from now on: :func:`start`'s last step, and the
    unit tests' way in, with an in-memory exporter."""
    global ENABLED, _provider, _tracer, _trace, _context, _propagate, _Link, _SERVER, _ERROR
    from opentelemetry import context, propagate, trace

    _provider, _tracer = provider, provider.get_tracer("service")
    _trace, _context, _propagate = trace, context, propagate
    _Link, _SERVER, _ERROR = trace.Link, trace.SpanKind.SERVER, trace.StatusCode.ERROR
    ENABLED = True


def stop_using() -> None:
    """Tracing off again in this process (the unit tests'; a server stops with :func:`shutdown`)."""
    global ENABLED, _provider
    ENABLED, _provider = False, None


def shutdown() -> None:
    """Export what is queued and stop (a process's last act; nothing is traced after it)."""
    global ENABLED
    if _provider is not None and ENABLED:
        ENABLED = False
        _provider.shutdown()


def flush(timeout_ms: int = 5000) -> bool:
    return _provider.force_flush(timeout_ms) if _provider is not None else True


# -- what the request path calls, each only when ENABLED ------------------------------------------------------
class _Getter:
    """The propagators' view of a carrier: a function from a header name to its value."""

    @staticmethod
    def get(carrier: Callable[[str], str | None], key: str) -> list[str] | None:
        value = carrier(key)
        return [value] if value is not None else None

    @staticmethod
    def keys(carrier: Callable[[str], str | None]) -> list[str]:
        return []


_GETTER = _Getter()


def environ_header(environ: Mapping[str, Any]) -> Callable[[str], str | None]:
    """A WSGI environ's request headers by name (``traceparent`` -> ``HTTP_TRACEPARENT``)."""
    return lambda key: environ.get("HTTP_" + key.upper().replace("-", "_"))


def metadata_header(metadata: Sequence[tuple[str, Any]] | None) -> Callable[[str], str | None]:
    """gRPC invocation metadata by key (keys arrive lower-case)."""
    found = {k: v for k, v in metadata or () if isinstance(v, str)}
    return lambda key: found.get(key.lower())


def body_read(start_ns: int, end_ns: int | None) -> None:
    """The HTTP worker read the request's body from ``start_ns`` to ``end_ns`` (None: no body); the
    request's server span takes it as its child ``read body`` and starts no later than it."""
    _body.set((start_ns, end_ns) if end_ns is not None else None)


class ServerSpan:
    """One request's server span, made current (so the batchers' spans and the log line find it) until
    :meth:`finish`. ``headers`` reads the client's trace context; ``start_ns`` for a request whose first
    steps were timed before the span could be named (the inference middleware decodes first)."""

    __slots__ = ("span", "token")

    def __init__(self, name: str, headers: Callable[[str], str | None], attributes: dict[str, Any],
                 start_ns: int | None = None) -> None:
        parent = _propagate.extract(headers, getter=_GETTER)
        body = _body.get()
        if body is not None:
            _body.set(None)
            start_ns = body[0] if start_ns is None else min(start_ns, body[0])
        self.span = _tracer.start_span(name, context=parent, kind=_SERVER, attributes=attributes,
                                       start_time=start_ns)
        self.token = _context.attach(_trace.set_span_in_context(self.span))
        if body is not None:
            between("read body", body[0], body[1])

    def finish(self, error: bool = False, attributes: dict[str, Any] | None = None) -> None:
        if self.token is None:
            return
        if attributes:
            self.span.set_attributes(attributes)
        if error:
            self.span.set_status(_ERROR)
        self.span.end()
        _context.detach(self.token)
        self.token = None


_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


@functools.lru_cache(maxsize=256)
def http_route(rule: str) -> str:
    """A Flask rule as a route template: ``/v2/models/<name>/infer`` -> ``/v2/models/{name}/infer``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


def between(name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
    """A step its caller timed (``time.time_ns()``), as a child of the current span."""
    _tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_ns)


def span(name: str, attributes: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A step as a context manager, current inside (a shared no-op when off: for the rare, long steps)."""
    if not ENABLED:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)


def current() -> Any:
    """The current span's context (a batch's link, a queue span's parent); None if there is none."""
    ctx = _trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def trace_id() -> str | None:
    ctx = _trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def forward_pass(model: str, version: int, rows: int, requests: Sequence[Any] | None,
                 compute: Callable[..., T], *args: Any) -> T:
    """``compute(*args)``, one forward pass, as ONE ``batch`` span (a child of the request running it, the
    batch's leader) with a link to the span of every request whose rows it holds.

    ``requests``: the batchers' queued requests (``service/batching/rules.py``'s ``Pending``: ``span``, the
    request's span context; ``enqueued``, its ``perf_counter`` when it joined the queue), each given a
    ``queue`` span under its own span, from joining to now; None for a pass that waited for nothing (one
    request, the current one)."""
    attributes = {"model.name": model, "model.version": version, "batch.rows": rows}
    if requests is None:
        here = current()
        links = [_Link(here)] if here is not None else []
    else:
        links = []
        now_ns, now = time.time_ns(), time.perf_counter()
        for item in requests:
            if item.span is None:
                continue
            links.append(_Link(item.span))
            waited = _trace.set_span_in_context(_trace.NonRecordingSpan(item.span))
            _tracer.start_span("queue", context=waited, start_time=now_ns - int((now - item.enqueued) * 1e9),
                               attributes={"model.name": model}).end(now_ns)
    attributes["batch.requests"] = len(requests) if requests is not None else 1
    with _tracer.start_as_current_span("batch", links=links, attributes=attributes):
        return compute(*args)
