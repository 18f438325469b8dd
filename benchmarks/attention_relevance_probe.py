"""Probe: rank a prompt's sentences by the LM's own attention (GemFilter, arXiv 2409.17422) instead
of SemToken's encoder MaxSim or BM25, at the same position budget.

GemFilter runs the LM's first layers over the whole prompt and keeps the tokens that the last
query tokens attend to most at a middle "filter" layer. Here, per suite sample: the attention of
the prompt's last paragraph (the question and its answer prefix; `relevance.implicit_query`) at
layer L, summed over heads and averaged over those query tokens, gives a score per token; then

- `attn_units@L`: a sentence's score is its best token's; the sentences are kept through SemToken's
  own budget (`budget.kept_token_spans`: sinks, the recent window, the best whole sentences) at
  index positions, exactly as `semtoken_query` keeps its MaxSim-ranked sentences;
- `attn_tokens@L`: GemFilter's own rule: the n best tokens (n = round(T / R)), in order, at
  index positions.

Beside them, on the same samples: `semtoken_query` (the product) and `retrieve` (BM25). SmolLM2
bf16, one thread. The cost of the attention pass (L of the LM's 30 layers over all T tokens) is
printed too: it is what would make it a product feature or not.

    python benchmarks/attention_relevance_probe.py --context 2048 --ratios 4 --layers 8,14 \
        --samples 6 --out attn.jsonl
"""

import argparse
import json
import time

import numpy as np
import torch

from semedge.compressor.budget import kept_token_spans
from semedge.compressor.relevance import implicit_query, sentence_units
from semedge.config import CompressionConfig
from semedge.eval import methods as M
from semedge.eval.passkey import default_filler
from semedge.eval.suite import TorchRunner, suite_sample
from semedge.eval.tasks import FillerText, parse_tasks, score_answer
from semedge.models import load_model


def attention_scores(model, ids: np.ndarray, query_idx: np.ndarray, layer: int) -> np.ndarray:
    """(T,) attention from the query tokens to every token at `layer`, summed over heads and
    averaged over the query tokens (the layers after `layer` are not run)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    layers = model.model.layers
    attn = layers[layer].self_attn
    got = {}

    def grab(module, args, kwargs):
        got["h"], got["pe"] = kwargs["hidden_states"], kwargs["position_embeddings"]
        raise StopIteration  # nothing after this layer's input is needed

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            try:
                model.model(input_ids=torch.as_tensor(ids)[None], use_cache=False)
            except StopIteration:
                pass
            h, (cos, sin) = got["h"], got["pe"]
            B, T, _ = h.shape
            hd = attn.head_dim
            q = attn.q_proj(h).view(B, T, -1, hd).transpose(1, 2)
            k = attn.k_proj(h).view(B, T, -1, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = repeat_kv(k, attn.num_key_value_groups)
            qi = torch.as_tensor(query_idx)
            s = (q[:, :, qi].float() @ k.float().transpose(-1, -2)) * hd**-0.5  # (1, H, m, T)
            causal = torch.arange(T)[None, :] > qi[:, None]
            s = s.masked_fill(causal, float("-inf")).softmax(-1)
            return s.sum(1).mean(1)[0].numpy().astype(np.float64)
    finally:
        handle.remove()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="niah_number,niah_word,multikey,multivalue,multiquery")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--ratios", default="4")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--layers", default="8,14")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-positions", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model("smollm2")
    model = model.to(torch.bfloat16)
    runner = TorchRunner(model, tok, CompressionConfig(), fit_positions=a.fit_positions)
    text = FillerText(default_filler(), runner.count_tokens)
    all_tasks = parse_tasks("all")
    layers = [int(x) for x in a.layers.split(",")]
    out = open(a.out, "a") if a.out else None
    scores: dict[str, list[float]] = {}
    for task in a.tasks.split(","):
        for i in range(a.samples):
            s = suite_sample(task, all_tasks.index(task), a.context, i, a.samples, a.seed, text,
                             runner.count_tokens)  # fmt: skip
            tk = runner.tokenize(s.prompt)
            T = len(tk.ids)
            units = sentence_units(tk.text, tk.offsets)
            starts = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
            qidx = implicit_query(tk.text, tk.offsets)
            att, att_s = {}, {}
            for layer in layers:
                t0 = time.perf_counter()
                att[layer] = attention_scores(model, tk.ids, qidx, layer)
                att_s[layer] = time.perf_counter() - t0
            for ratio in [float(x) for x in a.ratios.split(",")]:
                cfg = runner._cfg(ratio, s.question)
                prot = runner.protected(tk, ratio)
                prompts = {"semtoken_query": runner.semtoken(tk, ratio, s.question)}
                plan = runner.plan("retrieve", tk, ratio, s.question, a.seed + i)
                prompts["retrieve"] = runner.inputs(tk, plan)
                for layer in layers:
                    best = np.full(int(units.max()) + 1, -np.inf)
                    best[units[starts]] = np.maximum.reduceat(att[layer], starts)
                    spans = kept_token_spans(prot, (units, best), cfg, T)
                    prompts[f"attn_units@{layer}"] = runner.compressor.prompt(tk.ids, spans, cfg)
                    n = M.budget_for(T, ratio)
                    keep = np.sort(np.argsort(-att[layer], kind="stable")[:n])
                    prompts[f"attn_tokens@{layer}"] = runner.inputs(tk, M._compact(keep))
                for name, prompt in prompts.items():
                    if a.fit_positions and hasattr(prompt, "fit_positions"):
                        prompt = prompt.fit_positions(a.fit_positions - 64)
                    answer, used = runner.generate(prompt, s.max_new_tokens)
                    score = score_answer(answer, s.answers)
                    scores.setdefault(f"{name} R={ratio:g}", []).append(score)
                    row = {"task": task, "sample": i, "ratio": ratio, "method": name,
                           "score": score, "positions": used, "answer": answer[:60],
                           "attention_s": {str(k): v for k, v in att_s.items()}}  # fmt: skip
                    if out:
                        out.write(json.dumps(row) + "\n")
                        out.flush()
        print(task, {k: round(float(np.mean(v)), 3) for k, v in scores.items()}, flush=True)
    for k, v in scores.items():
        print(f"{k:28s} {np.mean(v):.3f}  ({len(v)} prompts)")


if __name__ == "__main__":
    main()
