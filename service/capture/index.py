"""Which request ids were captured, and which already have feedback: read from every process's files.

POST /feedback may reach any worker, while the request it labels was captured by another (each
process writes its own files, ``journal.py``). So a lookup reads what is new in every file of the
directory since the last lookup (from the offset it had reached, up to the last whole line) and
remembers, per request id, only what feedback needs: the model, its version and the labels it
predicted, from the small response event (the request event, with the inputs, is skipped unparsed).
It runs off the event loop (the worker's background thread), after every write it makes itself.

A request id is the client's (``X-Request-ID``, gRPC's ``id``), and clients reuse them. An id
captured again with another answer is marked ambiguous: a label sent for it could belong to either
request, so feedback refuses it (``training/feedback.py`` drops such a label too, and also one whose
captures answered alike but had other inputs). A client retrying the same request is not ambiguous.

Memory is bounded by ``max_entries`` (the oldest captures are forgotten first: feedback for them is
a 404 that says it may be too old); the files themselves are bounded by ``CAPTURE_MAX_BYTES``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

RESPONSE_TYPE = b'"org.kubeflow.serving.inference.response"'
FEEDBACK_TYPE = b'"numpy-nets.inference.feedback"'
READ_CHUNK = 8 << 20  # bytes read from one file at a time
HEAD = 640  # an event's type comes within its first bytes (after specversion, an id of <= 128, its source)


@dataclass(frozen=True)
class Captured:
    """What a captured inference answered: enough to judge a label sent for it later."""

    model: str
    version: int
    predicted: tuple[str, ...]  # one label per row of the request
    ambiguous: bool = False  # the id was captured more than once, with other answers


class CaptureIndex:
    """Captured request ids and the labels already given to them, across every process's files."""

    def __init__(self, directory: Path, feedback_dir: Path, max_entries: int = 500_000) -> None:
        self.directories = (Path(directory), Path(feedback_dir))
        self.max_entries = max_entries
        self.captures: OrderedDict[str, Captured] = OrderedDict()
        self.labelled: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.offsets: dict[Path, int] = {}
        self.skipped = 0  # lines that did not parse (never expected: a record is written whole)
        self.shrunk = False  # a feedback file was found shorter than already read, this refresh

    def captured(self, rid: str) -> Captured | None:
        return self.captures.get(rid)

    def labels_of(self, rid: str) -> tuple[str, ...] | None:
        """The labels feedback already gave this request id (the first feedback's), if any."""
        return self.labelled.get(rid)

    def note_labels(self, rid: str, labels: tuple[str, ...]) -> None:
        """Feedback this process has just written (before its next read of the files)."""
        remember(self.labelled, rid, labels, self.max_entries)

    def refresh(self) -> None:
        """Read what every capture and feedback file gained since the last call."""
        self.shrunk = False
        present = set()
        for directory in self.directories:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if name.endswith(".jsonl") and name.startswith(("capture-", "feedback-")):
                    present.add(directory / name)
                    self._read_new(directory / name)
        for gone in set(self.offsets) - present:  # moved away by an operator: its entries stay known
            del self.offsets[gone]
        if self.shrunk:
            # A feedback file cut back: a line this index read may be gone (a write whose fsync failed is
            # cut away, and its client told nothing was kept). Labels are known only from what the files
            # hold now, or a retry of that feedback would be answered "duplicate" with nothing on disk.
            self.labelled.clear()
            for name in [n for n in self.offsets if n.name.startswith("feedback-")]:
                self.offsets[name] = 0
                self._read_new(name)

    def _read_new(self, name: Path) -> None:
        offset = self.offsets.get(name, 0)
        try:
            with open(name, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < offset:  # cut back (recovery, or a failed durable write): re-read from 0
                    offset = 0
                    self.shrunk = self.shrunk or name.name.startswith("feedback-")
                while offset < size:
                    fh.seek(offset)
                    chunk = fh.read(min(READ_CHUNK, size - offset))
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        if len(chunk) < READ_CHUNK:
                            break  # a record still being written: next time
                        chunk = chunk + fh.readline()  # one record longer than a chunk
                        end = chunk.rfind(b"\n")
                        if end < 0:
                            break
                    self._take(chunk[:end + 1])
                    offset += end + 1
        except OSError:
            return
        self.offsets[name] = offset

    def _take(self, lines: bytes) -> None:
        for line in lines.splitlines():
            if RESPONSE_TYPE in line[:HEAD]:
                event = self._parse(line)
                if event is not None:
                    data = event.get("data") or {}
                    outputs = {o.get("name"): o for o in data.get("outputs", [])}
                    try:
                        captured = Captured(str(data["model_name"]), int(data["model_version"]),
                                            tuple(str(v) for v in outputs["label"]["data"]))
                    except (KeyError, TypeError, ValueError):
                        self.skipped += 1
                        continue
                    rid = str(event.get("id"))
                    before = self.captures.get(rid)
                    if before is not None:  # a retry may be served by another version: judged by its answer
                        same = (before.model, before.predicted) == (captured.model, captured.predicted)
                        captured = replace(before, ambiguous=before.ambiguous or not same)
                    remember(self.captures, rid, captured, self.max_entries)
            elif FEEDBACK_TYPE in line[:HEAD]:
                event = self._parse(line)
                data = (event or {}).get("data") or {}
                rid = data.get("request_id")
                if isinstance(rid, str) and rid not in self.labelled:  # the first feedback stands
                    remember(self.labelled, rid, tuple(str(v) for v in data.get("labels", [])), self.max_entries)

    def _parse(self, line: bytes) -> dict | None:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return None
        return event if isinstance(event, dict) else None


def remember(entries: OrderedDict, key: str, value: object, limit: int) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)
