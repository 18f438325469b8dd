"""Attention for the exported graphs: one torch function that traces either to plain ONNX ops or to
ONNX Runtime's fused `com.microsoft::GroupQueryAttention` (fast on CPU).

Imports torch at the top: imported only by the exporter (semedge.export.wrappers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ATTENTION_KINDS", "attention_bias", "band_bias", "attend", "rotate"]

# "fused": ORT contrib GroupQueryAttention (5-6x faster than plain ops on CPU at 2k tokens);
# "plain": standard ONNX MatMul/Softmax (portable: TensorRT and other runtimes fuse it themselves).
ATTENTION_KINDS = ("fused", "plain")

_INT32 = 6  # onnx.TensorProto.INT32
# "plain" prefill graphs split attention into this many causal query blocks (_block_causal)
PLAIN_QUERY_BLOCKS = 4


def attention_bias(attention_mask: torch.Tensor, q_len_like: torch.Tensor, dtype) -> torch.Tensor:
    """Additive bias (B, 1, T, P+T): causal over KV *slots* plus the padding mask.

    Query t sits in slot P+t; it sees slots j <= P+t whose attention_mask is 1. Position ids do not
    enter here (they only rotate q/k), so compressed prompts with gaps in position_ids stay causal.

    Args:
        attention_mask: (B, P+T) int64, 1 = a real slot, 0 = padding.
        q_len_like: any (B, T, ...) tensor of the new tokens (gives T while tracing).
        dtype: the float dtype of the scores.
    """
    slots = torch.ones_like(attention_mask).cumsum(-1) - 1  # (B, P+T): 0..P+T-1
    q_slots = slots[:, -q_len_like.shape[1] :]  # (B, T): P..P+T-1
    causal = slots[:, None, :] <= q_slots[:, :, None]  # (B, T, P+T)
    allowed = causal & (attention_mask[:, None, :] > 0)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    zero = torch.tensor(0.0, dtype=dtype)
    return torch.where(allowed, zero, neg)[:, None]  # (B, 1, T, P+T)


def band_bias(bias: torch.Tensor, window: int) -> torch.Tensor:
    """Sliding-window attention (Gemma 3 local layers): `bias` (B, 1, T, P+T) with every slot
    `window` or more slots behind the query masked, so a query sees itself and window-1 slots
    before it, as transformers' sliding_window_overlay (kv_idx > q_idx - window).

    Slots, not position ids: a compressed prompt's merged spans keep their original position ids
    for RoPE, while the window counts the cache slots that transformers counts too.
    """
    T = bias.shape[2]
    k_slots = torch.ones_like(bias[0, 0, 0], dtype=torch.long).cumsum(-1) - 1  # (P+T,): 0..P+T-1
    q_slots = k_slots[-T:] if T > 0 else k_slots[:0]  # (T,): P..P+T-1
    far = (q_slots[:, None] - k_slots[None, :]) >= window  # (T, P+T)
    neg = torch.tensor(torch.finfo(bias.dtype).min, dtype=bias.dtype)
    return torch.where(far[None, None], neg, bias)  # (B, 1, T, P+T)


def _attend_torch(q, k, v, past_k, past_v, bias, n_heads: int, n_kv: int, scale: float,
                  blocks: int = 1):  # fmt: skip
    B, T = q.shape[0], q.shape[1]
    head_dim = q.shape[2] // n_heads
    qh = q.reshape(B, T, n_heads, head_dim).transpose(1, 2)  # (B,T,N*H) -> (B,N,T,H)
    kh = k.reshape(B, T, n_kv, head_dim).transpose(1, 2)  # (B,T,KV*H) -> (B,KV,T,H)
    vh = v.reshape(B, T, n_kv, head_dim).transpose(1, 2)
    if past_k is not None:
        kh = torch.cat([past_k, kh], dim=2)  # (B, KV, P+T, H)
        vh = torch.cat([past_v, vh], dim=2)
    rep = n_heads // n_kv
    ke = kh.repeat_interleave(rep, dim=1) if rep > 1 else kh  # (B, N, P+T, H)
    ve = vh.repeat_interleave(rep, dim=1) if rep > 1 else vh
    if past_k is None and blocks > 1:
        out = _block_causal(qh, ke, ve, bias, scale, blocks)
    else:
        out = F.scaled_dot_product_attention(qh, ke, ve, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(B, T, n_heads * head_dim), kh, vh


def _block_causal(qh, ke, ve, bias, scale: float, blocks: int):
    """Prefill attention in `blocks` query blocks, each over the keys up to its last query.

    Exact: `bias` is causal over slots, so the keys after a block's last query are masked for
    all of its queries and dropping them changes no softmax. Saves (blocks-1)/(2*blocks) of the
    score and value products, which runtimes that see only a dense mask (OpenVINO's CPU plugin)
    cannot skip themselves.
    """
    T = qh.shape[2]
    outs = []
    for b in range(blocks):
        start, end = (T * b) // blocks, (T * (b + 1)) // blocks
        outs.append(F.scaled_dot_product_attention(
            qh[:, :, start:end], ke[:, :, :end], ve[:, :, :end],
            attn_mask=bias[:, :, start:end, :end], scale=scale))  # fmt: skip
    return torch.cat(outs, dim=2)


def rotate(x: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout on (B, T, n*H) with per-token (B, T, H/2) cos/sin halves:
    what GroupQueryAttention's do_rotary computes from its cos/sin caches."""
    B, T, hd2 = cos_half.shape
    xh = x.reshape(B, T, -1, 2 * hd2)  # (B, T, n, H)
    cos = torch.cat([cos_half, cos_half], dim=-1).unsqueeze(2)  # (B, T, 1, H)
    sin = torch.cat([sin_half, sin_half], dim=-1).unsqueeze(2)
    rotated = torch.cat((-xh[..., hd2:], xh[..., :hd2]), dim=-1)
    return (xh * cos + rotated * sin).reshape(x.shape)


class _FusedGQA(torch.autograd.Function):
    """Runs the torch reference; exports as one GroupQueryAttention node.

    ::

        q (B,T,N*H) k,v (B,T,KV*H) past_k,past_v (B,KV,P,H) bias (B,1,T,P+T)
              |          |                 |                    |
              |          |                 |          Shape -> [3] -> total (int32 scalar)
              |          |                 |                    |   total-1 expanded to (B,)
              +----------+-----------------+--------- GroupQueryAttention(causal, bias) ------+
                                                   |                 |
                                          out (B,T,N*H)   present_k,present_v (B,KV,P+T,H)

    With `cos_cache`, `sin_cache` (max_positions, H/2) and `position_ids` (B, T), q and k come
    unrotated and the node rotates them (do_rotary) at each token's own position id: one node
    instead of ~28 glue nodes per layer. ORT honours per-token position ids only over a past
    (a first prompt is rotated from its first id on), so only graphs that always have a past
    (decode) take this form; compressed prompts have gaps in their position ids.
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, bias, n_heads, n_kv, scale, window=-1,
                cos_cache=None, sin_cache=None, position_ids=None):  # fmt: skip
        if window > 0:  # the node bands it itself (local_window_size): the reference bands here
            bias = band_bias(bias, window)
        if cos_cache is not None:
            cos, sin = cos_cache[position_ids], sin_cache[position_ids]  # (B, T, H/2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return _attend_torch(q, k, v, past_k, past_v, bias, n_heads, n_kv, scale)

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, bias, n_heads, n_kv, scale, window=-1,
                 cos_cache=None, sin_cache=None, position_ids=None):  # fmt: skip
        from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh

        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        shape = g.op("Shape", bias)  # (B, 1, T, P+T)
        total = g.op("Cast", g.op("Gather", shape, const(3), axis_i=0), to_i=_INT32)
        batch = g.op("Slice", shape, const([0]), const([1]), const([0]))
        one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int32))
        seqlens_k = g.op("Expand", g.op("Sub", total, one), batch)  # (B,) last valid slot index
        none = sh._optional_input_placeholder_tensor(g)
        inputs = [q, k, v]
        inputs += [none, none] if sh._is_none(past_k) else [past_k, past_v]
        rotary = cos_cache is not None and not sh._is_none(cos_cache)
        inputs += [seqlens_k, total]
        inputs += [cos_cache, sin_cache, position_ids] if rotary else [none, none, none]
        inputs += [bias]
        # ORT 1.32 keeps local_window_size slots, the query's own included (measured against
        # a banded softmax): transformers' sliding_window, as is
        local = {"local_window_size_i": window} if window > 0 else {}
        if rotary:
            local["do_rotary_i"] = 1
        out, pk, pv = g.op(
            "com.microsoft::GroupQueryAttention",
            *inputs,
            num_heads_i=n_heads,
            kv_num_heads_i=n_kv,
            scale_f=scale,
            outputs=3,
            **local,
        )
        out.setType(q.type())
        for t in (pk, pv):
            t.setType(q.type().with_sizes([None, None, None, None]))
        return out, pk, pv


def attend(q, k, v, past_k, past_v, bias, n_heads: int, n_kv: int, scale: float, kind: str,
           window: int | None = None, rope=None):  # fmt: skip
    """Grouped-query attention over the KV slots.

    Args:
        q: (B, T, N*H) queries, rotary already applied.
        k, v: (B, T, KV*H) new keys (rotated) and values.
        past_k, past_v: (B, KV, P, H) cached keys and values, or None (prefill).
        bias: (B, 1, T, P+T) additive mask from `attention_bias`.
        n_heads, n_kv: query and key/value head counts (N % KV == 0).
        scale: softmax scale (1/sqrt(H) for the supported families).
        kind: "fused" (one ORT GroupQueryAttention node) or "plain" (standard ONNX ops).
        window: sliding window in slots (a local layer), or None: "plain" bands `bias`, "fused"
            sets GroupQueryAttention's local_window_size.
        rope: None (q and k come rotated), or (cos_cache, sin_cache, position_ids) with q and k
            unrotated: the "fused" node rotates them itself (`_FusedGQA`); needs a past.

    Returns:
        out (B, T, N*H), present_k and present_v (B, KV, P+T, H).
    """
    if rope is not None and past_k is None:
        raise ValueError(
            "rotary inside attention needs a past (ORT rotates a first prompt from its first id)"
        )
    if kind == "fused" and torch.onnx.is_in_onnx_export():
        args = (q, k, v, past_k, past_v, bias, n_heads, n_kv, float(scale))
        if rope is not None:
            return _FusedGQA.apply(*args, int(window or -1), *rope)
        return _FusedGQA.apply(*args, int(window)) if window else _FusedGQA.apply(*args)
    if rope is not None:
        cos, sin = rope[0][rope[2]], rope[1][rope[2]]  # (B, T, H/2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if window:
        bias = band_bias(bias, window)
    blocks = PLAIN_QUERY_BLOCKS if torch.onnx.is_in_onnx_export() else 1
    return _attend_torch(q, k, v, past_k, past_v, bias, n_heads, n_kv, scale, blocks)
