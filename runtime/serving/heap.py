"""Give freed heap pages back to the OS in a long-running server (glibc `malloc_trim`).

A server frees and re-allocates per-request buffers of many sizes (prompts, logits, row
states) for hours; glibc keeps freed pages in its arenas, so RSS creeps up though nothing
leaks. `trim()` asks glibc to return them; the servers call it when rows leave a decode batch,
at most once per `min_interval_s`. A no-op where the C library has no `malloc_trim` (musl,
macOS, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

__all__ = ["HeapTrimmer", "malloc_trim"]


def _libc_trim():
    """glibc's malloc_trim, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the OS now; True when glibc released some."""
    return bool(_TRIM(0)) if _TRIM is not None else False


class HeapTrimmer:
    """`malloc_trim` at most once per `min_interval_s` (thread-safe; calls in between return
    at once), so a busy server trims as rows leave without paying for it on every token."""

    def __init__(self, min_interval_s: float = 2.0) -> None:
        self.min_interval_s = min_interval_s
        self.calls = 0  # trims actually run
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.min_interval_s:
                return False
            self._last = now
            self.calls += 1
        return malloc_trim()


trim = HeapTrimmer()
