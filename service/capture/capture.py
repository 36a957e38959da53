"""Capture in one server: the settings, and each process's own recorders, made in that process.

Models load in gunicorn's master, which then forks the workers; a journal's files belong to the
process that writes them (its name and its lock, ``rotation.py`` and ``segment.py``). So :class:`Capture` is built in
the master with the settings only, and every process makes its recorders on first use. What writes
them out is the front end's choice (:meth:`Capture.drive_with`, which makes them at once, on the
event loop's thread): the HTTP worker flushes from a native thread of its own (its event loop must
never wait on a disk); anything else gets a plain background thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.capture.index import CaptureIndex
from service.capture.journal import Journal
from service.capture.recorder import Recorder

FEEDBACK_DIR = "feedback"  # CAPTURE_DIR/feedback/: the labels, with a budget of their own
MIN_FEEDBACK_BYTES = 32 * 1024
Driver = Callable[[Recorder], None]  # starts something that calls recorder.flush() from now on


def plain_thread(recorder: Recorder) -> None:
    recorder.start_thread()


class Capture:
    """``CAPTURE_DIR``'s recorders for this process (inference records and feedback) and its id index."""

    def __init__(self, directory: Path, sample_rate: float, max_bytes: int, queue: int = 1024) -> None:
        self.directory, self.sample_rate, self.queue = Path(directory), sample_rate, queue
        # Feedback has a sixteenth of the budget, in a folder of its own: labels (a few hundred bytes
        # each) still find room when captures have filled theirs, and the two never exceed max_bytes.
        self.feedback_dir = self.directory / FEEDBACK_DIR
        self.feedback_bytes = max(max_bytes // 16, MIN_FEEDBACK_BYTES)
        self.capture_bytes = max_bytes - self.feedback_bytes
        # a directory it cannot write fails start-up, clearly (CaptureDirError); the writers come after fork
        Journal(self.directory, "capture", self.capture_bytes).close()
        Journal(self.feedback_dir, "feedback", self.feedback_bytes).close()
        self.driver: Driver = plain_thread
        self._pid = 0
        self._lock = threading.Lock()
        self._inferences: Recorder | None = None
        self._feedback: Recorder | None = None
        self._index: CaptureIndex | None = None

    def drive_with(self, driver: Driver) -> None:
        """Have ``driver`` write this process's inference records, starting now, on the caller's thread.

        Call it before any request. The recorders are made here rather than on first use: a driver
        may start something bound to its thread (a greenlet belongs to the hub of the thread that
        spawns it), and the first use may come on another (feedback's lookups run on a thread pool).
        """
        with self._lock:
            if self._pid == os.getpid():
                raise RuntimeError("drive_with must come before this process's first capture")
            self.driver = driver
        self._bind()

    def _bind(self) -> None:
        """This process's recorders (a forked worker must not write its parent's files)."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._inferences = Recorder(Journal(self.directory, "capture", self.capture_bytes), self.sample_rate,
                                        self.queue)
            self._feedback = Recorder(Journal(self.feedback_dir, "feedback", self.feedback_bytes), 1.0, 1)
            self._index = CaptureIndex(self.directory, self.feedback_dir)
            self._pid = os.getpid()
            self.driver(self._inferences)

    @property
    def inferences(self) -> Recorder:
        if self._pid != os.getpid():
            self._bind()
        return self._inferences

    @property
    def feedback(self) -> Recorder:
        if self._pid != os.getpid():
            self._bind()
        return self._feedback

    @property
    def index(self) -> CaptureIndex:
        if self._pid != os.getpid():
            self._bind()
        return self._index

    def offer(self, rid: str, model: str, version: int, labels: list[str], inputs: np.ndarray,
              probabilities: np.ndarray) -> None:
        """Hand one answered request to this process's recorder (which samples it, or drops it when full)."""
        recorder = self._inferences if self._pid == os.getpid() else self.inferences
        recorder.offer(rid, model, version, labels, inputs, probabilities)

    def close(self) -> None:
        if self._pid == os.getpid():
            for recorder in (self._inferences, self._feedback):
                recorder.stop()
