"""The remembered FORWARDED_ALLOW_IPS check (service/http_server/peer_trust.py) decides as gunicorn does."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http import message
from gunicorn.http.parser import RequestParser

from service.http_server import peer_trust

HEAD = b"GET / HTTP/1.1\r\nHost: example\r\nX-Forwarded-Proto: https\r\n\r\n"


def scheme(cfg: Config, peer: tuple[str, int] | str) -> str:
    """The scheme gunicorn gives a request that claims https through X-Forwarded-Proto."""
    return next(RequestParser(cfg, iter([HEAD]), peer)).scheme


def config(allowed: str) -> Config:
    cfg = Config()
    cfg.set("forwarded_allow_ips", allowed)
    return cfg


CASES = [("10.1.0.0/16", ("10.1.2.3", 5000)), ("10.1.0.0/16", ("10.2.0.1", 5000)),
         ("127.0.0.1,::1", ("127.0.0.1", 1)), ("127.0.0.1,::1", ("::1", 1)), ("127.0.0.1", ("192.168.0.9", 1)),
         ("*", ("203.0.113.7", 1)), ("10.1.0.0/16", ("not an address", 1)), ("10.1.0.0/16", "/run/app.sock")]


@pytest.fixture
def gunicorns_own():
    """The verdicts of gunicorn's own check, then the remembered one installed for the test."""
    original = message.HeaderPolicy._peer_is_trusted_proxy
    verdicts = [scheme(config(allowed), peer) for allowed, peer in CASES]
    assert verdicts.count("https") == 5 and verdicts.count("http") == 3  # the cases mean something
    assert peer_trust.install()
    peer_trust.trusted.cache_clear()
    yield verdicts
    message.HeaderPolicy._peer_is_trusted_proxy = original


def test_the_remembered_check_decides_as_gunicorns_own(gunicorns_own):
    assert [scheme(config(allowed), peer) for allowed, peer in CASES] == gunicorns_own
    # asked again, from the cache: the same verdicts
    cfgs = [config(allowed) for allowed, _ in CASES]
    first = [scheme(cfg, peer) for cfg, (_, peer) in zip(cfgs, CASES, strict=True)]
    hits = peer_trust.trusted.cache_info().hits
    assert [scheme(cfg, peer) for cfg, (_, peer) in zip(cfgs, CASES, strict=True)] == first == gunicorns_own
    assert peer_trust.trusted.cache_info().hits - hits == 7  # every network peer the second time (not the socket)


def test_any_number_of_peers_costs_bounded_memory(gunicorns_own):
    cfg = config("10.0.0.0/8")
    for i in range(3 * peer_trust.MAX_PEERS):
        assert scheme(cfg, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)) == "https"
    assert scheme(cfg, ("11.0.0.1", 1)) == "http"
    assert peer_trust.trusted.cache_info().currsize == peer_trust.MAX_PEERS
