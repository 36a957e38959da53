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

Memory is bounded by ``max_entries`` ids and ``max_rows`` labels in all (the oldest captures are
forgotten first: feedback for them is a 404 that says it may be too old), whatever the ids and the
requests' sizes: an id is kept as a keyed 64-bit digest (a client cannot pick ids that collide), a
label as the one string of its class name, and a small answer (a few rows) as one object shared by
all its captures. About 140 bytes per one-sample capture or label (``tests/test_feedback_unit.py``
measures it), so under 200 MB per process at the defaults, however clients send; before, 500,000
captures of 1,024 rows each could take 30 GB. The files are bounded by ``CAPTURE_MAX_BYTES``.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

RESPONSE_TYPE = b'"org.kubeflow.serving.inference.response"'
FEEDBACK_TYPE = b'"numpy-nets.inference.feedback"'
READ_CHUNK = 8 << 20  # bytes read from one file at a time
HEAD = 640  # an event's type comes within its first bytes (after specversion, an id of <= 128, its source)


@dataclass(frozen=True, slots=True)
class Captured:
    """What a captured inference answered: enough to judge a label sent for it later."""

    model: str
    version: int
    predicted: tuple[str, ...]  # one label per row of the request
    ambiguous: bool = False  # the id was captured more than once, with other answers


class CaptureIndex:
    """Captured request ids and the labels already given to them, across every process's files."""

    def __init__(self, directory: Path, feedback_dir: Path, max_entries: int = 500_000,
                 max_rows: int = 2_000_000) -> None:
        self.directories = (Path(directory), Path(feedback_dir))
        self.key = os.urandom(16)  # this process's: ids are compared by digest (see the module's docstring)
        self.captures = Recent(max_entries, max_rows, lambda c: len(c.predicted))
        self.labelled = Recent(max_entries, max_rows, len)
        self.names: dict[str, str] = {}  # each label's one string (a model's class names: a handful)
        self.shared: dict[object, object] = {}  # small answers (a few rows), one object each: most captures
        self.offsets: dict[Path, int] = {}
        self.skipped = 0  # lines that did not parse (never expected: a record is written whole)
        self.shrunk = False  # a feedback file was found shorter than already read, this refresh

    def digest(self, rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8,
                                              key=self.key).digest(), "little")

    def one_of(self, value: object, rows: int) -> object:
        """The one object equal to ``value`` when it is small (a few rows: most requests), so that a
        hundred thousand one-sample captures share a handful of objects."""
        if rows > 4:
            return value
        found = self.shared.get(value)
        if found is None:
            found = value
            if len(self.shared) < 65536:
                self.shared[value] = value
        return found

    def name(self, text: str) -> str:
        """The one string of a name (a model's, a class's; a new one is kept while the names are few)."""
        name = self.names.get(text)
        if name is None:
            name = text
            if len(self.names) < 4096:  # models' and classes' names; past that, clients' junk is not kept
                self.names[text] = text
        return name

    def label_names(self, labels: object) -> tuple[str, ...]:
        """Labels as the one string of each name."""
        out = tuple(self.name(str(label)) for label in (labels if isinstance(labels, list | tuple) else ()))
        return self.one_of(out, len(out))

    def captured(self, rid: str) -> Captured | None:
        return self.captures.get(self.digest(rid))

    def labels_of(self, rid: str) -> tuple[str, ...] | None:
        """The labels feedback already gave this request id (the first feedback's), if any."""
        return self.labelled.get(self.digest(rid))

    def note_labels(self, rid: str, labels: tuple[str, ...]) -> None:
        """Feedback this process has just written (before its next read of the files)."""
        self.labelled.put(self.digest(rid), self.label_names(labels))

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
                    try:  # any line of the right type, also a foreign tool's: an odd one is skipped, not fatal
                        data = event["data"]
                        outputs = {o.get("name"): o for o in data.get("outputs", [])}
                        captured = Captured(self.name(str(data["model_name"])), int(data["model_version"]),
                                            self.label_names(outputs["label"]["data"]))
                    except (KeyError, TypeError, ValueError, AttributeError):
                        self.skipped += 1
                        continue
                    key = self.digest(str(event.get("id")))
                    before = self.captures.get(key)
                    if before is not None:  # a retry may be served by another version: judged by its answer
                        same = (before.model, before.predicted) == (captured.model, captured.predicted)
                        captured = replace(before, ambiguous=before.ambiguous or not same)
                    self.captures.put(key, self.one_of(captured, len(captured.predicted)))
            elif FEEDBACK_TYPE in line[:HEAD]:
                event = self._parse(line)
                data = (event or {}).get("data")
                rid = data.get("request_id") if isinstance(data, dict) else None
                if isinstance(rid, str) and self.labelled.get(self.digest(rid)) is None:  # the first one stands
                    self.labelled.put(self.digest(rid), self.label_names(data.get("labels", [])))

    def _parse(self, line: bytes) -> dict | None:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return None
        return event if isinstance(event, dict) else None


class Recent:
    """The newest entries by key, within ``max_entries`` of them and ``max_rows`` rows in all (``rows``:
    an entry's rows); the oldest go first."""

    def __init__(self, max_entries: int, max_rows: int, rows: Callable[[object], int]) -> None:
        self.max_entries, self.max_rows, self.rows_of = max_entries, max_rows, rows
        self.items: OrderedDict[int, object] = OrderedDict()
        self.rows = 0

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: int) -> object | None:
        return self.items.get(key)

    def put(self, key: int, value: object) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.rows -= self.rows_of(old)
        self.items[key] = value
        self.rows += self.rows_of(value)
        while len(self.items) > self.max_entries or (self.rows > self.max_rows and len(self.items) > 1):
            self.rows -= self.rows_of(self.items.popitem(last=False)[1])

    def clear(self) -> None:
        self.items.clear()
        self.rows = 0
