"""How a trained module says which submodules are auxiliary (training-only) so export drops them.

A module lists them in a class attribute `AUXILIARY_MODULES` (names of submodules) or overrides
`auxiliary_modules()`; `primary_state_dict` is what an exporter saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["AuxiliaryHeads", "auxiliary_module_names", "primary_state_dict"]


class AuxiliaryHeads:
    """Mixin for torch modules with training-only heads (e.g. a reconstruction head).

    Subclasses set `AUXILIARY_MODULES = ("recon_head",)`; everything else is the primary path.
    """

    AUXILIARY_MODULES: tuple[str, ...] = ()

    def auxiliary_modules(self) -> tuple[str, ...]:
        """Names of submodules used only by auxiliary losses (dropped at export)."""
        return tuple(self.AUXILIARY_MODULES)

    def export_modules(self) -> tuple[str, ...]:
        """Names of the direct submodules on the primary path (what an export keeps)."""
        aux = set(self.auxiliary_modules())
        return tuple(n for n, _ in self.named_children() if n not in aux)  # type: ignore[attr-defined]


def auxiliary_module_names(module: torch.nn.Module) -> tuple[str, ...]:
    """The auxiliary submodule names `module` declares (empty when it declares none)."""
    fn = getattr(module, "auxiliary_modules", None)
    if callable(fn):
        return tuple(fn())
    return tuple(getattr(module, "AUXILIARY_MODULES", ()))


def primary_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` without the auxiliary submodules' tensors (what export saves)."""
    aux = auxiliary_module_names(module)
    return {
        k: v
        for k, v in module.state_dict().items()
        if not any(k == a or k.startswith(a + ".") for a in aux)
    }
