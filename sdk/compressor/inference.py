"""The PyTorch inference functions: prefill a CompressedPrompt, decode with the KV cache (greedy
or sampled), score a continuation. Eval, training and the compressor all run models through these.

Positions: each span sits at its original position id, and new tokens continue from the
original length T, so the model sees the gaps a merge leaves (RoPE or learned absolute).
An explicit attention_mask is always passed: without one, transformers reads non-consecutive
position_ids as packed sequences and would block attention across the gaps.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from semedge.deps import require
from semedge.errors import InputError

if TYPE_CHECKING:
    from semedge.compressor.compressor import CompressedPrompt

torch = require("torch")

__all__ = [
    "prefill", "plain_prompt", "generate_compressed", "continuation_logits", "score_continuation",
]  # fmt: skip


def _check_fits(model: Any, last_position: int) -> None:
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None and last_position >= int(limit):
        raise InputError(
            f"position {last_position} exceeds the model's {limit} positions; compress a shorter "
            "text or generate fewer tokens"
        )


def plain_prompt(model: Any, input_ids: Any) -> CompressedPrompt:
    """An uncompressed context: one position per token (0..T-1), every span a single token."""
    from semedge.compressor.compressor import CompressedPrompt

    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    T = len(ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.as_tensor(ids)[None])
    spans = np.stack([np.arange(T), np.arange(1, T + 1)], axis=1).astype(np.int64)
    return CompressedPrompt(ids, spans, embeds, torch.arange(T)[None])


def prefill(model: Any, prompt: CompressedPrompt, keep: int = 0) -> tuple[torch.Tensor, Any]:
    """Run the LM over the compressed prompt.

    Args:
        model: the causal LM the prompt was compressed for.
        prompt: a CompressedPrompt.

        keep: logits of the last `keep` positions only (0: all).

    Returns:
        (logits (1, n | keep, V), past_key_values).

    Raises:
        InputError: the prompt's positions exceed the model's context.
    """
    _check_fits(model, prompt.next_position - 1)
    n = prompt.inputs_embeds.shape[1]
    with torch.no_grad():
        out = model(
            inputs_embeds=prompt.inputs_embeds,
            position_ids=prompt.position_ids.long(),
            attention_mask=torch.ones(1, n, dtype=torch.long),
            use_cache=True,
            logits_to_keep=keep,
        )
    return out.logits, out.past_key_values


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
          top_p: float | None, generator: torch.Generator | None) -> int:  # fmt: skip
    """Next token from (V,) logits: argmax, or a temperature/top-k/top-p sample."""
    if not do_sample:
        return int(torch.argmax(logits))
    logits = logits.float() / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest nucleus
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -math.inf)
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def generate_compressed(
    model: Any,
    tokenizer: Any,
    prompt: CompressedPrompt,
    max_new_tokens: int = 40,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[int]:
    """Generate from a compressed context: prefill the spans, then decode with the KV cache.

    Greedy by default; at ratio 1 it returns exactly what `model.generate` returns (new tokens).

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (for the EOS id when `eos_token_id` is None).
        prompt: a CompressedPrompt.
        max_new_tokens: at most this many new tokens.
        do_sample, temperature, top_k, top_p: sampling settings (off by default).
        eos_token_id: stop after this token (included); None -> the tokenizer's EOS; -1: never.
        seed: sampling seed.
        timings: when a dict, filled with prefill_ms and decode_ms.

    Returns:
        The new token ids (without the prompt).

    Raises:
        InputError: the positions exceed the model's context.
    """
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    T = prompt.next_position
    _check_fits(model, T + max_new_tokens - 2)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    n = prompt.inputs_embeds.shape[1]
    t0 = time.perf_counter()
    logits, past = prefill(model, prompt, keep=1)
    t1 = time.perf_counter()
    new: list[int] = []
    with torch.no_grad():
        for i in range(max_new_tokens):
            tok = _pick(logits[0, -1], do_sample, temperature, top_k, top_p, gen)
            new.append(tok)
            if tok == eos or i == max_new_tokens - 1:
                break
            out = model(
                input_ids=torch.tensor([[tok]]),
                position_ids=torch.tensor([[T + i]]),  # positions continue from the original T
                attention_mask=torch.ones(1, n + i + 1, dtype=torch.long),
                past_key_values=past,
                use_cache=True,
            )
            logits, past = out.logits, out.past_key_values
    if timings is not None:
        timings.update(prefill_ms=1000 * (t1 - t0), decode_ms=1000 * (time.perf_counter() - t1))
    return new


def continuation_logits(model: Any, prompt: CompressedPrompt, target_ids: Any) -> torch.Tensor:
    """(m, V) float logits where row j predicts target j, after the context (one forward).

    The continuation's tokens sit at positions T, T+1, ... after the compressed context; only
    the m logits that predict them are computed (`logits_to_keep`).

    Raises:
        InputError: empty continuation or positions beyond the model's context.
    """
    target = torch.as_tensor(np.asarray(target_ids), dtype=torch.long).reshape(1, -1)  # (1, m)
    m = target.shape[1]
    if m == 0:
        raise InputError("continuation is empty; give at least one target token")
    T, n = prompt.next_position, prompt.inputs_embeds.shape[1]
    _check_fits(model, T + m - 1)
    with torch.no_grad():
        emb = model.get_input_embeddings()(target).to(prompt.inputs_embeds.dtype)  # (1, m, D)
        out = model(
            inputs_embeds=torch.cat([prompt.inputs_embeds, emb], dim=1),
            position_ids=torch.cat([prompt.position_ids.long(), T + torch.arange(m)[None]], dim=1),
            attention_mask=torch.ones(1, n + m, dtype=torch.long),
            use_cache=False,
            logits_to_keep=m + 1,  # only the last context position and the targets
        )
        return out.logits[0, :m].float()  # position n-1+j predicts target j


def score_continuation(model: Any, prompt: CompressedPrompt, target_ids: Any) -> tuple[float, int]:
    """Negative log-likelihood of a continuation given a compressed context (one forward).

    Args:
        model: the causal LM.
        prompt: the compressed context.
        target_ids: (m,) continuation token ids.

    Returns:
        (sum of NLL in nats over the m tokens, m). Perplexity = exp(nll_sum / m).

    Raises:
        InputError: empty continuation or positions beyond the model's context.
    """
    pred = continuation_logits(model, prompt, target_ids)
    target = torch.as_tensor(np.asarray(target_ids), dtype=torch.long).reshape(-1)
    nll = torch.nn.functional.cross_entropy(pred, target, reduction="sum")
    return float(nll), int(target.numel())
