"""Whether the gRPC front-end serves: what HTTP's ``/readyz`` asks beside the models.

A pod's readiness (Kubernetes' probe, the image's HEALTHCHECK) is one HTTP call, but the pod offers
two ports; a pod whose gRPC processes all died (a port taken, a crash loop the supervisor backs off
from) must not stay ready while gRPC clients are sent to it. So:

* ``python -m service`` with gRPC on makes ``STATE_DIR/grpc-serving/`` (emptied) before it starts
  anything (:func:`expect`), and with it off removes it (:func:`not_expected`: a ``STATE_DIR`` kept
  from a run with gRPC on); with no such directory (``GRPC_PORT=0``, gunicorn run by hand, tests
  in-process) there is no gRPC to ask about;
* each gRPC process puts a file named by its pid there once it serves (models loaded, port bound;
  :func:`mark`) and takes it away when it starts to stop (:func:`unmark`);
* :func:`serving` counts the files whose process is alive (:func:`readiness` words the count for
  ``/readyz``). One killed outright leaves its file, which is not counted (and is removed): a file per
  gRPC process at most, so nothing here grows.

No Flask or grpcio here: the supervisor, the gRPC process and the health view all ask this module.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIRECTORY = "grpc-serving"


def directory(state_dir: Path) -> Path:
    return state_dir / DIRECTORY


def expect(state_dir: Path) -> None:
    """Before any gRPC process starts: gRPC is on, and nothing serves it yet."""
    where = directory(state_dir)
    where.mkdir(parents=True, exist_ok=True)
    forget_marks(where)  # a STATE_DIR kept from an earlier run


def not_expected(state_dir: Path) -> None:
    """gRPC is off in this run (``GRPC_PORT=0``): the marks of an earlier run with it on go."""
    where = directory(state_dir)
    if where.is_dir():
        forget_marks(where)
        with contextlib.suppress(OSError):
            where.rmdir()


def forget_marks(where: Path) -> None:
    for stale in where.iterdir():
        with contextlib.suppress(OSError):
            stale.unlink()


def mark(state_dir: Path | None, pid: int | None = None) -> None:
    """This process serves gRPC now (a no-op when gRPC is not expected: no directory)."""
    if state_dir is not None and directory(state_dir).is_dir():
        (directory(state_dir) / str(pid or os.getpid())).touch()


def unmark(state_dir: Path | None, pid: int | None = None) -> None:
    if state_dir is not None:
        with contextlib.suppress(OSError):
            (directory(state_dir) / str(pid or os.getpid())).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's: not ours to judge dead
        return True
    return True


def serving(state_dir: Path | None) -> int | None:
    """How many gRPC processes serve now, or None when gRPC is not expected here."""
    if state_dir is None or not directory(state_dir).is_dir():
        return None
    count = 0
    for entry in directory(state_dir).iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            count += 1
        else:  # killed without unmarking, or not ours
            with contextlib.suppress(OSError):
                entry.unlink()
    return count


def readiness(state_dir: Path | None, port: int) -> tuple[bool, str | None]:
    """What ``/readyz`` says of gRPC: (serves, the phrase), or (True, None) when gRPC is not expected."""
    count = serving(state_dir)
    if count is None:
        return True, None
    if count == 0:
        return False, f"no gRPC process is serving on GRPC_PORT={port}"
    return True, f"serving ({count} process{'es' if count != 1 else ''})"
