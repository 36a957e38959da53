"""gunicorn's check of a request's peer against ``FORWARDED_ALLOW_IPS``, remembered per address.

Before it honours ``X-Forwarded-*`` headers, gunicorn asks of every request whether the peer may set
them: it reads ``forwarded_allow_ips`` through ``Config.__getattr__``, parses the peer's address with
``ipaddress`` and tests it against each allowed network. That was 2.4 % of a worker's
samples answering one-sample requests and 6 % refusing them (``py-spy``, 2026-12-06): the same
answer every time for the same peer and the same settings. Here the answer is kept per worker and
per address, in a bounded cache (``MAX_PEERS`` addresses, least recently used out), so a client
population of any size costs bounded memory; the rule itself stays gunicorn's own function.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import gunicorn
from gunicorn.http import message

MAX_PEERS = 1024
KNOWN_MAJOR = 27  # the gunicorn whose rule this stands in for (tests/test_peer_trust.py holds it to it)
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=MAX_PEERS)
def trusted(cfg: Any, host: str) -> bool:
    """Whether ``host`` may set forwarding headers under ``cfg`` (gunicorn's rule, asked once)."""
    return message._ip_in_allow_list(host, cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())


def _peer_is_trusted_proxy(self: Any) -> bool:
    peer = self.peer_addr
    return not isinstance(peer, tuple) or trusted(self.cfg, peer[0])  # a Unix socket's peer is trusted, as gunicorn's


def install() -> bool:
    """Route gunicorn's check through the cache where this is the gunicorn whose rule we know (True);
    under another, its own check runs uncached, and a line says so (a security rule is not guessed)."""
    policy = getattr(message, "HeaderPolicy", None)
    if gunicorn.version_info[0] != KNOWN_MAJOR or policy is None or not hasattr(policy, "_peer_is_trusted_proxy") \
            or not hasattr(message, "_ip_in_allow_list"):
        log.info("gunicorn %s: its FORWARDED_ALLOW_IPS check runs per request, uncached", gunicorn.__version__)
        return False
    policy._peer_is_trusted_proxy = _peer_is_trusted_proxy
    return True
