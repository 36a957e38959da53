"""One gRPC server process: ``python -m service.grpc.server`` (started by ``python -m service``).

Why processes of their own (``docs/architecture.md`` has the measurement): grpcio runs its
handlers on real threads and blocks in its C core, which a gevent-patched gunicorn worker cannot
host without stalling its event loop. So ``GRPC_WORKERS`` processes (default 1 while ``WORKERS`` <= 2, else
``WORKERS``) each run a grpcio server, all bound to ``GRPC_PORT`` with
``SO_REUSEPORT`` so the kernel spreads connections over them and every core serves. Each loads
the same repository with the same policy and rescans it every ``MODEL_POLL_SECONDS`` (and at once
when the repository API's shared state changes), writes its metrics and statistics beside the HTTP
workers' (so ``/metrics`` and the statistics sum them), and serves the standard
``grpc.health.v1`` service. SIGTERM: health says NOT_SERVING, new calls are refused, calls in
flight finish within ``GRACEFUL_TIMEOUT``, a stream's requests in flight too (its next one is refused
and ends it UNAVAILABLE; one left idle is cancelled after a second), exit 0.

Threads: a call holds a thread of the pool from the moment the server takes it (``GRPC_MAX_CALLS``
of them; more at once are refused with RESOURCE_EXHAUSTED), and ``GRPC_THREADS`` forward passes run
at once; with ``GRPC_BATCHING`` the calls waiting for one share the next pass
(``batching/thread_batcher.py``). A call queued for a free pool thread instead would be cancelled by grpcio's stop,
not drained (seen in tests/integration/test_grpc.py's SIGTERM test); waiting inside the handler,
it finishes.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import multiprocess

from service.batching.thread_batcher import ThreadBatcher
from service.capture.budget import CaptureDirError
from service.capture.capture import plain_thread
from service.config import Settings
from service.dataplane.dataplane import DataPlane, InlineRunner
from service.grpc.calls import SERVICE
from service.grpc.servicer import InferenceServicer
from service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
from service.observability import grpc_readiness, tracing
from service.observability.logs import JSONFormatter
from service.repository.registry import ModelRegistry
from service.repository.version_policy import VersionPolicy
from service.repository.watcher import watch

log = logging.getLogger("service.grpc")
STREAM_GRACE = 1.0  # seconds an idle ModelStreamInfer stream is given at a stop before it is cancelled


def build_plane(settings: Settings) -> DataPlane:
    """The data plane as the HTTP app builds it (``service/app/__init__.py``), on the same repository and state."""
    registry = ModelRegistry(settings.model_dir, VersionPolicy.parse(settings.version_policy),
                             settings.model_settle_seconds,
                             settings.state_dir / "repository.json" if settings.state_dir else None)
    registry.counts_failures = False  # the HTTP side counts them (service/repository/model_version.py)
    registry.load_all()
    try:
        plane = DataPlane.from_settings(registry, settings)
        if plane.capture is not None:  # this process's recorders made now, not in the first call to capture
            plane.capture.drive_with(plain_thread)
    except CaptureDirError as e:  # usable when the server started (its HTTP app checked it), not now
        log.error("capture off in this gRPC process: %s", e)
        plane = DataPlane.from_settings(registry, settings.model_copy(update={"capture_dir": None}))
    if settings.grpc_batches:  # GRPC_BATCHING: concurrent calls share passes (batching/thread_batcher.py)
        plane.serve_with(ThreadBatcher(settings.max_batch, settings.grpc_threads))
    else:  # GRPC_THREADS passes at once, the calls waiting for one counted and timed by the queue policy
        plane.serve_with(InlineRunner(slots=settings.grpc_threads))
    return plane


LIVENESS = "liveness"  # the grpc.health.v1 service name a liveness probe asks (deploy/)


class GRPCServer:
    """A started grpcio server over a data plane, its health service and its repository watcher."""

    def __init__(self, settings: Settings, plane: DataPlane) -> None:
        self.settings, self.plane = settings, plane
        self.stopping = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(settings.grpc_max_calls, thread_name_prefix="grpc"),
                                  maximum_concurrent_rpcs=settings.grpc_max_calls, options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_body_bytes),  # MAX_BODY_BYTES, as over HTTP
            ("grpc.max_send_message_length", -1),
        ])
        self.servicer = InferenceServicer(plane, settings.admin_token, settings.workers)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        # "" and the inference service say ready (set_health); LIVENESS only that this process answers,
        # for a liveness or startup probe: one on readiness restarts a pod whose models are unloaded
        # or failed, and the restart's fresh STATE_DIR undoes an operator's unload
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = settings.bind_address(settings.grpc_port)
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where it once returned 0 (port taken without SO_REUSEPORT, say)
            bound = 0
        if bound == 0:
            raise SystemExit(f"cannot listen on {address} (in use by another program, or not allowed)")
        self.health_status: int | None = None
        self.set_health()  # before the first call: grpc_health says SERVING for a service until told
        plane.registry.on_refresh.append(self.set_health)  # at once, whichever scan changed readiness
        self.server.start()
        grpc_readiness.mark(settings.state_dir)  # HTTP's /readyz counts this process as serving
        self.watcher = threading.Thread(target=watch, name="repository", daemon=True, args=(
            plane.registry, settings.model_poll_seconds, self.stopping.wait, plane.tick))
        self.watcher.start()
        plane.rollouts.start_thread()  # rollouts' comparisons (shadow / primary), off the calls' threads

    def set_health(self) -> None:
        """The readiness services' status, as the snapshot's readiness says; told only when it changes
        (grpc_health sends every change to each Watch stream, and waits for the send)."""
        status = health_pb2.HealthCheckResponse.SERVING if self.plane.readiness()[0] else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        if status == self.health_status:
            return
        self.health_status = status
        for service in ("", SERVICE):
            self.health.set(service, status)

    def stop(self) -> None:
        """Refuse new calls, let those in flight finish (GRACEFUL_TIMEOUT at most in all)."""
        deadline = time.monotonic() + self.settings.graceful_timeout
        grpc_readiness.unmark(self.settings.state_dir)
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        self.servicer.drain(deadline)
        # Nothing is in flight now, and a call that comes is refused at once; what grpcio still holds is
        # streams waiting for their next request, which a second's grace lets their clients close.
        self.server.stop(grace=min(STREAM_GRACE, max(0.1, deadline - time.monotonic()))).wait()
        if self.plane.capture is not None:
            self.plane.capture.close()  # what is still queued, written before the process exits


def main() -> None:
    settings = Settings.from_env()
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: every thread's stack on stderr (a stuck stop)
    # The handler only appends to a list. It runs in the main thread between two bytecodes, and an
    # Event.set() there hung for good when the signal came while the main thread's Event.wait() held
    # the Event's lock (py-spy: set() waiting for the lock its own thread held): a stop ignored, the
    # process left running after its supervisor was killed.
    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, lambda signum, _: stops.append(signum))
    tracing.start()  # OTEL_*: this process's tracer provider and export thread (docs/tracing.md)
    server = GRPCServer(settings, build_plane(settings))
    log.info("gRPC serving on %s (pid %d)", settings.bind_address(settings.grpc_port), os.getpid())
    # Polled: a process-directed signal may be taken by one of grpcio's threads, and Python runs its
    # handler only when the main thread next runs bytecode (an untimed wait hung for good, 1 stop in 5).
    while not stops:
        time.sleep(0.2)
    server.stop()
    tracing.shutdown()  # spans still queued, exported before the process exits
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
    log.info("gRPC server stopped (pid %d)", os.getpid())


if __name__ == "__main__":
    main()
