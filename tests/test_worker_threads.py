"""The HTTP worker's native threads, as the worker makes them: on its event loop's thread, after fork.

Each case runs in a fresh interpreter patched by gevent, as a worker is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def run_patched(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_background_work_leaves_the_loop_even_after_a_first_call_from_another_thread():
    # A pool belongs to the hub of the thread that makes it and runs inline anything asked from
    # another hub: made lazily on a native thread's first call, every later call from the loop would
    # run the work (a gradcheck, an fsync) on the event loop itself.
    out = run_patched("""
    from gevent import monkey; monkey.patch_all()
    import _thread
    from gevent.threadpool import ThreadPool
    from service.http_server.background import BackgroundThread
    background = BackgroundThread()
    ThreadPool(1).spawn(background.run, lambda: None).get()
    print(background.run(_thread.get_ident) != _thread.get_ident())
    """)
    assert out == "True"


def test_the_capture_writer_writes_until_stopped(tmp_path):
    out = run_patched("""
    from gevent import monkey; monkey.patch_all()
    import glob, os, sys, time
    import gevent, numpy as np
    from service.capture.capture import Capture
    from service.http_server.capture_writer import INTERVAL, CaptureWriter
    capture, writer = Capture(sys.argv[1], 1.0, 1 << 30), CaptureWriter()
    capture.drive_with(writer)
    x, p = np.ones((1, 784), np.float32), np.ones((1, 10), np.float32)

    def lines():
        return sum(open(f, "rb").read().count(b"\\n") for f in glob.glob(sys.argv[1] + "/capture-*.jsonl"))

    def written(n):  # each record is a request and a response event
        deadline = time.monotonic() + 5
        while lines() < 2 * n and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return lines() // 2

    capture.offer("r1", "mnist", 1, ["1"], x, p)
    first = written(1)
    gevent.sleep(3 * INTERVAL)
    capture.offer("r2", "mnist", 1, ["1"], x, p)
    second = written(2)
    writer.stop()
    writer.greenlet.join(timeout=5)  # a flush under way (an fsync on a slow disk) ends first
    capture.offer("r3", "mnist", 1, ["1"], x, p)
    gevent.sleep(3 * INTERVAL)
    print(first, second, writer.greenlet.dead, lines() // 2, capture.inferences.pending())
    capture.close()  # the worker's last step: what is queued is written
    print(lines() // 2)
    """, str(tmp_path))
    running, closed = out.splitlines()
    assert running == "1 2 True 2 1" and closed == "3"
