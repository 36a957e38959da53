"""The worker's capture writer: records go to disk from a native thread, never from the event loop.

The data plane only queues a captured request (``service/capture/recorder.py``: a bounded deque, a
few microseconds); writing it means encoding JSON and a ``write(2)`` that may wait on a slow disk.
A greenlet wakes every ``INTERVAL`` and, when records wait, has a native thread of its own flush
them while the loop goes on serving (the thread is not the background thread of gradchecks: a
second-long gradcheck would otherwise hold the queue until it overflowed).
"""

from __future__ import annotations

import time

import gevent
from gevent.threadpool import ThreadPool

from service.capture.recorder import SYNC_SECONDS, Recorder

INTERVAL = 0.05  # seconds between flushes: ~1,000 requests at full speed, well within the queue


class CaptureWriter:
    """Drives one process's recorder (``Capture.drive_with``) until :meth:`stop`.

    It writes for as long as the worker serves, the graceful drain after SIGTERM included (gunicorn's
    ``alive`` turns false at once, while open connections are still answered); the worker stops it
    just before ``Capture.close`` writes what is left.
    """

    def __init__(self) -> None:
        self.pool: ThreadPool | None = None
        self.recorder: Recorder | None = None
        self.stopped = False
        self.greenlet: gevent.Greenlet | None = None

    def __call__(self, recorder: Recorder) -> None:
        self.recorder, self.pool = recorder, ThreadPool(1)
        self.greenlet = gevent.spawn(self.loop)

    def stop(self) -> None:
        self.stopped = True

    def loop(self) -> None:
        synced = time.monotonic()
        while True:
            gevent.sleep(INTERVAL)
            if self.stopped:
                return
            if self.recorder.pending() or time.monotonic() - synced >= SYNC_SECONDS:
                self.pool.apply(self.recorder.flush)  # which also fsyncs, at most once a second
                synced = time.monotonic()
