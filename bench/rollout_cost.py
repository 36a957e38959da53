"""What a slow shadow costs its primary: one-sample ``/predict`` with no rollout and with a saturated shadow.

Issue 36's goal: with the shadow twice as slow as the primary and the queue saturated, the
primary's p99 at 16 connections is within 10 % of no shadow (a benchmark, same run) and no primary
request fails.

The versions. A temporary repository holds ``mnist/1``, a copy of the shipped ``mnist/2`` (the
primary, 300 hidden units), and ``mnist/2``, a shadow: the same network with ``--width`` times the
hidden units -- each hidden unit repeated, its output weights divided by the repeat, so it computes
the primary's function at that many times the multiply-adds -- plus Gaussian noise
(``np.random.default_rng(--seed)``, ``--noise`` of each array's standard deviation), so it is
another version (its labels differ from the primary's on a few tenths of a percent of the test
images). Its metadata is the primary's (labels, input shape, preprocessing), written with
``model.io.save_model``. Its cost is measured, not assumed: forward passes of 1, 64 and 1024 rows
(``MAX_ROWS_PER_PASS``, the comparing thread's largest pass) on one BLAS thread, as a worker runs
them, the two versions timed in turns; the ratio is the median of the turns'.

Saturating the queue. The comparisons take at most ``MAX_SHARE`` (2.5 %) of a worker's CPU time,
so whether the default queue fills is a matter of rates, not of its size: a worker answering
~2,800 one-sample requests a second keeps up only while one row costs the shadow less than
0.025 / 2,800 s = 9 µs. Two shadows, each checked against no rollout:

- ``small_queue``: the 4x shadow (``--width``) with ``SHADOW_QUEUE=16`` (``--small-queue``): the
  comparing greenlet looks every 20 ms, more than 16 rows arrive meanwhile, the rest are dropped.
  The issue's case (a shadow a few times slower, the queue full);
- ``full_share``: a 16x shadow (``--full-share-width``, ~80 µs a row) with the default queue: the
  copies arrive far faster than the share can compare them, so the comparer works its full share
  from the start of each burst and the queue fills within a second and drops: the most a shadow
  can cost its primary by design.

The servers. Three, the service's gunicorn configuration with ``--workers`` each, up at once and
driven in turns, as ``bench.capture_cost`` does: ``off`` serves the primary alone with no rollout,
the two others their repository with ``rollout.json`` = ``{"primary": 1, "shadow": 2}`` written
before they start -- separate servers rather than one switched by the API between rounds, so every
worker has its rollout from its first request and no version is loaded or unloaded, no poll interval
waited out, in mid-run. All run ``VERSION_POLICY=specific:1`` (a rollout loads the versions it
names whatever the policy; without one, ``latest:1`` would serve the newest version, a shadow).
Each round wrk drives each server for ``--seconds`` at ``--connections`` with one-sample ``POST
/predict`` naming no version (the same image every time), in an order that changes every round
(over six rounds each server goes first twice and each pair in either order three times); after
a shadow server's burst the benchmark waits until its comparisons caught up (compared + dropped =
requests its primary served, ``/metrics``), so no leftover comparison runs during the next burst.
Each round gives the ratios (a shadow / off) of p99 and of answered requests per second, measured
within seconds of each other; the answer is each ratio's median with the sign test's
distribution-free 95 % interval (``bench/medians.py``). ``nn_rollout_comparisons_total`` shows each
queue saturated (samples dropped > 0).

    python -m bench.rollout_cost --rounds 18        # about 9 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from threadpoolctl import threadpool_limits

from bench import results
from bench.bodies import bodies
from bench.harness import SERVICE_APP, have_wrk, server, warm, wrk
from bench.medians import median_interval
from model.io import load_model, save_model
from model.network import Sequential
from service.config import Settings
from service.dataplane.shadow import MAX_ROWS_PER_PASS
from training.datasets import mnist

ROOT = Path(__file__).resolve().parent.parent
PRIMARY = ROOT / "model_repository" / "mnist" / "2"
VARIANTS = ("off", "small_queue", "full_share")
# the rounds' orders: every server first in two of six, and each pair of servers in either order in three
ORDERS = [tuple(VARIANTS[i] for i in order) for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0), (0, 2, 1), (2, 0, 1),
                                                           (1, 0, 2))]
DEFAULT_QUEUE = Settings.model_fields["shadow_queue"].default
ROLLOUT = {"primary": 1, "shadow": 2}
GOAL = 1.10  # p99 shadow / off at most this
FORWARD_ROWS = (1, 64, MAX_ROWS_PER_PASS)
SAMPLE = re.compile(r'^nn_rollout_(routed|comparisons)_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


# -- the two versions ---------------------------------------------------------------------------------
def widen(network: Sequential, width: int, noise: float, rng: np.random.Generator) -> Sequential:
    """``network`` (dense, activation, [dropout,] dense) with ``width`` times the hidden units: each
    unit repeated, the next layer's weights divided by ``width`` (the same function), then noise of
    ``noise`` times each array's standard deviation."""
    arch = network.architecture()
    dense = [i for i, spec in enumerate(arch["layers"]) if spec["type"] == "dense"]
    if len(dense) != 2:
        raise ValueError(f"expected two dense layers, not {len(dense)}: {arch['layers']}")
    first, second = dense
    arch["layers"][first]["out_features"] *= width
    arch["layers"][second]["in_features"] *= width
    wide = Sequential.from_architecture(arch, rng=rng, dtype=network.dtype)
    old, new = network.named_params(), wide.named_params()
    arrays = {f"{first}.W": np.tile(old[f"{first}.W"], (1, width)), f"{first}.b": np.tile(old[f"{first}.b"], width),
              f"{second}.W": np.tile(old[f"{second}.W"], (width, 1)) / width, f"{second}.b": old[f"{second}.b"]}
    for key, value in arrays.items():
        value = value + noise * float(value.std()) * rng.standard_normal(value.shape)
        new[key][...] = value.astype(new[key].dtype)
    return wide.eval()


def build_repository(directory: Path, width: int, noise: float, seed: int) -> dict:
    """``directory/mnist/1`` = the shipped primary, ``directory/mnist/2`` = its widened shadow."""
    (directory / "mnist" / "1").mkdir(parents=True)
    shutil.copy2(PRIMARY / "model.npz", directory / "mnist" / "1" / "model.npz")
    primary = load_model(PRIMARY / "model.npz")
    wide = widen(primary.network, width, noise, np.random.default_rng(seed))
    meta = {k: v for k, v in primary.metadata.items() if k not in ("architecture", "dtype", "format_version")}
    meta.update(version=2, metrics={}, targets={}, history=[],
                note=f"bench.rollout_cost shadow: mnist/2's network with {width}x the hidden units, noise {noise:g}, "
                     f"seed {seed}; not trained")
    save_model(directory / "mnist" / "2" / "model.npz", wide, meta)
    (directory / "mnist" / "rollout.json").write_text(json.dumps(ROLLOUT))
    return {"width": width, "primary_hidden": primary.network.architecture()["layers"][0]["out_features"],
            "shadow_hidden": wide.architecture()["layers"][0]["out_features"],
            "primary_parameters": primary.network.num_params, "shadow_parameters": wide.num_params}


def forward_ratios(directory: Path, x: np.ndarray, turns: int) -> list[dict]:
    """Per batch size: the median time of one forward pass of each version (one BLAS thread, as a
    worker runs) and the median of the turns' ratios shadow / primary, with its interval."""
    nets = {v: load_model(directory / "mnist" / str(v) / "model.npz").network.eval() for v in (1, 2)}
    rows_out = []
    with threadpool_limits(1):
        for rows in FORWARD_ROWS:
            batch = np.ascontiguousarray(np.resize(x, (rows, x.shape[1])), dtype=np.float32)
            calls = max(1, round(0.02 / max(timed(nets[1], batch, 1), 1e-6)))  # about 20 ms a turn
            times: dict[int, list[float]] = {1: [], 2: []}
            for turn in range(turns):
                for v in ((1, 2) if turn % 2 == 0 else (2, 1)):
                    times[v].append(timed(nets[v], batch, calls))
            ratio = [b / a for a, b in zip(times[1], times[2], strict=True)]
            med, low, high = median_interval(ratio)
            rows_out.append({"rows": rows, "primary_us": statistics.median(times[1]) * 1e6,
                             "shadow_us": statistics.median(times[2]) * 1e6, "ratio": med, "low95": low,
                             "high95": high, "turns": turns, "calls_per_turn": calls})
    return rows_out


def timed(network: Sequential, batch: np.ndarray, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        network.predict_proba(batch)
    return (time.perf_counter() - start) / calls


# -- the servers ----------------------------------------------------------------------------------------
def evidence(url: str) -> dict:
    """The shadow server's rollout counts, summed over its workers: requests routed to the primary
    (by version) and samples compared / dropped (by outcome)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict = {"routed": {}, "agree": 0, "disagree": 0, "dropped": 0}
    for kind, labels, value in SAMPLE.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("model") != "mnist":
            continue
        if kind == "routed":
            key = f"{fields['version']}/{fields['role']}"
            out["routed"][key] = out["routed"].get(key, 0) + round(float(value))
        elif fields.get("outcome") in ("agree", "disagree", "dropped"):
            out[fields["outcome"]] += round(float(value))
    return out


def caught_up(url: str, timeout: float = 60.0) -> dict:
    """Wait until every request the primary served is compared or dropped (the queue is empty)."""
    deadline = time.monotonic() + timeout
    while True:
        e = evidence(url)
        served = sum(n for key, n in e["routed"].items() if key.endswith("/primary"))
        if e["agree"] + e["disagree"] + e["dropped"] >= served or time.monotonic() > deadline:
            return e
        time.sleep(0.1)


def served_version(url: str, body: Path) -> int:
    answer = requests.post(f"{url}/predict", data=body.read_bytes(), headers={"Content-Type": "application/json"},
                           timeout=10)
    answer.raise_for_status()
    return int(answer.json()["version"])


def shadows(args) -> dict[str, tuple[int, int | None]]:
    """Each shadow variant: (the shadow's width, SHADOW_QUEUE or None for the server's default)."""
    return {"small_queue": (args.width, args.small_queue), "full_share": (args.full_share_width, None)}


def run(args) -> dict:
    out: dict = {"rounds": [], "versions": {}, "forward": {}, "rollout_in_force": {}}
    variants = shadows(args)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        body = bodies(tmp, args.data_dir)["mnist1"][0]
        test_images = mnist(args.data_dir, download=args.data_dir is None).eval_sets["test"][0]
        x = np.asarray(test_images[:MAX_ROWS_PER_PASS], dtype=np.float32).reshape(MAX_ROWS_PER_PASS, -1)
        repos = {"off": tmp / "repository-off"}
        (repos["off"] / "mnist" / "1").mkdir(parents=True)
        shutil.copy2(PRIMARY / "model.npz", repos["off"] / "mnist" / "1" / "model.npz")
        for name, (width, _) in variants.items():
            repos[name] = tmp / f"repository-{name}"
            out["versions"][name] = build_repository(repos[name], width, args.noise, args.seed)
            out["forward"][name] = forward_ratios(repos[name], x, args.forward_turns)
            for f in out["forward"][name]:
                print(f"  {name} (width {width}) forward pass, {f['rows']:4d} rows: primary {f['primary_us']:7.0f} µs, "
                      f"shadow {f['shadow_us']:7.0f} µs, ratio {f['ratio']:.2f} ({f['low95']:.2f}-{f['high95']:.2f})",
                      flush=True)
        env = {"LOG_LEVEL": "warning", "VERSION_POLICY": "specific:1"}
        servers = {}
        for name in VARIANTS:
            queue = variants[name][1] if name in variants else None
            more = {"SHADOW_QUEUE": str(queue)} if queue else {}
            servers[name] = stack.enter_context(server(SERVICE_APP, args.workers, tmp, MODEL_DIR=str(repos[name]),
                                                       **env, **more))
        for name, srv in servers.items():
            version = served_version(srv.url, body)
            if version != 1:
                raise RuntimeError(f"the {name} server answered with version {version}, not the primary 1")
            if name in variants:
                doc = requests.get(f"{srv.url}/models/mnist", timeout=10).json()
                out["rollout_in_force"][name] = doc.get("rollout")
            warm(f"{srv.url}/predict", body, args.connections, 2)
        before = {name: caught_up(servers[name].url) for name in variants}
        out["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
        for k in range(args.rounds):
            order = ORDERS[k % len(ORDERS)]
            got = {}
            for name in order:
                got[name] = wrk(f"{servers[name].url}/predict", body, args.connections, args.seconds)
                if name in variants:  # its leftover comparisons done before the next burst
                    caught_up(servers[name].url)
            rnd = {"first": order[0], "load": round(os.getloadavg()[0], 2),
                   **{f"{key}_{v}": got[v][key] for v in VARIANTS for key in ("p99_us", "p50_us", "rps", "errors",
                                                                               "non_2xx", "requests")}}
            for name in variants:
                rnd[f"p99_ratio_{name}"] = rnd[f"p99_us_{name}"] / rnd["p99_us_off"]
                rnd[f"rps_ratio_{name}"] = rnd[f"rps_{name}"] / rnd["rps_off"]
            out["rounds"].append(rnd)
            print(f"  round {k:2d} ({order[0]} first)  p99 µs " + ", ".join(
                f"{v} {rnd[f'p99_us_{v}']:.0f}" for v in VARIANTS) + "  req/s " + ", ".join(
                f"{v} {rnd[f'rps_{v}']:.0f}" for v in VARIANTS) + "  p99 ratios " + ", ".join(
                f"{rnd[f'p99_ratio_{v}']:.3f}" for v in variants) + "  errors " + "/".join(
                str(rnd[f"errors_{v}"]) for v in VARIANTS) + f"  load {rnd['load']:.1f}", flush=True)
        out["comparisons"] = {}
        for name in variants:
            after = caught_up(servers[name].url)
            counts = {key: after[key] - before[name][key] for key in ("agree", "disagree", "dropped")}
            counts["primary_requests"] = (after["routed"].get("1/primary", 0)
                                          - before[name]["routed"].get("1/primary", 0))
            counts["routed_elsewhere"] = sum(n for key, n in after["routed"].items() if key != "1/primary")
            out["comparisons"][name] = counts
    return out


def summarize(out: dict, args) -> dict:
    rounds = out["rounds"]
    s: dict = {"rounds": len(rounds), "goal_p99_ratio": GOAL, "load_average_start": out["load_average_start"],
               "load_rounds": [r["load"] for r in rounds], "variants": {}}
    for v in VARIANTS:
        s[v] = {key: statistics.median(r[f"{key}_{v}"] for r in rounds) for key in ("p99_us", "p50_us", "rps")}
        s[v]["errors"] = sum(r[f"errors_{v}"] for r in rounds)
        s[v]["requests"] = sum(r[f"requests_{v}"] for r in rounds)
    for name, (width, queue) in shadows(args).items():
        v = s[name]
        for ratio in ("p99_ratio", "rps_ratio"):
            v[ratio] = dict(zip(("median", "low95", "high95"), median_interval([r[f"{ratio}_{name}"] for r in rounds]),
                                strict=True))
        v.update(width=width, shadow_queue=queue or DEFAULT_QUEUE, shadow_queue_set=bool(queue),
                 comparisons=out["comparisons"][name], forward=out["forward"][name], versions=out["versions"][name],
                 rollout=out["rollout_in_force"].get(name))
        v["verdict"] = verdict(v)
    return s


def verdict(v: dict) -> str:
    """The goal for one shadow: no failed request, the queue saturated, and the p99 ratio's interval
    below ``GOAL`` (met), above it (missed), or across it (not settled by this run)."""
    if v["errors"]:
        return "missed (failed requests)"
    if not v["comparisons"]["dropped"]:
        return "not tested (the queue never filled)"
    p99 = v["p99_ratio"]
    if p99["high95"] <= GOAL:
        return "met"
    if p99["low95"] > GOAL:
        return "missed"
    return f"not settled (the interval spans {GOAL:.2f}; median {'within' if p99['median'] <= GOAL else 'above'})"


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    s = result["summary"]
    c = result.get("settings", {}).get("connections", 16)
    names = [v for v in VARIANTS if v != "off"]
    lines = ["| forward pass, one BLAS thread | primary (300 hidden) | shadow | shadow / primary, median "
             "| 95 % interval |", "| --- | --- | --- | --- | --- |"]
    for name in names:
        hidden = s[name]["versions"]["shadow_hidden"]
        for f in s[name]["forward"]:
            lines.append(f"| {f['rows']} row{'s' if f['rows'] > 1 else ''}, shadow of {hidden} hidden | "
                         f"{f['primary_us']:.0f} µs | {f['shadow_us']:.0f} µs | {f['ratio']:.2f} | "
                         f"{f['low95']:.2f}-{f['high95']:.2f} |")
    lines += ["", f"| one-sample /predict at c={c}, with a shadow / no rollout | p99 latency, median | 95 % interval "
              "| answered req/s, median | 95 % interval | samples dropped | failed requests |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        v = s[name]
        cmp_ = v["comparisons"]
        offered = cmp_["agree"] + cmp_["disagree"] + cmp_["dropped"]
        queue = f"SHADOW_QUEUE={v['shadow_queue']}" + ("" if v["shadow_queue_set"] else " (default)")
        lines.append(f"| shadow of {v['versions']['shadow_hidden']} hidden units, {queue} | "
                     f"{v['p99_ratio']['median']:.3f} | {v['p99_ratio']['low95']:.3f}-{v['p99_ratio']['high95']:.3f} | "
                     f"{v['rps_ratio']['median']:.3f} | {v['rps_ratio']['low95']:.3f}-{v['rps_ratio']['high95']:.3f} | "
                     f"{cmp_['dropped']} of {offered} ({cmp_['dropped'] / max(offered, 1):.0%}) | "
                     f"{v['errors']} of {v['requests']} |")
    medians = "; ".join(f"{name.replace('_', ' ')} p99 {s[name]['p99_us']:.0f} µs, p50 {s[name]['p50_us']:.0f} µs, "
                        f"{s[name]['rps']:.0f} req/s" for name in VARIANTS)
    agreement = "; ".join(f"{name.replace('_', ' ')} {s[name]['comparisons']['agree']} agree, "
                          f"{s[name]['comparisons']['disagree']} disagree" for name in names)
    verdicts = "; ".join(f"{name.replace('_', ' ')} {s[name]['verdict']}" for name in names)
    load = s["load_rounds"]
    lines.append(f"\n({s['rounds']} rounds, 1-minute load average {min(load):.1f}-{max(load):.1f} during them "
                 f"(median {statistics.median(load):.1f}) on {result['machine']['cores']} cores; "
                 f"medians: {medians}; no rollout: {s['off']['errors']} of "
                 f"{s['off']['requests']} requests failed; compared: {agreement}; goal (p99 ratio at most "
                 f"{s['goal_p99_ratio']:.2f} over its 95 % interval, the queue saturated, no failed request): "
                 f"{verdicts})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=18, help="a multiple of 6 balances the orders")
    parser.add_argument("--seconds", type=float, default=5, help="per burst")
    parser.add_argument("--width", type=int, default=4, help="the small-queue shadow's hidden units, times the "
                        "primary's")
    parser.add_argument("--small-queue", type=int, default=16, help="its SHADOW_QUEUE")
    parser.add_argument("--full-share-width", type=int, default=16, help="the other shadow's hidden units, times "
                        "the primary's (its SHADOW_QUEUE is the server's default)")
    parser.add_argument("--noise", type=float, default=0.05, help="of each array's standard deviation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forward-turns", type=int, default=21, help="turns of each version per batch size")
    parser.add_argument("--out", type=Path, default=results.default_path("rollout_cost"))
    args = parser.parse_args(argv)
    if not have_wrk():
        return 2
    started = time.monotonic()
    out = run(args)
    summary = summarize(out, args)
    doc = results.save(args.out, "bench.rollout_cost", argv, args, {"summary": summary, "rounds": out["rounds"]},
                       started)
    print("\n" + report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
