"""The table by which workers spread client connections (service/http_server/connection_share.py): its
rules, in process. The real workers and connections: tests/integration/test_connection_share.py."""

from __future__ import annotations

import pytest

from service.http_server import connection_share


@pytest.fixture
def table(monkeypatch):
    """A fresh table (the master's, as on_starting makes it), undone after the test."""
    monkeypatch.setattr(connection_share, "_table", None)
    connection_share.create()
    return connection_share._table


def test_slots_are_claimed_free_and_vacated(table):
    assert (table == connection_share.VACANT).all()
    first = connection_share.claim(set())
    second = connection_share.claim({first})
    assert (first, second) == (0, 1) and table[0] == table[1] == 0
    connection_share.vacate(first)
    assert table[0] == connection_share.VACANT
    assert connection_share.claim({second}) == 0  # a restarted worker takes the free slot, at zero
    assert connection_share.claim(set(range(connection_share.SLOTS))) is None  # none free: takes no part


def test_a_worker_above_the_least_loaded_other_defers_once(table):
    a, b = connection_share.Share(connection_share.claim(set())), connection_share.Share(connection_share.claim({0}))
    for _ in range(connection_share.SLACK):
        a.opened()
    assert not a.defer()  # SLACK above b: still its turn
    a.opened()
    assert a.defer() and a.defer()  # more than SLACK above b: leave connections to b ...
    a.grant()
    assert not a.defer()  # ... until one was left waiting DEFER_SECONDS: then a takes it
    a.woken()
    assert a.defer()  # the next connection is judged afresh
    b.opened()
    assert not a.defer()  # b caught up to within SLACK
    assert table[a.slot] == a.mine == 2 and table[b.slot] == b.mine == 1
    for _ in range(2):
        a.closed()
    assert table[a.slot] == 0 and not a.defer()


def test_a_worker_alone_or_outside_the_table_never_defers(table):
    alone = connection_share.Share(connection_share.claim(set()))
    for _ in range(10):
        alone.opened()
    assert not alone.defer()  # no other live worker: the only one to take it
    outside = connection_share.Share(None)  # no slot (a table full, or none made)
    for _ in range(10):
        outside.opened()
    assert not outside.defer() and outside.mine == 10


def test_a_vacated_slot_counts_for_nothing(table):
    a, b = connection_share.Share(connection_share.claim(set())), connection_share.Share(connection_share.claim({0}))
    for _ in range(5):
        a.opened()
    assert a.defer()
    connection_share.vacate(b.slot)  # b exited: a is alone
    assert not a.defer()
