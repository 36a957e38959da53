"""Planted bugs: one-line changes to the code that the suite must catch, and the tests that catch each.

    python -m tests.planted_bugs              # every bug: apply it in a copy, run its tests, expect failure
    python -m tests.planted_bugs relu_kink    # only these
    python -m tests.planted_bugs --list       # the table

Each bug is applied to a fresh copy of the working tree (the files git tracks, plus new ones it does not
ignore), in a temporary folder, and its tests are run there with this interpreter; the bug is *caught*
when pytest reports failed tests (exit code 1), and *survives* when they pass. With ``--baseline`` the
same tests first run on the unchanged copy, which must pass. Containers are not used (the copy's tests
run against ``python -m service`` only); MNIST comes from ``MNIST_DIR`` or ``../shared/data/mnist``.

To check a new test against a bug it should catch: add a row here (the exact text of the line, its
replacement, and the test), then ``python -m tests.planted_bugs NAME --baseline``. ``tests/
test_planted_bugs.py`` keeps every row's line present in the code, so the table cannot go stale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PlantedBug:
    name: str
    path: str  # relative to the repository
    old: str  # exact text, present once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail with the bug in place
    what: str


BUGS = [
    PlantedBug("booleans_true_only", "service/protocols/json_codec.py",
               'return (body.count(b"true") if b"r" in body else 0) + (body.count(b"false") if b"f" in body else 0)',
               'return body.count(b"true") if b"r" in body else 0',
               ("tests/integration/test_errors.py::test_a_boolean_is_not_a_number_in_any_protocol",
                "tests/test_dataplane_properties.py"),
               "a JSON false is read as 0 when the body holds no true"),
    PlantedBug("struct_path_reads_booleans", "service/protocols/json_codec.py",
               "if not booleans and (arr := floats(inputs)) is not None:",
               "if (arr := floats(inputs)) is not None:",
               ("tests/integration/test_errors.py::test_a_boolean_is_not_a_number_in_any_protocol",
                "tests/test_dataplane_properties.py"),
               "the struct fast path takes a body holding true or false and reads them as 1.0 and 0.0"),
    PlantedBug("gradcheck_cost_tensors", "service/dataplane/diagnostics.py",
               'else samples * len(network.named_params())', 'else samples',
               ("tests/test_service_unit.py::test_gradcheck_cost_is_a_hand_count",
                "tests/test_service_unit.py::test_a_gradcheck_just_over_its_cost_bound_is_refused"),
               "the gradcheck cost forgets the number of parameter tensors (6x under for MNIST)"),
    PlantedBug("labels_sorted", "service/dataplane/dataplane.py",
               "index = {label: i for i, label in enumerate(entry.labels)}",
               "index = {label: i for i, label in enumerate(sorted(entry.labels))}",
               ("tests/test_service_unit.py::test_labels_are_the_model_s_own_order_and_any_text",),
               "class names mapped against the sorted labels, not the model's order"),
    PlantedBug("v2_bytes_characters", "service/protocols/v2_tensors.py",
               'return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in values))',
               'return b"".join(struct.pack("<I", len(s)) + s.encode() for s in values)',
               ("tests/test_service_unit.py::test_labels_are_the_model_s_own_order_and_any_text",),
               "V2 BYTES element lengths counted in characters, not UTF-8 bytes"),
    PlantedBug("relu_kink", "model/layers.py", "self._mask = x > 0", "self._mask = x >= 0",
               ("tests/test_layers.py::test_kinks_follow_pytorch_at_exactly_zero",),
               "ReLU's gradient at exactly 0 taken as 1 (PyTorch takes 0)"),
    PlantedBug("metadata_not_an_object", "model/io.py",
               'raise WeightsFileError(f"{path}: metadata must be a JSON object")', "pass",
               ("tests/test_io.py", "tests/test_service_unit.py::test_bad_weights_files_do_not_stop_the_others"),
               "weights metadata that is JSON but not an object is not refused"),
    PlantedBug("label_count", "service/repository/model_version.py",
               "if out is not None and out != len(labels):", "if False:",
               ("tests/test_service_unit.py::test_bad_weights_files_do_not_stop_the_others",),
               "a weights file whose labels do not match the network's outputs is served"),
    PlantedBug("batch_mixes_versions", "service/batching/gevent_batcher.py",
               "        key = id(entry)\n        queue = self.queues.get(key)\n"
               "        if queue is None or queue.entry is not entry:",
               "        key = entry.name\n        queue = self.queues.get(key)\n        if queue is None:",
               ("tests/test_batcher.py::test_two_loads_of_one_version_never_share_a_pass",
                "tests/integration/test_batching.py::test_versions_never_mix_in_a_batch_also_during_a_reload"),
               "the batcher queues by model name: versions (and two loads of one) share a pass"),
    PlantedBug("batch_uncapped", "service/batching/rules.py",
               "while items and (not taken or rows + len(items[0].rows) <= max_batch):",
               "while items:",
               ("tests/test_batcher.py::test_rows_are_capped_at_max_batch_and_large_requests_run_alone",
                "tests/test_thread_batcher.py::test_rows_are_capped_at_max_batch_and_large_requests_run_alone"),
               "a merged batch may exceed MAX_BATCH rows (either batcher: the rule is shared)"),
    PlantedBug("large_requests_merged", "service/batching/rules.py",
               "if taken and merge_limit is not None and len(items[0].rows) > merge_limit:", "if False:",
               ("tests/test_thread_batcher.py::test_rows_are_capped_at_max_batch_and_large_requests_run_alone",),
               "a queued request over the cost table's merge limit joins a merged pass"),
    PlantedBug("thread_batch_mixes_versions", "service/batching/thread_batcher.py",
               "                key = id(entry)\n                queue = self.queues.get(key)\n"
               "                if queue is None or queue.entry is not entry:",
               "                key = entry.name\n                queue = self.queues.get(key)\n"
               "                if queue is None:",
               ("tests/test_thread_batcher.py::test_two_loads_of_one_version_never_share_a_pass",),
               "the thread batcher queues by model name: two loads of one version share a pass"),
    PlantedBug("thread_pass_fails_all", "service/batching/rules.py",
               "        for item in group:\n            item.error = exc\n        return",
               "        raise",
               ("tests/test_thread_batcher.py::test_a_failing_pass_fails_its_own_batch_only",),
               "a failing pass fails every request taken with it, also those of the passes after it"),
    PlantedBug("batch_window", "service/batching/gevent_batcher.py", "gevent.idle()  # one turn of the loop",
               "gevent.sleep(0.05)  # a window",
               ("tests/integration/test_batching.py::test_a_lone_request_waits_for_nothing",),
               "a lone request waits a fixed window for company"),
    PlantedBug("passes_on_the_loop", "service/batching/gevent_batcher.py",
               "if table.cost(len(rows)) > OFF_LOOP_SECONDS:", "if False:",
               ("tests/integration/test_batching.py::test_probes_answer_while_big_batches_compute",),
               "big forward passes run on the event loop: probes wait behind them"),
    PlantedBug("no_taking_turns", "service/http_server/worker.py", "        gevent.idle()\n        return keep_alive",
               "        return keep_alive",
               ("tests/integration/test_worker.py::test_a_pipelining_client_does_not_starve_its_neighbour",),
               "connections stop taking turns: one pipelining client holds its worker"),
    PlantedBug("sigterm_keeps_idle", "service/http_server/worker.py", "gevent.spawn(self.idle.close_all)", "pass",
               ("tests/integration/test_worker.py::test_sigterm_closes_idle_keep_alive_connections_at_once",),
               "SIGTERM waits for idle keep-alive connections instead of closing them"),
    PlantedBug("head_held_back_for_good", "service/http_server/response_writer.py",
               "        self.flush_head()  # no body", "        pass  # no body",
               ("tests/test_coalescing_response.py::test_no_body_the_head_alone",),
               "a response without a body (HEAD, 204) never sends the head held back for it"),
    PlantedBug("v2_int64_size", "service/dataplane/dataplane.py", '"INT64": "<i8"', '"INT64": "<i4"',
               ("tests/integration/test_v2_tensors.py::test_every_input_datatype_in_json_and_binary",),
               "V2 INT64 read with a 4-byte item size"),
    PlantedBug("v2_uint16_size", "service/dataplane/dataplane.py", '"UINT16": "<u2"', '"UINT16": "<u1"',
               ("tests/integration/test_v2_tensors.py::test_every_input_datatype_in_json_and_binary",),
               "V2 UINT16 read with a 1-byte item size"),
    PlantedBug("v2_header_boundary", "service/protocols/v2_http.py", "0 < int(header) <= len(raw)",
               "0 < int(header) < len(raw)",
               ("tests/integration/test_v2_tensors.py::test_the_binary_header_may_be_the_whole_body",),
               "a binary-extension header as long as the whole body is refused"),
    PlantedBug("nan_passes", "service/dataplane/dataplane.py", "if not (lo <= batch.min() and batch.max() <= hi):",
               "if batch.min() < lo or batch.max() > hi:",
               ("tests/integration/test_errors.py::test_non_finite_inputs_are_refused_in_every_protocol",
                "tests/test_dataplane_properties.py"),
               "NaN passes the range check (both comparisons are false) and is served"),
    PlantedBug("infer_stores_input", "model/layers.py",
               '    def infer(self, x: Array) -> Array:\n        out = x @ self.params["W"]',
               '    def infer(self, x: Array) -> Array:\n        self._x = x\n        out = x @ self.params["W"]',
               ("tests/test_layers.py::test_infer_is_forward_in_eval_mode_and_stores_nothing",),
               "Dense.infer stores its input (shared state between concurrent requests)"),
    PlantedBug("gradcheck_slots_per_worker", "service/dataplane/dataplane.py",
               "concurrency = settings.gradcheck_concurrency or max(1, settings.workers - 1)",
               "concurrency = settings.gradcheck_concurrency or settings.workers",
               ("tests/integration/test_gradcheck_http.py::"
                "test_predict_stays_fast_while_clients_loop_on_the_largest_gradchecks",),
               "gradchecks may take every worker (none left free for /predict)"),
    PlantedBug("gradcheck_samples_ignored", "service/app/blueprints/inference.py",
               "epsilon=body.epsilon, samples=body.samples, seed=body.seed,",
               "epsilon=body.epsilon, samples=1, seed=body.seed,",
               ("tests/integration/test_gradcheck_http.py::test_mnist_gradcheck_defaults_are_quick",),
               "/gradcheck checks one coordinate per tensor whatever samples says"),
    PlantedBug("gradcheck_on_the_event_loop", "service/http_server/worker.py",
               "            diagnostics.run = background.run", "            pass",
               ("tests/integration/test_lifecycle.py::test_the_event_loop_answers_while_a_gradcheck_runs",),
               "a gradcheck runs on the worker's event loop, which answers nothing else meanwhile"),
    PlantedBug("hung_up_body_reaches_the_app", "service/http_server/request_body.py",
               "the client hung up mid-body: nobody to answer\n            raise StopIteration()",
               "the client hung up mid-body: nobody to answer\n            pass",
               ("tests/integration/test_hostile.py::test_a_client_that_hangs_up_early_costs_nothing",),
               "a body cut short by a client that hung up is handed to the app"),
    PlantedBug("v2_body_model_name_ignored", "service/protocols/v2_http.py",
               'if req.model_name not in (None, "") and req.model_name != name:', "if False:",
               ("tests/integration/test_v2_protocol.py::test_a_body_contradicting_the_url_is_refused",
                "tests/integration/test_kserve_sdk.py::test_v2_a_body_naming_another_model_is_refused"),
               "a V2 body naming another model than its URL runs the URL's"),
    PlantedBug("inflate_past_the_limit", "service/protocols/content_coding.py",
               "    if len(chunk) > room:", "    if False:",
               ("tests/test_encoding.py", "tests/integration/test_compression.py::test_a_zip_bomb_is_a_cheap_413"),
               "a compressed body inflates past MAX_BODY_BYTES"),
    PlantedBug("statistics_of_one_worker", "service/observability/metrics.py",
               'if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):',
               "if False:",
               ("tests/test_statistics.py",
                "tests/integration/test_v2_extensions.py::test_statistics_move_with_traffic_from_every_protocol"),
               "the metrics read (V2 statistics, /metrics) count only the worker that answers"),
    PlantedBug("supervisor_sleeps_through_stop", "service/supervisor.py",
               "pending[slot] = time.monotonic() + delay", "time.sleep(delay)\n                start(slot)",
               ("tests/integration/test_supervisor.py::test_a_stop_during_a_restart_delay_stops_at_once",),
               "the supervisor sleeps a restart's delay out and restarts even after a stop signal"),
    PlantedBug("supervisor_no_backoff", "service/supervisor.py",
               "return min(self.cap, self.first * 2 ** (self.deaths - 1))", "return self.first",
               ("tests/integration/test_supervisor.py",),
               "a gRPC process that keeps dying is restarted every second for good"),
    PlantedBug("grpc_calls_one_at_a_time", "service/grpc/server.py",
               "        plane.serve_with(ThreadBatcher(settings.max_batch, settings.grpc_threads))",
               "        plane.serve_with(InlineRunner(slots=settings.grpc_threads))",
               ("tests/integration/test_grpc_batching.py::"
                "test_concurrent_grpc_calls_share_passes_each_with_its_own_answer",),
               "GRPC_THREADS bounds whole calls even with batching on: the calls the batcher would merge never meet"),
    PlantedBug("grpc_config_not_rests", "service/grpc/extensions.py",
               "json_format.ParseDict(config, response.config)",
               'json_format.ParseDict({**config, "max_batch_size": 0}, response.config)',
               ("tests/integration/test_grpc.py::test_model_config_equals_rests",),
               "the gRPC ModelConfig says something REST's /config does not"),
    PlantedBug("capture_budget_ignores_live_claims", "service/capture/budget.py",
               "return max(size, segment_claim(name) or 0)", "return size",
               ("tests/test_capture.py::test_a_live_segment_counts_by_its_claim",
                "tests/test_capture.py::test_the_budget_holds_across_processes_and_restarts"),
               "another process's open segment counts by its size, not its claim: together they overrun the budget"),
    PlantedBug("capture_no_recovery", "service/capture/budget.py",
               "if not whole and recover:", "if False:",
               ("tests/test_capture.py::test_kill_9_mid_write_leaves_only_whole_lines",
                "tests/test_capture.py::test_recovery_truncates_dead_segments_only"),
               "a segment cut short by kill -9 keeps its partial last line for good"),
    PlantedBug("capture_keeps_half_a_write", "service/capture/segment.py",
               "            os.ftruncate(self.fd, self.written)", "            pass",
               ("tests/test_capture.py::test_a_write_the_disk_cuts_short_leaves_whole_lines_and_is_tried_again_later",),
               "a write the disk cut short leaves its first half, a partial line, in the segment"),
    PlantedBug("capture_keeps_unsynced_feedback", "service/capture/journal.py",
               "                    segment.written -= len(lines)\n", "",
               ("tests/test_capture.py::test_a_durable_append_whose_fsync_fails_is_not_left_on_disk",),
               "feedback whose fsync failed is reported as not stored but stays in the file"),
    PlantedBug("feedback_disk_error_as_budget", "service/dataplane/feedback.py",
               "            raise disk_refused() from None", "            raise budget_full() from None",
               ("tests/test_feedback_unit.py::test_feedback_the_disk_refuses_is_a_503_and_not_kept",),
               "feedback the disk refused is answered as a full budget (507), which it is not"),
    PlantedBug("capture_rotation_error_forgets_written", "service/capture/journal.py",
               "                        e.written = done  # those went to the segment just closed\n", "",
               ("tests/test_capture.py::test_records_written_before_a_rotation_fails_are_counted_as_written",),
               "records written before a failed rotation are counted as dropped, not written"),
    PlantedBug("worker_dies_without_capture_dir", "service/http_server/worker.py",
               "                except CaptureDirError as e:", "                except ZeroDivisionError as e:",
               ("tests/integration/test_feedback.py::test_a_worker_that_cannot_use_the_capture_dir_serves_without_it",),
               "a worker started after CAPTURE_DIR became unusable fails to boot, again and again"),
    PlantedBug("grpc_dies_without_capture_dir", "service/grpc/server.py",
               "    except CaptureDirError as e:", "    except ZeroDivisionError as e:",
               ("tests/integration/test_feedback.py::"
                "test_a_grpc_process_that_cannot_use_the_capture_dir_serves_without_it",),
               "a gRPC process restarted after CAPTURE_DIR became unusable fails to start, again and again"),
    PlantedBug("capture_queue_unbounded", "service/capture/recorder.py",
               "if len(queue) >= self.capacity or self._stopped:", "if self._stopped:",
               ("tests/test_capture.py::test_a_full_queue_drops_records_not_requests",),
               "the capture queue grows without bound instead of dropping (and counting) records"),
    PlantedBug("capture_writer_on_a_foreign_hub", "service/capture/capture.py",
               "            self.driver = driver\n        self._bind()\n", "            self.driver = driver\n",
               ("tests/test_capture.py::test_the_worker_writes_captures_when_its_first_use_is_on_a_thread",),
               "a worker whose first capture use is feedback (on the thread pool) never writes its captures"),
    PlantedBug("background_pool_on_first_use", "service/http_server/background.py",
               "        return self._pool.apply(fn, args, kwargs)",
               "        if not hasattr(self, 'made'): self.made = self._pool = ThreadPool(1)\n"
               "        return self._pool.apply(fn, args, kwargs)",
               ("tests/test_worker_threads.py::"
                "test_background_work_leaves_the_loop_even_after_a_first_call_from_another_thread",),
               "the background pool is made on first use: a native thread calling first puts later work on the loop"),
    PlantedBug("capture_writer_never_stops", "service/http_server/capture_writer.py",
               "            if self.stopped:\n", "            if False:\n",
               ("tests/test_worker_threads.py::test_the_capture_writer_writes_until_stopped",),
               "the capture writer keeps flushing after the worker closed its journals"),
    PlantedBug("feedback_relabels", "service/dataplane/feedback.py",
               "before = index.labels_of(rid) or seen.get(rid)", "before = None",
               ("tests/integration/test_feedback.py::test_feedback_labels_a_capture_once_and_counts_it",),
               "feedback for an id already labelled is stored again (no duplicate, no 409)"),
    PlantedBug("feedback_without_token", "service/app/blueprints/feedback.py",
               "    if token is not None:\n        tokens.authorize(", "    if False:\n        tokens.authorize(",
               ("tests/integration/test_feedback.py::test_feedback_needs_the_token",),
               "FEEDBACK_TOKEN is set but POST /feedback takes feedback without it"),
    PlantedBug("feedback_crash_printed", "service/dataplane/feedback.py",
               "result, error = self.run(returning_errors, fn, *args)", "result, error = self.run(fn, *args), None",
               ("tests/integration/test_feedback.py::test_no_client_text_reaches_the_log_or_the_metrics",),
               "a refused label is raised inside the worker's thread pool, which prints it raw to the log"),
    PlantedBug("explicit_version_rerouted", "service/dataplane/dataplane.py",
               "        if version is None:\n            entry, rollout, canary = self.rollouts.route(name, route_key)",
               "        if True:\n            entry, rollout, canary = self.rollouts.route(name, route_key)",
               ("tests/integration/test_rollouts.py::test_a_request_naming_its_version_is_never_rerouted",),
               "a request naming its version is routed by the rollout like one naming none"),
    PlantedBug("sticky_key_ignored", "service/repository/rollout.py",
               "point = key_point(key) if key is not None else rng.random() * 100", "point = rng.random() * 100",
               ("tests/integration/test_rollouts.py::test_a_sticky_key_always_gets_the_same_version_in_every_protocol",),
               "a client's rollout key is ignored: each of its requests is a fresh random draw"),
    PlantedBug("v1_middleware_drops_the_key", "service/app/inference_middleware.py",
               "lambda result: v1_answer(result, call.rows),\n"
               "                rollout_key.of(environ.get(rollout_key.ENVIRON))",
               "lambda result: v1_answer(result, call.rows),\n                None",
               ("tests/integration/test_rollouts.py::test_a_sticky_key_always_gets_the_same_version_in_every_protocol",),
               "V1 requests on the inference middleware lose their X-Rollout-Key header (the other protocols keep it)"),
    PlantedBug("shadow_compares_wrong_rows", "service/dataplane/shadow.py",
               "mine = np.concatenate([c.classes for c in copies]) if len(copies) > 1 else first.classes",
               "mine = np.concatenate([first.classes for c in copies]) if len(copies) > 1 else first.classes",
               ("tests/integration/test_rollouts.py::test_shadow_agreement_equals_the_offline_comparison_exactly",
                "tests/test_rollouts.py::test_the_shadow_counts_equal_an_offline_comparison"),
               "copies compared in one pass are each judged against the first copy's served labels"),
    PlantedBug("guard_counts_client_errors", "service/dataplane/rollouts.py",
               "if canary and not (isinstance(exc, ServiceError) and (exc.status < 500 or exc.code in LOAD_ERRORS)):",
               "if canary and not (isinstance(exc, ServiceError) and exc.code in LOAD_ERRORS):",
               ("tests/integration/test_rollouts.py::"
                "test_the_guard_leaves_a_healthy_canary_alone_even_with_client_errors",),
               "the guard counts a client's bad request (4xx) against the canary and rolls a healthy one back"),
    PlantedBug("guard_waits_ten_times_too_long", "service/dataplane/rollouts.py",
               "if tally.requests >= guard.min_requests and tally.errors > guard.max_error_rate * tally.requests:",
               "if tally.requests >= 10 * guard.min_requests and tally.errors > guard.max_error_rate * tally.requests:",
               ("tests/integration/test_rollouts.py::test_the_guard_rolls_back_a_canary_that_answers_errors",),
               "the guard judges a failing canary only after 10x min_requests of its requests"),
    PlantedBug("rollback_counted_per_process", "service/dataplane/rollouts.py",
               "        if made:\n            evidence.rolled_back(name, reason)",
               "        if True:\n            evidence.rolled_back(name, reason)",
               ("tests/integration/test_rollouts.py::test_the_guard_rolls_back_a_canary_that_answers_errors",),
               "every process whose guard trips counts and logs the rollback, also when another already made it"),
    PlantedBug("deadline_not_checked_in_pass", "service/batching/rules.py",
               "    if item.ticket is not None and item.ticket.expired():", "    if False:",
               ("tests/integration/test_deadlines.py::"
                "test_a_request_past_its_deadline_in_the_queue_is_answered_then_uncomputed",
                "tests/test_queue_policy.py::test_the_thread_batcher_answers_a_queued_request_at_its_deadline_uncomputed"),
               "a request whose deadline passed while it waited is computed anyway when its batch runs"),
    PlantedBug("queue_bound_ignored", "service/batching/queue_policy.py",
               "return 0 < self.max_queue_size <= self.waiting", "return False",
               ("tests/test_queue_policy.py::test_a_full_queue_refuses_at_once_with_retry_after",
                "tests/integration/test_deadlines.py::test_a_full_queue_refuses_at_once_and_the_probes_still_answer"),
               "MAX_QUEUE_SIZE never refuses: the queue grows without bound"),
    PlantedBug("waiter_not_woken_at_deadline", "service/batching/gevent_batcher.py",
               "return item.wake.get(timeout=max(0.0, left))", "return item.wake.get()",
               ("tests/test_queue_policy.py::test_the_gevent_batcher_answers_a_queued_request_at_its_deadline_uncomputed",),
               "a queued request past its deadline waits for the batch before it instead of being answered at once"),
    PlantedBug("request_lengthens_server_deadline", "service/batching/queue_policy.py",
               "timeout = min(timeouts) if timeouts else 0", "timeout = timeouts[0] if timeouts else 0",
               ("tests/test_queue_policy.py::test_timeouts_are_whole_microseconds_and_the_shortest_counts",
                "tests/integration/test_deadlines.py::test_the_server_default_deadline_applies_and_a_request_may_shorten_it"),
               "a request's own timeout overrides DEFAULT_TIMEOUT_MICROSECONDS even when it is longer"),
    PlantedBug("grpc_deadline_internal", "service/grpc/calls.py",
               "504: grpc.StatusCode.DEADLINE_EXCEEDED}", "504: grpc.StatusCode.INTERNAL}",
               ("tests/integration/test_deadlines.py::test_grpc_deadlines_are_deadline_exceeded",),
               "a gRPC call past its deadline is answered INTERNAL, not DEADLINE_EXCEEDED"),
    PlantedBug("batch_span_without_links", "service/observability/tracing.py",
               "            links.append(_Link(item.span))", "            pass",
               ("tests/integration/test_tracing.py::test_one_batch_span_links_to_both_concurrent_requests",
                "tests/test_tracing.py::test_one_batch_span_links_every_request_it_serves"),
               "a batch's span names none of the queued requests it served"),
    PlantedBug("trace_parent_ignored", "service/observability/tracing.py",
               "parent = _propagate.extract(headers, getter=_GETTER)", "parent = None",
               ("tests/integration/test_tracing.py::test_an_http_request_s_spans_continue_the_client_s_trace",
                "tests/integration/test_tracing.py::test_a_grpc_call_s_spans_continue_the_metadata_s_trace",
                "tests/test_tracing.py::test_the_lane_s_request_span_and_its_steps"),
               "the client's traceparent is ignored: every request starts a trace of its own"),
    PlantedBug("pass_observed_in_part", "service/batching/rules.py",
               "        observe(entry, rows)", "        observe(entry, rows[:1])",
               ("tests/test_thread_batcher.py::test_each_pass_that_ran_is_observed_once_with_its_rows",),
               "a merged pass's drift sees its first request's rows only"),
    PlantedBug("drift_never_observed", "service/dataplane/dataplane.py",
               "        self.runner.observe = self.observe_pass if self.drift is not None else None",
               "        self.runner.observe = None",
               ("tests/test_feedback_unit.py::test_the_data_plane_scores_each_computed_sample_once",),
               "no sample is ever scored for drift (the data plane's runner is given no observer)"),
    PlantedBug("drift_lost_on_serve_with", "service/dataplane/dataplane.py",
               "        runner.observe = self.observe_pass if self.drift is not None else None", "        pass",
               ("tests/test_thread_batcher.py::test_a_runner_given_by_serve_with_scores_drift_per_pass",),
               "a batcher handed over by serve_with (every worker's, every gRPC process's) scores no drift"),
    PlantedBug("model_thread_pass_unobserved", "service/batching/gevent_batcher.py",
               "rules.run_pass(entry, rows, group, self.observe, self.pool.apply",
               "rules.run_pass(entry, rows, group, None, self.pool.apply",
               ("tests/test_batcher.py::test_a_pass_on_the_model_thread_is_observed_once",),
               "a pass run on the model thread is never scored for drift"),
    PlantedBug("every_peer_trusted", "service/http_server/peer_trust.py",
               "return not isinstance(peer, tuple) or trusted(self.cfg, peer[0])", "return True",
               ("tests/test_peer_trust.py::test_the_remembered_check_decides_as_gunicorns_own",),
               "any client may set X-Forwarded-Proto (the remembered check trusts every peer)"),
    PlantedBug("peer_cache_unbounded", "service/http_server/peer_trust.py",
               "@functools.lru_cache(maxsize=MAX_PEERS)", "@functools.lru_cache(maxsize=None)",
               ("tests/test_peer_trust.py::test_any_number_of_peers_costs_bounded_memory",),
               "every client address ever seen stays in the cache"),
    PlantedBug("pid_kept_after_fork", "service/observability/process.py",
               "os.register_at_fork(after_in_child=_note_pid)", "pass",
               ("tests/test_process_id.py::test_a_forked_child_counts_in_a_file_of_its_own",),
               "a forked worker keeps its parent's id: its metric samples overwrite the parent's file"),
    PlantedBug("metric_values_ask_getpid", "service/observability/metrics.py",
               "    _values.ValueClass = _values.MultiProcessValue(process.current)", "    pass",
               ("tests/test_process_id.py::test_every_metric_asks_the_noted_process_id",),
               "prometheus_client's default value class: a getpid system call before every sample written"),
    PlantedBug("drift_scores_unnormalised", "model/input_summary.py",
               "1.0 / (len(self.mean) * baseline)", "1.0 / len(self.mean)",
               ("tests/test_feedback_unit.py::test_the_served_scores_match_the_float64_definition_on_mnist",),
               "served drift scores forget the training baseline (MNIST's digits would not average 1.0)"),
    PlantedBug("settings_looked_up_each_time", "service/http_server/worker_config.py",
               "        object.__setattr__(self, name, value)\n", "",
               ("tests/test_worker_config.py::test_each_name_is_looked_up_once",),
               "a worker's gunicorn settings go through Config.__getattr__ on every read again"),
    PlantedBug("idle_waits_unbounded", "service/http_server/idle_connections.py",
               "        if len(waits) >= self.idle.limit:", "        if False:",
               ("tests/integration/test_worker.py::test_idle_connections_never_fill_the_worker",),
               "connections idle between requests may fill the worker: a new client waits KEEPALIVE"),
    PlantedBug("connections_not_shared", "service/http_server/worker.py",
               "        ggevent.StreamServer = connection_share.deferring_server(ggevent.StreamServer, self.share)",
               "        pass",
               ("tests/integration/test_connection_share.py::test_new_connections_go_to_the_worker_holding_fewer",),
               "whichever worker wakes first takes each new connection: kept-alive clients stay split unevenly"),
    PlantedBug("deferral_never_ends", "service/http_server/connection_share.py",
               "        if self.table is None or self.granted:", "        if self.table is None:",
               ("tests/test_connection_share.py::test_a_worker_above_the_least_loaded_other_defers_once",),
               "a worker above its share leaves a connection to the others forever, even when none takes it"),
    PlantedBug("ended_wait_interrupts_request", "service/http_server/idle_connections.py",
               "        if self.active:\n", "        if True:\n",
               ("tests/test_idle_connections.py::test_a_request_arriving_as_its_wait_is_ended_is_not_interrupted",),
               "a wait ended by a stop or the bound throws its timeout into the request that arrived meanwhile"),
    PlantedBug("trace_id_not_logged", "service/observability/request_record.py",
               'fields["trace_id"] = tracing.trace_id()', "pass",
               ("tests/integration/test_tracing.py::test_an_http_request_s_spans_continue_the_client_s_trace",
                "tests/test_tracing.py::test_the_lane_s_request_span_and_its_steps"),
               "the request's log line does not name its trace"),
    PlantedBug("opentelemetry_imported_when_off", "service/observability/tracing.py",
               "ENABLED = False  # the one flag", "import opentelemetry.sdk.trace\nENABLED = False  # the one flag",
               ("tests/test_tracing.py::test_off_nothing_of_opentelemetry_is_imported",),
               "the SDK is imported with the module, into every process, tracing on or off"),
    PlantedBug("unsettled_copy_read", "service/repository/registry.py",
               "if now - st.st_mtime < settle_seconds:", "if False:",
               ("tests/integration/test_hot_reload.py::test_a_slow_copy_is_never_read_half_way",),
               "a weights file still being copied is read half-way and its version marked failed"),
    PlantedBug("bad_settings_as_a_traceback", "service/__main__.py",
               "        raise SystemExit(settings_error(exc)) from None", "        raise",
               ("tests/test_service_unit.py::test_bad_settings_stop_the_server_with_one_line_each_and_no_traceback",),
               "a bad setting stops the server with pydantic's traceback, the value it refused included"),
    PlantedBug("feedback_waits_on_the_background_thread", "service/dataplane/feedback.py",
               "            time.sleep(0.05)\n            waited += 0.05\n            self._offload(index.refresh)",
               "            self._offload(time.sleep, FRESH_WAIT)\n            waited += FRESH_WAIT\n            "
               "self._offload(index.refresh)",
               ("tests/integration/test_feedback.py::test_unknown_ids_do_not_hold_the_background_thread",),
               "feedback for an unknown id waits for it on the worker's one background thread, ahead of explanations"),
    PlantedBug("reused_id_not_ambiguous", "service/capture/index.py",
               "captured = replace(before, ambiguous=before.ambiguous or not same)",
               "captured = replace(captured, ambiguous=before.ambiguous)",
               ("tests/integration/test_feedback.py::test_a_reused_request_id_with_another_answer_cannot_be_labelled",),
               "a request id reused for other inputs is labelled as the last capture read, whichever request it was"),
    PlantedBug("training_joins_a_reused_id", "training/feedback.py",
               "            if capture.ambiguous:\n                loader.reject",
               "            if False:\n                loader.reject",
               ("tests/test_feedback_training.py::test_each_rejection_is_counted_by_reason_and_the_rest_kept",),
               "training joins a label to the first capture of a reused request id, whatever inputs the client meant"),
    PlantedBug("example_copies_split", "training/feedback.py",
               "field_mask=np.array([is_field(e.x, field_share) for e in chosen], dtype=bool)",
               "field_mask=np.array([is_field(np.array([hash(i)]), field_share) for i in ids], dtype=bool)",
               ("tests/test_feedback_training.py::test_an_example_sent_again_is_one_example_on_one_side",),
               "the field split by id: copies of one input land on both sides, trained on and then judged on"),
    PlantedBug("gzip_members_unbounded", "service/protocols/content_coding.py",
               "    for _ in range(MAX_GZIP_MEMBERS):\n        rest = _inflate_member",
               "    while True:\n        rest = _inflate_member",
               ("tests/test_encoding.py::test_many_gzip_members_are_refused_at_once",),
               "a gzip body of many tiny members is inflated member by member, in time quadratic in their number"),
    PlantedBug("probes_wait_for_upload_room", "service/http_server/request_body.py",
               "        if length is None and not codings:",
               "        if False:",
               ("tests/integration/test_uploads.py::test_a_large_body_that_finds_no_room_is_a_503_and_small_ones_pass",),
               "a request with no body (a probe) reserves MAX_BODY_BYTES and waits behind stalled uploads, then a 503"),
    PlantedBug("gzip_transfer_coding_undecoded", "service/http_server/request_body.py",
               '        if any(coding != "chunked" for coding in codings):',
               "        if False:",
               ("tests/integration/test_hostile.py::test_the_http_layer_s_own_refusals_are_in_the_error_shape",),
               "a body sent with Transfer-Encoding: gzip, chunked reaches the app still gzipped, read as its JSON"),
    PlantedBug("refused_upload_reset", "service/http_server/request_body.py",
               "                req.must_close = True  # answered unread: drained before closing",
               "                pass",
               ("tests/integration/test_uploads.py::test_a_large_body_that_finds_no_room_is_a_503_and_small_ones_pass",),
               "a large upload refused for want of room is closed unread: the kernel resets it under the sender"),
    PlantedBug("model_thread_wait_running", "service/batching/gevent_batcher.py",
               "            with self.claim(table, len(batch), [ticket]):",
               "            with contextlib.nullcontext():",
               ("tests/test_queue_policy.py::test_a_request_waiting_for_the_model_thread_still_waits",),
               "a large request waiting for the worker's model thread counts as running: no deadline, no queue bound"),
    PlantedBug("taken_request_gives_up", "service/batching/gevent_batcher.py",
               "            if item in queue.items:\n                raise item.ticket.error() from None",
               "            if True:\n                raise item.ticket.error() from None",
               ("tests/test_queue_policy.py::test_a_request_taken_into_a_batch_is_answered_by_that_batch",),
               "a request taken into a batch gives up at its deadline: 504 'not computed' for rows that were computed"),
    PlantedBug("timeout_unicode_digits", "service/batching/queue_policy.py",
               "int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else value",
               "int(text) if text.isdigit() else value",
               ("tests/test_queue_policy.py::test_timeouts_are_whole_microseconds_and_the_shortest_counts",),
               "a timeout of '²' or 5,000 digits passes the digit check and int() raises: a 500, not a 400"),
    PlantedBug("explain_scalar_input", "service/dataplane/diagnostics.py",
               "    if np.ndim(inputs) == 0:",
               "    if False:",
               ("tests/test_service_unit.py::test_a_v2_tensor_of_shape_nothing_is_no_batch_for_inference_or_explanation",),
               "a V2 explanation of a tensor of shape [] takes len() of a 0-d array: a 500"),
    PlantedBug("shape_past_numpy", "service/protocols/v2_tensors.py",
               "    if len(shape) > MAX_DIMS or math.prod(max(d, 1) for d in shape) > MAX_SPAN:",
               "    if False:",
               ("tests/integration/test_hostile.py::test_client_mistakes_are_4xx_in_the_protocol_s_shape",
                "tests/integration/test_grpc.py::test_errors_and_their_codes"),
               "a V2 shape of 70 dimensions, or [2**63 - 1, 0], reaches NumPy's reshape: a 500 (gRPC INTERNAL)"),
    PlantedBug("integer_range_as_floats", "service/protocols/v2_tensors.py",
               "    top = float(info.max + 1) if arr.dtype.kind == \"f\" else None",
               "    top = None",
               ("tests/test_service_unit.py::test_integers_sent_as_floats_are_checked_against_their_type_s_exact_range",),
               "a UINT64 value sent as the float 2**64 passes the range check as float(2**64 - 1), and wraps to 0"),
    PlantedBug("lax_explain_numbers", "service/protocols/schemas.py",
               "    steps: int = Field(64, ge=1, strict=True,",
               "    steps: int = Field(64, ge=1,",
               ("tests/integration/test_hostile.py::test_client_mistakes_are_4xx_in_the_protocol_s_shape",),
               "an explanation's steps of true is one step, and of \"5\" five: read, not refused"),
    PlantedBug("v2_outputs_checked_after_the_pass", "service/protocols/v2_http.py",
               "    check_outputs(req)\n",
               "",
               ("tests/test_service_unit.py::test_v2_outputs_are_checked_before_the_model_runs",),
               "a V2 request for an unknown output runs, is counted a success and captured, and only then is a 400"),
    PlantedBug("predict_key_as_latin1", "service/app/blueprints/inference.py",
               "route_key=rollout_key.of(request.headers.get(rollout_key.HEADER)),",
               "route_key=request.headers.get(rollout_key.HEADER),",
               ("tests/test_inference_middleware.py::test_a_utf8_rollout_key_header_is_one_key_in_every_protocol",),
               "/predict routes on a UTF-8 X-Rollout-Key read as latin-1, V2 on its text: one client, two versions"),
    PlantedBug("drift_window_outlives_reload", "service/observability/drift.py",
               "        if known is None or known[0] is not metadata:",
               "        if known is None:",
               ("tests/test_feedback_unit.py::test_a_version_reloaded_in_place_starts_a_window_of_its_own_summary",),
               "a version reloaded in place keeps the old file's drift window: wrong scores, or every request fails"),
    PlantedBug("drift_tail_unpublished", "service/observability/drift.py",
               "            if window is not None and window.stale:\n                window.flush()",
               "            if window is not None and window.stale:\n                pass",
               ("tests/test_feedback_unit.py::test_the_last_scores_before_traffic_stops_are_published",),
               "the drift scores of the last requests before traffic stops are never published"),
    PlantedBug("supervisor_drops_popen", "service/supervisor.py",
               "    CHILDREN[child.pid] = child\n",
               "",
               ("tests/test_supervisor.py::test_a_child_is_reaped_by_the_supervisor_alone",),
               "the supervisor drops a running child's Popen: subprocess reaps it, unseen by the supervisor"),
    PlantedBug("dead_grpc_gauges_kept", "service/supervisor.py",
               "            forget_gauges(pid)\n",
               "",
               ("tests/integration/test_supervisor.py::test_a_killed_grpc_process_leaves_the_metrics",),
               "a killed gRPC process's live gauges (requests in progress, drift) stay in /metrics for good"),
    PlantedBug("refusal_untraced", "service/app/inference_middleware.py",
               "            if tracing.ENABLED:  # a refused request is traced too (its log line has the trace id)",
               "            if False:",
               ("tests/test_tracing.py::test_a_request_refused_for_a_full_queue_is_traced",),
               "a request the middleware refuses for a full queue has no span, and its log line no trace id"),
    PlantedBug("unbounded_range_overflows", "service/repository/model_version.py",
               "        return max(float(lo), -largest), min(float(hi), largest)",
               "        return float(lo), float(hi)",
               ("tests/test_service_unit.py::test_a_model_without_an_input_range_still_takes_only_finite_float32_inputs",),
               "a model without an input range takes a float64 1e300, which becomes inf in its float32 pass"),
    PlantedBug("worker_refusals_unlogged", "service/http_server/refusals.py",
               "    if method is not None:\n        request_record.record(",
               "    if False:\n        request_record.record(",
               ("tests/integration/test_slow_clients.py::test_a_body_that_does_not_arrive_in_time_is_a_408_and_closed",),
               "what the worker answers itself (408, 503, 501, a bad chunk) has no log line and no request count"),
    PlantedBug("capture_index_rows_unbounded", "service/capture/index.py",
               "        while len(self.items) > self.max_entries or (self.rows > self.max_rows and len(self.items) > 1)"
               ":",
               "        while len(self.items) > self.max_entries:",
               ("tests/test_feedback_unit.py::test_the_index_is_bounded_by_ids_and_by_rows_whatever_clients_send",),
               "the capture index bounds ids, not rows: 500,000 captures of 1,024 rows could take 30 GB"),
    PlantedBug("taken_request_outwaits_its_deadline", "service/batching/gevent_batcher.py",
               "            if not item.ticket.running:  # taken, its batch waiting for the model thread: it gives "
               "up now",
               "            if False:",
               ("tests/test_queue_policy.py::"
                "test_a_batch_waiting_for_the_model_thread_lets_its_expired_requests_go_at_their_deadline",),
               "a request in a batch waiting for the model thread is answered when it frees, past its deadline"),
    PlantedBug("batch_claims_no_model_thread", "service/batching/gevent_batcher.py",
               "                          lambda group: self.claim(table, sum(len(i.rows) for i in group),",
               "                          lambda group: NO_CLAIM or self.claim(table, sum(len(i.rows) for i in "
               "group),",
               ("tests/test_queue_policy.py::"
                "test_a_batch_waiting_for_the_model_thread_lets_its_expired_requests_go_at_their_deadline",),
               "a merged batch starts its requests before the model thread is free: they run late, past deadlines"),
    PlantedBug("trainers_share_a_version", "training/recipes.py",
               "            if version is None:  # taken by another run since: the next one\n                continue",
               "            if version is None:  # taken by another run since: the next one\n                pass",
               ("tests/test_training.py::test_two_runs_finishing_together_write_two_versions",),
               "two training runs finishing together write the same version: the second replaces the first's weights"),
    PlantedBug("relu_nan_on_overflow", "model/layers.py",
               "        return np.maximum(x, np.zeros((), x.dtype))",
               "        return np.multiply(x, x > 0, dtype=x.dtype)",
               ("tests/test_layers.py::test_relu_serves_what_it_trains_and_an_overflowed_unit_is_zero",),
               "a ReLU unit overflowed to -inf serves NaN (x times its mask), and every answer of the network is NaN"),
    PlantedBug("missed_model_written", "training/recipes.py",
               "    if not targets_met(recipe, metrics) and not keep_missed:",
               "    if False:",
               ("tests/test_training.py::test_a_model_that_misses_its_targets_is_not_written",),
               "a run that misses its targets writes its model into the repository, where it is served at once"),
    PlantedBug("cross_entropy_assumes_unit_targets", "model/losses.py",
               "        grad = self._probs * mass - self._onehot", "        grad = self._probs - self._onehot",
               ("tests/test_losses.py::test_loss_gradient_matches_numerical",),
               "cross-entropy's gradient assumes targets summing to 1, which its forward pass does not"),
    PlantedBug("loader_builds_before_checking", "model/io.py",
               "            expected = Sequential.array_shapes(metadata[\"architecture\"])",
               "            expected = Sequential.from_architecture(metadata[\"architecture\"]).state() and "
               "Sequential.array_shapes(metadata[\"architecture\"])",
               ("tests/test_io.py::test_a_small_file_never_makes_the_loader_allocate_what_it_lacks",),
               "the loader builds the file's architecture before checking the file holds its arrays"),
    PlantedBug("bench_dirs_named_by_port", "bench/harness.py",
               'home = Path(tempfile.mkdtemp(prefix=f"server-{port}-", dir=tmp))',
               'home = tmp / f"server-{port}"\n    home.mkdir()',
               ("tests/test_bench.py::test_a_port_that_comes_back_gets_fresh_directories",),
               "a benchmark server given a port an earlier one had finds that one's directories and fails to start"),
]


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it: tracked files and untracked ones it does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def apply(bug: PlantedBug, tree: Path) -> None:
    path = tree / bug.path
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the line to change appears {text.count(bug.old)} times in {bug.path}")
    path.write_text(text.replace(bug.old, bug.new))


def run_tests(bug: PlantedBug, tree: Path) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("REQUIRE_CONTAINER", "CONTAINER_IMAGE", "SERVICE_URL")}
    env.setdefault("MNIST_DIR", str(ROOT.parent / "shared" / "data" / "mnist"))
    env["CONTAINER_ENGINE"] = "no-container-engine-for-planted-bugs"  # the copy's tests skip the container
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *bug.tests],
                          cwd=tree, env=env, capture_output=True, text=True)
    last = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), proc.stderr[-200:])
    return proc.returncode, last, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="bugs to plant (default: all)")
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    parser.add_argument("--baseline", action="store_true", help="first require the tests to pass unchanged")
    args = parser.parse_args(argv)
    known = {bug.name: bug for bug in BUGS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown bug(s) {unknown}; see --list")
    chosen = [known[n] for n in args.names] or BUGS
    if args.list:
        for bug in chosen:
            print(f"{bug.name:32} {bug.path:28} {bug.what}")
        return 0
    survivors = []
    for bug in chosen:
        with tempfile.TemporaryDirectory(prefix=f"planted-{bug.name}-") as tmp:
            tree = Path(tmp)
            copy_tree(tree)
            if args.baseline:
                code, last, seconds = run_tests(bug, tree)
                if code != 0:
                    print(f"{bug.name}: BASELINE FAILS ({last}, {seconds:.0f} s)", flush=True)
                    survivors.append(bug.name)
                    continue
            apply(bug, tree)
            code, last, seconds = run_tests(bug, tree)
        verdict = "caught" if code == 1 else "SURVIVES" if code == 0 else f"ERROR (pytest exit {code})"
        print(f"{bug.name}: {verdict} - {last} ({seconds:.0f} s)", flush=True)
        if code != 1:
            survivors.append(bug.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} planted bugs caught"
          + (f"; not caught: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
