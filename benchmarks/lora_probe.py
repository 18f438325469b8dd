"""Research probe (not a product path): does training the LM itself let it read merged far spans?

Low-rank adapters (rank 8) on every layer's q_proj and v_proj of SmolLM2 plus a fresh span
adapter, trained jointly on the `CompressionConfig.adapter_default()` layout (continuation NLL +
distillation to the original model's full-context top-k for the first 60 % of the steps). Scores
12 WikiText-2 test windows (T=2048, S=256) with the LoRA'd LM compressed, and BOTH LMs on full
context and truncation, because the low-rank adapters also adapt the LM to WikiText. ~15 min on
2 cores. Usage: python benchmarks/lora_probe.py '{"steps": 64, "windows": 32}'

Options (JSON): rank, steps, windows, lr; `targets` (projections that get low-rank adapters,
default ["q_proj", "v_proj"]); `recency_fraction` and `max_span` (the layout; default the
adapter preset's); `mix_truncation` (true: every other step trains on the same window truncated
to the same budget, so the LM's domain adaptation is shared by both modes and cannot pass for
span reading); `recon` (gamma of the span-reconstruction task, default 0); `out` (a JSON file).
"""

import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from semedge import load_model
from semedge.config import CompressionConfig
from semedge.eval.windows import tokenize_text, window_starts
from semedge.textio import read_text_file
from semedge.training.adapter import SpanAdapter
from semedge.training.adapter_train import (
    AdapterTrainConfig,
    _distill,
    _primary,
    _reconstruct,
    _Student,
    prepare_examples,
)

torch.set_num_threads(2)
torch.manual_seed(0)
args = json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
R, STEPS, NW, LR = (
    args.get("rank", 8),
    args.get("steps", 64),
    args.get("windows", 32),
    args.get("lr", 1e-3),
)
TARGETS, MIX, RECON = (
    args.get("targets", ["q_proj", "v_proj"]),
    args.get("mix_truncation", False),
    args.get("recon", 0.0),
)
model, tok = load_model("smollm2")


class LoRA(torch.nn.Module):
    def __init__(self, base, r):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.on = True

    def forward(self, x):
        y = self.base(x)
        return y + (x @ self.a.T) @ self.b.T if self.on else y


model.requires_grad_(False)
loras = []
for layer in model.model.layers:
    for name in TARGETS:
        m = LoRA(getattr(layer.self_attn, name), R)
        setattr(layer.self_attn, name, m)
        loras.append(m)


def set_on(v):
    for m in loras:
        m.on = v


comp = CompressionConfig.adapter_default()
comp = dataclasses.replace(
    comp,
    recency_fraction=args.get("recency_fraction", comp.recency_fraction),
    max_span=args.get("max_span", comp.max_span),
)
cfg = AdapterTrainConfig(context=2048, target=128, windows=NW, compression=comp)
set_on(False)
t = time.time()
va_ids = tokenize_text(read_text_file(DATA / "valid.txt"), tok)
tr = prepare_examples(model, tok, va_ids, cfg)


def truncated(ex, ids, keep=853):
    """The same window as `ex`, its context truncated to the last `keep` tokens."""
    T = ex.next_position
    for s in window_starts(len(ids), T + len(ex.target), NW):
        if torch.equal(torch.as_tensor(ids[s + T : s + T + len(ex.target)]), ex.target):
            e = copy.copy(ex)
            with torch.no_grad():
                e.merged = model.get_input_embeddings()(torch.as_tensor(ids[s + T - keep : s + T]))
            e.lengths = torch.ones(keep, dtype=torch.long)
            e.position_ids = torch.arange(T - keep, T)
            e.recon_rows = torch.zeros(0, dtype=torch.long)
            return e
    raise ValueError("window not found")


tr_trunc = [truncated(e, va_ids) for e in tr] if MIX else []
te_ids = tokenize_text(read_text_file(DATA / "test.txt"), tok)
te = prepare_examples(
    model, tok, te_ids, AdapterTrainConfig(context=2048, target=256, compression=comp), count=12
)
print("prepared", time.time() - t, flush=True)
ad = SpanAdapter(576, 128)
params = list(ad.parameters()) + [p for m in loras for p in (m.a, m.b)]
opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
st = _Student(model, ad)
set_on(True)
t = time.time()
for step in range(STEPS):
    ex = tr[(step // 2 if MIX else step) % len(tr)]
    if MIX and step % 2:
        ex = tr_trunc[(step // 2) % len(tr)]
    loss, ctx = _primary(st, ex)
    kd = _distill(st, ex, ctx) if step < 0.6 * STEPS else 0.0
    rc = RECON * _reconstruct(st, ex, ctx) if RECON and step < 0.6 * STEPS else 0.0
    (loss + kd + rc).backward()
    opt.step()
    opt.zero_grad()
    if step % 16 == 0:
        print(step, float(loss.detach()), time.time() - t, flush=True)


def comp_ppl(on, adapter):
    set_on(on)
    s = _Student(model, adapter.eval())
    with torch.inference_mode():
        return math.exp(sum(float(_primary(s, e)[0]) for e in te) / len(te))


def plain_ppl(on, keep):
    set_on(on)
    nll = 0
    for s in window_starts(len(te_ids), 2304, 12):
        seq = torch.as_tensor(te_ids[s + 2048 - keep : s + 2304])[None]
        with torch.inference_mode():
            lo = model(input_ids=seq, use_cache=False, logits_to_keep=257).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(lo, seq[0, keep:]))
    return math.exp(nll / 12)


res = {
    "lora_compressed": comp_ppl(True, ad),
    "lora_truncate": plain_ppl(True, 853),
    "lora_full": plain_ppl(True, 2048),
    "orig_truncate": plain_ppl(False, 853),
    "orig_full": plain_ppl(False, 2048),
}
print(json.dumps(res), flush=True)
if "out" in args:
    info = {"args": {**args, "test_windows": 12, "context": 2048, "target": 256, "ratio": 2.4},
            "results": res}  # fmt: skip
    Path(args["out"]).write_text(json.dumps(info, indent=1) + "\n")
