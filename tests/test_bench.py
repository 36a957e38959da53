"""Every benchmark runs, for real and briefly, and writes its results file; docs/benchmarks.md's tables are
those files' (``python -m bench.report``). Speed is never judged here: only that each run answers, counts
and records what it should. (``tests/integration/test_bench_grpc.py`` runs the gRPC benchmark.)"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench import report, results
from bench.harness import KSERVE_PYTHON, ROOT

MISSING_PEER = "--kserve-python=/nonexistent/python"  # the KServe rows skipped: the peer has a test of its own


@pytest.fixture(autouse=True)
def no_warmups(monkeypatch):
    monkeypatch.setenv("BENCH_WARM_SECONDS", "0")  # warm-ups serve figures, and these runs judge none


def envelope_ok(result: dict, module: str) -> None:
    """What every results file records beside its figures, and no path of this machine."""
    assert result["benchmark"] == module and result["command"].startswith(f"python -m bench.{module}")
    assert result["date"].endswith("UTC") and result["machine"]["cores"] and result["machine"]["blas"]
    assert str(ROOT) not in json.dumps(result)


def test_machine_records_what_the_machine_is():
    from bench.machine import machine, summary

    info = machine()
    assert info["cores"] and info["numpy"] and info["python"] and info["memory"].endswith("GiB")
    assert "openblas" in info["blas"].lower() and "openblas" in info["thread pools in force"].lower()
    assert machine(threads=2)["threads asked"] == "2"
    assert summary(info).startswith(f"{info['cores']}-core ")


@pytest.mark.parametrize("module", ["bench.train_epoch", "bench.serve_load", "bench.stress", "bench.uploads",
                                    "bench.cpu_per_request", "bench.frontier", "bench.lone_request",
                                    "bench.grpc_load", "bench.capture_cost", "bench.rollout_cost",
                                    "bench.overload", "bench.report"])
def test_each_benchmark_parses_its_arguments(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


@pytest.mark.parametrize(("n", "low", "high"), [(10, 2, 9), (20, 6, 15), (40, 14, 27), (150, 63, 88)])
def test_the_median_interval_is_the_sign_tests(n, low, high):
    """The 95 % interval of a median from order statistics, as the textbooks' tables give it (ranks from 1)."""
    from bench.medians import median_interval

    values = [float(i) for i in range(1, n + 1)][::-1]  # any order: ranks are by value
    assert median_interval(values) == ((n + 1) / 2, low, high)


# -- the docs' tables -------------------------------------------------------------------------------
def test_the_docs_tables_are_the_results_files():
    """docs/benchmarks.md holds exactly what ``python -m bench.report`` renders from bench/results/:
    a table cannot disagree with its run (after a run: python -m bench.report)."""
    doc = report.DOC.read_text()
    assert report.SECTION.search(doc), "no marked table in docs/benchmarks.md"
    assert report.render(doc) == doc, "docs/benchmarks.md is out of date: run python -m bench.report"


def test_every_results_file_records_its_run():
    for path in sorted(results.RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        envelope_ok(result, result["benchmark"])
        assert result["command"] and result["settings"] is not None, path.name


def test_the_report_rewrites_only_between_its_markers(tmp_path, capsys):
    results_dir = tmp_path / "results"
    results.save(results_dir / "uploads.json", "bench.uploads", ["--connections", "3"], {"connections": 3},
                 {"row": {"connections": 3, "body_mb": 1.0, "uploaded_mb": 3, "rss_before_mb": 100,
                          "rss_growth_peak_mb": 4, "rss_growth_after_mb": 1, "answered": 200, "failed": 0,
                          "p99_ms": 2.5}})
    doc = tmp_path / "page.md"
    doc.write_text("# Prose\n\nkept\n\n<!-- bench.report uploads -->\nstale\n<!-- /bench.report -->\n\nmore prose\n\n"
                   "<!-- bench.report stress -->\n<!-- /bench.report -->\n")
    assert report.main(["--doc", str(doc), "--results", str(results_dir), "--check"]) == 1
    assert "-stale" in capsys.readouterr().out
    assert report.main(["--doc", str(doc), "--results", str(results_dir)]) == 0
    text = doc.read_text()
    assert text.startswith("# Prose\n\nkept\n\n<!-- bench.report uploads -->\n\nNewest run: ") and "stale" not in text
    assert "`python -m bench.uploads --connections 3`" in text and "| 3 x 1 MB | 3 MB | 100 MB | +4 MB |" in text
    assert "\n\nmore prose\n\n" in text and "(`bench/results/stress.json` is missing)" in text
    assert report.main(["--doc", str(doc), "--results", str(results_dir), "--check"]) == 0


# -- each benchmark, briefly ------------------------------------------------------------------------
def test_a_port_that_comes_back_gets_fresh_directories(tmp_path):
    """A port freed by a stopped server can be handed out again in the same run (a CI run drew 53001 twice):
    the second server must not find the first one's directories."""
    from bench.harness import server_dirs

    first, second = server_dirs(tmp_path, 53001), server_dirs(tmp_path, 53001)
    assert set(first).isdisjoint(second)
    assert all(path.is_dir() and not any(path.iterdir()) for path in (*first, *second))


def test_the_serving_benchmark_runs_every_row(mnist_dir, tmp_path, capsys):
    """``make bench``'s serving run, at 0.3 s a row and one concurrency: every row answered without an error,
    against both ceilings and batching off, and the plot."""
    from bench import serve_load

    out = tmp_path / "serve_load.json"
    argv = ["--data-dir", str(mnist_dir), "--seconds", "0.3", "--concurrency", "2", "--rounds", "1", MISSING_PEER,
            "--out", str(out), "--plot", str(tmp_path / "serve_load.png")]
    assert serve_load.main(argv) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "serve_load")
    assert result["settings"]["seconds"] == 0.3 and result["mode"] == "full"
    rows = {r["scenario"]: r for r in result["rows"]}
    for scenario in ("compute ceiling (NumPy, 256 images)", "HTTP ceiling (bare Flask)", "/predict xor, 1",
                     "V2 infer mnist, 256, binary", "/gradcheck mnist, 16 images", serve_load.ONE_SAMPLE_CEILING,
                     "/predict mnist, 1, batching on", "/predict mnist, 1, batching off"):
        assert rows[scenario]["errors"] == 0, rows[scenario]
    slow = rows["slow clients: 200 sequential"]
    assert slow["requests"] - slow["non_2xx"] == 200 and slow["attackers_closed_by_server"] >= 0
    assert rows["/predict mnist, 1, batching on"]["mean_executed_batch"] >= 1
    assert (tmp_path / "serve_load.png").stat().st_size > 0
    text = serve_load.report(result)
    assert "| /predict mnist, 32 | 2 |" in text and "of compute |" in text and "c=2: /predict" in text
    assert "| /predict mnist, 1, batching on | 2 |" in capsys.readouterr().out


def test_the_serving_benchmark_compares_two_trees_in_turns(mnist_dir, tmp_path):
    """``--one-sample`` over two trees (here this checkout twice): each contender per tree, and each
    round's ratio of the second tree to the first."""
    from bench import serve_load

    out = tmp_path / "trees.json"
    argv = ["--one-sample", "--tree", str(ROOT), "--tree", ".", "--data-dir", str(mnist_dir), "--seconds", "0.3",
            "--concurrency", "1", "--rounds", "2", "--out", str(out)]
    assert serve_load.main(argv) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "serve_load")
    assert result["mode"] == "trees" and [t["path"] for t in result["trees"]] == [".", "."]
    assert result["trees"][0]["commit"]
    assert sorted({r["tree"] for r in result["rows"]}) == [0, 1] and len(result["rows"]) == 10
    assert all(r["errors"] == 0 and len(r["rounds_rps"]) == 2 for r in result["rows"])
    assert {p["scenario"] for p in result["paired"]} == {r["scenario"] for r in result["rows"]}
    for p in result["paired"]:
        assert len(p["ratios"]) == 2 and p["low"] <= p["median"] <= p["high"] and p["tree"] == 1
    assert "tree 1 / tree 0 (rounds' ratios)" in serve_load.report(result)


def test_the_in_turns_order_rotates_and_alternates_the_trees():
    from bench.serve_load import in_turns

    groups = [[("a", 0), ("a", 1)], [("b", 0), ("b", 1)], [("c", 0)]]
    assert in_turns(groups, 0) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0)]
    assert in_turns(groups, 1) == [("b", 1), ("b", 0), ("c", 0), ("a", 1), ("a", 0)]


def test_the_worker_comparison_runs(mnist_dir, tmp_path):
    from bench import serve_load

    worker = "service.http_server.worker.BufferingGeventWorker"
    out = tmp_path / "compare.json"
    assert serve_load.main(["--compare", worker, "--data-dir", str(mnist_dir), "--seconds", "0.3", "--concurrency", "1",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "compare" and {r["scenario"] for r in result["rows"]} == {
        "HTTP ceiling", "/predict mnist, 1", "slow clients"}
    assert all(r["non_2xx"] == 0 for r in result["rows"])
    assert f"| `{worker}` |" in serve_load.report(result) and "200/200" in serve_load.report(result)


@pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="no KServe peer: make bench-peers")
def test_the_kserve_peer_answers_both_protocols(mnist_dir, tmp_path):
    from bench import serve_load

    out = tmp_path / "one.json"
    assert serve_load.main(["--one-sample", "--data-dir", str(mnist_dir), "--seconds", "0.3", "--concurrency", "2",
                            "--rounds", "1", "--out", str(out)]) == 0
    rows = {r["scenario"]: r for r in json.loads(out.read_text())["rows"]}
    for protocol in ("V1", "V2 JSON"):
        assert rows[f"KServe {protocol} mnist, 1"]["errors"] == 0 and rows[f"KServe {protocol} mnist, 1"]["rps"] > 0
    assert "vs the tuned KServe's best" in serve_load.goals(list(rows.values()))


def test_cpu_per_request_reads_each_workers_cpu(mnist_dir, tmp_path):
    from bench import cpu_per_request

    out = tmp_path / "cpu.json"
    assert cpu_per_request.main(["--data-dir", str(mnist_dir), "--rounds", "1", "--seconds", "0.5", "--connections",
                                 "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "cpu_per_request")
    assert [r["contender"] for r in result["rows"]] == ["ceiling", "/predict mnist", "/predict xor"]
    assert all(r["cpu_us"] > 0 and r["errors"] == 0 for r in result["rows"])  # the worker's own /proc
    assert [t["path"] for t in result["trees"]] == ["."] and result["trees"][0]["commit"]


def test_the_lone_request_pairs_run_against_both_servers(mnist_dir, tmp_path, capsys):
    from bench import lone_request

    assert lone_request.main(["--data-dir", str(mnist_dir), "--pairs", "2", "--model", "xor1",
                              "--out", str(tmp_path / "pairs.json")]) == 0
    result = json.loads((tmp_path / "pairs.json").read_text())
    envelope_ok(result, "lone_request")
    assert [p["first"] for p in result["pairs"]] == ["on", "off"]  # the order alternates
    assert result["summary"]["errors"] == 0 and result["summary"]["p50_us_on"] > 0
    assert all(p["cpu_us"]["on"] > 0 and p["cpu_us"]["off"] > 0 for p in result["pairs"])  # the workers' /proc
    assert "| p50 latency |" in capsys.readouterr().out
    # two runs pooled: four pairs, the same medians as the pairs give
    assert lone_request.main(["--pool", str(tmp_path / "pairs.json"), str(tmp_path / "pairs.json")]) == 0
    pooled = capsys.readouterr().out
    ratio = sorted(p["p50_ratio"] for p in result["pairs"])
    assert "(4 pairs;" in pooled and f"| p50 latency | {(ratio[0] + ratio[1]) / 2:.3f} |" in pooled


def test_the_frontier_table_reads_a_trained_version_and_serves_it(mnist_dir, tmp_path, capsys):
    from bench import frontier
    from model.io import load_model
    from tests.conftest import served_version

    version = served_version("mnist")
    meta = load_model(version / "model.npz").metadata
    argv = [str(version), "--data-dir", str(mnist_dir), "--rounds", "1", "--serve", "--seconds", "0.3",
            "--serve-rounds", "1", "--out", str(tmp_path / "f.json")]
    assert frontier.main(argv) == 0
    result = json.loads((tmp_path / "f.json").read_text())
    envelope_ok(result, "frontier")
    row = result["rows"][0]
    assert row["path"] == str(version.relative_to(ROOT))
    assert row["parameters"] == sum(a.size for a in load_model(version / "model.npz").network.named_params().values())
    assert (row["validation_accuracy"], row["test_accuracy"]) == (meta["metrics"]["validation_accuracy"],
                                                                  meta["metrics"]["test_accuracy"])
    assert row["forward_us_batch1"] > 0 and row["forward_us_batch256"] > 0
    assert row["predict_rps_c16"] > 0 and row["errors"] == 0  # the real server, under wrk
    assert f"| {row['network']} | {row['parameters']:,} |" in capsys.readouterr().out


def test_the_training_epoch_runs_each_contestant(mnist_dir, tmp_path):
    """One round, without torch.compile (its compilation alone takes longer than the round)."""
    from bench import train_epoch

    out = tmp_path / "train.json"
    # one thread: beside the other test process, two threads each took 3x as long
    assert train_epoch.main(["--data-dir", str(mnist_dir), "--rounds", "1", "--no-compile", "--threads", "1",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "train_epoch")
    assert result["rounds"] == 1 and result["median"]["numpy"] > 0
    assert result["test_accuracy_after_one_epoch"]["numpy"] > 0.9  # one epoch of real MNIST
    assert set(result["numpy_epoch_breakdown_seconds"]) == {"batch gather", "forward", "loss", "backward", "optimizer"}
    assert "torch-compiled" not in result["median"]
    assert "| numpy |" in train_epoch.report(result)


def test_the_stress_suite_runs_a_part_against_the_real_server(mnist_dir, tmp_path):
    """One of ``make stress``'s parts for real (the soak and the uploads have tests of their own, and kill -9
    under load its twin in tests/integration/test_lifecycle.py; ``make stress`` runs them all)."""
    from bench import stress

    out = tmp_path / "stress.json"
    assert stress.main(["--part", "sigterm", "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "stress")
    assert [r["part"].split(" ")[0] for r in result["rows"]] == ["SIGTERM"]
    assert all(r["ok"] for r in result["rows"]) and "| ok |" in stress.report(result)


def test_the_stress_suite_runs_the_parts_asked_for_in_its_order(mnist_dir, tmp_path, monkeypatch):
    """The parts named (repeatable ``--part``) run in the suite's order, not the command line's; a row
    without its own verdict is judged by its failures."""
    from bench import stress

    ran = []

    def part(name: str, failures: int):
        def run(*args) -> dict:
            ran.append(name)
            return {"part": f"{name} part", "cases": 1, "failures": failures, "note": ""}
        return run

    monkeypatch.setattr(stress, "kill_9", part("kill", 0))
    monkeypatch.setattr(stress, "sigterm", part("SIGTERM", 1))
    monkeypatch.setattr(stress, "soak", part("soak", 0))
    out = tmp_path / "stress.json"
    assert stress.main(["--part", "sigterm", "--part", "kill-9", "--data-dir", str(mnist_dir), "--out", str(out)]) == 1
    assert ran == ["kill", "SIGTERM"]  # PARTS lists kill-9 first; the soak was not asked for
    rows = json.loads(out.read_text())["rows"]
    assert [(r["part"], r["ok"]) for r in rows] == [("kill part", True), ("SIGTERM part", False)]


def test_the_uploads_benchmark_records_its_row(tmp_path):
    from bench import uploads

    out = tmp_path / "uploads.json"
    assert uploads.main(["--connections", "4", "--mb", "1", "--seconds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    envelope_ok(result, "uploads")
    assert result["row"]["connections"] == 4 and result["row"]["failed"] == 0 and result["row"]["answered"] > 0
    assert "| 4 x 1 MB |" in uploads.report(result)


def test_the_results_settings_leave_out_where_files_are():
    import argparse

    args = argparse.Namespace(data_dir=Path("/somewhere/mnist"), out=ROOT / "bench" / "results" / "x.json",
                              tree=[ROOT, Path("/tmp/before")], seconds=2.0)
    assert results.settings(args) == {"tree": [".", "/tmp/before"], "seconds": 2.0}
    assert results.command("bench.x", [str(ROOT / "model_repository"), "--seconds", "2"]) == \
        "python -m bench.x model_repository --seconds 2"


def test_the_capture_cost_rounds_run_against_all_four_servers(mnist_dir, tmp_path, capsys):
    from bench import capture_cost

    assert capture_cost.main(["--data-dir", str(mnist_dir), "--rounds", "2", "--seconds", "0.3", "--connections", "4",
                              "--model", "xor1", "--out", str(tmp_path / "capture.json")]) == 0
    result = json.loads((tmp_path / "capture.json").read_text())
    envelope_ok(result, "capture_cost")
    assert [r["first"] for r in result["rounds"]] == ["plain", "off"]  # the order rotates
    summary = result["summary"]
    assert summary["errors"] == 0 and all(summary[f"rps_{v}"] > 0 for v in capture_cost.VARIANTS)
    written = summary["written"]  # the rate-1 server wrote; a busy machine may drop some (queue full), counted
    assert written["written"] > 0 and written["dropped_budget"] == 0 and "dropped_queue" in written
    assert written["bytes_on_disk"] > 300 * written["written"]  # two CloudEvents a record
    assert "| capture at CAPTURE_SAMPLE_RATE=1.0 / capture off |" in capsys.readouterr().out


def test_the_rollout_cost_widened_shadow_is_the_primary_at_more_cost():
    """The shadow without noise computes the primary's probabilities with 4x the hidden units."""
    import numpy as np

    from bench.rollout_cost import PRIMARY, widen
    from model.io import load_model

    primary = load_model(PRIMARY / "model.npz").network.eval()
    wide = widen(primary, 4, 0.0, np.random.default_rng(0))
    x = np.random.default_rng(1).random((8, primary.input_features), dtype=np.float32)
    assert wide.num_params > 3.9 * primary.num_params
    np.testing.assert_allclose(wide.predict_proba(x), primary.predict_proba(x), atol=1e-5)


def test_the_rollout_cost_rounds_run_against_all_three_servers(mnist_dir, tmp_path, capsys):
    from bench import rollout_cost

    assert rollout_cost.main(["--data-dir", str(mnist_dir), "--rounds", "2", "--seconds", "0.3", "--connections", "4",
                              "--small-queue", "1", "--forward-turns", "3", "--out", str(tmp_path / "rc.json")]) == 0
    result = json.loads((tmp_path / "rc.json").read_text())
    envelope_ok(result, "rollout_cost")
    assert [r["first"] for r in result["rounds"]] == ["off", "full_share"]  # the order changes
    summary = result["summary"]
    assert all(summary[v]["errors"] == 0 and summary[v]["rps"] > 0 for v in rollout_cost.VARIANTS)
    for name in ("small_queue", "full_share"):
        counts = summary[name]["comparisons"]  # every sample the primary served compared or dropped
        assert counts["agree"] + counts["disagree"] + counts["dropped"] == counts["primary_requests"] > 0
        assert counts["routed_elsewhere"] == 0 and summary[name]["rollout"]
        assert [f["rows"] for f in summary[name]["forward"]] == [1, 64, 1024]
    assert summary["small_queue"]["comparisons"]["dropped"] > 0  # one row held at most: the rest dropped
    assert summary["full_share"]["forward"][-1]["ratio"] > 4  # 16x the hidden units
    assert "| shadow of 1200 hidden units, SHADOW_QUEUE=1 |" in capsys.readouterr().out


def test_the_overload_benchmark_sorts_every_answer(mnist_dir, tmp_path, capsys):
    """bench.overload end to end on a tiny load: capacity, today and one policy row per client behaviour,
    every answer sorted, and clients that honour Retry-After sent back far less often than a retry storm."""
    from bench import overload

    connections = 32
    assert overload.main(["--data-dir", str(mnist_dir), "--seconds", "1", "--warmup", "0.5",
                          "--connections", str(connections), "--capacity-connections", "2", "--queue", "2",
                          "--out", str(tmp_path / "o.json")]) == 0
    result = json.loads((tmp_path / "o.json").read_text())
    envelope_ok(result, "overload")
    summary = result["summary"]
    assert summary["capacity"]["ok_in_time"] > 0 and summary["capacity"]["other"] == 0
    storm, waiting = summary["policy"]["storm"]["2"], summary["policy"]["retry_after"]["2"]
    for row in (summary["today"], storm, waiting):
        sorted_ = row["ok_in_time"] + row["ok_late"] + row["refused"] + row["expired"] + row["other"]
        assert sorted_ > 0 and row["other"] == 0 and row["socket_errors"] == 0
        assert row["warmup"] > 0  # the first half second's answers were set apart, not lost
        assert row["healthz"]["asked"] > 0 and not row["healthz"]["failures"]
    assert summary["today"]["refused"] == 0 and summary["today"]["expired"] == 0  # nothing sent: nothing refused
    # two waiting per process against 32 connections: a storm is refused thousands of times a second;
    # each refusal of a client that waits out its Retry-After (>= 1 s) keeps one of the 32 connections
    # idle past the counted second, so at most 32 refusals fall in it
    assert storm["refused"] > 4 * connections and waiting["refused"] <= connections
    for goals in summary["goals"].values():
        assert set(goals) == {"goodput_at_least_0.9", "no_answer_after_deadline_plus_10ms",
                              "refused_p99_under_5ms", "healthz_within_1s", "no_failed_or_unanswered_request"}
        assert goals["no_failed_or_unanswered_request"]
    assert set(summary["goals"]) == {"storm", "retry_after"}
    assert "failed or unanswered" in overload.report(result)
    out = capsys.readouterr().out
    assert "MAX_QUEUE_SIZE=2 | retry at once" in out and "MAX_QUEUE_SIZE=2 | wait Retry-After" in out
