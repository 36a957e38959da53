"""``python -m service``: the production server (gunicorn with the project's config).

Prepares a fresh Prometheus multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, default a new
temporary directory) and then replaces this process with gunicorn, so signals (SIGTERM for a
graceful stop) reach gunicorn's master directly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from service.config import Settings


def main() -> None:
    Settings.from_env()  # fail fast, with pydantic's message, on a bad setting
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        path = Path(metrics_dir)
        if path.exists():  # stale files from an earlier run would be summed in
            for child in path.iterdir():
                if child.suffix == ".db":
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nn-metrics-")
    config = Path(__file__).with_name("gunicorn_conf.py")
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(config), *sys.argv[1:],
                              "service.wsgi:app"])


if __name__ == "__main__":
    main()
