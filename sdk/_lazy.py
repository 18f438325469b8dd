"""PEP 562 lazy public names for semedge's packages (torch-free: every `__init__` uses it).

A package's `__init__` maps public names to the modules defining them; nothing heavy is imported
until a name is first used, so `import semedge.runtime` stays cheap and torch-free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str], extra: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` for `package`'s lazy `names`."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*extra, *names])

    return __getattr__, __dir__
