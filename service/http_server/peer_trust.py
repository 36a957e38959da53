"""gunicorn's check of a request's peer against ``FORWARDED_ALLOW_IPS``, remembered per address.

Before it honours ``X-Forwarded-*`` headers, gunicorn asks of every request whether the peer may set
them: it parses the peer's address with ``ipaddress`` and tests it against each allowed network,
reading two settings through its ``Config.__getattr__`` on the way. That was 2.4 % of a worker's
samples answering one-sample requests and 6 % refusing them (``py-spy``, 2026-12-06): the same
answer every time for the same peer and the same settings. Here the answer is kept per worker and
per address, in a bounded cache (``MAX_PEERS`` addresses, least recently used out), so a client
population of any size costs bounded memory; the rule itself stays gunicorn's own function.
"""

from __future__ import annotations

import functools
from typing import Any

from gunicorn.http import message

MAX_PEERS = 1024


@functools.lru_cache(maxsize=MAX_PEERS)
def trusted(cfg: Any, host: str) -> bool:
    """Whether ``host`` may set forwarding headers under ``cfg`` (gunicorn's rule, asked once)."""
    return message._ip_in_allow_list(host, cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())


def _peer_is_trusted_proxy(self: Any) -> bool:
    peer = self.peer_addr
    return not isinstance(peer, tuple) or trusted(self.cfg, peer[0])  # a Unix socket's peer is trusted, as gunicorn's


def install() -> bool:
    """Route gunicorn's check through the cache, where this gunicorn has the check we know (True)."""
    policy = getattr(message, "HeaderPolicy", None)
    if policy is None or not hasattr(policy, "_peer_is_trusted_proxy") or not hasattr(message, "_ip_in_allow_list"):
        return False  # another gunicorn: its own check runs, uncached
    policy._peer_is_trusted_proxy = _peer_is_trusted_proxy
    return True
