"""`semedge run` (not built yet: issue #6)."""

from __future__ import annotations

from semedge.cli import not_built

command = not_built("run", issue=6)
