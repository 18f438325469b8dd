"""`semedge compress` (not built yet: issue #2)."""

from __future__ import annotations

from semedge.cli import not_built

command = not_built("compress", issue=2)
