"""Refuse an fp16 trace of a model whose activations fp16 cannot hold.

`export onnx --dtype fp16` traces the model in fp16 end to end. Gemma 3 270M's residual stream
reaches ~1.0e5 in fp32 (fp16's largest value is 65504): in PyTorch fp16 its hidden states turn
inf after decoder layer 8 of 18 and NaN after. ONNX Runtime's CPU provider runs most fp16 ops
through fp32, so the CPU gate's logits still agree (top-1 1.000 measured; only its KV budget
tripped) and the export would ship NaNs to a GPU.
So before tracing, the fp16 copy runs on the gate's text in PyTorch, whose CPU fp16 arithmetic
rounds and overflows as a GPU's does; a non-finite hidden state refuses the export and names the
way that works (`--precision fp16`: the measured conversion keeps those nodes fp32).
"""

from __future__ import annotations

import numpy as np

from semedge.constants import FP16_MAX
from semedge.deps import require
from semedge.errors import InputError

__all__ = ["check_fits_fp16", "hidden_peak", "refuse_fp16_kernels"]

PROBE_TOKENS = 128  # overflow shows within the first dozens of tokens (Gemma 3: from 48 on)


def hidden_peak(model32, ids: np.ndarray) -> float:
    """Largest |hidden state| of the fp32 model on `ids` (the manifest's `hidden_peak`)."""
    torch = require("torch")
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)[None])
    with torch.no_grad():
        states = model32(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
    return float(max(float(h.abs().max()) for h in states))


def check_fits_fp16(model16, ids: np.ndarray, peak: float, name: str) -> None:
    """Raise InputError when the fp16 model's hidden states or logits on `ids` are not finite.

    Args:
        model16: the fp16 copy of the model, the one that would be traced.
        ids: (T,) token ids as a prompt is read (the tokenizer's leading specials first).
        peak: `hidden_peak` of the fp32 model on the same ids (for the message).
        name: the model as the user named it.
    """
    torch = require("torch")
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)[None])
    with torch.no_grad():
        out = model16(input_ids=x, output_hidden_states=True, use_cache=False)
    states = [*out.hidden_states, out.logits]
    bad = [i for i, h in enumerate(states) if not bool(torch.isfinite(h).all())]
    if not bad:
        return
    layers = len(states) - 2  # hidden_states: the embeddings, then one per decoder layer
    where = {0: "in the embeddings", layers + 1: "in the logits"}.get(
        bad[0], f"after decoder layer {bad[0]} of {layers}"
    )
    raise InputError(
        f"{name} does not fit fp16: its hidden states reach {peak:.3g} (fp16 holds "
        f"+-{FP16_MAX:.0f}) and the fp16 model turns inf/NaN {where} on {x.shape[1]} tokens; "
        "export with --precision fp16 instead: it keeps the nodes fp16 cannot hold in fp32"
    )


def refuse_fp16_kernels(config: dict, where: str) -> None:
    """TensorRT's --fp16 (weak typing: any layer may run fp16) on an export whose manifest says
    its hidden states pass fp16's range: InputError. Exports made before `hidden_peak` pass."""
    peak = config.get("hidden_peak")
    if peak is not None and peak > FP16_MAX:
        raise InputError(
            f"{where}: its hidden states reach {peak:.3g} (manifest hidden_peak), past fp16's "
            f"+-{FP16_MAX:.0f}, so --fp16 kernels would overflow; build without --fp16 (strongly "
            "typed) from a `semedge export onnx --precision fp16` export, whose wide nodes stay fp32"
        )
