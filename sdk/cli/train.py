"""`semedge train` (not built yet: issue #3)."""

from __future__ import annotations

from semedge.cli import not_built

command = not_built("train", issue=3)
