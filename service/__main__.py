"""``python -m service``: the production server (gunicorn with the project's config).

Prepares a fresh Prometheus multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, default a new
temporary directory). With ``GRPC_PORT=0`` it then replaces this process with gunicorn, so signals
(SIGTERM for a graceful stop) reach gunicorn's master directly; otherwise it replaces this process with
the supervisor of gunicorn and the gRPC server processes (``python -m service.supervisor``), which passes
signals on and imports only the standard library: the settings are validated here, before either exec.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.config import Settings, settings_error
from service.observability import grpc_readiness, tracing

# One BLAS thread per worker: gunicorn already runs one worker per core, and letting each worker's
# OpenBLAS start a thread per core oversubscribes the CPU (measured: 8x slower under load on 2
# cores). Set before gunicorn imports numpy; an operator's own value wins.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def grpc_processes(settings: Settings) -> int:
    """``GRPC_WORKERS``, or by default one gRPC process while ``WORKERS`` is 2 or fewer and ``WORKERS``
    beyond. Each gRPC process costs about 40 MB PSS (it loads the models itself); on 2 cores a second
    one serves a replica saturated by gRPC alone 25 to 65 % more calls, and beside HTTP load it takes
    cores from HTTP (docs/operations.md#footprint has the figures). ``GRPC_WORKERS=2`` buys it back."""
    if settings.grpc_workers:
        return settings.grpc_workers
    return 1 if settings.workers <= 2 else settings.workers


def usable_directory(name: str, value: str) -> Path:
    """The directory a setting names, made if missing; a one-line exit naming the setting if it cannot be
    (a file there, no permission), where the first request to use it failed with a 500, or the start with
    a traceback."""
    path = Path(value)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        raise SystemExit(f"{name}={value!r} is not a directory this server can write in: "
                         f"{exc.strerror or exc}") from None
    return path


def served_by_another_server(host: str, port: int) -> bool:
    """Whether a listener that admits ``SO_REUSEPORT`` holds ``host:port`` already: another server's
    gRPC processes. Ours bind with it so that several share the port, and the kernel grants the same
    to any process of the same user binding so: a second server given that port would start, and
    silently take part of the first one's connections. A holder without it makes our gRPC processes
    fail to bind and restart with back-off until it lets go (``service/supervisor.py``), as before."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except OSError:
        return False  # the gRPC process reports an address it cannot use
    with socket.socket(family, kind, proto) as plain:
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # an earlier run's TIME_WAIT is no holder
        try:
            plain.bind(address)
            return False  # nobody listens there
        except OSError:
            pass
    with socket.socket(family, kind, proto) as shared:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            shared.bind(address)
            return True  # a listener with SO_REUSEPORT let us in beside it
        except OSError:
            return False


def main() -> None:
    try:
        settings = Settings.from_env()  # fail fast, naming each bad setting
    except ValidationError as exc:
        raise SystemExit(settings_error(exc)) from None
    try:
        tracing.exporters()  # and on OTEL_* variables asking for what this server cannot do
    except tracing.TracingConfigError as exc:
        raise SystemExit(str(exc)) from None
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        path = usable_directory("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        for child in path.iterdir():  # stale files from an earlier run would be summed in
            if child.suffix == ".db":
                child.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nn-metrics-")
    # Where workers share the repository API's state (models unloaded); a fresh one per server.
    if os.environ.get("STATE_DIR"):
        usable_directory("STATE_DIR", os.environ["STATE_DIR"])
    else:
        os.environ["STATE_DIR"] = tempfile.mkdtemp(prefix="nn-state-")
    config = Path(__file__).with_name("http_server") / "gunicorn_conf.py"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), *sys.argv[1:], "service.wsgi:app"]
    if settings.grpc_port == 0:
        grpc_readiness.not_expected(Path(os.environ["STATE_DIR"]))  # a kept STATE_DIR's marks: not ready forever
        os.execv(sys.executable, argv)
    if served_by_another_server(settings.host, settings.grpc_port):
        raise SystemExit(f"GRPC_PORT={settings.grpc_port}: another server's gRPC processes listen on "
                         f"{settings.bind_address(settings.grpc_port)}; give this one a port of its own "
                         "(0 turns gRPC off)")
    # The supervisor lives as long as the server: it starts afresh (same pid) without what validating the
    # settings imported (pydantic, numpy: 24 MB PSS before, 6 after; docs/operations.md, Footprint).
    os.execv(sys.executable, [sys.executable, "-m", "service.supervisor", str(grpc_processes(settings)),
                              os.environ["STATE_DIR"], *argv])


if __name__ == "__main__":
    main()
