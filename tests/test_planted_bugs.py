"""The planted-bug table (tests/planted_bugs.py) stays true: each line it changes is in the code once,
and each test it names exists. Running the bugs themselves is ``python -m tests.planted_bugs``."""

from __future__ import annotations

import re

import pytest

from tests.planted_bugs import BUGS, ROOT


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_each_planted_bug_names_a_line_and_tests_that_exist(bug):
    assert (ROOT / bug.path).read_text().count(bug.old) == 1, f"{bug.path} no longer holds {bug.old!r} once"
    assert bug.old != bug.new
    for node in bug.tests:
        path, _, name = node.partition("::")
        assert (ROOT / path).is_file(), node
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), node


def test_bug_names_are_unique():
    assert len({bug.name for bug in BUGS}) == len(BUGS)
