"""The waits for a request head (service/http_server/idle_connections.py), on gevent's loop in process:
ended on stop and past the bound, and never the request that follows a wait."""

from __future__ import annotations

import time

import gevent

from service.http_server.idle_connections import IdleConnections


def test_close_all_ends_every_wait_at_once():
    idle = IdleConnections(10)
    ended = []

    def connection() -> None:
        started = time.monotonic()
        with idle.waiting(5):
            gevent.sleep(5)  # a kept-alive client that sends nothing
        ended.append(time.monotonic() - started)

    greenlets = [gevent.spawn(connection) for _ in range(3)]
    gevent.sleep(0.01)
    assert len(idle.waits) == 3
    idle.close_all()
    gevent.joinall(greenlets, timeout=2)
    assert len(ended) == 3 and max(ended) < 1 and idle.waits == {}


def test_past_the_bound_the_longest_waiting_goes():
    idle = IdleConnections(4)  # room for 3 waits (90 %)
    closed = []

    def connection(i: int) -> None:
        with idle.waiting(5):
            gevent.sleep(5)
        closed.append(i)

    greenlets = [gevent.spawn(connection, i) for i in range(3)]
    gevent.sleep(0.01)
    newest = gevent.spawn(connection, 3)
    gevent.sleep(0.01)
    assert closed == [0] and len(idle.waits) == 3  # the oldest made room
    idle.close_all()
    gevent.joinall([*greenlets, newest], timeout=2)


def test_a_request_arriving_as_its_wait_is_ended_is_not_interrupted():
    """The wait's end is thrown at the loop's next turn; if the request came first (in the same turn),
    its handling must not receive that timeout mid-way (gevent.kill would still throw it)."""
    idle = IdleConnections(10)
    log = []

    def connection() -> None:
        with idle.waiting(5):
            idle.waits[gevent.getcurrent()].expire()  # a stop (or the bound) ends this wait ...
        log.append("request read")  # ... but its request arrived in the same turn
        gevent.sleep(0.01)  # the request's own work, across turns of the loop
        log.append("answered")

    gevent.spawn(connection).join(timeout=2)
    assert log == ["request read", "answered"] and idle.waits == {}


def test_a_connection_stalled_mid_body_counts_and_the_longest_waiting_goes():
    """A body that stops arriving is a wait too: past the bound the longest-waiting connection is let go
    (Evicted, which the body's reader answers 408), whether it waits for a head or for a body."""
    from service.http_server.idle_connections import Evicted

    idle = IdleConnections(4)  # room for 3 waits
    outcome = {}

    def uploading(i: int) -> None:
        try:
            with idle.stalling():
                gevent.sleep(5)  # the body's next bytes never come
            outcome[i] = "read"
        except Evicted:
            outcome[i] = "evicted"

    def waiting(i: int) -> None:
        with idle.waiting(5):
            gevent.sleep(5)
        outcome[i] = "closed"

    greenlets = [gevent.spawn(uploading, 0), gevent.spawn(waiting, 1), gevent.spawn(uploading, 2)]
    gevent.sleep(0.01)
    greenlets.append(gevent.spawn(waiting, 3))
    gevent.sleep(0.01)
    assert outcome == {0: "evicted"} and len(idle.waits) == 3
    idle.close_all()  # a stop ends the waits for a head; a body being received goes on
    gevent.sleep(0.01)
    assert outcome == {0: "evicted", 1: "closed", 3: "closed"} and len(idle.waits) == 1
    gevent.killall(greenlets, timeout=2)


def test_an_upload_under_way_is_not_the_longest_waiting():
    """Each arrival of bytes makes a body's wait the newest: at the bound the connection let go is the
    one longest without progress, not the oldest upload (which a 408 would cut off mid-way)."""
    idle = IdleConnections(4)  # room for 3 waits
    outcome = {}

    def uploading() -> None:
        with idle.stalling() as wait:
            for _ in range(10):
                gevent.sleep(0.01)
                wait.progress()  # bytes came
        outcome["upload"] = "read"

    def waiting(i: int) -> None:
        with idle.waiting(5):
            gevent.sleep(5)
        outcome[i] = "closed"

    greenlets = [gevent.spawn(uploading)]
    gevent.sleep(0.001)
    greenlets += [gevent.spawn(waiting, 1), gevent.spawn(waiting, 2)]
    gevent.sleep(0.03)  # the upload has made progress since the two began to wait
    greenlets.append(gevent.spawn(waiting, 3))
    gevent.sleep(0.15)
    assert outcome == {1: "closed", "upload": "read"}
    idle.close_all()
    gevent.joinall(greenlets, timeout=2)
