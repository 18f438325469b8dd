"""`semedge compress`'s span view: dropped tokens counted, moved (reordered) sentences marked."""

from __future__ import annotations

import numpy as np

from semedge.cli.compress import span_view


class _Ids:
    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def test_span_view_counts_dropped_tokens_and_marks_moved_sentences():
    reordered = np.array([[0, 1], [8, 9], [9, 10], [3, 4], [4, 5], [10, 11], [11, 12]])
    got = span_view(_Ids(), np.arange(12), reordered)
    assert got == "<0>|<5 dropped>|<8>|<9>|<moved:|<3>|<4>|:moved>|<10>|<11>"
    merged = np.array([[0, 1], [3, 5], [5, 6]])
    assert span_view(_Ids(), np.arange(8), merged) == "<0>|<2 dropped>|[<3><4>]|<5>|<2 dropped>"
