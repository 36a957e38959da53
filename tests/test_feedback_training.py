"""Training on served traffic: the capture directory's loader (join, validation, field split, digest)
and ``python -m training digits --feedback DIR`` end to end, gates included.

The capture files are written here as the server writes them (one CloudEvent per line), by hand:
the loader must read what the format says, not what one writer happens to produce.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from model.input_summary import summarize
from model.io import LoadedModel, file_sha256, load_model
from training import recipes
from training.cli import main
from training.datasets import digit_glyphs, digits, glyph_variants
from training.feedback import FEEDBACK_TYPE, REQUEST_TYPE, RESPONSE_TYPE, FeedbackError, is_field, load_feedback
from training.trainer import accuracy

LABELS = ["1", "2", "3", "4", "5"]  # the digits recipe's
T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


# --- a writer of capture directories ------------------------------------------------------------------

def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def tensor(rows: np.ndarray) -> dict:
    rows = np.asarray(rows, dtype=np.float32)
    return {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": [float(v) for v in rows.ravel()]}


def captured(rid: str, rows: np.ndarray, *, answers: list[str] | None = None, model: str = "digits",
             when: float = 0) -> list[dict]:
    """The request and response events of one captured inference of ``rows`` (n, features)."""
    base = {"specversion": "1.0", "id": rid, "source": f"/models/{model}/versions/1", "time": at(when),
            "datacontenttype": "application/json", "inferenceservicename": model, "modelversion": "1"}
    answers = answers if answers is not None else ["1"] * len(rows)
    return [{**base, "type": REQUEST_TYPE, "data": {"id": rid, "inputs": [tensor(rows)]}},
            {**base, "type": RESPONSE_TYPE, "data": {
                "id": rid, "model_name": model, "model_version": "1",
                "outputs": [{"name": "probabilities", "shape": [len(rows), 5], "datatype": "FP32",
                             "data": [0.2] * (5 * len(rows))},
                            {"name": "label", "shape": [len(rows)], "datatype": "BYTES", "data": answers}]}}]


def labelled(rid: str, labels: list[str], *, when: float = 1, event_id: str | None = None,
             model: str = "digits", predicted: list[str] | None = None) -> dict:
    """A feedback event labelling the captured request ``rid``."""
    return {"specversion": "1.0", "id": event_id or f"fb-{rid}-{when}", "source": "/feedback", "type": FEEDBACK_TYPE,
            "time": at(when), "subject": rid, "inferenceservicename": model,
            "data": {"request_id": rid, "model_name": model, "model_version": "1", "labels": labels,
                     "predicted": predicted if predicted is not None else ["1"] * len(labels)}}


def example(event_id: str, rows: np.ndarray, labels: list[str], *, when: float = 1, model: str = "digits") -> dict:
    """A self-contained feedback event: inputs and their labels."""
    return {"specversion": "1.0", "id": event_id, "source": "/feedback", "type": FEEDBACK_TYPE, "time": at(when),
            "inferenceservicename": model, "data": {"model_name": model, "inputs": [tensor(rows)], "labels": labels}}


def write(path: Path, events: list[dict | str], tail: str = "") -> Path:
    """One event per line (a str is written as it is), then ``tail`` with no newline (a write cut short)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events) + tail)
    return path


def traffic(directory: Path, x: np.ndarray, y: np.ndarray, *, seed: int = 0, labels: list[str] = LABELS) -> Path:
    """Rows ``x`` with classes ``y`` as served traffic in ``directory``: requests of 1-3 rows, all labelled,
    every fifth request by a self-contained example instead; the labels in ``feedback/``, as the server
    keeps them."""
    rng = np.random.default_rng(seed)
    captures, feedback, start, k = [], [], 0, 0
    while start < len(x):
        stop = min(len(x), start + int(rng.integers(1, 4)))
        rows, names = x[start:stop], [labels[v] for v in y[start:stop]]
        if k % 5 == 4:
            feedback.append(example(f"ex-{seed}-{k}", rows, names, when=k))
        else:
            captures += captured(f"req-{seed}-{k}", rows, when=k)
            feedback.append(labelled(f"req-{seed}-{k}", names, when=k + 0.5))
        start, k = stop, k + 1
    write(directory / "capture-0001.jsonl", captures)
    write(directory / "feedback" / "feedback-0001.jsonl", feedback)
    return directory


def load(directory: Path, **kwargs) -> object:
    return load_feedback(directory, "digits", LABELS, 25, **kwargs)


ROW = np.linspace(0, 1, 25, dtype=np.float32)  # a valid digits input
GOOD_CAPTURE = captured("good", ROW[None])  # one valid capture, and its label
GOOD_LABEL = labelled("good", ["3"])


# --- the loader -------------------------------------------------------------------------------------

def test_join_keeps_each_labelled_row_with_its_served_bits_time_and_answer(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.random((2, 25), dtype=np.float32)
    # the server writes float32's shortest text ("0.1"), which must give back the very bits served
    shortest = json.dumps(captured("r1", rows, answers=["2", "4"], when=5)[0]).replace(
        json.dumps(tensor(rows)["data"]), "[" + ", ".join(str(np.float32(v)) for v in rows.ravel()) + "]")
    assert str(np.float32(rows[0, 0])) in shortest
    write(tmp_path / "capture-a.jsonl", [shortest, captured("r1", rows, answers=["2", "4"], when=5)[1],
                                         *captured("unlabelled", rows)])
    own = rng.random((1, 25), dtype=np.float32)
    write(tmp_path / "feedback-a.jsonl", [labelled("r1", ["2", "5"], when=9), example("ev7", own, ["1"], when=3)])
    fb = load(tmp_path)
    own_id = f"input-{hashlib.sha256(own[0].astype('<f4').tobytes()).hexdigest()[:24]}"
    assert fb.ids == [own_id, "r1/0", "r1/1"]  # sorted by id; an example's id is the hash of its inputs
    assert fb.x.dtype == np.float32 and fb.x.tobytes() == np.concatenate([own, rows]).tobytes()
    assert [fb.labels[v] for v in fb.y] == ["1", "2", "5"]
    assert fb.times == [T0 + timedelta(seconds=3), T0 + timedelta(seconds=5), T0 + timedelta(seconds=5)]
    assert fb.served == [None, "2", "4"]
    assert fb.disagreement_at_capture() == (0.5, 2)  # "5" where the model said "4"
    assert fb.rejected == {} and fb.duplicates == 0
    assert fb.summary()["time_range"] == [at(3), at(5)]


def test_feedback_for_other_models_and_unlabelled_captures_are_ignored(tmp_path):
    write(tmp_path / "capture-1.jsonl", [*GOOD_CAPTURE, *captured("m", np.zeros((1, 784)), model="mnist"),
                                         *captured("idle", ROW[None])])
    write(tmp_path / "feedback-1.jsonl", [GOOD_LABEL, labelled("m", ["7"], model="mnist"),
                                          example("e", np.zeros((1, 784)), ["7"], model="mnist")])
    fb = load(tmp_path)
    assert fb.ids == ["good/0"] and fb.rejected == {}


def capture_with(rid: str, data: list, shape: list[int]) -> dict:
    event = captured(rid, ROW[None])[0]
    event["data"]["inputs"][0].update(data=data, shape=shape)
    return event


NAN_ROW = [None, *ROW[1:].tolist()]  # the server writes NaN as null
REJECTIONS = {
    "unparseable": ([], ['{"specversion": "1.0", "id": "x", "type": '], 1),
    "malformed": ([], [{**labelled("good", ["3"]), "time": "yesterday"}, ["not", "an", "event"],
                       {k: v for k, v in labelled("good", ["3"]).items() if k != "data"}], 3),
    "wrong_shape": ([capture_with("bad", ROW[:24].tolist(), [1, 24]), *captured("two", np.stack([ROW, ROW]))],
                    [labelled("bad", ["1"]), labelled("two", ["1"])], 3),  # a short row; one label for two rows
    "not_finite": ([capture_with("bad", NAN_ROW, [1, 25]), *captured("inf", np.full((1, 25), np.inf))],
                   [labelled("bad", ["1"]), labelled("inf", ["1"])], 2),
    "out_of_range": ([*captured("bad", np.stack([ROW, ROW + 0.5]))], [labelled("bad", ["1", "2"])], 1),
    "unknown_label": ([*captured("bad", np.stack([ROW, ROW]))], [labelled("bad", ["9", "2"])], 1),
    "conflict": ([], [labelled("good", ["4"], when=2)], 1),
    "not_captured": ([], [labelled("ghost", ["1", "2"])], 2),
    # one id, two requests with other inputs (a client reusing its ids): the label could be either's
    "ambiguous_id": ([*captured("reused", ROW[None]), *captured("reused", ROW[None] * 0.5, when=0.5)],
                     [labelled("reused", ["1"])], 1),
}


@pytest.mark.parametrize("reason", list(REJECTIONS))
def test_each_rejection_is_counted_by_reason_and_the_rest_kept(tmp_path, reason, caplog):
    captures, feedback, count = REJECTIONS[reason]
    write(tmp_path / "capture-1.jsonl", [*GOOD_CAPTURE, *captures])
    write(tmp_path / "feedback-1.jsonl", [GOOD_LABEL, *feedback])
    with caplog.at_level(logging.WARNING, logger="training.feedback"):
        fb = load(tmp_path)
    assert fb.rejected == {reason: count}
    kept = {"out_of_range": ["bad/0", "good/0"], "unknown_label": ["bad/1", "good/0"]}.get(reason, ["good/0"])
    assert fb.ids == kept
    assert fb.labels[fb.y[fb.ids.index("good/0")]] == "3"  # the first label by time, even against a conflict
    assert f"{reason}={count}" in caplog.text


def test_input_range_is_the_recipes(tmp_path):
    write(tmp_path / "capture-1.jsonl", GOOD_CAPTURE)
    write(tmp_path / "feedback-1.jsonl", [GOOD_LABEL])
    assert load(tmp_path).count == 1
    assert load(tmp_path, input_range=(0.0, 0.5)).rejected == {"out_of_range": 1}


def test_a_partial_last_line_is_skipped_not_counted(tmp_path):
    """A line without its newline was cut short by a crash: never read, even when it happens to parse."""
    write(tmp_path / "capture-1.jsonl", GOOD_CAPTURE, tail=json.dumps(captured("late", ROW[None])[0]))
    write(tmp_path / "feedback-1.jsonl", [GOOD_LABEL], tail=json.dumps(labelled("good", ["4"], when=0)))
    write(tmp_path / "feedback-2.jsonl", [labelled("late", ["1"])])
    fb = load(tmp_path)
    assert fb.ids == ["good/0"] and fb.labels[fb.y[0]] == "3"  # the earlier "4" was never complete
    assert fb.partial_lines == 2
    assert fb.rejected == {"not_captured": 1}  # "late" was captured only by a partial line


def test_the_first_label_by_time_wins_and_later_different_ones_are_conflicts(tmp_path):
    write(tmp_path / "capture-1.jsonl", captured("r", np.stack([ROW, ROW * 0.5])))
    # files and lines out of time order: the time decides, not the reading order
    write(tmp_path / "feedback-0.jsonl", [labelled("r", ["2", "2"], when=30), labelled("r", ["4", "2"], when=40)])
    write(tmp_path / "feedback-1.jsonl", [labelled("r", ["4", "5"], when=20), labelled("r", ["4", "2"], when=10)])
    fb = load(tmp_path)
    assert [fb.labels[v] for v in fb.y] == ["4", "2"]
    # at 20: row 0 repeats "4" (a duplicate), row 1 says "5" (a conflict); at 30: "2" conflicts, "2" repeats;
    # at 40: both repeat
    assert fb.rejected == {"conflict": 2} and fb.duplicates == 4


def test_the_field_split_is_a_stable_hash_of_the_inputs(tmp_path):
    rows = np.random.default_rng(3).random((20_000, 25), dtype=np.float32)
    share = 0.2
    field = np.array([is_field(r, share) for r in rows])
    # the definition, pinned: a version trained later must hold out the very same examples
    expected = [int.from_bytes(hashlib.sha256(r.astype("<f4").tobytes()).digest()[:8], "big") < share * 2**64
                for r in rows[:200]]
    assert field[:200].tolist() == expected
    sigma = np.sqrt(share * (1 - share) / len(rows))
    assert abs(field.mean() - share) < 5 * sigma
    # a property of the inputs alone: in a set with other examples, or another run, the same side
    x = np.random.default_rng(1).random((60, 25), dtype=np.float32)
    y = np.arange(60) % 5
    traffic(tmp_path / "a", x, y)
    traffic(tmp_path / "b", x[:30], y[:30])
    a, a_again, b = load(tmp_path / "a"), load(tmp_path / "a"), load(tmp_path / "b")
    assert a.field_mask.tolist() == a_again.field_mask.tolist() == [is_field(r, share) for r in a.x]
    assert 0 < a.field_count < a.count
    side = dict(zip(a.ids, a.field_mask, strict=True))
    assert all(side[i] == f for i, f in zip(b.ids, b.field_mask, strict=True))
    assert load(tmp_path / "a", field_share=0.5).field_count > a.field_count


def test_the_sha256_is_of_the_content_whatever_the_files(tmp_path):
    x = np.random.default_rng(2).random((12, 25), dtype=np.float32)
    y = np.arange(12) % 5
    one = load(traffic(tmp_path / "one", x, y))
    # the same events, spread over more files in another order
    events = [json.loads(line) for line in (tmp_path / "one" / "capture-0001.jsonl").read_text().splitlines()]
    labels = [json.loads(line) for line in (tmp_path / "one" / "feedback" / "feedback-0001.jsonl").read_text()
              .splitlines()]
    write(tmp_path / "two" / "capture-b.jsonl", events[::-1][:4])
    write(tmp_path / "two" / "capture-a.jsonl", events[::-1][4:])
    write(tmp_path / "two" / "feedback-z.jsonl", labels[::-1])  # beside the captures, not in feedback/
    two = load(tmp_path / "two")
    assert one.ids == two.ids and one.sha256 == two.sha256
    assert one.sha256 == load(tmp_path / "one").sha256
    # one ulp of one value, or one label, is another set
    first = events[0]
    first["data"]["inputs"][0]["data"][3] = float(np.nextafter(np.float32(first["data"]["inputs"][0]["data"][3]),
                                                               np.float32(2)))
    write(tmp_path / "three" / "capture-a.jsonl", events)
    write(tmp_path / "three" / "feedback-a.jsonl", labels)
    assert load(tmp_path / "three").sha256 != one.sha256
    labels[0]["data"]["labels"][0] = LABELS[(LABELS.index(labels[0]["data"]["labels"][0]) + 1) % 5]
    write(tmp_path / "three" / "capture-a.jsonl", [json.loads(line) for line in
                                                   (tmp_path / "one" / "capture-0001.jsonl").read_text().splitlines()])
    write(tmp_path / "three" / "feedback-a.jsonl", labels)
    assert load(tmp_path / "three").sha256 != one.sha256


def test_an_absent_directory_is_an_error(tmp_path):
    with pytest.raises(FeedbackError):
        load(tmp_path / "nope")


def test_oversampling_makes_feedback_half_of_an_epoch_within_the_cap():
    assert recipes.oversampling(50_000, 10_000) == 5  # 50,000 of 100,000 rows
    assert recipes.oversampling(50_000, 4_000) == 12  # 12.5, rounded
    assert recipes.oversampling(50_000, 60_000) == 1  # never fewer than once
    assert recipes.oversampling(50_000, 10) == recipes.MAX_REPEAT == 16
    assert recipes.oversampling(50_000, 0) == 0


# --- python -m training digits --feedback ------------------------------------------------------------

def negatives(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A shifted population for the 5x5 digits: the glyphs' 0-2 pixel variants in negative (ink 0 on 1),
    as a display that inverts would send them; the digits recipe never sees one, a person reads them."""
    glyphs, _, _ = digit_glyphs()
    x, y = glyph_variants(glyphs, 2)
    pick = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return (1.0 - x[pick]).astype(np.float32), y[pick]


@pytest.fixture(scope="module")
def parent_repo(tmp_path_factory) -> Path:
    """A model repository holding digits version 1, trained by the recipe (a second)."""
    repo = tmp_path_factory.mktemp("repo")
    assert main(["digits", "--out", str(repo), "--quiet", "--no-plot"]) == 0
    return repo


@pytest.fixture
def repo(parent_repo, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(parent_repo, copy)
    return copy


def run(repo: Path, capture_dir: Path, *extra: str) -> int:
    return main(["digits", "--feedback", str(capture_dir), "--out", str(repo), "--quiet", "--no-plot", *extra])


def test_every_trained_model_stores_the_summary_of_its_training_inputs(parent_repo):
    meta = load_model(parent_repo / "digits" / "1" / "model.npz").metadata
    assert meta["input_summary"] == summarize(digits().x)
    assert meta["input_summary"]["samples"] == 2005 and len(meta["input_summary"]["mean"]) == 25


def test_feedback_trains_the_next_version_and_records_where_it_came_from(repo, tmp_path):
    x, y = negatives(400, seed=0)
    capture_dir = traffic(tmp_path / "capture", x, y)
    write(capture_dir / "feedback-0002.jsonl", [labelled("ghost", ["1"])])  # one rejection, to see it recorded
    parent = load_model(repo / "digits" / "1" / "model.npz")
    assert run(repo, capture_dir) == 0  # the parent by default: the newest version in --out
    loaded = load_model(repo / "digits" / "2" / "model.npz")
    meta, record = loaded.metadata, loaded.metadata["feedback"]
    fb = load(capture_dir)
    assert record["count"] == fb.count == 400
    assert record["train_count"] + record["field_count"] == 400 and record["field_count"] == fb.field_count > 40
    assert record["sha256"] == fb.sha256 == meta["datasets"]["feedback"]
    assert record["time_range"] == fb.summary()["time_range"]
    assert record["rejected"] == {"not_captured": 1}
    assert record["parent"] == {"version": 1, "sha256": file_sha256(repo / "digits" / "1" / "model.npz")}
    field_x, field_y = fb.field_split()
    assert record["field_accuracy"]["parent"] == accuracy(parent.network, field_x, field_y) < 0.3
    assert record["field_accuracy"]["new"] == accuracy(loaded.network, field_x, field_y) == meta["metrics"][
        "field_accuracy"] > 0.9
    assert record["disagreement_with_parent"] > 0.7  # the parent reads negatives wrongly: the labels say so
    assert meta["metrics"]["glyphs_accuracy"] == 1.0 and meta["metrics"]["noisy_accuracy"] >= 0.95
    assert meta["training"]["epochs"] == recipes.RECIPES["digits"].fine_tune["epochs"]
    # the summary is of the rows trained on, before augmentation: the recipe's and the feedback's training share
    train_x, _ = fb.train_split()
    assert meta["input_summary"] == summarize(np.concatenate([digits().x, train_x]))
    assert record["mode"] == "fine-tune" and record["mix"] == recipes.RECIPES["digits"].fine_tune_mix


def test_a_feedback_run_is_reproducible(repo, tmp_path):
    x, y = negatives(200, seed=1)
    capture_dir = traffic(tmp_path / "capture", x, y, seed=1)
    other = tmp_path / "other"
    shutil.copytree(repo, other)
    assert run(repo, capture_dir, "--parent", str(repo / "digits" / "1")) == 0
    assert run(other, capture_dir, "--parent", str(other / "digits" / "1" / "model.npz")) == 0
    a, b = (load_model(r / "digits" / "2" / "model.npz").network.state() for r in (repo, other))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_a_fine_tune_starts_from_the_parent_and_a_run_from_scratch_does_not(repo, tmp_path):
    x, y = negatives(200, seed=3)
    capture_dir = traffic(tmp_path / "capture", x, y, seed=3)
    scratch = tmp_path / "scratch"
    shutil.copytree(repo, scratch)
    # seed 1: a new network would not start where the parent (seed 0) did
    assert run(repo, capture_dir, "--seed", "1") == 0
    assert run(scratch, capture_dir, "--seed", "1", "--from-scratch") == 0
    parent = load_model(repo / "digits" / "1" / "model.npz").network.state()
    tuned, fresh = (load_model(r / "digits" / "2" / "model.npz") for r in (repo, scratch))
    assert fresh.metadata["feedback"]["mode"] == "scratch"
    assert fresh.metadata["training"]["epochs"] == recipes.RECIPES["digits"].epochs

    def distance(state: dict) -> float:
        return sum(float(np.sum((state[k] - parent[k]) ** 2)) for k in parent)

    assert distance(tuned.network.state()) < 0.5 * distance(fresh.network.state())


def test_no_gain_on_the_field_set_writes_nothing(repo, tmp_path, caplog):
    """Feedback the parent already reads perfectly (the glyphs' one-pixel variants): the field accuracy
    cannot rise above the parent's, so the new version is refused."""
    glyphs, _, _ = digit_glyphs()
    x, y = glyph_variants(glyphs, 1)
    capture_dir = traffic(tmp_path / "capture", x, y)
    with caplog.at_level(logging.INFO):
        assert run(repo, capture_dir) == 1
    assert not (repo / "digits" / "2").exists()
    assert "is not above the parent's 1.0000" in caplog.text


def test_labels_that_are_all_wrong_write_nothing_and_warn(repo, tmp_path, caplog):
    glyphs, _, _ = digit_glyphs()
    x, y = glyph_variants(glyphs, 2)
    x, y = x[::4], (y[::4] + 1) % 5  # every label one class off: a poisoned batch of feedback
    capture_dir = traffic(tmp_path / "capture", x, y)
    with caplog.at_level(logging.INFO):
        assert run(repo, capture_dir) == 1
    assert not (repo / "digits" / "2").exists()
    assert "contradict the parent's answers" in caplog.text
    # Refused by the floor (the recipe's own held-out glyphs): the field set's labels are as wrong as
    # the rest, so against them the new version may well "improve"; the field gate cannot see this.
    assert "below the floor" in caplog.text


@pytest.mark.parametrize("case", ["no directory", "no parent", "no field examples", "parent of another model"])
def test_unusable_feedback_or_parent_is_a_clear_error(case, repo, tmp_path, caplog):
    x, y = negatives(40, seed=2)
    capture_dir = traffic(tmp_path / "capture", x, y)
    args: tuple[str, ...] = ()
    if case == "no directory":
        capture_dir = tmp_path / "nope"
    elif case == "no parent":
        shutil.rmtree(repo / "digits")
    elif case == "no field examples":
        capture_dir = traffic(tmp_path / "tiny", x[:1], y[:1])
        args = ("--field-share", "0.01")
    else:
        assert main(["xor", "--out", str(repo), "--quiet", "--no-plot"]) == 0
        args = ("--parent", str(repo / "xor" / "1"))
    assert run(repo, capture_dir, *args) == 2
    assert not (repo / "digits" / "2").exists()
    assert caplog.records[-1].levelname == "ERROR"


@pytest.mark.parametrize("argv", [["digits", "--parent", "x"], ["all", "--feedback", "x"],
                                  ["digits", "--feedback", "x", "--teacher", "y"],
                                  ["digits", "--feedback", "x", "--field-share", "1"], ["digits", "--from-scratch"],
                                  ["digits", "--feedback", "x", "--hidden", "30"],
                                  ["digits", "--feedback", "x", "--keep-missed"], ["reproduce", "--seed", "1"],
                                  ["reproduce", "--epochs", "3"], ["digits", "--skip-mnist"]])
def test_cli_rejects_feedback_options_that_do_not_fit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_events_the_loader_cannot_use_are_skipped_never_raised(tmp_path, caplog):
    """Three inputs escaped as tracebacks: a time an offset moves past year 9999, a response whose
    outputs are not a list, and a directory named like a capture file."""
    far = {**captured("far", ROW[None])[0], "time": "9999-12-31T23:00:00-05:00"}
    odd = {**captured("odd", ROW[None])[1]}
    odd["data"] = {**odd["data"], "outputs": 5}
    write(tmp_path / "capture-1.jsonl", [*GOOD_CAPTURE, far, captured("odd", ROW[None] * 0.5)[0], odd])
    write(tmp_path / "feedback-1.jsonl", [GOOD_LABEL, labelled("far", ["1"]), labelled("odd", ["2"])])
    (tmp_path / "capture-0.jsonl").mkdir()
    with caplog.at_level(logging.WARNING, logger="training.feedback"):
        fb = load(tmp_path)
    assert sorted(fb.ids) == ["good/0", "odd/0"]
    assert fb.rejected == {"malformed": 1, "not_captured": 1}  # the far request; so its label has no capture


@pytest.mark.parametrize("case", ["a file", "a version that exists"])
def test_a_repository_the_run_cannot_write_is_refused_before_training(case, repo, tmp_path, monkeypatch, caplog):
    """Both were found only after the training: a --out that is a file escaped as a traceback, and an
    existing --version under --feedback was refused once the fine-tune was done."""
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(recipes, "train_recipe", no_training)
    if case == "a file":
        (tmp_path / "plain").write_text("")
        assert main(["digits", "--out", str(tmp_path / "plain"), "--quiet", "--no-plot"]) == 2
        assert "is not a directory" in caplog.records[-1].getMessage()
    else:
        capture_dir = traffic(tmp_path / "traffic", *negatives(200, seed=1))
        assert run(repo, capture_dir, "--version", "1") == 2
        assert "exists" in caplog.records[-1].getMessage()


def test_reproduce_says_mnist_is_missing_before_it_runs_anything(tmp_path, monkeypatch, caplog):
    """It found out only at the first MNIST experiment, minutes in, and the quick results were lost."""
    from training import reproduce

    def ran():
        raise AssertionError("an experiment ran before the data was checked")

    monkeypatch.setattr(reproduce, "quick_experiments", lambda: [ran])
    assert main(["reproduce", "--data-dir", str(tmp_path), "--no-download", "--quiet"]) == 2
    assert caplog.records[-1].levelname == "ERROR"


@pytest.mark.timeout(20)  # the bug it guards against is a loop for ever
def test_a_file_where_the_next_version_would_go_is_passed_over(tmp_path):
    """A plain file or a link to nothing named like the next version is no version, so the next
    number was the same one again: the run spun for ever after its training."""
    (tmp_path / "xor").mkdir()
    (tmp_path / "xor" / "1").write_text("")
    (tmp_path / "xor" / "2").symlink_to(tmp_path / "nowhere")
    assert recipes.reserve_version(tmp_path, "xor", None, False)[:1] == (3,)
    assert (tmp_path / "xor" / "3").is_dir()
    for named in (1, 2):  # named with --version, the same paths are refused before any training
        with pytest.raises(NotADirectoryError):
            recipes.check_output(tmp_path, "xor", named, False)


def test_an_example_sent_again_is_one_example_on_one_side(tmp_path):
    """A client resending an example (a retry, or the same input twice) adds nothing; and every copy of an
    input, captured or sent as an example, is on the same side of the field split."""
    rows = np.random.default_rng(4).random((40, 25), dtype=np.float32)
    again = [example(f"ev{k}-{i}", rows[i:i + 1], [LABELS[i % 5]], when=k + i / 100) for k in range(5)
             for i in range(40)]
    captures = [e for i in range(40) for e in captured(f"req{i}", rows[i:i + 1], when=0)]
    labels = [labelled(f"req{i}", [LABELS[i % 5]], when=9) for i in range(40)]
    write(tmp_path / "capture-1.jsonl", captures)
    write(tmp_path / "feedback-1.jsonl", [*again, *labels])
    fb = load(tmp_path)
    assert fb.count == 80 and fb.duplicates == 160  # 40 examples (5 copies each) and 40 captured rows
    side: dict[bytes, bool] = {}
    for x, held in zip(fb.x, fb.field_mask, strict=True):
        assert side.setdefault(x.tobytes(), bool(held)) == bool(held)  # a copy never on the other side
    assert 0 < fb.field_count < fb.count


def test_a_retry_captured_twice_is_one_request(tmp_path):
    """The same inputs captured twice under one id (a client's retry) are no ambiguity: the label stands."""
    write(tmp_path / "capture-1.jsonl", [*captured("retried", ROW[None]), *captured("retried", ROW[None], when=0.5)])
    write(tmp_path / "feedback-1.jsonl", [labelled("retried", ["3"])])
    fb = load(tmp_path)
    assert fb.ids == ["retried/0"] and fb.rejected == {}


@pytest.mark.parametrize("training", [None, [1, 2], "mlp"])
def test_a_parent_whose_training_record_is_not_an_object_is_read_as_one_without_it(training):
    """A parent file from elsewhere may hold anything in its metadata: ``"training": null`` ended the run
    in a TypeError's traceback."""
    parent = LoadedModel(network=None, metadata={"training": training}, sha256="")
    recipe = recipes.feedback_recipe("digits", parent, None)
    assert recipe.hidden == recipes.RECIPES["digits"].hidden
    assert recipe.epochs == recipes.RECIPES["digits"].fine_tune["epochs"]
