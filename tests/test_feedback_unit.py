"""Feedback, the capture id index and the drift windows, in process (the real server: integration/test_feedback.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from model.input_summary import DriftScorer, raw_scores, summarize
from service.app import create_app
from service.capture import events
from service.capture.index import Captured, CaptureIndex
from service.observability.drift import DriftMonitor, Window
from service.repository.registry import ModelRegistry
from service.repository.version_policy import VersionPolicy


@pytest.fixture(scope="module")
def registry(model_repository):
    return ModelRegistry(model_repository, VersionPolicy.parse("latest:1"), 0.0).load_all()


def test_feedback_is_off_without_a_capture_dir(registry):
    client = create_app(model_registry=registry).test_client()
    r = client.post("/feedback", json={"id": "abc", "label": "1"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "feedback_off"


def predict_and_wait(client, inputs, model="xor") -> str:
    r = client.post("/predict", json={"model": model, "inputs": inputs})
    assert r.status_code == 200
    return r.headers["X-Request-ID"]


def test_a_full_feedback_budget_is_a_507_and_stores_nothing_half(registry, tmp_path):
    app = create_app({"capture_dir": str(tmp_path), "capture_max_bytes": 64 * 1024}, model_registry=registry)
    client = app.test_client()
    example = {"model": "mnist", "inputs": [[0.5] * 784], "labels": ["3"]}
    statuses = [client.post("/feedback", json=example).status_code for _ in range(12)]
    assert statuses[0] == 200 and statuses[-1] == 507, statuses  # 32 KiB of ~5 KB examples
    assert set(statuses) == {200, 507} and statuses.index(507) == statuses.count(200)  # none after the first 507
    assert client.post("/feedback", json=example).headers["Retry-After"]
    files = list((tmp_path / "feedback").glob("*.jsonl"))
    assert sum(f.stat().st_size for f in files) <= 32 * 1024
    lines = [line for f in files for line in f.read_bytes().splitlines(keepends=True)]
    assert len(lines) == statuses.count(200) and all(line.endswith(b"\n") and json.loads(line) for line in lines)
    app.extensions["dataplane"].capture.close()


def test_feedback_the_disk_refuses_is_a_503_and_not_kept(registry, tmp_path, monkeypatch):
    import errno

    from service.capture import segment
    from tests.test_capture import OsWith

    app = create_app({"capture_dir": str(tmp_path)}, model_registry=registry)
    client = app.test_client()
    example = {"model": "mnist", "inputs": [[0.5] * 784], "labels": ["3"]}
    assert client.post("/feedback", json=example).status_code == 200

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segment, "os", OsWith(fsync=failing))
    r = client.post("/feedback", json=example)
    body = r.get_json()
    assert r.status_code == 503 and r.headers["Retry-After"] and body["error"]["code"] == "capture_failing", body
    assert "disk refused" in body["error"]["message"] and "Errno" not in json.dumps(body)  # no OS text to the client
    monkeypatch.undo()
    lines = [line for f in (tmp_path / "feedback").glob("*.jsonl") for line in f.read_bytes().splitlines()]
    assert len(lines) == 1  # the first only
    app.extensions["dataplane"].capture.close()


def test_a_label_just_answered_is_found_while_its_record_is_still_queued(registry, tmp_path):
    app = create_app({"capture_dir": str(tmp_path)}, model_registry=registry)
    client = app.test_client()
    for _ in range(5):  # the writer thread flushes every 50 ms: labelling at once must wait for it, not 404
        rid = predict_and_wait(client, [[0, 1]])
        r = client.post("/feedback", json={"id": rid, "label": "1"})
        assert r.status_code == 200, r.get_json()
    app.extensions["dataplane"].capture.close()


def write_lines(path, *lines: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(b"".join(lines))


def test_the_index_reads_only_what_is_new_and_whole(tmp_path):
    (tmp_path / "feedback").mkdir()
    index = CaptureIndex(tmp_path, tmp_path / "feedback", max_entries=3)
    x, p = np.zeros((2, 2), np.float32), np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    first = events.inference_events("r1", "xor", 1, time.time_ns(), x, p, ["0", "1"])
    write_lines(tmp_path / "capture-a.jsonl", first[:-7])  # the response line cut short
    index.refresh()
    assert index.captured("r1") is None
    write_lines(tmp_path / "capture-a.jsonl", first[-7:])
    index.refresh()
    assert index.captured("r1").predicted == ("0", "1") and index.captured("r1").version == 1
    for k in range(2, 5):
        write_lines(tmp_path / "capture-b.jsonl", events.inference_events(f"r{k}", "xor", 1, time.time_ns(), x, p,
                                                                          ["0", "1"]))
    index.refresh()
    assert index.captured("r1") is None and index.captured("r4") is not None  # the oldest forgotten first
    label = events.feedback_event(event_id=events.new_event_id(), time_ns=time.time_ns(), model="xor",
                                  labels=["1", "1"], request_id="r4", version=1, predicted=["0", "1"])
    write_lines(tmp_path / "feedback" / "feedback-a.jsonl", label)
    index.refresh()
    assert index.labels_of("r4") == ("1", "1") and index.labels_of("r3") is None


def test_the_drift_window_is_the_mean_of_the_last_scores():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (500, 6)).astype(np.float32)
    summary = summarize(train)
    scorer = DriftScorer(summary)
    assert abs(scorer.scores(train).mean() - 1.0) < 1e-6  # 1.0 on the training data, by construction
    window = Window(scorer, 7, "m", 1)
    batches = [rng.uniform(0, 1, (n, 6)).astype(np.float32) for n in (3, 5, 1, 9, 2)]
    seen = []
    for b in batches:
        window.observe(b)
        seen.extend(scorer.scores(b))
        assert window.filled == min(7, len(seen))
        assert window.ring.sum() == pytest.approx(sum(seen[-7:]), rel=1e-12)
    shifted = np.clip(rng.uniform(0, 1, (50, 6)) + 0.6, 0, 1).astype(np.float32)
    assert scorer.scores(shifted).mean() > 2.0


def test_the_served_scores_match_the_float64_definition_on_mnist(registry, mnist_data):
    """The scorer's float32 product (input_summary.DriftScorer.scores) against raw_scores in float64, on
    the real MNIST test digits and the shipped model's summary: within 1e-5 relative (about 4e-7 with this
    project's OpenBLAS; a kernel adding the float32 terms one by one would reach ~2e-6)."""
    summary = registry.snapshot.get("mnist").metadata["input_summary"]
    x = np.asarray(mnist_data.eval_sets["test"][0][:2000], dtype=np.float32)
    exact = raw_scores(x, np.float32(summary["mean"]), np.float32(summary["scale"])) / summary["baseline"]
    served = DriftScorer(summary).scores(x)
    assert served.dtype == np.float64 and served.shape == (2000,)
    np.testing.assert_allclose(served, exact, rtol=1e-5)
    assert 0.5 < served.mean() < 2.0  # MNIST's test digits are like its training digits


def test_a_version_without_a_summary_has_no_window():
    monitor = DriftMonitor(10)
    monitor.observe("m", 1, {}, np.zeros((1, 4), np.float32))
    monitor.observe("m", 2, {"input_summary": {"mean": [0, 0], "scale": [1, 1], "baseline": 1.0}},
                    np.zeros((1, 4), np.float32))  # a summary of another width
    monitor.observe("m", 3, {"input_summary": {"mean": "junk"}}, np.zeros((1, 4), np.float32))
    assert [monitor.window_of("m", v) for v in (1, 2, 3)] == [None, None, None] and len(monitor.windows) == 3


def test_a_version_reloaded_in_place_starts_a_window_of_its_own_summary():
    """A version's file replaced (same number, other metadata): its window was the old file's, scoring
    against the old summary, and failing every request once the width changed."""
    monitor = DriftMonitor(10)
    old = {"input_summary": {"mean": [0.5] * 4, "scale": [1.0] * 4, "baseline": 1.0}}
    new = {"input_summary": {"mean": [0.0] * 6, "scale": [1.0] * 6, "baseline": 1.0}}
    monitor.observe("m", 1, old, np.zeros((2, 4), np.float32))
    first = monitor.window_of("m", 1)
    monitor.observe("m", 1, new, np.zeros((3, 6), np.float32))  # raised: shapes (3,6) and (4,)
    assert monitor.window_of("m", 1) is not first and monitor.window_of("m", 1).filled == 3
    assert monitor.window_of("m", 1).ring[:3].sum() == 0.0  # zeros are the new summary's mean: no drift


def test_the_last_scores_before_traffic_stops_are_published():
    """Once a window is full its gauges are written at most every PUBLISH_SECONDS; scores that came
    after the last write, with no request after them, were never published, until the next request."""
    monitor = DriftMonitor(4)
    summary = {"input_summary": {"mean": [0.0] * 2, "scale": [1.0] * 2, "baseline": 1.0}}
    monitor.observe("flush", 1, summary, np.zeros((4, 2), np.float32))  # full: published
    window = monitor.window_of("flush", 1)
    window.publish_at = time.monotonic() + 3600  # as if within PUBLISH_SECONDS of that, however slow the machine
    monitor.observe("flush", 1, summary, np.full((2, 2), 5.0, np.float32))  # not published yet
    assert window.sum_gauge._value.get() == 0.0 and window.stale
    monitor.flush()
    assert window.ring.sum() > 0 and window.sum_gauge._value.get() == pytest.approx(window.ring.sum())
    assert not window.stale


def test_the_data_plane_scores_each_computed_sample_once(registry):
    """Drift is scored per forward pass (DataPlane.observe_pass): every sample of every request that
    ran, once."""
    from service.dataplane.dataplane import DataPlane

    plane = DataPlane(registry, drift_window=1000)
    entry = registry.snapshot.get("mnist")
    scorer = DriftScorer(entry.metadata["input_summary"])
    rng = np.random.default_rng(5)
    batches = [rng.uniform(0, 1, (n, 784)).astype(np.float32) for n in (1, 4, 2)]
    for batch in batches:
        plane.infer("mnist", entry.version, batch)
    window = plane.drift.window_of("mnist", entry.version)
    assert window.filled == 7
    assert window.ring[:7].sum() == pytest.approx(sum(scorer.scores(b).sum() for b in batches), rel=1e-12)


def test_a_retry_answered_by_another_version_is_no_ambiguity(tmp_path):
    """A canary routes a retry (no rollout key) to either version: the same labels answered are the same
    request; other labels under one id are two requests."""
    index = CaptureIndex(tmp_path, tmp_path / "feedback")
    x, p = np.zeros((1, 2), np.float32), np.array([[0.1, 0.9]], np.float32)
    for rid, answers in (("retried", (["1"], ["1"])), ("reused", (["1"], ["0"]))):
        for version, labels in zip((1, 2), answers, strict=True):
            write_lines(tmp_path / "capture-a.jsonl", events.inference_events(rid, "xor", version, time.time_ns(),
                                                                              x, p, labels))
    index.refresh()
    assert not index.captured("retried").ambiguous and index.captured("retried").version == 1
    assert index.captured("reused").ambiguous


def test_a_feedback_line_cut_away_is_forgotten_by_the_index(tmp_path):
    """A label whose fsync failed is cut away and its client told nothing was kept (503). Another worker's
    index may have read it meanwhile: it must forget it when the file is found shorter, or the client's
    retry is answered "duplicate" and the label is lost."""
    (tmp_path / "feedback").mkdir()
    index = CaptureIndex(tmp_path, tmp_path / "feedback")
    path = tmp_path / "feedback" / "feedback-a.jsonl"
    kept = events.feedback_event(event_id=events.new_event_id(), time_ns=time.time_ns(), model="xor",
                                 labels=["1"], request_id="kept", version=1, predicted=["1"])
    cut = events.feedback_event(event_id=events.new_event_id(), time_ns=time.time_ns(), model="xor",
                                labels=["0"], request_id="cut", version=1, predicted=["1"])
    write_lines(path, kept, cut)
    index.refresh()
    assert index.labels_of("cut") == ("0",) and index.labels_of("kept") == ("1",)
    with open(path, "r+b") as fh:
        fh.truncate(len(kept))  # the journal cuts the line whose fsync failed
    index.refresh()
    assert index.labels_of("cut") is None and index.labels_of("kept") == ("1",)


def test_a_new_segment_whose_first_line_failed_is_kept_empty_and_forgotten_by_the_index(tmp_path):
    """A failed fsync of a new segment's first line removed the file rather than cut it back to nothing
    (``Segment.abandon``), and another worker's index took it for a file an operator moved away, keeping
    the label it had read: a retry was answered "duplicate" with nothing on disk. Now such a segment is
    kept, empty, and the index forgets the label; a segment that never held a whole line is still
    removed, and a file moved away still keeps its labels known."""
    from service.capture.segment import Segment

    directory = tmp_path / "feedback"
    directory.mkdir()
    index = CaptureIndex(tmp_path, directory)
    kept = events.feedback_event(event_id=events.new_event_id(), time_ns=time.time_ns(), model="xor",
                                 labels=["1"], request_id="kept", version=1, predicted=["1"])
    failed = events.feedback_event(event_id=events.new_event_id(), time_ns=time.time_ns(), model="xor",
                                   labels=["0"], request_id="failed", version=1, predicted=["1"])
    write_lines(directory / "feedback-a.jsonl", kept)
    segment = Segment(directory, "feedback-b.jsonl", 1 << 20)
    segment.write(failed)
    index.refresh()  # another worker reads the line before its fsync fails
    assert index.labels_of("failed") == ("0",)
    segment.written -= len(failed)  # what the journal does when the fsync fails
    segment.abandon()
    assert (directory / "feedback-b.jsonl").stat().st_size == 0
    index.refresh()
    assert index.labels_of("failed") is None and index.labels_of("kept") == ("1",)
    torn = Segment(directory, "feedback-c.jsonl", 1 << 20)
    torn.write(failed[:10])  # a short write: no whole line, which no index reads
    torn.written = 0
    torn.abandon()
    assert not (directory / "feedback-c.jsonl").exists()
    (directory / "feedback-a.jsonl").rename(tmp_path / "archived.jsonl")  # an operator moves a file away
    index.refresh()
    assert index.labels_of("kept") == ("1",)  # the first feedback still stands


def test_the_index_is_bounded_by_ids_and_by_rows_whatever_clients_send(tmp_path):
    """Captures were kept by id with a string per row: 1,024-row requests took 60 kB each, so the 500,000
    ids the index keeps could take 30 GB. Now rows count too, and a one-sample capture costs ~140 bytes."""
    import tracemalloc

    index = CaptureIndex(tmp_path, tmp_path / "feedback", max_rows=5000)
    x, p = np.zeros((1024, 2), np.float32), np.tile(np.array([[0.9, 0.1]], np.float32), (1024, 1))
    for k in range(8):
        write_lines(tmp_path / "capture-a.jsonl", events.inference_events(f"big-{k}" * 16, "xor", 1, time.time_ns(),
                                                                          x, p, ["0"] * 1024))
    index.refresh()
    assert index.captures.rows <= 5000 and len(index.captures) == 4  # the newest four of 1,024 rows
    assert index.captured("big-7" * 16).predicted == ("0",) * 1024 and index.captured("big-3" * 16) is None
    small = CaptureIndex(tmp_path, tmp_path / "feedback")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(20_000):
            rid = f"{k:0128d}"  # the longest id a client may send
            small.captures.put(small.digest(rid), small.one_of(Captured("mnist", 2, small.label_names([str(k % 10)])),
                                                               1))
            small.note_labels(rid, (str(k % 10),))
        per_id = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert per_id < 2 * 200, per_id  # a capture and a label: about 140 bytes each


def test_feedback_larger_than_the_whole_budget_is_a_413_not_a_507(registry, tmp_path):
    """No retry and no operator could make room for it: it was a 507 'move files away' with Retry-After."""
    app = create_app({"capture_dir": str(tmp_path), "capture_max_bytes": 64 * 1024}, model_registry=registry)
    client = app.test_client()
    big = {"model": "mnist", "inputs": [[0.5] * 784] * 16, "labels": ["3"] * 16}  # ~50 KB, over a 32 KiB budget
    r = client.post("/feedback", json=big)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "feedback_too_large", r.get_json()
    assert "Retry-After" not in r.headers
    assert client.post("/feedback", json={**big, "inputs": big["inputs"][:1], "labels": ["3"]}).status_code == 200
    app.extensions["dataplane"].capture.close()


def test_a_line_of_another_shape_is_skipped_not_fatal(tmp_path):
    """A response event whose data or outputs are not objects (a foreign tool's file) raised
    AttributeError out of every refresh, in every worker: every POST /feedback was a 500, for good."""
    (tmp_path / "feedback").mkdir()
    index = CaptureIndex(tmp_path, tmp_path / "feedback")
    odd = [{"specversion": "1.0", "id": "x", "type": "org.kubeflow.serving.inference.response", "data": data}
           for data in ({"outputs": ["label"]}, ["a list"], "text", {"outputs": [{"name": "label", "data": 5}]})]
    write_lines(tmp_path / "capture-odd.jsonl", *(json.dumps(e).encode() + b"\n" for e in odd))
    write_lines(tmp_path / "feedback" / "feedback-odd.jsonl",
                json.dumps({"type": "numpy-nets.inference.feedback", "data": ["not", "an", "object"]}).encode() + b"\n")
    x, p = np.zeros((1, 2), np.float32), np.array([[0.1, 0.9]], np.float32)
    write_lines(tmp_path / "capture-good.jsonl", events.inference_events("good", "xor", 1, time.time_ns(), x, p, ["1"]))
    index.refresh()
    assert index.captured("good").predicted == ("1",) and index.captured("x") is None
    assert index.skipped >= 3
