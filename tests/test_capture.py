"""The capture core (service/capture/): its record format, the per-process journal within a shared disk
budget, and the bounded queue in front of it. Real files in tmp_path and real processes throughout:
the budget is checked with several writers at once, crash safety with ``kill -9``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from service.capture import events
from service.capture.events import feedback_event, inference_events, new_event_id, read_events
from service.capture.journal import (
    BUDGET_LOCK,
    RECHECK_SECONDS,
    CaptureDirError,
    CaptureWriteError,
    Journal,
    segment_claim,
)
from service.capture.recorder import Recorder
from tests.conftest import ROOT

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def disk_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*.jsonl"):
        with contextlib.suppress(FileNotFoundError):  # moved or recovered meanwhile
            total += path.stat().st_size
    return total


def complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of a file, as a reader takes them."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True) if b"\n" in data else []


def record_count(outcome: str, kind: str = "capture") -> float:
    return REGISTRY.get_sample_value("nn_capture_records_total", {"kind": kind, "outcome": outcome}) or 0.0


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, **kwargs)


def mnist_like(n: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, 784)) < 0.81, 0, rng.integers(1, 256, (n, 784)) / 255).astype(np.float32)
    p = rng.dirichlet(np.ones(10), n).astype(np.float32)
    return x, p, [str(v) for v in p.argmax(axis=1)]


# -- the record format --------------------------------------------------------------------------------

def test_inference_events_are_kserve_cloudevents(tmp_path):
    x, p, labels = mnist_like(2)
    when = 1_796_565_787_123_456_789  # 2026-12-06T14:03:07.123456789Z
    lines = inference_events("req-1", "mnist", 3, when, x, p, labels)
    assert lines.count(b"\n") == 2 and lines.endswith(b"\n")
    path = tmp_path / "c.jsonl"
    path.write_bytes(lines)
    request, response = list(read_events(path))
    for event in (request, response):
        assert {k: event[k] for k in ("specversion", "id", "source", "time", "datacontenttype", "inferenceservicename",
                                      "modelversion", "component", "endpoint")} == {
            "specversion": "1.0", "id": "req-1", "source": "/models/mnist/versions/3",
            "time": "2026-12-06T14:03:07.123456Z", "datacontenttype": "application/json",
            "inferenceservicename": "mnist", "modelversion": "3", "component": "predictor", "endpoint": ""}
    assert request["type"] == "org.kubeflow.serving.inference.request"
    assert response["type"] == "org.kubeflow.serving.inference.response"
    assert request["data"] == {"id": "req-1", "inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32",
                                                          "data": request["data"]["inputs"][0]["data"]}]}
    assert np.array_equal(np.asarray(request["data"]["inputs"][0]["data"], dtype=np.float32), x.ravel())
    data = response["data"]
    assert (data["id"], data["model_name"], data["model_version"]) == ("req-1", "mnist", "3")
    probabilities, label = data["outputs"]
    assert (probabilities["name"], probabilities["shape"], probabilities["datatype"]) == ("probabilities", [2, 10],
                                                                                          "FP32")
    assert label == {"name": "label", "shape": [2], "datatype": "BYTES", "data": labels}


def test_time_is_rfc3339_utc_with_microseconds():
    assert events.rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert events.rfc3339(1_796_565_787_999_999_999) == "2026-12-06T14:03:07.999999Z"  # truncated, not rounded up
    now = time.time_ns()
    assert RFC3339.match(events.rfc3339(now))


# The finite float32s whose shortest text (orjson's, and NumPy's repr) parses as float64 to exactly a
# midpoint between two float32s, so rounding that to float32 picks the neighbour: found by checking every
# float32 once; events.py writes them otherwise.
DOUBLE_ROUNDING = [0x15AE43FD, 0x95AE43FD]
SPECIAL_BITS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
                0x3F800000, 0x3DCCCCCD, 0x33800000, *DOUBLE_ROUNDING]


def roundtrips(bits: np.ndarray) -> None:
    x = bits.astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    n = len(x)
    p = x[: (n // 2) * 2].reshape(-1, 2) if n >= 2 else np.zeros((0, 2), np.float32)
    lines = inference_events("r", "m", 1, 0, x.reshape(1, n), p, ["a"] * len(p))
    request, response = lines.splitlines()
    for parse in (json.loads, orjson.loads):  # Python's own parser and orjson's
        got = np.asarray(parse(request)["data"]["inputs"][0]["data"], dtype=np.float64).astype(np.float32)
        assert np.array_equal(got.view(np.uint32), x.view(np.uint32)), (x, got)
        got = np.asarray(parse(response)["data"]["outputs"][0]["data"], dtype=np.float64).astype(np.float32)
        assert np.array_equal(got.view(np.uint32), p.ravel().view(np.uint32)), (p, got)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))  # never by luck
@given(st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(SPECIAL_BITS),
                          st.integers(0, 0x007FFFFF), st.integers(0x80000000, 0x807FFFFF)), min_size=1, max_size=64))
@example(SPECIAL_BITS)
def test_float32_round_trips_bit_for_bit(bits):
    roundtrips(np.array(bits, dtype=np.uint64))


def test_float32_round_trips_in_bulk():
    """A million random bit patterns, and every odd neighbour of the known hard cases."""
    rng = np.random.default_rng(1)
    roundtrips(rng.integers(0, 2**32, 1_000_000, dtype=np.uint64))
    near = np.array([b + d for b in DOUBLE_ROUNDING for d in range(-64, 65)], dtype=np.uint64)
    roundtrips(near)


def test_orjson_writes_float32_as_numpy_does():
    """The shortest-and-closest text, which the exhaustive check behind ``DOUBLE_ROUNDING`` was run on:
    should orjson change how it writes float32, that list must be found again."""
    from decimal import Decimal

    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x[np.isfinite(x)], np.array(SPECIAL_BITS, np.uint32).view(np.float32)])
    texts = orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    for value, text in zip(x, texts, strict=True):
        assert Decimal(text.decode()) == Decimal(str(value)), (value, text)


def test_a_large_tensor_is_written_in_chunks_with_the_same_bytes(monkeypatch):
    """One orjson call over a 1,024-row batch held the GIL for 45-58 ms, stalling the worker's event
    loop; now each call writes at most ``_CHUNK`` values, and the record is byte for byte the same."""
    chunk = events._CHUNK
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, chunk // 2 + 7), dtype=np.float32)  # 2.5 chunks, boundaries mid-row
    hard = np.array(DOUBLE_ROUNDING[:1], np.uint32).view(np.float32)[0]
    flat = x.reshape(-1)
    flat[[0, chunk - 1, chunk, 2 * chunk, flat.size - 1]] = hard  # the misread value on the seams
    p = rng.random((5, 3 * chunk), dtype=np.float32)
    labels = ["\x00tensor 0\x00"] * 5  # a label that looks like the placeholder changes nothing
    calls: list[int] = []
    dumps = orjson.dumps

    def counting(obj, *args, **kwargs):
        calls.append(len(obj) if isinstance(obj, np.ndarray | list) else 0)
        return dumps(obj, *args, **kwargs)

    monkeypatch.setattr(orjson, "dumps", counting)
    chunked = (inference_events("r", "m", 1, 0, x, p, labels),
               feedback_event(event_id="e", time_ns=0, model="m", labels=labels, inputs=x))
    assert 0 < max(calls) <= chunk and len(calls) > 6
    monkeypatch.setattr(events, "_CHUNK", 10 * x.size + 10 * p.size)  # one call per tensor, as before
    whole = (inference_events("r", "m", 1, 0, x, p, labels),
             feedback_event(event_id="e", time_ns=0, model="m", labels=labels, inputs=x))
    assert chunked == whole
    request, response = whole[0].splitlines()
    assert orjson.loads(request)["data"]["inputs"][0]["data"][chunk] == float(hard)
    assert orjson.loads(response)["data"]["outputs"][1]["data"] == labels


def test_feedback_events():
    eid = new_event_id()
    assert re.fullmatch(r"[0-9a-f]{32}", eid) and eid != new_event_id()
    labelled = orjson.loads(feedback_event(event_id=eid, time_ns=0, model="mnist", labels=["7"], request_id="req-1",
                                           version=2, predicted=["1"]))
    assert labelled["type"] == "numpy-nets.inference.feedback" and labelled["source"] == "/feedback"
    assert (labelled["id"], labelled["subject"], labelled["specversion"]) == (eid, "req-1", "1.0")
    assert labelled["data"] == {"request_id": "req-1", "model_name": "mnist", "model_version": "2", "labels": ["7"],
                                "predicted": ["1"]}
    x = np.array([[0.5, -0.0, 1e-45]], np.float32)
    line = feedback_event(event_id=eid, time_ns=0, model="xor", labels=["1"], inputs=x)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    example_ = orjson.loads(line)
    assert "subject" not in example_
    assert example_["data"]["inputs"] == [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                                           "data": [0.5, -0.0, 1e-45]}]
    with pytest.raises(ValueError):
        feedback_event(event_id=eid, time_ns=0, model="xor", labels=["1"], inputs=x, request_id="r", version=1,
                       predicted=["0"])
    with pytest.raises(ValueError):
        feedback_event(event_id=eid, time_ns=0, model="xor", labels=["1"], request_id="r")


def test_read_events_takes_complete_lines_only(tmp_path):
    path = tmp_path / "c.jsonl"
    one = orjson.dumps({"id": "1"}) + b"\n"
    path.write_bytes(one + b"not json\n" + b"[1]\n" + one + b'{"id": "2"')
    assert [e["id"] for e in read_events(path)] == ["1", "1"]


# -- the journal --------------------------------------------------------------------------------------

WRITER = """
import os, random, sys, time
from service.capture.journal import Journal
directory, max_bytes, segment, count, seed = sys.argv[1], *map(int, sys.argv[2:6])
rng = random.Random(seed)
journal = Journal(directory, "capture", max_bytes, segment)
written = dropped = nbytes = 0
time.sleep(max(0.0, float(sys.argv[6]) - time.time()))  # all at once, so they reach the budget's end together
for i in range(count):
    record = b'{"pid":%d,"i":%d,"pad":"%s"}\\n' % (os.getpid(), i, b"x" * rng.randrange(200, 1500))
    if journal.append_records([record]):
        written += 1
        nbytes += len(record)
    else:
        dropped += 1
journal.close()
print(written, dropped, nbytes)
"""


def test_the_budget_holds_across_processes_and_restarts(tmp_path):
    max_bytes, segment = 200_000, 2048
    start = str(time.time() + 1.0)
    writers = [run_python(WRITER, str(tmp_path), str(max_bytes), str(segment), "300", str(seed), start,
                          stdout=subprocess.PIPE, text=True) for seed in range(8)]
    while any(w.poll() is None for w in writers):
        assert disk_bytes(tmp_path) <= max_bytes
        time.sleep(0.002)  # leaves the writers the CPU: they must race each other for the budget's end
    results = [tuple(map(int, w.communicate()[0].split())) for w in writers]
    assert all(w.returncode == 0 for w in writers)
    assert sum(r[1] for r in results) > 0, "300 records of ~0.9 KB from each of 8 writers must overflow 200 KB"
    assert disk_bytes(tmp_path) == sum(r[2] for r in results) <= max_bytes  # every byte reported, none beyond
    for path in segments(tmp_path):
        assert all(orjson.loads(line) for line in complete_lines(path))
        assert path.stat().st_size <= segment_claim(path.name)

    # Restarted: the dead writers' unused claims are free again, and the budget is then filled, not exceeded.
    journal = Journal(tmp_path, "capture", max_bytes, segment)
    small = b'{"pad":"' + b"y" * 90 + b'"}\n'
    while journal.append(small):
        pass
    assert max_bytes - len(small) < disk_bytes(tmp_path) <= max_bytes
    journal.close()
    # And a fresh one over the full directory writes nothing.
    before = {p.name: p.stat().st_size for p in segments(tmp_path)}
    journal = Journal(tmp_path, "feedback", max_bytes, segment)
    assert not journal.append(small, durable=True)
    assert journal.append_records([small, small]) == 0
    assert journal.usage()["used_bytes"] == sum(before.values())
    journal.close()
    assert {p.name: p.stat().st_size for p in segments(tmp_path)} == before


CLAIMER = """
import sys
from service.capture.journal import Journal
journal = Journal(sys.argv[1], "capture", 1 << 20)
print("ready", flush=True)
sys.stdin.readline()
journal.append(b'{"a":1}\\n')
print("appended", flush=True)
"""


def test_segments_are_claimed_under_the_budget_lock(tmp_path):
    """Deterministically what the test above can only catch by chance: no claim while another holds the lock."""
    import fcntl

    claimer = run_python(CLAIMER, str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert claimer.stdout.readline() == "ready\n"
        with open(tmp_path / BUDGET_LOCK, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
            time.sleep(0.3)
            assert not segments(tmp_path), "a segment was claimed while another process held the budget lock"
        assert claimer.stdout.readline() == "appended\n"
        assert len(segments(tmp_path)) == 1
    finally:
        claimer.kill()
        claimer.wait()


def test_a_full_journal_looks_again_once_space_is_freed(tmp_path):
    journal = Journal(tmp_path, "capture", 10_000, 2_000)
    line = b"x" * 999 + b"\n"
    while journal.append(line):
        pass
    moved = tmp_path / "consumed"
    moved.mkdir()
    for path in segments(tmp_path):
        if path != journal.segment:
            path.rename(moved / path.name)  # an operator takes the files away
    assert not journal.append(line), "looked again within the second"
    time.sleep(1.05)
    assert journal.append(line)
    journal.close()


def test_rotation_keeps_each_segment_within_its_claim(tmp_path):
    journal = Journal(tmp_path, "capture", 1_000_000, 4096)
    records = [b'{"i":%d,"pad":"%s"}\n' % (i, b"z" * random.Random(i).randrange(50, 500)) for i in range(300)]
    assert journal.append_records(records[:100]) == 100
    for record in records[100:]:
        assert journal.append(record)
    big = b'{"big":"' + b"b" * 10_000 + b'"}\n'  # larger than a segment: a claim of its own
    assert journal.append(big)
    journal.close()
    files = segments(tmp_path)
    assert len(files) >= sum(map(len, records)) // 4096
    for path in files:
        assert path.stat().st_size <= segment_claim(path.name)
        assert path.name.startswith("capture-") and path.read_bytes().endswith(b"\n")
    assert b"".join(p.read_bytes() for p in files) == b"".join(records) + big  # names sort in write order
    assert journal.usage()["written_bytes"] == sum(map(len, records)) + len(big)


def test_claims_start_small_and_grow(tmp_path):
    """A live segment reserves its whole claim: a process that captured once must not hold 16 MiB."""
    journal = Journal(tmp_path, "capture", 1 << 30)
    assert journal.segment_bytes == 16 << 20
    line = b"q" * 1023 + b"\n"
    claims = []
    for _ in range(64 + 128 + 256 + 1):
        assert journal.append(line)
        if segment_claim(journal.segment.name) not in claims:
            claims.append(segment_claim(journal.segment.name))
    assert claims == [64 << 10, 128 << 10, 256 << 10, 512 << 10]
    journal.close()


def test_a_small_budget_is_shared_by_every_process_writing_it(tmp_path):
    """A claim takes at most a quarter of the free budget: on a 64 KiB feedback folder (CAPTURE_MAX_BYTES
    of 1 MiB) the first worker to store a label claimed all of it, and every other worker's was a 507."""
    first, second = Journal(tmp_path, "feedback", 64 << 10), Journal(tmp_path, "feedback", 64 << 10)
    line = b'{"label": "1"}\n'
    assert first.append(line) and second.append(line)
    assert first.usage()["used_bytes"] <= 64 << 10
    first.close()
    second.close()


def test_default_segment_size():
    from service.capture.journal import default_segment_bytes

    assert default_segment_bytes(1 << 30) == 16 << 20
    assert default_segment_bytes(32 << 20) == 2 << 20
    assert default_segment_bytes(200_000) == 64 << 10
    assert default_segment_bytes(10_000) == 10_000


KILLED_WRITER = """
import os, sys
from service.capture.journal import Journal
journal = Journal(sys.argv[1], "capture", 1 << 30, 8 << 20)
i = 0
while True:
    journal.append(b'{"i":%d,"pad":"%s"}\\n' % (i, b"k" * (1 + (i * 7919) % (3 << 20))))
    if i == 0:
        print("writing", flush=True)  # the test kills it mid-write, not before its first record
    i += 1
"""


def test_kill_9_mid_write_leaves_only_whole_lines(tmp_path):
    rng = random.Random(0)
    for _ in range(4):
        writer = run_python(KILLED_WRITER, str(tmp_path), stdout=subprocess.PIPE)
        assert writer.stdout.readline() == b"writing\n"  # started (a loaded machine takes a while to import)
        time.sleep(rng.uniform(0.05, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        for path in segments(tmp_path):
            lines = complete_lines(path)
            assert all(orjson.loads(line) for line in lines)
            assert len(list(read_events(path))) == len(lines)
        Journal(tmp_path, "capture", 1 << 30).close()  # starting recovers every dead segment
        for path in segments(tmp_path):
            assert path.stat().st_size == 0 or path.read_bytes().endswith(b"\n")
    assert segments(tmp_path)
    for path in segments(tmp_path):  # some hundred MB: not left for pytest's kept temporary directories
        path.unlink()


HOLDER = """
import sys, time
from service.capture.journal import Journal
journal = Journal(sys.argv[1], "capture", 1 << 20, 4096)
journal.append(b'{"live":1}\\n')
print(journal.segment, flush=True)
time.sleep(60)
"""


def test_recovery_truncates_dead_segments_only(tmp_path):
    # a dead process's segment cut short, one with no newline at all, and one whole
    dead = tmp_path / "capture-1-host-1-1-000001-4096.jsonl"
    dead.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    headless = tmp_path / "feedback-1-host-1-1-000002-4096.jsonl"
    headless.write_bytes(b'{"partial')
    whole = tmp_path / "capture-1-host-1-1-000003-4096.jsonl"
    whole.write_bytes(b'{"a":1}\n')
    holder = run_python(HOLDER, str(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        with open(live, "ab") as f:
            f.write(b'{"in progress":')  # as if its owner were inside a write
        Journal(tmp_path, "capture", 1 << 20).close()
        assert dead.read_bytes() == b'{"a":1}\n{"b":2}\n'
        assert headless.read_bytes() == b""
        assert whole.read_bytes() == b'{"a":1}\n'
        assert live.read_bytes() == b'{"live":1}\n{"in progress":', "a live segment was truncated"
    finally:
        holder.kill()
        holder.wait()
    Journal(tmp_path, "capture", 1 << 20).close()  # its owner gone, it is recovered too
    assert live.read_bytes() == b'{"live":1}\n'


def test_a_live_segment_counts_by_its_claim(tmp_path):
    holder = run_python(HOLDER, str(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        journal = Journal(tmp_path, "capture", 1 << 20)
        assert journal.usage()["used_bytes"] == 4096  # claimed 4096, wrote 11
        journal.close()
    finally:
        holder.kill()
        holder.wait()
    journal = Journal(tmp_path, "capture", 1 << 20)
    assert journal.usage()["used_bytes"] == len(b'{"live":1}\n')
    journal.close()


def test_a_forked_child_writes_segments_of_its_own(tmp_path):
    code = """
    import os, sys
    from service.capture.journal import Journal
    journal = Journal(sys.argv[1], "capture", 1 << 20, 4096)
    journal.append(b'{"parent":1}\\n')
    pid = os.fork()
    if pid == 0:
        journal.append(b'{"child":1}\\n')
        journal.close()
        os._exit(0)
    os.waitpid(pid, 0)
    journal.append(b'{"parent":2}\\n')
    journal.close()
    """
    assert run_python(code, str(tmp_path)).wait() == 0
    contents = sorted(p.read_bytes() for p in segments(tmp_path))
    assert contents == [b'{"child":1}\n', b'{"parent":1}\n{"parent":2}\n']


class OsWith:
    """The ``os`` module with some calls replaced: a disk that refuses, seen by one module only."""

    def __init__(self, **calls) -> None:
        self.calls = calls

    def __getattr__(self, name: str):
        return self.calls.get(name) or getattr(os, name)


def lines_on_disk(directory: Path) -> list[bytes]:
    return [line for path in segments(directory) for line in path.read_bytes().splitlines()]


def test_a_write_the_disk_cuts_short_leaves_whole_lines_and_is_tried_again_later(tmp_path, monkeypatch):
    from service.capture import segment

    recorder = Recorder(Journal(tmp_path, "capture", 1 << 20), 1.0)
    journal = recorder.journal
    assert journal.append(b"one\n")
    monkeypatch.setattr(segment, "os", OsWith(write=lambda fd, data: os.write(fd, data[:len(data) // 2])))
    with pytest.raises(CaptureWriteError) as refused:  # the disk filled up in the middle of the write
        journal.append_records([b"two\n", b"three\n"])
    assert refused.value.written == 0 and refused.value.errno == errno.ENOSPC
    assert lines_on_disk(tmp_path) == [b"one"]  # the half-written part is cut away
    monkeypatch.undo()  # room again, but the journal waits RECHECK_SECONDS before it tries
    with pytest.raises(CaptureWriteError, match="still failing"):
        journal.append(b"four\n")
    before = record_count("dropped_error")
    x, p, labels = mnist_like()
    recorder.offer("r1", "mnist", 1, labels, x, p)
    assert recorder.flush() == 0 and record_count("dropped_error") - before == 1  # dropped, counted
    time.sleep(RECHECK_SECONDS + 0.05)
    assert journal.append(b"five\n")
    assert lines_on_disk(tmp_path) == [b"one", b"five"] and len(segments(tmp_path)) == 2  # a fresh segment
    recorder.stop()


def test_records_written_before_a_rotation_fails_are_counted_as_written(tmp_path, monkeypatch):
    from service.capture import segment

    journal = Journal(tmp_path, "capture", 1 << 20, segment_bytes=100)  # two 40-byte records a segment

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segment, "os", OsWith(fsync=failing))  # closing the full segment syncs it
    with pytest.raises(CaptureWriteError) as refused:
        journal.append_records([b"%039d\n" % i for i in range(5)])
    monkeypatch.undo()
    assert refused.value.written == 2 and len(lines_on_disk(tmp_path)) == 2
    journal.close()


def test_a_durable_append_whose_fsync_fails_is_not_left_on_disk(tmp_path, monkeypatch):
    from service.capture import segment

    journal = Journal(tmp_path, "feedback", 1 << 20)
    assert journal.append(b"a\n", durable=True)

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segment, "os", OsWith(fsync=failing))
    with pytest.raises(CaptureWriteError, match="fsync failed"):
        journal.append(b"b\n", durable=True)  # reported as not stored: it must not be there either
    monkeypatch.undo()
    assert lines_on_disk(tmp_path) == [b"a"]
    journal.close()


def test_an_unusable_directory_is_refused_clearly(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(CaptureDirError, match="parent directory does not exist") as e:
        Journal(tmp_path / "missing" / "captures", "capture", 1 << 20)
    assert str(tmp_path / "missing" / "captures") in str(e.value)
    with pytest.raises(CaptureDirError, match="cannot be created: Not a directory"):
        Journal(afile / "captures", "capture", 1 << 20)
    with pytest.raises(CaptureDirError, match="is not a directory"):
        Journal(afile, "capture", 1 << 20)

    # read-only: root writes anywhere, so the check drops to nobody when the suite runs as root
    base = Path(tempfile.mkdtemp(prefix="capture-ro-"))
    readonly = base / "captures"
    code = """
    import os, sys
    from service.capture.journal import CaptureDirError, Journal
    if os.geteuid() == 0:  # as nobody, once the interpreter (not readable by nobody here) has loaded
        os.setgid(65534)
        os.setuid(65534)
    try:
        Journal(sys.argv[1], "capture", 1 << 20)
    except CaptureDirError as e:
        print(e)
    """
    try:
        readonly.mkdir(mode=0o555)
        base.chmod(0o755)
        readonly.chmod(0o555)
        out = run_python(code, str(readonly), stdout=subprocess.PIPE, text=True).communicate()[0]
        assert out.startswith(f"capture directory {readonly}: cannot create or open {BUDGET_LOCK}: Permission denied")
        # a lock file made before the volume went read-only: a segment still cannot be made
        readonly.chmod(0o755)
        (readonly / BUDGET_LOCK).touch()
        (readonly / BUDGET_LOCK).chmod(0o666)
        readonly.chmod(0o555)
        out = run_python(code, str(readonly), stdout=subprocess.PIPE, text=True).communicate()[0]
        assert out.startswith(f"capture directory {readonly}: cannot be written or locked: Permission denied"), out
        assert [p.name for p in readonly.iterdir()] == [BUDGET_LOCK]
    finally:
        readonly.chmod(0o755)
        shutil.rmtree(base)


# -- the recorder -------------------------------------------------------------------------------------

class NoRandom:
    def random(self) -> float:
        raise AssertionError("the sampling drew a random number it did not need")


def captured_ids(directory: Path) -> list[str]:
    return [e["id"] for path in segments(directory) for e in read_events(path)
            if e["type"] == "org.kubeflow.serving.inference.response"]


def test_a_full_queue_drops_records_not_requests(tmp_path):
    x, p, labels = mnist_like()
    recorder = Recorder(Journal(tmp_path, "capture", 1 << 20), 1.0, capacity=10, rng=NoRandom())
    before = record_count("dropped_queue"), record_count("written")
    pooled = x.copy()
    started = time.perf_counter()
    accepted = [recorder.offer(f"r{i}", "mnist", 1, labels, pooled, p) for i in range(15)]
    elapsed = time.perf_counter() - started
    pooled[:] = 1.0  # the request buffer reused: what was queued is unchanged
    assert accepted == [True] * 10 + [False] * 5 and elapsed < 0.2  # microseconds each: no waiting on anything
    assert recorder.pending() == 10
    assert record_count("dropped_queue") - before[0] == 5
    assert recorder.flush() == 10 and recorder.pending() == 0
    assert record_count("written") - before[1] == 10
    assert captured_ids(tmp_path) == [f"r{i}" for i in range(10)]
    request = next(read_events(segments(tmp_path)[0]))
    assert np.array_equal(np.asarray(request["data"]["inputs"][0]["data"], np.float32), x.ravel())
    recorder.stop()


def test_records_beyond_the_budget_are_dropped_and_counted(tmp_path):
    x, p, labels = mnist_like()
    one = len(inference_events("r00", "mnist", 1, 0, x, p, labels))
    recorder = Recorder(Journal(tmp_path, "capture", 5 * one + one // 2, segment_bytes=2 * one), 1.0)
    before = record_count("dropped_budget")
    for i in range(8):
        recorder.offer(f"r{i:02d}", "mnist", 1, labels, x, p)
    assert recorder.flush() == 5
    assert record_count("dropped_budget") - before == 3
    assert captured_ids(tmp_path) == [f"r{i:02d}" for i in range(5)]
    recorder.stop()


def test_the_queue_is_bounded_in_bytes_too(tmp_path):
    """1,024 queued requests of 1,024 MNIST rows held 3.3 GB: the queue counted records only."""
    x, p, labels = mnist_like(64)  # 200 kB of inputs and probabilities a record
    size = x.nbytes + p.nbytes
    recorder = Recorder(Journal(tmp_path, "capture", 1 << 30), 1.0, capacity=1000, rng=NoRandom(),
                        max_bytes=3 * size)
    before = record_count("dropped_queue")
    assert [recorder.offer(f"r{i}", "mnist", 1, labels * 64, x, p) for i in range(5)] == [True] * 3 + [False] * 2
    assert record_count("dropped_queue") - before == 2
    assert recorder.flush() == 3  # and the bytes are free again
    assert recorder.offer("r5", "mnist", 1, labels * 64, x, p)
    recorder.stop()


def test_records_are_not_encoded_while_the_budget_is_known_full(tmp_path, monkeypatch):
    """Each flush encoded every queued record (58 ms for 1,024 MNIST rows, under the GIL), then found
    no room and dropped them all."""
    from service.capture import recorder as recorder_module

    x, p, labels = mnist_like()
    one = len(inference_events("r00", "mnist", 1, 0, x, p, labels))
    recorder = Recorder(Journal(tmp_path, "capture", one + one // 2, segment_bytes=one + one // 2), 1.0)
    recorder.offer("r0", "mnist", 1, labels, x, p)
    recorder.offer("r1", "mnist", 1, labels, x, p)
    assert recorder.flush() == 1  # the budget is full now, and the journal waits before looking again
    encoded = []
    real = recorder_module.inference_events
    monkeypatch.setattr(recorder_module, "inference_events", lambda *a: (encoded.append(a[0]), real(*a))[1])
    before = record_count("dropped_budget")
    for i in range(2, 6):
        recorder.offer(f"r{i}", "mnist", 1, labels, x, p)
    assert recorder.flush() == 0 and encoded == []
    assert record_count("dropped_budget") - before == 4
    recorder.stop()


@pytest.mark.parametrize("rate", [0.0, 1.0, 0.25])
def test_the_sample_rate(tmp_path, rate):
    x, p, labels = mnist_like()
    rng = NoRandom() if rate in (0.0, 1.0) else random.Random(7)
    recorder = Recorder(Journal(tmp_path, "capture", 1 << 30), rate, capacity=10_000, rng=rng)
    offers = 4000
    queued = sum(recorder.offer(f"r{i}", "mnist", 1, labels, x, p) for i in range(offers))
    recorder.stop()
    written = len(captured_ids(tmp_path))
    assert written == queued
    if rate == 0.0:
        assert written == 0 and not segments(tmp_path)
    elif rate == 1.0:
        assert written == offers
    else:
        # Binomial(4000, 0.25): mean 1000, sd 27.4; 5 sd either side (a chance of 6e-7 of failing by luck)
        assert abs(written - 1000) <= 137


def test_the_flush_thread_writes_and_stop_drains(tmp_path):
    x, p, labels = mnist_like()
    recorder = Recorder(Journal(tmp_path, "capture", 1 << 30), 1.0)
    recorder.start_thread(interval=0.01)
    for i in range(50):
        recorder.offer(f"r{i}", "mnist", 1, labels, x, p)
    deadline = time.monotonic() + 5
    while recorder.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.pending() == 0
    for i in range(50, 60):
        recorder.offer(f"r{i}", "mnist", 1, labels, x, p)
    recorder.stop()
    assert captured_ids(tmp_path) == [f"r{i}" for i in range(60)]
    assert recorder.journal.closed and not recorder.offer("late", "mnist", 1, labels, x, p)


def test_write_now_is_durable_feedback_within_the_budget(tmp_path):
    line = feedback_event(event_id=new_event_id(), time_ns=time.time_ns(), model="mnist", labels=["3"],
                          request_id="r1", version=1, predicted=["5"])
    recorder = Recorder(Journal(tmp_path, "feedback", 3 * len(line), segment_bytes=len(line)), 0.0)
    before = record_count("written", "feedback"), record_count("dropped_budget", "feedback")
    assert [recorder.write_now(line) for _ in range(4)] == [True, True, True, False]
    assert record_count("written", "feedback") - before[0] == 3
    assert record_count("dropped_budget", "feedback") - before[1] == 1
    assert all(p.name.startswith("feedback-") for p in segments(tmp_path)) and len(segments(tmp_path)) == 3
    recorder.stop()
    for path in segments(tmp_path):
        path.unlink()
    recorder = Recorder(Journal(tmp_path, "feedback", 3 * len(line)), 0.0)
    assert recorder.write_now(line + line) and not recorder.write_now(line + line)  # all or none
    assert record_count("written", "feedback") - before[0] == 5
    assert record_count("dropped_budget", "feedback") - before[1] == 3
    assert [e["subject"] for e in read_events(segments(tmp_path)[0])] == ["r1", "r1"]
    recorder.stop()


def test_flush_under_gevent_from_a_native_thread(tmp_path):
    """As the HTTP worker runs it: greenlets offer, a gevent thread pool (native threads) flushes."""
    code = """
    from gevent import monkey; monkey.patch_all()
    import sys
    import gevent, numpy as np
    from gevent.threadpool import ThreadPool
    from service.capture import Journal, Recorder
    recorder = Recorder(Journal(sys.argv[1], "capture", 1 << 30, 64 << 10), 1.0)
    pool = ThreadPool(2)
    x, p = np.ones((1, 784), np.float32), np.ones((1, 10), np.float32)
    def client(c):
        for i in range(100):
            recorder.offer(f"c{c}-{i}", "mnist", 1, ["1"], x, p)
            gevent.sleep(0)
    def flusher():
        while True:
            pool.spawn(recorder.flush).get()
            pool.spawn(recorder.flush)
            gevent.sleep(0.001)
    f = gevent.spawn(flusher)
    gevent.joinall([gevent.spawn(client, c) for c in range(10)], timeout=20)
    f.kill()
    pool.join()
    recorder.stop()
    print("ok")
    """
    out = run_python(code, str(tmp_path), stdout=subprocess.PIPE, text=True).communicate(timeout=30)[0]
    assert out.strip() == "ok"
    ids = captured_ids(tmp_path)
    assert sorted(ids) == sorted(f"c{c}-{i}" for c in range(10) for i in range(100))


def test_the_worker_writes_captures_when_its_first_use_is_on_a_thread(tmp_path):
    """As a worker whose first request is feedback: the recorders first used from the thread pool
    that runs feedback's lookups must still be written by the event loop's writer (a greenlet
    spawned on that thread would belong to a hub that never runs, and nothing would be written)."""
    code = """
    from gevent import monkey; monkey.patch_all()
    import glob, os, sys, time
    import gevent, numpy as np
    from gevent.threadpool import ThreadPool
    from service.capture.capture import Capture
    from service.http_server.capture_writer import CaptureWriter
    capture = Capture(sys.argv[1], 1.0, 1 << 30)
    capture.drive_with(CaptureWriter())
    ThreadPool(1).spawn(lambda: capture.index.refresh()).get()  # feedback's lookup, first
    capture.offer("r1", "mnist", 1, ["1"], np.ones((1, 784), np.float32), np.ones((1, 10), np.float32))
    def written():  # one write(2) of whole lines: a segment is empty or holds the record
        return any(os.path.getsize(f) for f in glob.glob(sys.argv[1] + "/capture-*.jsonl"))
    deadline = time.monotonic() + 5
    while not written() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    print(written())  # before any close, which would write what is queued regardless
    """
    out = run_python(code, str(tmp_path), stdout=subprocess.PIPE, text=True).communicate(timeout=30)[0]
    assert out.strip() == "True"
    assert captured_ids(tmp_path) == ["r1"]


def test_a_driver_comes_before_the_first_capture(tmp_path):
    from service.capture.capture import Capture

    capture = Capture(tmp_path, 1.0, 1 << 20)
    capture.drive_with(lambda recorder: None)
    with pytest.raises(RuntimeError, match="before"):
        capture.drive_with(lambda recorder: None)
    capture.close()


@pytest.mark.parametrize("how", ["unlinked", "moved"])
def test_a_segment_moved_away_is_let_go_before_the_next_write(tmp_path, how):
    """An operator may move segments at any time: feedback written after, fsynced and answered as stored,
    went into the unlinked (or moved) file, and nothing of it stayed in the directory."""
    journal = Journal(tmp_path, "feedback", 1 << 20)
    assert journal.append(b'{"n":1}\n', durable=True)
    [first] = segments(tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-archive"
    elsewhere.mkdir()
    if how == "unlinked":
        shutil.copy(first, elsewhere / first.name)  # a move to another disk: copied, then unlinked
        first.unlink()
    else:
        first.rename(elsewhere / first.name)
    for n in (2, 3):
        assert journal.append(b'{"n":%d}\n' % n, durable=True)
    journal.close()
    kept = [line for path in segments(tmp_path) for line in complete_lines(path)]
    assert kept == [b'{"n":2}\n', b'{"n":3}\n']  # in the directory, where readers look
    assert complete_lines(elsewhere / first.name) == [b'{"n":1}\n']


def test_a_disk_refusing_every_write_leaves_no_empty_files(tmp_path, monkeypatch):
    """Each retry after RECHECK_SECONDS made a new segment, the write failed and the empty file stayed:
    one file a second, for good, each opened by every index refresh."""
    from service.capture import rotation, segment

    monkeypatch.setattr(rotation, "RECHECK_SECONDS", 0.0)
    journal = Journal(tmp_path, "capture", 1 << 20)
    def refuse(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment, "os", OsWith(write=refuse))
    for _ in range(20):
        with contextlib.suppress(CaptureWriteError):
            journal.append(b'{"n":1}\n')
    monkeypatch.undo()
    journal.close()
    assert segments(tmp_path) == []
