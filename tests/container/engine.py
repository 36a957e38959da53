"""Build the image and run the container for the tests, with docker or podman.

Environment:

* ``CONTAINER_ENGINE``: ``docker`` (default) or ``podman``, or any docker-compatible CLI;
* ``CONTAINER_BUILD_FLAGS``: extra ``build`` flags (``../shared/ci/container-engine.sh`` prints them);
* ``CONTAINER_IMAGE``: use this tag instead of building;
* ``REQUIRE_CONTAINER=1``: fail, instead of skip, when no engine can run containers (CI sets it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import SERVER_ENV, wait_ready

ROOT = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("CONTAINER_ENGINE", "docker")
TAG = "numpy-nets:test"
_image: dict[str, str] = {}


def engine(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{ENGINE} {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def unavailable() -> str | None:
    """Why containers cannot run here, or None."""
    if shutil.which(ENGINE) is None:
        return f"no container engine ({ENGINE!r} not on PATH)"
    info = subprocess.run([ENGINE, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:  # e.g. a docker client without a daemon
        return f"{ENGINE} cannot reach an engine: {info.stderr.strip()[:300]}"
    return None


def require_engine() -> None:
    reason = unavailable()
    if reason:
        if os.environ.get("REQUIRE_CONTAINER") == "1":
            pytest.fail(f"container tests were required (REQUIRE_CONTAINER=1) but cannot run: {reason}")
        pytest.skip(reason)


def build(tag: str, *extra: str) -> str:
    flags = shlex.split(os.environ.get("CONTAINER_BUILD_FLAGS", ""))
    if ENGINE == "podman":
        flags.append("--format=docker")  # OCI images drop HEALTHCHECK
    start = time.monotonic()
    # One build at a time on this machine: with two test processes (`make test` runs two), both may
    # want the image. The second waits, then builds from the first one's
    # cached layers in seconds, where two builds at once would each do the whole work on two cores.
    with open(Path(tempfile.gettempdir()) / "numpy-nets-image-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        engine("build", *flags, *extra, "-t", tag, str(ROOT), timeout=1800)
    print(f"\nbuilt {tag} with {ENGINE} in {time.monotonic() - start:.1f} s")
    return tag


def image() -> str:
    """The image under test: ``CONTAINER_IMAGE``, or built once per session from the checkout.
    Every container test gets its image here, so every one of them skips (or, with
    ``REQUIRE_CONTAINER=1``, fails) when no engine can run containers."""
    require_engine()
    if "tag" not in _image:
        _image["tag"] = os.environ.get("CONTAINER_IMAGE") or build(TAG)
    return _image["tag"]


@dataclass
class Container:
    name: str
    url: str
    grpc_target: str = ""  # host:port of the Open Inference Protocol over gRPC (the image's 8001)

    def logs(self) -> str:
        result = engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def inspect(self, template: str) -> str:
        return engine("inspect", "--format", template, self.name).stdout.strip()

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return engine("exec", self.name, *command, check=False)

    def remove(self) -> None:
        engine("rm", "-f", self.name, check=False)


def run(tag: str, mounts: tuple[str, ...] = (), **env: str) -> Container:
    """Start the container as an operator should: read-only root, tmpfs /tmp, no capabilities.
    ``mounts`` are ``-v`` arguments (``host:container[:ro]``)."""
    name = f"nn-test-{uuid.uuid4().hex[:8]}"
    environ = [arg for key, value in {**SERVER_ENV, **env}.items() for arg in ("-e", f"{key}={value}")]
    volumes = [arg for mount in mounts for arg in ("-v", mount)]
    engine("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8001", *volumes,
           *environ, tag)
    address = {}
    for inside in ("8000", "8001"):
        host, port = engine("port", name, f"{inside}/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)
        address[inside] = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    container = Container(name, f"http://{address['8000']}", address["8001"])
    try:
        wait_ready(container.url, timeout=90)
    except RuntimeError:
        print(container.logs())
        container.remove()
        raise
    return container


def running_container(request):
    """Session fixture body: the container for the integration suite; logs printed if a test failed."""
    require_engine()
    # capture on, into a mounted volume (the root file system is read-only): the image's user writes it
    capture = Path(tempfile.mkdtemp(prefix="container-capture-"))
    capture.chmod(0o777)
    container = run(image(), mounts=(f"{capture}:/capture",), CAPTURE_DIR="/capture")
    failed_before = request.session.testsfailed
    try:
        yield container
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n----- logs of {container.name} -----\n{container.logs()[-20000:]}")
        container.remove()


def image_size_mb(tag: str) -> float:
    data = json.loads(engine("image", "inspect", tag).stdout)
    return data[0]["Size"] / 1e6
