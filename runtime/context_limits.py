"""Whether a prompt fits an export's context, and what to do when it does not (torch-free).

Two limits: the KV cache holds max_context slots, and position ids index the rotary/position
table, max_positions long (max_context unless the manifest records more). A compressed prompt's
position ids are compacted to fit (spans.compact_positions), so for it only the slots count.
"""

from __future__ import annotations

import numpy as np

from semedge.errors import InputError

__all__ = ["check_fits"]


def _bigger(n: int) -> int:
    """The power of two at or above n: the --max-context to suggest."""
    return 1 << int(np.ceil(np.log2(n)))


def check_fits(
    T: int, kept: float, new: int, ratio: float | None, max_context: int, max_positions: int
) -> None:
    """A prompt of T tokens, `kept` positions after compression (T without) and `new` tokens to
    generate must fit: T' + new slots, and uncompressed, position ids up to T + new.

    Raises:
        InputError: it does not fit; the message names --ratio or --max-context to pass.
    """
    limit, pos_limit = max_context, max_positions
    if T + new > pos_limit and ratio is None:  # compressed prompts get compacted positions
        suggest = T / max(min(limit, pos_limit) - new, 1) * 1.05
        raise InputError(
            f"prompt has {T} tokens + {new} new tokens but this export's positions end at "
            f"{pos_limit} (max_context); pass --ratio {max(suggest, 1.1):.1f} to compress it "
            f"into them or re-export with --max-context {_bigger(T + new)}"
        )
    need = int(np.ceil(kept)) + new
    if need <= limit:
        return
    fix = f"re-export with --max-context {_bigger(need)}"
    suggest = max(2.4, (T / max(limit - new, 1)) * 1.05)
    fix += (
        f" or pass --ratio {suggest:.1f}"
        if ratio is None
        else f" or a higher --ratio (> {suggest:.1f})"
    )
    what = f"prompt has {T} tokens" + (f" ({int(kept)} after --ratio {ratio:g})" if ratio else "")
    raise InputError(
        f"{what} + {new} new tokens but this export supports {limit} (max_context); {fix}"
    )
