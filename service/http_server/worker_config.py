"""gunicorn's settings as a worker reads them: each looked up once, then a plain attribute.

gunicorn reads its settings through ``Config.__getattr__`` (a dictionary lookup and the setting's
``get``), and some through properties that do more (``is_ssl`` reads two settings; ``worker_class``
imports the class), a dozen times per request: parsing the head, the keep-alive wait, the hooks.
That was 2.1 % of a worker's samples answering one-sample requests (``py-spy``, 2026-12-06). A
worker's settings never change while it runs (a reload starts new workers), so the first answer
for each name is kept.
"""

from __future__ import annotations

from typing import Any


class WorkerConfig:
    """``cfg`` (a gunicorn ``Config``) with every attribute read once; read-only, as a worker uses it."""

    def __init__(self, cfg: Any) -> None:
        object.__setattr__(self, "_config", cfg)

    def __getattr__(self, name: str) -> Any:  # only for names not read before
        value = getattr(self._config, name)
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a worker's settings are read-only (tried to set {name!r})")
