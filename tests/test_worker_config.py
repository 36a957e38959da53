"""A worker's gunicorn settings, each looked up once (service/http_server/worker_config.py)."""

from __future__ import annotations

import pytest
from gunicorn.config import Config

from service.http_server.worker_config import WorkerConfig


def gunicorn_config() -> Config:
    cfg = Config()
    cfg.set("keepalive", 7)
    cfg.set("limit_request_line", 1234)
    cfg.set("forwarded_allow_ips", "10.0.0.1")
    return cfg


def test_every_setting_reads_as_gunicorn_s_own():
    cfg = gunicorn_config()
    settled = WorkerConfig(cfg)
    for name in sorted(cfg.settings):
        assert getattr(settled, name) == getattr(cfg, name), name
    for name in ("is_ssl", "address", "uid", "gid", "proc_name", "env", "sendfile", "reuse_port"):
        assert getattr(settled, name) == getattr(cfg, name), name
    assert settled.keepalive == 7 and settled.limit_request_line == 1234
    assert settled.settings is cfg.settings
    assert settled.forwarded_allow_networks() == cfg.forwarded_allow_networks()
    with pytest.raises(AttributeError):
        settled.no_such_setting  # noqa: B018


def test_each_name_is_looked_up_once(monkeypatch):
    cfg = gunicorn_config()
    asked: list[str] = []
    lookup = Config.__getattr__

    def counting(self, name):
        asked.append(name)
        return lookup(self, name)

    monkeypatch.setattr(Config, "__getattr__", counting)
    settled = WorkerConfig(cfg)
    for _ in range(100):
        assert settled.keepalive == 7
        assert settled.limit_request_line == 1234
        assert not settled.is_ssl
    assert asked.count("keepalive") == 1 and asked.count("limit_request_line") == 1
    assert asked.count("certfile") == 1  # is_ssl, a property reading certfile and keyfile, ran once


def test_a_worker_cannot_change_its_settings():
    settled = WorkerConfig(gunicorn_config())
    with pytest.raises(AttributeError):
        settled.keepalive = 3
