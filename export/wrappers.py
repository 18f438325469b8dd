"""DynamicCache-free torch modules that trace into the four exported graphs (plain tensors in/out).

The wrappers call the Hugging Face model's own submodules (norms, projections, MLPs, rotary
embedding) and replace only attention and the KV cache, so the graphs compute what the model does.
Imports torch at the top: imported only by the exporter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semedge.errors import InputError
from semedge.export.attention import attend, attention_bias

__all__ = [
    "LLAMA_LIKE",
    "ModelDims",
    "DecoderCore",
    "EmbedGraph",
    "EncoderGraph",
    "PrefillGraph",
    "DecodeGraph",
    "model_dims",
]

LLAMA_LIKE = ("llama", "qwen2", "mistral")  # RMSNorm + rotary + GQA + gated MLP, same module names
GEMMA3 = "gemma3_text"  # Llama-like plus QK-norm, sandwich norms, local/global layers
SUPPORTED = (*LLAMA_LIKE, GEMMA3, "gpt2")


@dataclass(frozen=True)
class ModelDims:
    """What the graphs' shapes depend on."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int  # the model's own context limit
    sliding_window: int | None = None  # slots a local layer sees (itself included)
    local_layers: tuple[int, ...] = ()  # layers with sliding-window attention

    @property
    def local_kv_slots(self) -> int:
        """Slots a local layer's cache holds: what the next token sees besides itself (0: no
        local layers). The graphs keep these; runtime.kv_cache.local_kv reads them back."""
        return self.sliding_window - 1 if self.local_layers and self.sliding_window else 0


def model_dims(model) -> ModelDims:
    """Read the dimensions of a supported HF causal LM.

    Raises:
        InputError: an unsupported architecture or attention variant.
    """
    cfg = model.config
    kind = cfg.model_type
    if kind not in SUPPORTED:
        raise InputError(
            f"model_type {kind!r} is not supported for export; supported: {', '.join(SUPPORTED)}"
        )
    if kind == "gpt2":
        if cfg.scale_attn_by_inverse_layer_idx or not cfg.scale_attn_weights:
            raise InputError("GPT-2 variants with non-standard attention scaling are not supported")
        n_heads = cfg.n_head
        return ModelDims(
            kind, cfg.n_layer, n_heads, n_heads, cfg.n_embd // n_heads, cfg.n_embd,
            cfg.vocab_size, cfg.n_positions,
        )  # fmt: skip
    if kind == GEMMA3:
        return _gemma3_dims(cfg)
    if getattr(cfg, "use_sliding_window", kind == "mistral") and getattr(
        cfg, "sliding_window", None
    ):
        raise InputError(f"{kind} with sliding-window attention is not supported for export")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelDims(
        kind, cfg.num_hidden_layers, cfg.num_attention_heads,
        cfg.num_key_value_heads or cfg.num_attention_heads, head_dim, cfg.hidden_size,
        cfg.vocab_size, cfg.max_position_embeddings,
    )  # fmt: skip


def _gemma3_dims(cfg) -> ModelDims:
    """Gemma 3: every layer named "sliding_attention" in layer_types is local."""
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, name, None) is not None:
            raise InputError(
                f"Gemma 3 with {name}={getattr(cfg, name)} is not supported for export"
            )
    if getattr(cfg, "use_bidirectional_attention", False):
        raise InputError("Gemma 3 with bidirectional attention is not a causal LM; cannot export")
    local = tuple(i for i, t in enumerate(cfg.layer_types) if t == "sliding_attention")
    return ModelDims(
        GEMMA3, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
        cfg.head_dim, cfg.hidden_size, cfg.vocab_size, cfg.max_position_embeddings,
        int(cfg.sliding_window) if local else None, local,
    )  # fmt: skip


def _pack_layer(layer) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Concatenated q/k/v and gate/up weights: fewer, wider GEMMs (MLAS is faster on wide N)."""
    a, mlp = layer.self_attn, layer.mlp
    projs = (a.q_proj, a.k_proj, a.v_proj)
    w_qkv = torch.cat([p.weight for p in projs]).detach()  # ((N + 2 KV) H, D)
    biases = [p.bias for p in projs]
    b_qkv = None if biases[0] is None else torch.cat(biases).detach()
    for p in (mlp.gate_proj, mlp.up_proj):
        if p.bias is not None:
            raise InputError("gated MLPs with biases are not supported for export")
    return w_qkv, b_qkv, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderCore(nn.Module):
    """The LM as a stack of plain-tensor layer calls; `attention` is "fused" or "plain".

    max_context: positions the rotary caches cover, for graphs whose fused attention rotates q and
    k itself (`rotary_in_attention`: decode); None keeps the rotation outside attention.
    """

    def __init__(self, model, attention: str = "fused", max_context: int | None = None) -> None:
        super().__init__()
        self.lm = model
        self.dims = model_dims(model)
        self.attention = attention
        self.gpt2 = self.dims.model_type == "gpt2"
        self.gemma3 = self.dims.model_type == GEMMA3
        self.base = model.transformer if self.gpt2 else model.model
        self.layers = self.base.h if self.gpt2 else self.base.layers
        self.packed = [] if self.gpt2 else [_pack_layer(layer) for layer in self.layers]
        weight = model.lm_head.weight
        self.zero_bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        self.rope_caches = None
        if attention == "fused" and max_context and not self.gpt2:
            self.rope_caches = self._rope_caches(max_context, weight.dtype)
        self.eval()  # the exporter restores the wrapper's mode on the LM: keep dropout off

    def _rope_caches(self, n: int, dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"global"[, "local"]: (cos, sin) halves (n, H/2)} from the model's own rotary
        modules at positions 0..n-1 (scaling and attention factors included)."""
        x = torch.zeros(1, 1, dtype=dtype)
        pos = torch.arange(n).unsqueeze(0)
        half = self.dims.head_dim // 2
        mods = {"global": self.base.rotary_emb}
        if self.gemma3:
            mods["local"] = self.base.rotary_emb_local
        with torch.no_grad():
            out = {}
            for name, mod in mods.items():
                cos, sin = mod(x, pos)  # (1, n, H), the two halves equal (rotate-half layout)
                out[name] = (cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous())
        return out

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, D) token embeddings (GPT-2: without positions)."""
        return (self.base.wte if self.gpt2 else self.base.embed_tokens)(input_ids)

    def run_layers(self, x, position_ids, attention_mask, pasts=None, n_layers=None,
                   rotary_in_attention=False, keep_from=None):  # fmt: skip
        """Layers 0..n_layers-1 over x (B, T, D); pasts: [(k, v)] per layer or None.
        rotary_in_attention (needs pasts and rope_caches): the fused attention node rotates.
        keep_from (a 0-d tensor; the encoder): the last layer returns rows keep_from.. only,
        and runs its output projection and MLP on those rows alone (the others were context).

        Returns:
            hidden (B, T, D) and the presents [(k, v)] with k, v (B, KV, P+T, H); a
            sliding-window layer's past and present hold only its last W - 1 slots.
        """
        if self.gpt2:
            x = x + self.base.wpe(position_ids)  # learned absolute positions
            rope = None
        elif rotary_in_attention and self.rope_caches is not None and pasts is not None:
            rope = {k: (*v, position_ids) for k, v in self.rope_caches.items()}
        else:
            rope = self.base.rotary_emb(x, position_ids)  # cos, sin (B, T, H)
        if self.gemma3 and not isinstance(rope, dict):  # local layers: their own base
            rope = (rope, self.base.rotary_emb_local(x, position_ids))
        bias = attention_bias(attention_mask, x, x.dtype)
        presents = []
        layer = self._gpt2_layer if self.gpt2 else self._llama_layer
        layer = self._gemma3_layer if self.gemma3 else layer
        n = self.dims.num_layers if n_layers is None else n_layers
        for i in range(n):
            past = pasts[i] if pasts is not None else (None, None)
            x, kv = layer(i, x, rope, bias, past, keep_from if i == n - 1 else None)
            presents.append(kv)
        return x, presents

    def _attend(self, q, k, v, past, bias, scale, window=None, rope=None):
        d = self.dims
        return attend(
            q, k, v, *past, bias, d.num_heads, d.num_kv_heads, scale, self.attention, window, rope
        )

    @staticmethod
    def _rotate(q, k, rope, B, T):
        """Apply RoPE to (B, T, n, H) q and k, as the HF models do; returns (B, T, n*H)."""
        cos, sin = rope[0].unsqueeze(2), rope[1].unsqueeze(2)  # (B, T, 1, H)
        q = q * cos + _rotate_half(q) * sin  # RoPE (Su et al. 2021), rotate-half layout
        k = k * cos + _rotate_half(k) * sin
        return q.reshape(B, T, -1), k.reshape(B, T, -1)

    def _gemma3_layer(self, i, x, ropes, bias, past, keep=None):
        """Gemma 3 block: QK-norm before RoPE, norms after attention and MLP as well as before;
        local layers use the local RoPE and a sliding window."""
        layer, (w_qkv, _, w_gate_up) = self.layers[i], self.packed[i]
        d, a = self.dims, layer.self_attn
        local = i in d.local_layers
        h = layer.input_layernorm(x)
        B, T = h.shape[0], h.shape[1]
        nq, nkv = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
        q, k, v = F.linear(h, w_qkv).split([nq, nkv, nkv], dim=-1)
        q = a.q_norm(q.reshape(B, T, d.num_heads, d.head_dim))  # (B, T, N, H), RMSNorm per head
        k = a.k_norm(k.reshape(B, T, d.num_kv_heads, d.head_dim))  # (B, T, KV, H)
        fused_rope = None
        if isinstance(ropes, dict):  # the attention node rotates, with the layer's own caches
            fused_rope = ropes["local" if local else "global"]
            q, k = q.reshape(B, T, -1), k.reshape(B, T, -1)
        else:
            q, k = self._rotate(q, k, ropes[1] if local else ropes[0], B, T)
        window = d.sliding_window if local else None
        if local and past[0] is not None:  # its cache holds the window's last slots only
            bias = bias[:, :, :, -(past[0].shape[2] + T) :]
        out, pk, pv = self._attend(q, k, v, past, bias, a.scaling, window, fused_rope)
        if local:  # what the next token can see besides itself
            pk, pv = pk[:, :, -d.local_kv_slots :], pv[:, :, -d.local_kv_slots :]
        x, out = _rows_from(keep, x, out)
        x = x + layer.post_attention_layernorm(a.o_proj(out))
        inter = w_gate_up.shape[0] // 2
        gate, up = F.linear(layer.pre_feedforward_layernorm(x), w_gate_up).split([inter, inter], -1)
        x = x + layer.post_feedforward_layernorm(layer.mlp.down_proj(layer.mlp.act_fn(gate) * up))
        return x, (pk, pv)

    def _llama_layer(self, i, x, rope, bias, past, keep=None):
        layer, (w_qkv, b_qkv, w_gate_up) = self.layers[i], self.packed[i]
        d, a = self.dims, layer.self_attn
        h = layer.input_layernorm(x)
        B, T = h.shape[0], h.shape[1]
        # one GEMM for q, k, v: (B, T, D) -> (B, T, (N + 2 KV) H), then split
        q, k, v = F.linear(h, w_qkv, b_qkv).split(
            [d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.num_kv_heads * d.head_dim],
            dim=-1,
        )
        fused_rope = rope["global"] if isinstance(rope, dict) else None
        if fused_rope is None:  # else the attention node rotates q and k itself
            q = q.reshape(B, T, d.num_heads, d.head_dim)  # (B, T, N, H)
            k = k.reshape(B, T, d.num_kv_heads, d.head_dim)  # (B, T, KV, H)
            q, k = self._rotate(q, k, rope, B, T)
        out, pk, pv = self._attend(q, k, v, past, bias, a.scaling, rope=fused_rope)
        x, out = _rows_from(keep, x, out)
        x = x + a.o_proj(out)
        # gated MLP with one GEMM for gate and up: down(act(gate(h)) * up(h)); split with
        # static sizes (chunk traces to Shape/Gather/Div/Slice per layer)
        inter = w_gate_up.shape[0] // 2
        gate, up = F.linear(layer.post_attention_layernorm(x), w_gate_up).split([inter, inter], -1)
        x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return x, (pk, pv)

    def _gpt2_layer(self, i, x, rope, bias, past, keep=None):
        d, block = self.dims, self.layers[i]
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(d.hidden_size, dim=2)
        out, pk, pv = self._attend(q, k, v, past, bias, d.head_dim**-0.5)
        x, out = _rows_from(keep, x, out)
        x = x + block.attn.c_proj(out)
        x = x + block.mlp(block.ln_2(x))
        return x, (pk, pv)

    def logits(self, hidden: torch.Tensor, last_only: bool) -> torch.Tensor:
        """Final norm and LM head: (B, T, D) -> (B, 1, V) if last_only else (B, T, V)."""
        if last_only:
            hidden = hidden[:, -1:, :]  # the head on one position: V*D FLOPs instead of T*V*D
        norm = self.base.ln_f if self.gpt2 else self.base.norm
        h = norm(hidden)
        B, T = h.shape[0], h.shape[1]
        head = self.lm.lm_head
        bias = head.bias if head.bias is not None else self.zero_bias
        # 2-D input + bias traces to Gemm(transB=1) on the weight itself (no transposed copy),
        # so with tied embeddings decode.onnx holds the table once: (B*T, D) @ (V, D)^T
        logits = F.linear(h.reshape(-1, h.shape[-1]), head.weight, bias)
        return logits.reshape(B, T, -1)


def _rows_from(keep, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, attention output) from row `keep` on (all rows when keep is None): the rows after
    attention are independent, so the projection and MLP of context-only rows can be skipped."""
    if keep is None:
        return x, out
    return x[:, keep:].contiguous(), out[:, keep:].contiguous()  # (GPT-2's Conv1D views)


def _flat(presents) -> tuple[torch.Tensor, ...]:
    return tuple(t for kv in presents for t in kv)  # k0, v0, k1, v1, ...


class EmbedGraph(nn.Module):
    """embed.onnx: input_ids (B, T) -> inputs_embeds (B, T, D)."""

    def __init__(self, core: DecoderCore) -> None:
        super().__init__()
        self.core = core
        self.eval()

    def forward(self, input_ids):
        return self.core.embed(input_ids)


class EncoderGraph(nn.Module):
    """encoder.onnx: the SemToken `lm` encoder, hidden state after the first k layers."""

    def __init__(self, core: DecoderCore, layers: int) -> None:
        super().__init__()
        self.core, self.k = core, layers
        self.eval()

    def forward(self, input_ids, attention_mask, keep_from):
        """keep_from (1,): return the states of rows keep_from.. only; the rows before are
        context (the runtime's overlapping windows), whose projection and MLP are skipped."""
        positions = torch.ones_like(input_ids).cumsum(-1) - 1  # (B, T): 0..T-1, as the HF default
        x = self.core.embed(input_ids)
        keep = keep_from.reshape(())
        x, _ = self.core.run_layers(x, positions, attention_mask, n_layers=self.k, keep_from=keep)
        return x


class PrefillGraph(nn.Module):
    """prefill.onnx: inputs_embeds, position_ids, attention_mask -> logits, presents."""

    def __init__(self, core: DecoderCore, last_only: bool = True) -> None:
        super().__init__()
        self.core, self.last_only = core, last_only
        self.eval()

    def forward(self, inputs_embeds, position_ids, attention_mask):
        x, presents = self.core.run_layers(inputs_embeds, position_ids, attention_mask)
        return (self.core.logits(x, self.last_only), *_flat(presents))


class DecodeGraph(nn.Module):
    """decode.onnx: one token per row with the past KV -> logits (B, 1, V), presents."""

    def __init__(self, core: DecoderCore) -> None:
        super().__init__()
        self.core = core
        self.eval()

    def forward(self, input_ids, position_ids, attention_mask, *past):
        pasts = list(zip(past[0::2], past[1::2], strict=True))
        x, presents = self.core.run_layers(
            self.core.embed(input_ids), position_ids, attention_mask, pasts,
            rotary_in_attention=True,
        )  # fmt: skip
        return (self.core.logits(x, True), *_flat(presents))
