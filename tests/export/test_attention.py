"""Attention as the exporter traces it: the plain prefill's causal query blocks are exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semedge.export.attention import _block_causal, attention_bias, band_bias


@pytest.mark.parametrize("T", [1, 2, 3, 5, 17, 64])
@pytest.mark.parametrize("blocks", [2, 4, 7])
def test_block_causal_equals_dense_attention(T, blocks):
    g = torch.Generator().manual_seed(T * 31 + blocks)
    B, N, H = 2, 3, 8
    q, k, v = (torch.randn(B, N, T, H, generator=g) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, : T // 3] = 0  # left padding in the second row
    bias = attention_bias(mask, q.transpose(1, 2), torch.float32)
    if T > 4:
        bias = band_bias(bias, 4)  # a sliding-window layer too
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    out = _block_causal(q, k, v, bias, 0.3, blocks)
    assert out.shape == dense.shape
    real = mask.bool()  # a padding query sees no slot at all: its row is never read
    assert torch.allclose(out.transpose(1, 2)[real], dense.transpose(1, 2)[real], atol=1e-6)


def test_a_non_causal_bias_would_differ():
    """The blocks drop the keys after each block's last query: exact only under a causal bias,
    so the test above would catch a bias that let a query see later slots."""
    T = 8
    q, k, v = (
        torch.randn(1, 1, T, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    open_bias = torch.zeros(1, 1, T, T)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=open_bias)
    assert not torch.allclose(_block_causal(q, k, v, open_bias, 0.5, 4), dense, atol=1e-4)
