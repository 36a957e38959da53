"""The repository watcher: every serving process (HTTP worker or gRPC process) keeps its registry in step
with the disk and with the repository API's shared state by running :func:`watch`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.repository.registry import ModelRegistry

log = logging.getLogger("service.repository.watcher")


def watch(registry: ModelRegistry, poll_seconds: float, wait: Callable[[float], bool],
          every_tick: Callable[[], None] = lambda: None) -> None:
    """Rescan the repository every ``poll_seconds`` (0: never), and at once when another process changed
    the repository API's state (it is looked at every second); returns when the process stops.

    ``wait(seconds)`` sleeps and says whether the process is stopping: a gevent sleep in an HTTP worker,
    an ``Event.wait`` in a gRPC process. A scan loads on the caller's greenlet or thread, so scans never
    overlap, and requests keep the snapshot they started with (``registry.on_refresh`` runs after each
    scan). ``every_tick`` runs at each look (at most a second apart: the data plane's periodic work,
    such as publishing the drift gauges)."""
    if registry.state_changed():  # a worker forked after the repository API changed things: catch up now
        try:
            registry.refresh()
        except Exception:
            log.exception("model repository scan failed")
    tick = min(1.0, poll_seconds) if poll_seconds > 0 else 1.0
    last = time.monotonic()
    while not wait(tick):
        every_tick()
        due = poll_seconds > 0 and time.monotonic() - last >= poll_seconds
        if due or registry.state_changed():
            last = time.monotonic()
            try:
                registry.refresh()
            except Exception:  # a bug must not end the watching; the log has it
                log.exception("model repository scan failed")
