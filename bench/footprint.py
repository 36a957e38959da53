"""A replica's footprint: PSS of every process idle and after load, and the image's size over its base.

Two arrangements of ``python -m service`` with ``WORKERS=2`` (``--workers``): the default (gRPC on,
``GRPC_WORKERS`` left to its default) and gRPC off (``GRPC_PORT=0``). For each, every process of the
tree is read from ``/proc/PID/smaps_rollup``: PSS (each shared page split between the processes that
map it, so the sum is what the replica costs the machine), USS (its private pages) and RSS. Once when
``/readyz`` answers and a few seconds have passed (idle), and again after a short load: ``wrk`` posting
32 MNIST-shaped images to ``/predict`` and, with gRPC on, tritonclient calls of one image and of 256
images (``bench/grpc_load.py``'s driver).

When a container engine is present (``CONTAINER_ENGINE``, default docker; ``../shared/ci/container-engine.sh``
prepares podman here), the image too: its size over the base image (``CONTAINER_BASE_IMAGE``, default
``python:3.12-slim``), layer by layer (``history``) and package by package (the files each installed
distribution of the image's ``/opt/venv`` lists, read by the image's own Python). ``--image TAG`` measures
an image already built; otherwise the checkout is built (``CONTAINER_BUILD_FLAGS``) as ``numpy-nets:footprint``.

    python -m bench.footprint                  # about 2 minutes plus the build
    python -m bench.footprint --no-image       # the processes only
    python -m bench.footprint --image numpy-nets:test

A process's MB is 2**20 bytes, as ``/proc`` counts kB of 1024 bytes; an image's, a layer's and a
package's MB is 10**6 bytes, as the container engine reports image sizes (the image's 109.5 MB over
its base is 104.4 MiB). Results: ``bench/results/footprint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.harness import ROOT, run_wrk
from bench.machine import machine

TAG = "numpy-nets:footprint"
KB_PER_MB = 1024
# The image's own Python lists each distribution's files under /opt/venv (sizes from the file system).
PACKAGES_SCRIPT = r"""
import json, os, sys
from importlib.metadata import distributions
venv = '/opt/venv'
out = {}
seen = set()
for dist in distributions(path=[p for p in sys.path if p.startswith(venv)]):
    total = 0
    for f in dist.files or ():
        path = os.path.realpath(dist.locate_file(f))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        total += os.path.getsize(path)
    out[dist.metadata['Name']] = total
everything = 0
for top, dirs, files in os.walk(venv):
    for f in files:
        p = os.path.join(top, f)
        if not os.path.islink(p):
            everything += os.path.getsize(p)
out['(unlisted files in /opt/venv)'] = everything - sum(out.values())
print(json.dumps(out))
"""


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(parents.get(pid, [])))
    return out


def memory(pid: int) -> dict[str, float]:
    """PSS, USS (private clean + dirty) and RSS of ``pid`` in MB, from ``/proc/PID/smaps_rollup``."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"pss_mb": fields["Pss"] / KB_PER_MB, "uss_mb": private / KB_PER_MB, "rss_mb": fields["Rss"] / KB_PER_MB}


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def role(pid: int, root: int) -> str:
    """What the process is: by the module it runs (``python -m MODULE``), a gunicorn worker by its parent."""
    argv = command_line(pid)
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if module == "service.grpc.server":
        return "gRPC server"
    if module == "gunicorn":
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        parent_argv = command_line(parent)
        parent_module = parent_argv[parent_argv.index("-m") + 1] if "-m" in parent_argv[:-1] else ""
        return "HTTP worker" if parent_module == "gunicorn" else "gunicorn master"
    if pid == root:
        return "supervisor"
    return "other: " + " ".join(argv)[:80]


def snapshot(root: int) -> dict:
    """Every process of the tree under ``root``: its role, command and memory; and the totals."""
    tree = descendants(root)
    rows = []
    for pid in tree:
        try:
            rows.append({"pid": pid, "role": role(pid, root), **{k: round(v, 1) for k, v in memory(pid).items()}})
        except OSError:  # ended meanwhile
            continue
    return {"processes": rows, "total_pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
            "total_uss_mb": round(sum(r["uss_mb"] for r in rows), 1), "count": len(rows)}


def write_body(tmp: Path) -> Path:
    """A ``/predict`` body of 32 MNIST-shaped images (values do not matter to memory)."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 784)).round(3)
    body = tmp / "mnist32.body"
    body.write_text(json.dumps({"model": "mnist", "inputs": x.tolist()}))
    return body


def grpc_load(target: str, seconds: float) -> list[dict]:
    from bench.grpc_load import measure

    return [{k: r[k] for k in ("batch", "concurrency", "rps", "errors")}
            for r in (measure("grpc", target, 4, seconds, batch=1), measure("grpc", target, 2, seconds, batch=256))]


def replica(name: str, tmp: Path, args: argparse.Namespace, **env: str) -> dict:
    """One arrangement: start it, measure idle, load it, measure again, stop it."""
    from tests.integration.conftest import LocalServer
    from tests.integration.test_grpc import wait_grpc

    server = LocalServer(tmp / name, WORKERS=str(args.workers), LOG_LEVEL="warning", **env).start()
    try:
        grpc_on = env.get("GRPC_PORT") != "0"
        if grpc_on:
            wait_grpc(server.grpc_target)
        time.sleep(args.settle)
        idle = snapshot(server.proc.pid)
        body = write_body(tmp)
        http = run_wrk(f"{server.url}/predict", args.connections, args.seconds, BODY=str(body),
                       CONTENT_TYPE="application/json", MAX_REQUESTS="0", INFERENCE_HEADER_LENGTH="")
        grpc = grpc_load(server.grpc_target, args.seconds / 2) if grpc_on else []
        time.sleep(args.settle)
        loaded = snapshot(server.proc.pid)
    finally:
        code = server.stop(60)
    if code != 0:
        raise RuntimeError(f"{name}: the server exited with {code}:\n{server.read_log()[-3000:]}")
    return {"name": name, "env": env, "idle": idle, "after_load": loaded,
            "load": {"http_requests": http["requests"], "http_non_2xx": http["non_2xx"], "grpc": grpc}}


def engine_cmd(*args: str, timeout: float = 600) -> str:
    engine = os.environ.get("CONTAINER_ENGINE", "docker")
    out = subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} {' '.join(args[:3])} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def engine_available() -> bool:
    engine = os.environ.get("CONTAINER_ENGINE", "docker")
    return shutil.which(engine) is not None and subprocess.run(
        [engine, "info"], capture_output=True, timeout=60).returncode == 0


def image(tag: str | None, base: str) -> dict:
    """The image's size over ``base``, by layer and by installed distribution (building the checkout
    when ``tag`` is None)."""
    engine = os.environ.get("CONTAINER_ENGINE", "docker")
    if tag is None:
        tag = TAG
        flags = shlex.split(os.environ.get("CONTAINER_BUILD_FLAGS", ""))
        if engine == "podman":
            flags.append("--format=docker")
        engine_cmd("build", *flags, "-t", tag, str(ROOT), timeout=1800)

    def size(ref: str) -> int:
        return int(json.loads(engine_cmd("image", "inspect", ref))[0]["Size"])

    layers = [{"size_mb": round(int(layer.get("size", layer.get("Size", 0))) / 1e6, 1),
               "created_by": (layer.get("createdBy") or layer.get("CreatedBy") or "")[-160:]}
              for layer in json.loads(engine_cmd("history", "--no-trunc", "--format", "json", tag))]
    packages = json.loads(engine_cmd("run", "--rm", "--entrypoint", "python", tag, "-c", PACKAGES_SCRIPT))
    image_bytes, base_bytes = size(tag), size(base)
    return {"tag": tag, "base": base, "image_mb": round(image_bytes / 1e6, 1), "base_mb": round(base_bytes / 1e6, 1),
            "over_base_mb": round((image_bytes - base_bytes) / 1e6, 1),
            "layers": [layer for layer in layers if layer["size_mb"] > 0],
            "packages_mb": {k: round(v / 1e6, 2) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])}}


def table(doc: dict) -> str:
    lines = []
    for run in doc["replicas"]:
        lines.append(f"{run['name']} ({' '.join(f'{k}={v}' for k, v in run['env'].items()) or 'defaults'}):")
        lines.append("| process | PSS idle MB | PSS after load MB | USS idle MB |")
        lines.append("| --- | --- | --- | --- |")
        after = {p["pid"]: p for p in run["after_load"]["processes"]}
        for p in run["idle"]["processes"]:
            loaded = after.get(p["pid"], {}).get("pss_mb", float("nan"))
            lines.append(f"| {p['role']} ({p['pid']}) | {p['pss_mb']:.1f} | {loaded:.1f} | {p['uss_mb']:.1f} |")
        lines.append(f"| total ({run['idle']['count']} processes) | {run['idle']['total_pss_mb']:.1f} | "
                     f"{run['after_load']['total_pss_mb']:.1f} | {run['idle']['total_uss_mb']:.1f} |")
        lines.append("")
    if doc.get("image"):
        img = doc["image"]
        lines.append(f"image {img['tag']}: {img['image_mb']} MB, {img['over_base_mb']} MB over {img['base']} "
                     f"({img['base_mb']} MB)")
        for layer in img["layers"]:
            lines.append(f"  layer {layer['size_mb']:7.1f} MB  {layer['created_by'][-100:]}")
        for name, mb in list(img["packages_mb"].items())[:15]:
            lines.append(f"  package {mb:7.2f} MB  {name}")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The Markdown of this benchmark's results file."""
    return table(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="WORKERS")
    parser.add_argument("--seconds", type=float, default=10.0, help="of wrk load (and half that of each gRPC shape)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each reading")
    parser.add_argument("--image", help="measure this image instead of building the checkout")
    parser.add_argument("--base", default=os.environ.get("CONTAINER_BASE_IMAGE", "python:3.12-slim"),
                        help="the base image the size is counted over")
    parser.add_argument("--no-image", action="store_true", help="skip the image")
    parser.add_argument("--out", type=Path, default=results.default_path("footprint"), help="the results file")
    args = parser.parse_args(argv)
    started, info = time.monotonic(), machine()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        replicas = [replica("default", Path(tmp), args), replica("grpc-off", Path(tmp), args, GRPC_PORT="0")]
    body = {"replicas": replicas, "image": None}
    if not args.no_image:
        if engine_available():
            body["image"] = image(args.image, args.base)
        else:
            print("no container engine: the image is not measured", file=sys.stderr)
    doc = results.save(args.out, "bench.footprint", argv, args, body, started, info)
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
