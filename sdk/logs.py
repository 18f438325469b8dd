"""Logging helpers (torch-free). The library only logs; the CLI configures handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["log_timed"]


@contextmanager
def log_timed(log: logging.Logger, what: str, level: int = logging.INFO) -> Iterator[None]:
    """Log START/FINISH of a long step with its elapsed time."""
    log.log(level, "%s ...", what)
    t0 = time.perf_counter()
    yield
    log.log(level, "%s done in %.1f s", what, time.perf_counter() - t0)
