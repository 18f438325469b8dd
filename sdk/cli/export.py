"""`semedge export` (not built yet: issue #4)."""

from __future__ import annotations

from semedge.cli import not_built

command = not_built("export", issue=4)
