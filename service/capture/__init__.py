"""Capture: a sampled share of inferences, and feedback labels, recorded to disk for retraining.

``events`` is the record format (CloudEvents 1.0 as JSON Lines, KServe's payload logger's types),
``journal`` each process's appends to segment files of its own (``rotation``, ``segment``) within one
disk budget shared by every process (``budget``), and
``recorder`` the bounded queue between the request path and the journal. Imports nothing of the
server above it and starts no thread unless asked (``Recorder.start_thread``): it runs in gevent
workers and in threaded gRPC processes alike.
"""

from service.capture.events import (
    FEEDBACK_TYPE,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    feedback_event,
    inference_events,
    new_event_id,
    read_events,
)
from service.capture.journal import CaptureDirError, CaptureWriteError, Journal
from service.capture.recorder import Recorder

__all__ = ["FEEDBACK_TYPE", "REQUEST_TYPE", "RESPONSE_TYPE", "CaptureDirError", "CaptureWriteError", "Journal",
    "Recorder", "feedback_event", "inference_events", "new_event_id", "read_events"]
