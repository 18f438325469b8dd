"""`export onnx --precision bf16`: the SemToken encoder in bf16 on OpenVINO too, gated on its spans.

An export made for bf16 runs its prefill on OpenVINO in bf16, and until now its encoder in fp32
("SemToken's spans do not move"). On the CPUs bf16 is chosen for, the fp32 encoder then costs a
large share of a compressed request (27.7 % of the bf16 prefill at 2,048 tokens on an AMX Xeon,
README). The encoder's states only choose spans, so, as for the int8 encoder
(calibration/encoder_int8.py), its gate is the spans: held-out prompts compressed through the
runtime with the fp32 encoder (ONNX Runtime) and with OpenVINO's bf16 one, at R=2.4, R=4 and with
a query, must keep a mean span-set Jaccard of at least `min_agreement` (0.99), and the bf16 encoder
must run faster. Otherwise the encoder stays fp32: the export itself is not refused for it.
The manifest records the measurement under `config.encoder_precision`; the OpenVINO provider reads
it (runtime/backends/providers.openvino_backends). Torch-free.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from semedge.artifacts import load_manifest, write_manifest
from semedge.calibration.encoder_int8 import MAX_PROMPTS, PROMPT_TOKENS, encoder_ms, span_agreement

__all__ = ["MIN_SPAN_AGREEMENT", "MIN_PROMPT_TOKENS", "bf16_encoder", "text_prompts"]

log = logging.getLogger(__name__)

MIN_SPAN_AGREEMENT = 0.99  # mean span-set Jaccard with the fp32 encoder
MIN_PROMPT_TOKENS = 64  # shorter prompts barely compress: too little to compare spans on


def text_prompts(tokenizer: Any, text: str, tokens: int) -> list[str]:
    """Up to MAX_PROMPTS consecutive prompts of `tokens` tokens from the start of `text` (fewer
    when the text is shorter)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    n = min(MAX_PROMPTS, len(ids) // tokens)
    return [tokenizer.decode(ids[i * tokens : (i + 1) * tokens]) for i in range(n)]


def bf16_encoder(
    cand: Path, text: str, min_agreement: float = MIN_SPAN_AGREEMENT, threads: int | None = None
) -> dict[str, Any]:
    """Measure `cand`'s encoder in bf16 on OpenVINO against fp32 on ONNX Runtime and, when it
    passes (spans and speed), record it in `cand`'s manifest as `config.encoder_precision`.

    Args:
        cand: a bf16 export candidate (plain attention, so OpenVINO reads it).
        text: held-out text for the span prompts (the gate's windows never see it).
        min_agreement: the mean span-set Jaccard the bf16 spans must keep.
        threads: inference threads for both encoders (None: the providers' default).

    Returns:
        The measurement, with "precision" ("bf16" when recorded, else "fp32") and "reason".
    """
    from semedge.runtime import Pipeline
    from semedge.runtime.backends.openvino import OpenVinoBackend

    with Pipeline.from_pretrained(cand, providers="cpu", threads=threads, verify=False) as pipe:
        if "encoder" not in pipe.backends:
            return {"precision": "fp32", "reason": "the export has no SemToken encoder"}
        tokens = min(PROMPT_TOKENS, pipe.compression.encoder_window, pipe.max_positions)
        prompts = text_prompts(pipe.tokenizer, text, tokens)
        if len(prompts) < 2 or tokens < MIN_PROMPT_TOKENS:
            return {"precision": "fp32", "reason": f"needs 2 prompts of {MIN_PROMPT_TOKENS}+ "
                    f"tokens of held-out text, found {len(prompts)} of {tokens}"}  # fmt: skip
        fp32 = pipe.backends["encoder"]
        enc = OpenVinoBackend(fp32.path, fp32.spec, threads, "bf16").load()
        try:
            agree = span_agreement(pipe, enc, prompts)
            fp32_ms, bf16_ms = encoder_ms(pipe, enc, tokens)
        finally:
            enc.close()
    rec = {"provider": "openvino", **agree, "prompts": len(prompts), "prompt_tokens": tokens,
           "min_agreement": min_agreement, "encoder_ms_fp32": round(fp32_ms, 2),
           "encoder_ms_bf16": round(bf16_ms, 2), "window_tokens": tokens}  # fmt: skip
    if agree["mean_jaccard"] < min_agreement:
        reason = f"spans agree at mean Jaccard {agree['mean_jaccard']:.4f} < {min_agreement:g}"
    elif bf16_ms >= fp32_ms:
        reason = f"bf16 is no faster ({bf16_ms:.1f} ms against {fp32_ms:.1f} ms a window)"
    else:
        reason = None
    log.info("bf16 encoder: spans %d/%d identical (mean Jaccard %.4f), %.1f -> %.1f ms a "
             "%d-token window: %s", agree["identical"], agree["cases"], agree["mean_jaccard"],
             fp32_ms, bf16_ms, tokens, reason or "kept")  # fmt: skip
    if reason is not None:
        return {**rec, "precision": "fp32", "reason": reason}
    rec = {**rec, "precision": "bf16"}
    m = load_manifest(cand)
    m.config = {**m.config, "encoder_precision": rec}
    write_manifest(cand, m)
    return rec
