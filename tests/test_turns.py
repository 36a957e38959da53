"""The worker's turns (service/http_server/turns.py): one greenlet resumed per turn of the loop, the
loop's sockets polled between two, answers ahead of the rest."""

from __future__ import annotations

import gevent
import gevent.socket

from service.http_server.turns import Turns
from tests.test_batcher import fresh_hub


@fresh_hub
def test_what_becomes_readable_during_a_turn_is_read_before_the_next_turn():
    """Four greenlets wait for their turns; during the first, a socket another greenlet waits on becomes
    readable: it is read before the second turn (gevent.idle would resume all four first)."""
    turns, order = Turns(), []
    a, b = gevent.socket.socketpair()

    def reader() -> None:
        a.recv(1)
        order.append("read")

    def turn(i: int) -> None:
        turns.take()
        order.append(i)
        if i == 0:
            b.sendall(b"x")

    try:
        waiting = gevent.spawn(reader)
        gevent.sleep(0)  # the reader now waits on its socket
        greenlets = [gevent.spawn(turn, i) for i in range(4)]
        assert len(gevent.joinall([waiting, *greenlets], timeout=10, raise_error=True)) == 5
    finally:
        a.close()
        b.close()
    assert order == [0, "read", 1, 2, 3]
    assert not turns.active()  # nobody waits: the loop may block in its poll again


@fresh_hub
def test_answers_go_ahead_of_the_rest_and_each_line_keeps_its_order():
    turns, order = Turns(), []

    def turn(name: str, ahead: bool) -> None:
        turns.take(ahead)
        order.append(name)

    greenlets = [gevent.spawn(turn, name, name.startswith("answer"))
                 for name in ("parse 1", "parse 2", "answer 1", "parse 3", "answer 2")]
    assert len(gevent.joinall(greenlets, timeout=10, raise_error=True)) == 5
    assert order == ["answer 1", "answer 2", "parse 1", "parse 2", "parse 3"]


@fresh_hub
def test_a_greenlet_killed_while_it_waits_leaves_the_line():
    """A stop kills a greenlet waiting for its turn: it leaves the line, the others still get theirs,
    and once none waits the watchers stop (else the loop would never block in its poll)."""
    turns, order = Turns(), []

    def turn(i: int) -> None:
        turns.take()
        order.append(i)

    greenlets = [gevent.spawn(turn, i) for i in range(3)]
    gevent.sleep(0)  # all three wait in line
    assert len(turns) == 3
    greenlets[1].kill()
    assert len(turns) == 2
    assert len(gevent.joinall(greenlets, timeout=10)) == 3
    assert order == [0, 2] and len(turns) == 0 and not turns.active()
    last = gevent.spawn(turn, 3)  # and the next one is resumed as before
    last.join(timeout=10)
    assert order == [0, 2, 3]


@fresh_hub
def test_the_line_moves_while_something_is_ready_in_every_turn():
    """Two greenlets play ping-pong over a socket pair, so every turn of the loop finds a socket ready;
    three greenlets waiting for their turns still get them, one a turn, long before the game ends
    (an idle watcher would resume them only once nothing is ready: after the game)."""
    turns, done = Turns(), []
    a, b = gevent.socket.socketpair()
    exchanges = [0]

    def player(mine, serve: bool) -> None:  # what one side sends, the other side receives
        if serve:
            mine.sendall(b"x")
        while exchanges[0] < 2000:
            mine.recv(1)
            exchanges[0] += 1
            mine.sendall(b"x")

    def turn() -> None:
        turns.take()
        done.append(exchanges[0])

    try:
        players = [gevent.spawn(player, a, True), gevent.spawn(player, b, False)]
        gevent.sleep(0)  # the game is on
        waiting = [gevent.spawn(turn) for _ in range(3)]
        assert len(gevent.joinall(waiting, timeout=10)) == 3
        gevent.joinall(players, timeout=10)
    finally:
        a.close()
        b.close()
    assert len(done) == 3 and max(done) < 100, done
