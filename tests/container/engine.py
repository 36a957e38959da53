"""Placeholder until the container fixture lands; replaced in the Docker issue."""

import pytest


def running_container(request):
    pytest.skip("container tests are not wired yet")
    yield
