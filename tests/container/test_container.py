"""The image itself: non-root, read-only, healthy by its own HEALTHCHECK, graceful and quick to stop.

The whole integration suite also runs against the container (``base_url[container]``).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import requests

from model.io import load_model
from tests.conftest import MAX_SAMPLES, long_gradcheck
from tests.container.engine import ENGINE, build, engine, image, image_size_mb, require_engine, run


def test_image_runs_as_non_root(container):
    assert container.exec("id", "-u").stdout.strip() == "10001"
    assert engine("image", "inspect", "--format", "{{.Config.User}}", image()).stdout.strip() == "10001:10001"


def test_root_filesystem_is_read_only(container):
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert container.exec("touch", "/srv/model_repository/x").returncode != 0
    assert container.exec("python", "-c", "open('/tmp/ok', 'w').write('tmpfs')").returncode == 0


def test_healthcheck_reports_healthy(container):
    if ENGINE == "podman":  # podman runs HEALTHCHECK on demand (its timers need systemd)
        assert engine("healthcheck", "run", container.name, check=False).returncode == 0
        return
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline:
        status = container.inspect("{{.State.Health.Status}}")
        if status == "healthy":
            return
        time.sleep(1)
    raise AssertionError(f"health status {status!r}")


def test_image_size_is_reported():
    size = image_size_mb(image())
    print(f"\nimage {image()}: {size:.0f} MB")
    assert size < 400, "the image grew past 400 MB: did data or a build toolchain get in?"


def test_stop_is_graceful_and_well_before_the_kill_timeout(mnist_data):
    """A gradcheck in flight at ``stop`` is answered, and the container exits 0 well before its kill
    timeout. The gradcheck's size comes from a rate measured here (about 8 s of work: at 4 s, a load
    spike during the probe once made it end before the stop), so a slow or busy machine still fits;
    the kill timeout (120 s) is the engine's, not a clock on our work."""
    container = run(image(), GRADCHECK_MAX_COST="1e13", GRADCHECK_MAX_SAMPLES=str(MAX_SAMPLES), GRACEFUL_TIMEOUT="100")
    try:
        slow, _ = long_gradcheck(container.url, mnist_data, target=8.0)
        results: list = []
        thread = threading.Thread(target=lambda: results.append(
            (requests.post(f"{container.url}/gradcheck", json=slow, timeout=240), time.monotonic())))
        thread.start()
        time.sleep(1.0)
        start = time.monotonic()
        engine("stop", "-t", "120", container.name, timeout=180)
        seconds = time.monotonic() - start
        thread.join(240)
        print(f"\n{ENGINE} stop with a request in flight: {seconds:.2f} s (kill timeout 120 s)")
        assert results and results[0][0].status_code == 200 and results[0][0].json()["passed"]
        assert results[0][1] > start, "the gradcheck ended before the stop: nothing was in flight"
        assert seconds < 60
        assert container.inspect("{{.State.ExitCode}}") == "0"
        assert "Shutting down: Master" in container.logs()
    finally:
        container.remove()


def test_train_target_retrains_into_a_mounted_repository(tmp_path):
    """``--target train``: the training CLI in a read-only container, writing to a mounted directory."""
    require_engine()
    tag = build("numpy-nets-train:test", "--target", "train")
    out = tmp_path / "repo"
    out.mkdir()
    out.chmod(0o777)  # the container user is uid 10001
    run_args = ["run", "--rm", "--read-only", "--tmpfs", "/tmp", "-v", f"{out}:/out", tag]
    engine(*run_args, "digits", "--out", "/out", "--quiet", timeout=600)
    files = {p.name for p in (out / "digits" / "1").iterdir()}
    assert files == {"model.npz", "metrics.json", "curves.png"}
    assert load_model(out / "digits" / "1" / "model.npz").metadata["targets"]["met"]
    missing = engine(*run_args, "mnist", "--data-dir", "/nowhere", "--no-download", "--out", "/out", check=False)
    assert missing.returncode == 2 and "not found in /nowhere" in missing.stderr


def test_a_new_version_in_a_mounted_repository_serves_without_a_restart(tmp_path, model_repository):
    """The operator's path: the repository mounted read-only, a retrained version copied in."""
    require_engine()
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "xor", repo / "xor")
    for path in [tmp_path, *repo.rglob("*")]:  # readable by the image's uid 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    box = run(image(), mounts=(f"{repo}:/srv/model_repository:ro",), MODEL_POLL_SECONDS="1",
              MODEL_SETTLE_SECONDS="0.5")
    try:
        def version() -> int:
            return requests.post(f"{box.url}/predict", json={"model": "xor", "inputs": [[0, 1]]}, timeout=10).json()[
                "version"]

        assert version() == 1
        (repo / "xor" / "2").mkdir(mode=0o755)
        shutil.copy(repo / "xor" / "1" / "model.npz", repo / "xor" / "2" / "model.npz")
        (repo / "xor" / "2" / "model.npz").chmod(0o644)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and {version() for _ in range(20)} != {2}:
            time.sleep(0.5)
        assert {version() for _ in range(20)} == {2}, box.logs()[-3000:]
    finally:
        box.remove()


def test_no_shell_is_needed_at_run_time(container):
    """The server, its health check and its stop need no shell: every command is in exec form."""
    def field(template: str):
        return json.loads(engine("image", "inspect", "--format", "{{json " + template + "}}", image()).stdout)

    assert field(".Config.Cmd") == ["python", "-m", "service"] and not field(".Config.Entrypoint")
    healthcheck = field(".Config.Healthcheck")["Test"]
    assert healthcheck[0] == "CMD" and healthcheck[1] == "python"  # not CMD-SHELL
    assert container.exec("python", "-c", "import os; print(os.getpid())").returncode == 0
