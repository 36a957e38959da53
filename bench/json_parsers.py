"""The candidates for parsing an inference body's JSON numbers, on the real 256-image MNIST body, in turns.

Each candidate turns the ``/predict`` body's 200,704 numbers (1.5 MB of JSON, as ``bench/bodies.py`` writes
it from the MNIST test set) into a float64 array, in-process on one thread. Every round times each candidate
once, in an order rotated every round; each row is the median of ``--rounds``. Each candidate's array is
compared with the old path's (orjson, then ``struct`` rows) bit for bit: the service may only adopt one that
gives the same float64, so the same float32 after the data plane's cast. The candidates:

* orjson, then ``struct`` rows (the path before ``json_numbers``), and orjson then ``np.array``;
* the standard library's ``json``, then ``struct`` rows;
* simdjson through pysimdjson's ``as_buffer`` (``service/protocols/json_numbers.py``, the path now);
* NumPy's own C parsing of the text with its brackets deleted: ``np.fromstring(sep=",")`` and ``np.loadtxt``;
* a scan of the bytes in NumPy (digits times powers of ten, summed per number): no exponents, and not
  correctly rounded, so this is what the scan alone costs before any of the work of getting it right.

    python -m bench.json_parsers              # about 1 minute
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from bench import results
from bench.bodies import bodies
from bench.machine import machine
from service.protocols import json_codec

DEFAULT_BODY = "mnist256"


def numpy_scan(span: bytes) -> np.ndarray:
    """Numbers of the form ``-ddd.ddd`` (no exponent) in a JSON array's text, by NumPy alone: approximate."""
    a = np.frombuffer(span, dtype=np.uint8)
    digit = (a >= ord("0")) & (a <= ord("9"))
    number = digit | (a == ord(".")) | (a == ord("-"))
    edges = np.flatnonzero(np.diff(number.view(np.int8), prepend=0, append=0))
    starts, ends = edges[::2], edges[1::2]
    points = np.where(a == ord("."), np.arange(len(a)), len(a))
    point = np.minimum.reduceat(points, starts)  # each number's decimal point (len(a): none)
    point = np.where(point < ends, point, ends)
    where = np.flatnonzero(digit)
    owner = np.searchsorted(starts, where, side="right") - 1
    place = point[owner] - where - (where < point[owner])  # the power of ten of each digit
    values = np.add.reduceat((a[where] - ord("0")) * 10.0 ** place, np.searchsorted(owner, np.arange(len(starts))))
    return np.where(a[starts] == ord("-"), -values, values)


def candidates(body: bytes) -> dict[str, Callable[[], np.ndarray]]:
    """Each candidate, a call that parses ``body`` into a float64 array."""
    start, end = body.index(b"["), body.rindex(b"]") + 1
    text = body[start:end]
    bare = text.translate(None, b"[]")
    return {
        "orjson, then struct rows (before)": lambda: json_codec.floats(orjson.loads(body)["inputs"]),
        "orjson, then np.array": lambda: np.array(orjson.loads(body)["inputs"], dtype=np.float64),
        "json (standard library), then struct rows": lambda: json_codec.floats(json.loads(body)["inputs"]),
        "simdjson as_buffer (json_numbers, now)": lambda: json_codec.loads_samples(body, (b"inputs",))[1],
        "np.fromstring(sep=',') of the text without brackets":
            lambda: np.fromstring(text.translate(None, b"[]"), sep=","),
        "np.loadtxt of the text without brackets":
            lambda: np.loadtxt(io.BytesIO(text.translate(None, b"[]")), delimiter=",", dtype=np.float64),
        "NumPy scan of the bytes (no exponent, not correctly rounded)": lambda: numpy_scan(bare),
    }


def run(body: bytes, rounds: int) -> list[dict]:
    """Every candidate ``rounds`` times in turns; its median time and whether its numbers are the old path's."""
    calls = candidates(body)
    reference = np.ravel(next(iter(calls.values()))())
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in names:
        got = np.ravel(np.asarray(calls[name](), dtype=np.float64))
        same = got.shape == reference.shape and np.array_equal(got.view(np.uint64), reference.view(np.uint64))
        differ = int(np.count_nonzero(got.view(np.uint64) != reference.view(np.uint64))) if \
            got.shape == reference.shape else None
        ms = float(np.median(times[name])) * 1e3
        rows.append({"candidate": name, "ms": ms, "ns_per_number": ms * 1e6 / reference.size,
                     "rounds_ms": [round(t * 1e3, 3) for t in times[name]], "bit_for_bit": same,
                     "values_differing": differ})
        print(f"  {name:62s} {ms:8.2f} ms  {'same' if same else f'{differ} values differ'}", flush=True)
    return rows


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    rows = result["rows"]
    before = rows[0]["ms"]
    lines = [f"({result['numbers']:,} numbers, {result['body_bytes'] / 1e6:.1f} MB; each row the median of "
             f"{result['settings']['rounds']} rounds.)", "",
             "| candidate | ms per body | ns per number | vs before | the old path's float64, bit for bit |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        same = "yes" if r["bit_for_bit"] else "no" if r["values_differing"] is None else \
            f"no: {r['values_differing']:,} values differ"
        lines.append(f"| {r['candidate']} | {r['ms']:.2f} | {r['ns_per_number']:.1f} | {before / r['ms']:.2f}x | "
                     f"{same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.json_parsers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="the MNIST files (default: the cache, downloading them)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=results.default_path("json_parsers"), help="the results file")
    args = parser.parse_args(argv)
    started, info = time.monotonic(), machine()
    with tempfile.TemporaryDirectory(prefix="bench-json-") as tmp:
        body = bodies(Path(tmp), args.data_dir)[DEFAULT_BODY][0].read_bytes()
    rows = run(body, args.rounds)
    result = results.save(args.out, "bench.json_parsers", argv, args,
                          {"rows": rows, "body_bytes": len(body),
                           "numbers": int(json_codec.floats(orjson.loads(body)["inputs"]).size)},
                          started, info)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
