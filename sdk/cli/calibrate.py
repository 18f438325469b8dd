"""`semedge calibrate` (not built yet: issue #5)."""

from __future__ import annotations

from semedge.cli import not_built

command = not_built("calibrate", issue=5)
