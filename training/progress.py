"""Progress bars through tqdm when it is installed (the ``train`` extra), silently none otherwise."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (``update``/``close``), or a no-op when disabled or tqdm is missing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        log.info("tqdm is not installed (pip install '.[train]'): no progress bar")
        return _NoBar()
    return tqdm(**kwargs)
