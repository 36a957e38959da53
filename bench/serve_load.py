"""Serving benchmark: the real server under wrk, beside its HTTP and compute ceilings, in one run.

Every row is driven by ``wrk`` (a C load generator, not Python sharing the server's cores) through
``bench/wrk.lua`` (``bench/harness.py`` starts the servers and runs wrk). In one run, for one worker
configuration, it measures:

* the HTTP ceiling: a bare Flask route that reads the same body and returns a constant
  (``bench/ceiling_app.py``), under the same gunicorn settings as the service;
* the compute ceiling: the MNIST network's matrix products, ReLU and softmax in plain NumPy on a
  256-image batch, in-process with one BLAS thread, times the number of workers;
* ``/predict`` XOR and MNIST with one sample, MNIST with 32 and 256 (images/s), V2 ``infer`` with 256
  images as JSON and as binary tensors, each at concurrency 1, 16 and 64; ``/gradcheck`` MNIST with
  defaults and ``/explain`` MNIST (one image, integrated gradients, 64 steps) at concurrency 1;
* slow clients: 64 connections trickling a body a byte a second and 16 open and silent, while a
  well-behaved client sends 200 sequential ``/predict`` requests (``bench/slow_clients.py``);
* the one-sample comparison (alone: ``--one-sample``): MNIST one sample with server-side batching on
  (the default) and off (``BATCHING=off``), over ``/predict``, V1 and V2 JSON, with the mean executed
  batch size of each row (from ``/metrics``), beside the bare-Flask ceiling and the tuned KServe
  peer (``bench/kserve_peer.py``: kserve's model server, 2 workers, one BLAS thread, the same weights
  and NumPy forward pass) over its V1 and V2 JSON; every server up at once, ``--rounds`` rounds in
  turns, each row the median round. The peer runs from ``.venv-kserve`` (``make bench-peers``);
  without it those rows are skipped.

* the batch comparison (alone: ``--batches``): 256 MNIST images over ``/predict``, V1 and V2 as JSON
  and over V2 as binary tensors, against the compute ceiling, with the workers' CPU time per request
  (``/proc``); every tree's server up at once, ``--rounds`` rounds in turns, each row the median round,
  and with two trees each round's ratio of the second to the first.

``--tree DIR`` (repeatable) serves the service from other source trees: with two or more and
``--one-sample`` or ``--batches``, every tree's contenders run in the same turns (pairs of trees side
by side, which goes first alternating every round) and each later tree is compared with the first by
the median of the rounds' ratios. ``--compare`` runs the worker comparison instead. Each run writes its
results file under ``bench/results/`` (``bench/results.py``) and prints its table.

    python -m bench.serve_load                  # what `make bench` runs, about 9 minutes
    python -m bench.serve_load --one-sample --tree /tmp/before --tree .
    python -m bench.serve_load --batches --concurrency 4 16 --tree /tmp/before --tree .
    python -m bench.serve_load --compare sync gthread gevent service.http_server.worker.BufferingGeventWorker
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.bodies import bodies, images
from bench.harness import (
    CEILING_APP,
    KSERVE_PYTHON,
    ROOT,
    SERVICE_APP,
    executed_batches,
    have_wrk,
    kserve_peer,
    server,
    settle,
    warm,
    wrk,
)
from bench.machine import machine
from bench.medians import median_interval, median_round
from bench.procfs import children_cpu_seconds
from bench.slow_clients import slow_client_row

ONE_SAMPLE_CEILING = "HTTP ceiling (bare Flask), in turns"
ONE_SAMPLE = (("mnist1", "/predict", "/predict"), ("v1mnist1", "V1", "/v1/models/mnist:predict"),
              ("v2jsonmnist1", "V2 JSON", "/v2/models/mnist/infer"))
BATCHES = (("mnist256", "/predict mnist, 256, JSON", "/predict"),
           ("v1mnist256", "V1 mnist, 256, JSON", "/v1/models/mnist:predict"),
           ("v2json256", "V2 infer mnist, 256, JSON", "/v2/models/mnist/infer"),
           ("v2bin256", "V2 infer mnist, 256, binary", "/v2/models/mnist/infer"))


# -- the compute ceiling ------------------------------------------------------------------------------
def compute_ceiling(x: np.ndarray, rounds: int = 50) -> float:
    """Images/s of the MNIST network's forward pass in plain NumPy (one BLAS thread), one process."""
    from threadpoolctl import threadpool_limits

    from model.io import load_model
    from model.repository import newest_weights

    net = load_model(newest_weights(ROOT / "model_repository", "mnist")).network  # the served version
    dense = [layer.params for layer in net.layers if "W" in layer.params]
    batch = np.ascontiguousarray(x, dtype=np.float32)

    def forward() -> np.ndarray:
        h = batch
        for i, p in enumerate(dense):
            h = h @ p["W"] + p["b"]
            if i < len(dense) - 1:
                h = np.maximum(h, 0)
        e = np.exp(h - h.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def timed() -> float:
        start = time.perf_counter()
        forward()
        return time.perf_counter() - start

    with threadpool_limits(1):
        forward()
        best = min(timed() for _ in range(rounds))
    return len(batch) / best


# -- the runs -----------------------------------------------------------------------------------------
def full_run(args, tmp: Path, data: dict) -> list[dict]:
    """Every row of the module's docstring, the one-sample comparison last."""
    rows: list[dict] = []
    tree = args.tree[0]

    def add(scenario: str, images: int, c: int | None, r: dict) -> None:
        r.update(scenario=scenario, concurrency=c, images_per_s=(r["rps"] or 0) * images)
        rows.append(r)
        print(f"  {scenario:28s} c={c!s:>3}  {r['rps'] or 0:9.1f} req/s  p99 {r['p99_us'] / 1000:8.2f} ms  "
              f"errors {r['errors']}", flush=True)

    ceiling = compute_ceiling(np.asarray(json.loads(data["mnist256"][0].read_text())["inputs"]))
    rows.append({"scenario": "compute ceiling (NumPy, 256 images)", "concurrency": None, "rps": None,
                 "images_per_s": ceiling * args.workers, "per_worker": ceiling, "errors": 0})
    print(f"  compute ceiling: {ceiling:.0f} images/s per worker x {args.workers}", flush=True)
    with server(CEILING_APP, args.workers, tmp, root=tree) as srv:
        warm(f"{srv.url}/predict", data["mnist1"][0], 4)
        for c in args.concurrency:
            add("HTTP ceiling (bare Flask)", 1, c, wrk(f"{srv.url}/predict", data["mnist1"][0], c, args.seconds))
    with server(SERVICE_APP, args.workers, tmp, root=tree, LOG_LEVEL="info") as srv:
        warm(f"{srv.url}/predict", data["mnist1"][0], 4)
        for name, label, path in (
                ("xor1", "/predict xor, 1", "/predict"), ("mnist1", "/predict mnist, 1", "/predict"),
                ("mnist32", "/predict mnist, 32", "/predict"), ("mnist256", "/predict mnist, 256", "/predict"),
                ("v2json256", "V2 infer mnist, 256, JSON", "/v2/models/mnist/infer"),
                ("v2bin256", "V2 infer mnist, 256, binary", "/v2/models/mnist/infer")):
            body, images, header_length = data[name]
            for c in args.concurrency:
                add(label, images, c, wrk(f"{srv.url}{path}", body, c, args.seconds, header_length=header_length))
        add("slow clients: 200 sequential", 1, 1, slow_client_row(srv, data["mnist1"][0]))
        # one at a time: beyond GRADCHECK_CONCURRENCY (workers - 1) gradchecks are refused with a 503
        settle(f"{srv.url}/gradcheck", data["gradcheck"][0])
        add("/gradcheck mnist, 16 images", 0, 1, wrk(f"{srv.url}/gradcheck", data["gradcheck"][0], 1,
                                                      args.seconds, timeout=30))
        # the same slots as gradchecks: one at a time here too, once the last gradcheck has let go
        settle(f"{srv.url}/explain", data["explain"][0])
        add("/explain mnist, 1 image, integrated gradients (64 steps)", 0, 1,
            wrk(f"{srv.url}/explain", data["explain"][0], 1, args.seconds, timeout=30))
    return rows + one_sample_run(args, tmp, data)["rows"]


def one_sample_contenders(stack: contextlib.ExitStack, args, tmp: Path) -> list[list[tuple]]:
    """The one-sample comparison's servers, started on ``stack``: groups of (label, tree index, server,
    path, body name), one group per label with one contender per tree (the KServe peer's groups with
    one tree only: its figures do not depend on the tree)."""
    per_tree = []
    for i, tree in enumerate(args.tree):
        ceiling = stack.enter_context(server(CEILING_APP, args.workers, tmp, root=tree))
        mine = [(ONE_SAMPLE_CEILING, i, ceiling, "/predict", "mnist1")]
        for batching in ("on", "off"):
            srv = stack.enter_context(server(SERVICE_APP, args.workers, tmp, root=tree, LOG_LEVEL="info",
                                             BATCHING=batching))
            for name, label, path in ONE_SAMPLE if batching == "on" else ONE_SAMPLE[:1]:
                mine.append((f"{label} mnist, 1, batching {batching}", i, srv, path, name))
        per_tree.append(mine)
    groups = [list(group) for group in zip(*per_tree, strict=True)]
    python = Path(args.kserve_python)
    if len(args.tree) == 1 and python.exists():
        peer = stack.enter_context(kserve_peer(python, args.workers, tmp))
        groups += [[("KServe V1 mnist, 1", 0, peer, "/v1/models/mnist:predict", "v1mnist1")],
                   [("KServe V2 JSON mnist, 1", 0, peer, "/v2/models/mnist/infer", "v2jsonmnist1")]]
    elif len(args.tree) == 1:
        print(f"  no KServe peer ({results.portable(python)} missing: make bench-peers)", flush=True)
    return groups


def in_turns(groups: list[list[tuple]], k: int) -> list[tuple]:
    """Round ``k``'s order: the groups rotated by ``k``, and within each group the trees reversed every
    other round, so no contender always goes first and the trees of a label run side by side."""
    turned = groups[k % len(groups):] + groups[:k % len(groups)]
    return [contender for group in turned for contender in (group if k % 2 == 0 else group[::-1])]


def one_sample_run(args, tmp: Path, data: dict) -> dict:
    """MNIST one sample: the bare-Flask ceiling, ours with batching on and off, and the tuned KServe peer.

    All servers are up at once (idle ones cost nothing) and every concurrency level runs ``--rounds``
    rounds of every contender, in turns (:func:`in_turns`); each row is the median round. On a shared
    machine whose speed drifts by 2x within minutes, contenders measured minutes apart are not
    comparable; measured seconds apart, in turns, they are. With several trees, ``paired`` holds each
    later tree's requests/s over the first's, round by round, and their median with the sign test's
    interval.
    """
    several = len(args.tree) > 1
    rows, paired = [], []
    with contextlib.ExitStack() as stack:
        groups = one_sample_contenders(stack, args, tmp)
        for group in groups:  # warm every server and path
            for _, _, srv, path, name in group:
                warm(f"{srv.url}{path}", data[name][0], 4)
        for c in args.concurrency:
            measured: dict[tuple[str, int], list[dict]] = {(c_[0], c_[1]): [] for g in groups for c_ in g}
            for k in range(args.rounds):
                for label, tree, srv, path, name in in_turns(groups, k):
                    batches = label.endswith("batching on")
                    before = executed_batches(srv.url) if batches else None
                    r = wrk(f"{srv.url}{path}", data[name][0], c, args.seconds)
                    if batches:
                        after = executed_batches(srv.url)
                        passes = after[1] - before[1]
                        r["mean_executed_batch"] = (after[0] - before[0]) / passes if passes else None
                    measured[label, tree].append(r)
            for (label, tree), rounds in measured.items():
                r = dict(median_round(rounds))
                r.update(scenario=label, concurrency=c, images_per_s=r["rps"], rounds_rps=[x["rps"] for x in rounds],
                         errors=sum(x["errors"] for x in rounds))
                if several:
                    r["tree"] = tree
                rows.append(r)
                print(f"  {label:40s} {f'tree {tree} ' if several else ''}c={c:>3} {r['rps']:9.1f} req/s  "
                      f"p99 {r['p99_us'] / 1000:8.2f} ms  errors {r['errors']}  "
                      f"rounds {[round(x) for x in r['rounds_rps']]}", flush=True)
            for label in dict.fromkeys(label for label, _ in measured):
                for tree in range(1, len(args.tree)):
                    ratios = [b["rps"] / a["rps"] for a, b in zip(measured[label, 0], measured[label, tree],
                                                                 strict=True)]
                    median, low, high = median_interval(ratios)
                    paired.append({"scenario": label, "concurrency": c, "tree": tree, "ratios": ratios,
                                   "median": median, "low": low, "high": high})
    return {"rows": rows, "paired": paired}


def batches_run(args, tmp: Path, data: dict) -> dict:
    """256 MNIST images as JSON (``/predict``, V1, V2) and as V2 binary tensors, against the compute ceiling.

    Every tree's server is up at once; each concurrency runs ``--rounds`` rounds of every scenario, in
    turns (the scenarios rotated each round, the trees side by side, which goes first alternating), and
    each row is the median round. Beside requests/s, the workers' CPU time per request (``/proc``): on a
    shared machine the throughput measures the neighbours too, the CPU a request took does not. The
    compute ceiling is measured before and after the rows, and the higher kept: the best the machine did.
    """
    x = images(data)
    ceiling = compute_ceiling(x)
    rows, paired = [], []
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(server(SERVICE_APP, args.workers, tmp, root=tree, LOG_LEVEL="info"))
                   for tree in args.tree]
        for srv in servers:  # warm every server and path
            for name, _, path in BATCHES:
                warm(f"{srv.url}{path}", data[name][0], 4, header_length=data[name][2])
        groups = [[(label, i, srv, path, name) for i, srv in enumerate(servers)] for name, label, path in BATCHES]
        for c in args.concurrency:
            measured: dict[tuple[str, int], list[dict]] = {(g[0], g[1]): [] for group in groups for g in group}
            for k in range(args.rounds):
                for label, tree, srv, path, name in in_turns(groups, k):
                    before = children_cpu_seconds(srv.proc.pid)
                    r = wrk(f"{srv.url}{path}", data[name][0], c, args.seconds, header_length=data[name][2])
                    answered = r["requests"] - r["non_2xx"]
                    r["cpu_ms"] = (children_cpu_seconds(srv.proc.pid) - before) * 1e3 / answered if answered else None
                    measured[label, tree].append(r)
            for (label, tree), rounds in measured.items():
                r = dict(median_round(rounds))
                r.update(scenario=label, concurrency=c, tree=tree, images_per_s=r["rps"] * 256,
                         rounds_rps=[round(x["rps"], 1) for x in rounds], errors=sum(x["errors"] for x in rounds),
                         cpu_ms=median_interval([x["cpu_ms"] for x in rounds if x["cpu_ms"]] or [math.nan])[0])
                rows.append(r)
                share = r["images_per_s"] / (ceiling * args.workers)
                print(f"  {label:30s} tree {tree} c={c:>3} {r['rps']:8.1f} req/s  {share:.2f} "
                      f"of compute  CPU {r['cpu_ms']:.2f} ms/request  errors {r['errors']}  "
                      f"rounds {r['rounds_rps']}", flush=True)
            for label in dict.fromkeys(label for label, _ in measured):
                for tree in range(1, len(args.tree)):
                    for key in ("rps", "cpu_ms"):
                        ratios = [b[key] / a[key] for a, b in zip(measured[label, 0], measured[label, tree],
                                                                  strict=True) if a[key] and b[key]]
                        median, low, high = median_interval(ratios)
                        paired.append({"scenario": label, "concurrency": c, "tree": tree, "of": key,
                                       "ratios": ratios, "median": median, "low": low, "high": high})
    ceiling = max(ceiling, compute_ceiling(x))
    rows.insert(0, {"scenario": "compute ceiling (NumPy, 256 images)", "concurrency": None, "rps": None,
                    "images_per_s": ceiling * args.workers, "per_worker": ceiling, "errors": 0})
    return {"rows": rows, "paired": paired}


def compare_run(args, tmp: Path, data: dict) -> list[dict]:
    """The worker comparison: the ceiling and ``/predict`` MNIST under each ``--compare`` worker class,
    then its slow-clients row, one class after the other."""
    rows = []
    for worker in args.compare:
        env = {"WORKER_CLASS": worker, "THREADS": str(args.threads if worker == "gthread" else 1)}
        for app, label in ((CEILING_APP, "HTTP ceiling"), (SERVICE_APP, "/predict mnist, 1")):
            with server(app, args.workers, tmp, root=args.tree[0], **env) as srv:
                warm(f"{srv.url}/predict", data["mnist1"][0], 4)
                for c in args.concurrency:
                    r = wrk(f"{srv.url}/predict", data["mnist1"][0], c, args.seconds)
                    r.update(worker=worker, scenario=label, concurrency=c)
                    rows.append(r)
                    print(f"  {worker:38s} {label:18s} c={c:>3} {r['rps']:8.1f} req/s p99 {r['p99_us'] / 1e3:8.2f} ms",
                          flush=True)
                if app == SERVICE_APP:
                    r = slow_client_row(srv, data["mnist1"][0])
                    r.update(worker=worker, scenario="slow clients", concurrency=1)
                    rows.append(r)
                    print(f"  {worker:38s} slow clients: {r['requests'] - r['non_2xx']}/200 answered, "
                          f"p99 {r['p99_us'] / 1e3:.1f} ms", flush=True)
    return rows


# -- tables -------------------------------------------------------------------------------------------
def ms(us: float | None) -> str:
    return "" if us is None else f"{us / 1000:.2f}"


def table(rows: list[dict]) -> str:
    """The rows of a full or one-sample run, one line each, with each row against its ceiling."""
    http = {r["concurrency"]: r["rps"] for r in rows if r["scenario"] == "HTTP ceiling (bare Flask)"}
    # the one-sample comparison's rows answer to the ceiling measured in turns with them
    http_turns = {r["concurrency"]: r["rps"] for r in rows if r["scenario"] == ONE_SAMPLE_CEILING}
    compute = next((r["images_per_s"] for r in rows if r["scenario"].startswith("compute")), None)
    lines = ["| scenario | conc. | requests/s | images/s | p50 ms | p99 ms | errors | vs ceiling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "attackers_closed_by_server" in r:
            lines.append(f"| {r['scenario']} ({r['requests'] - r['non_2xx']}/200 answered; the server cut "
                         f"{r['attackers_closed_by_server']} attacker connections) | 1 | | | {ms(r.get('p50_us'))} | "
                         f"{ms(r.get('p99_us'))} | {r['errors']} | |")
            continue
        if r["rps"] is None:
            lines.append(f"| {r['scenario']} | | | {r['images_per_s']:,.0f} | | | | 1.00 |")
            continue
        ratio = ""
        if "rounds_rps" in r and r["scenario"] != ONE_SAMPLE_CEILING:
            ratio = f"{r['rps'] / http_turns[r['concurrency']]:.2f} of HTTP"
            if r.get("mean_executed_batch") is not None:
                ratio += f"; batch {r['mean_executed_batch']:.1f}"
        elif "rounds_rps" not in r and r["scenario"].startswith(("/predict", "V2", "V1")) and r["concurrency"] in http:
            images = r["images_per_s"]
            ratio = (f"{r['rps'] / http[r['concurrency']]:.2f} of HTTP" if images == r["rps"] else
                     f"{images / compute:.2f} of compute")
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['rps']:,.1f} | "
                     f"{r['images_per_s']:,.0f} | {ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r['errors']} | "
                     f"{ratio} |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """For one MNIST sample at each concurrency: ours against the tuned KServe, against batching off,
    and against the ceiling in turns, from this run's rows."""
    by = {(r["scenario"], r["concurrency"]): r for r in rows}
    lines = []
    for c in sorted({r["concurrency"] for r in rows if "rounds_rps" in r}):
        ours = {p: by.get((f"{p} mnist, 1, batching on", c)) for p in ("/predict", "V1", "V2 JSON")}
        off = by.get(("/predict mnist, 1, batching off", c))
        peer = [by.get((f"KServe {p} mnist, 1", c)) for p in ("V1", "V2 JSON")]
        http = by.get((ONE_SAMPLE_CEILING, c))
        if ours["/predict"] is None:
            continue
        mine = ours["/predict"]
        line = f"c={c}: /predict {mine['rps']:.0f} req/s"
        if all(peer):
            best = max(p["rps"] for p in peer)
            line += (f"; vs the tuned KServe's best ({best:.0f}): /predict {ours['/predict']['rps'] / best:.2f}x, "
                     f"V1 {ours['V1']['rps'] / peer[0]['rps']:.2f}x, V2 {ours['V2 JSON']['rps'] / peer[1]['rps']:.2f}x")
        if off:
            line += f"; p50 {ours['/predict']['p50_us'] / off['p50_us']:.2f}x batching off's"
            if c == 1:
                line += " (median rounds; bench.lone_request pairs them)"
        if http:
            line += f"; {mine['rps'] / http['rps']:.2f} of HTTP, p99 {mine['p99_us'] / 1e3:.1f} ms"
        lines.append(line)
    return "\n".join(lines)


def trees_table(result: dict) -> str:
    """A run over several trees: each contender's median round per tree, and the later tree's rounds
    over the first's (the median ratio, and the sign test's interval, or the range below 6 rounds)."""
    names = [f"tree {i} ({t['commit'] or t['path']})" for i, t in enumerate(result["trees"])]
    by = {(r["scenario"], r["concurrency"], r["tree"]): r for r in result["rows"]}
    lines = ["| scenario | conc. | " + " | ".join(f"{n} req/s, p50 ms" for n in names) +
             " | " + " | ".join(f"tree {i} / tree 0 (rounds' ratios)" for i in range(1, len(names))) + " |",
             "|" + " --- |" * (2 + 2 * len(names) - 1)]
    paired = {(p["scenario"], p["concurrency"], p["tree"]): p for p in result["paired"]}
    for label, c in dict.fromkeys((r["scenario"], r["concurrency"]) for r in result["rows"]):
        cells = [f"{by[label, c, i]['rps']:,.0f}, {ms(by[label, c, i]['p50_us'])}" for i in range(len(names))]
        ratios = [paired[label, c, i] for i in range(1, len(names))]
        cells += [f"**{p['median']:.3f}** ({p['low']:.3f}-{p['high']:.3f})" for p in ratios]
        lines.append(f"| {label} | {c} | " + " | ".join(cells) + " |")
    for i in range(1, len(names)):
        ours = [x for p in result["paired"] if p["tree"] == i and p["scenario"] != ONE_SAMPLE_CEILING
                for x in p["ratios"]]
        ceiling = [x for p in result["paired"] if p["tree"] == i and p["scenario"] == ONE_SAMPLE_CEILING
                   for x in p["ratios"]]
        line = (f"\nTree {i} / tree 0 over every round of the service's rows ({len(ours)} ratios): median "
                "{:.3f}, 95 % interval {:.3f}-{:.3f}".format(*median_interval(ours)))
        if ceiling:
            line += ("; the bare-Flask ceiling's (the same code in both trees: the run's noise): median "
                     "{:.3f}, range {:.3f}-{:.3f}".format(*median_interval(ceiling, level=1.0)))
        lines.append(line + ".")
    return "\n".join(lines)


def batches_table(result: dict) -> str:
    """The batch comparison: each scenario's median round per tree against the compute ceiling, its CPU
    per request, and with several trees each later tree's rounds over the first's."""
    rows = result["rows"]
    compute = rows[0]["images_per_s"]
    trees = result.get("trees") or [{"commit": "", "path": "."}]
    several = len(trees) > 1
    name = [f"tree {i} ({t['commit'] or t['path']})" if several else "" for i, t in enumerate(trees)]
    paired = {(p["scenario"], p["concurrency"], p["tree"], p["of"]): p for p in result.get("paired", [])}
    lines = [f"Compute ceiling: {compute:,.0f} images/s ({rows[0]['per_worker']:,.0f} per worker, "
             f"{result.get('workers', 2)} workers).", "",
             "| scenario | conc. |" + (" tree |" if several else "") + " requests/s | images/s | of compute | "
             "p50 ms | p99 ms | CPU ms/request | errors |" + (" req/s, CPU vs tree 0 (rounds' ratios) |" if several
                                                             else ""),
             "|" + " --- |" * (9 + 2 * several)]
    for r in rows[1:]:
        cells = [r["scenario"], str(r["concurrency"])] + ([name[r["tree"]]] if several else [])
        cells += [f"{r['rps']:,.1f}", f"{r['images_per_s']:,.0f}", f"**{r['images_per_s'] / compute:.2f}**",
                  ms(r.get("p50_us")), ms(r.get("p99_us")), f"{r['cpu_ms']:.2f}", str(r["errors"])]
        if several:
            ratios = [paired.get((r["scenario"], r["concurrency"], r["tree"], of)) for of in ("rps", "cpu_ms")]
            cells.append("; ".join(f"{p['median']:.2f} ({p['low']:.2f}-{p['high']:.2f})" for p in ratios if p))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_table(rows: list[dict]) -> str:
    """The worker comparison: one line per worker class."""
    lines = ["| worker | HTTP ceiling req/s (c=1/16/64) | /predict MNIST req/s (c=1/16/64) | p99 ms (c=1/16/64) | "
             "slow clients: answered, p99 |", "| --- | --- | --- | --- | --- |"]
    for worker in dict.fromkeys(r["worker"] for r in rows):
        mine = [r for r in rows if r["worker"] == worker]
        ceil = [r for r in mine if r["scenario"] == "HTTP ceiling"]
        pred = [r for r in mine if r["scenario"] == "/predict mnist, 1"]
        slow = next(r for r in mine if r["scenario"] == "slow clients")
        ceil_rps = " / ".join(f"{r['rps']:.0f}" for r in ceil)
        pred_rps = " / ".join(f"{r['rps']:.0f}" for r in pred)
        pred_p99 = " / ".join(ms(r["p99_us"]) for r in pred)
        answered = slow["requests"] - slow["non_2xx"]
        p99 = f", {ms(slow['p99_us'])}" if answered else ""
        lines.append(f"| `{worker}` | {ceil_rps} | {pred_rps} | {pred_p99} | {answered}/200{p99} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of a results file of this benchmark, whichever mode wrote it."""
    if result.get("mode") == "compare":
        return compare_table(result["rows"])
    if result.get("mode") == "batches":
        return batches_table(result)
    if len(result.get("trees", [])) > 1:
        return trees_table(result)
    text = table(result["rows"])
    summary = goals(result["rows"])
    return text + ("\n\n" + "\n".join(f"- {line}" for line in summary.splitlines()) if summary else "")


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and p99 against concurrency, one line per scenario (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        pts = [r for r in rows if r["scenario"] == scenario and r["rps"] is not None and r["concurrency"]]
        if not pts:
            continue
        cs = [r["concurrency"] for r in pts]
        ax1.plot(cs, [r["rps"] for r in pts], marker="o", label=scenario)
        ax2.plot(cs, [r["p99_us"] / 1000 for r in pts], marker="o", label=scenario)
    for ax, label in ((ax1, "requests/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle("numpy-nets serving on loopback (wrk)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=5.0, help="per row (per round in the one-sample rows)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the one-sample comparison")
    parser.add_argument("--one-sample", action="store_true",
                        help="only the MNIST one-sample comparison (ceiling, batching on/off, KServe)")
    parser.add_argument("--tree", type=Path, action="append",
                        help="a source tree to serve (repeatable with --one-sample; default: this checkout)")
    parser.add_argument("--batches", action="store_true",
                        help="only the 256-image comparison (JSON and binary tensors against the compute ceiling)")
    parser.add_argument("--compare", nargs="+", metavar="WORKER_CLASS",
                        help="compare gunicorn worker classes instead (sync, gthread, gevent, ...)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker in --compare")
    parser.add_argument("--kserve-python", default=str(KSERVE_PYTHON),
                        help="the interpreter with kserve installed (make bench-peers)")
    parser.add_argument("--out", type=Path, help="the results file (default: bench/results/serve_load.json, "
                        "serve_one_sample.json, serve_trees.json with several trees, serve_compare.json)")
    parser.add_argument("--plot", type=Path, help="also a PNG of throughput and p99 against concurrency")
    args = parser.parse_args(argv)
    args.tree = [t.resolve() for t in args.tree or [ROOT]]
    if len(args.tree) > 1 and not (args.one_sample or args.batches):
        parser.error("several --tree need --one-sample or --batches")
    if not have_wrk():
        return 2
    mode = "compare" if args.compare else "batches" if args.batches else "trees" if len(args.tree) > 1 \
        else "one_sample" if args.one_sample else "full"
    out = args.out or results.default_path({"full": "serve_load", "one_sample": "serve_one_sample",
                                            "trees": "serve_trees", "compare": "serve_compare",
                                            "batches": "serve_batches"}[mode])
    started, info = time.monotonic(), machine()
    print(f"machine: {info}", flush=True)
    body: dict = {"mode": mode, "workers": args.workers}
    if len(args.tree) > 1:
        body["trees"] = [{"path": results.portable(t), "commit": results.tree_commit(t)} for t in args.tree]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        data = bodies(Path(tmp), args.data_dir)
        if args.compare:
            body["rows"] = compare_run(args, Path(tmp), data)
        elif args.batches:
            body.update(batches_run(args, Path(tmp), data))
        elif args.one_sample:
            body.update(one_sample_run(args, Path(tmp), data))
        else:
            body["rows"] = full_run(args, Path(tmp), data)
    if args.plot and not (args.compare or args.batches):
        plot(body["rows"], args.plot)
    result = results.save(out, "bench.serve_load", argv, args, body, started, info)
    print(f"\n{report(result)}\n\n(workers {args.workers}; {info.get('cpu')}; results in {results.portable(out)})")
    failed = [r for r in body["rows"] if r.get("errors") and not math.isnan(r.get("errors", 0))]
    return 1 if failed and not args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
