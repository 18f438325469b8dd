"""A weight-only int8 SemToken encoder (`calibrate int8 --encoder int8`), gated on the spans.

The encoder's states only choose spans, so its gate is the spans it leads to, not perplexity:
held-out prompts are compressed through the runtime (`Pipeline.prepare`) with the fp32 and the
int8 encoder at R=2.4 and 4 and with a query, and the mean Jaccard overlap of their span sets
must reach `min_span_agreement` (0.99). Measured on SmolLM2 (scratch script, 36 prompts of
2,000 tokens each of WikiText-2 test and of the Vim manual): 35 / 34 of 36 span sets identical,
mean Jaccard 0.997 / 0.998; the encoder window ran 1.22x faster (MatMulNBits, int8 compute).
ONNX Runtime's dynamic int8 ran it 1.57x faster but moved the states to a cosine of 0.983.
Torch-free.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from semedge import constants as C
from semedge.calibration.data import with_backends
from semedge.calibration.schemes import ensure_node_names, quantize_graph
from semedge.errors import AccuracyError, InputError
from semedge.logs import log_timed

__all__ = [
    "PROMPT_TOKENS", "span_prompts", "span_agreement", "encoder_ms", "gate_encoder", "int8_encoder",
]  # fmt: skip

log = logging.getLogger(__name__)

PROMPT_TOKENS = 1024  # tokens per held-out prompt of the span gate
MAX_PROMPTS = 8
CASES = ((2.4, None), (4.0, None), (2.4, "What is this text about?"))  # ratio, query


def span_prompts(stream: Any, start: int, end: int) -> list[str]:
    """Up to MAX_PROMPTS texts of PROMPT_TOKENS tokens from token range [start, end) of
    `stream` (calibration.data.TokenStream): text neither the ranges nor the held-out windows use.

    Raises:
        InputError: fewer than 2 prompts fit.
    """
    n = min(MAX_PROMPTS, (end - start) // PROMPT_TOKENS)
    if n < 2:
        raise InputError(
            f"--encoder int8 needs {2 * PROMPT_TOKENS} tokens of --data between the calibration "
            f"and held-out windows for its span gate, found {max(0, end - start)}; give a longer "
            "--data file or fewer --samples"
        )
    return [stream.text_of(slice(start + i * PROMPT_TOKENS, start + (i + 1) * PROMPT_TOKENS))
            for i in range(n)]  # fmt: skip


def _span_set(prepared: Any) -> set[tuple[int, int]]:
    spans = prepared.spans
    return set() if spans is None else {tuple(s) for s in np.asarray(spans).reshape(-1, 2).tolist()}


def span_agreement(pipe: Any, encoder: Any, prompts: list[str]) -> dict[str, Any]:
    """Span sets of `prompts` compressed with `pipe`'s encoder and with `encoder`, for every
    case of CASES: mean and min Jaccard overlap, and how many were identical."""
    quant = with_backends(pipe, encoder=encoder)
    jac = []
    for text in prompts:
        for ratio, query in CASES:
            a = _span_set(pipe.prepare(text, ratio=ratio, query=query))
            b = _span_set(quant.prepare(text, ratio=ratio, query=query))
            jac.append(len(a & b) / max(1, len(a | b)))
    return {"mean_jaccard": float(np.mean(jac)), "min_jaccard": float(np.min(jac)),
            "identical": int(sum(j == 1.0 for j in jac)), "cases": len(jac),
            "prompt_tokens": PROMPT_TOKENS}  # fmt: skip


def encoder_ms(pipe: Any, encoder: Any, tokens: int, repeats: int = 3) -> tuple[float, float]:
    """(`pipe`'s encoder, `encoder`) ms on one window of `tokens` ids, best of `repeats` after a
    warm-up. Each encoder's runs go back to back: ONNX Runtime's threads spin on after a run
    and would slow whatever runs next on the same cores (measured: OpenVINO's bf16 encoder
    28.7 ms alone, 54 ms right after an ONNX Runtime run)."""
    vocab = int(pipe.config.get("vocab_size") or 1100)
    from semedge.runtime.pipeline import encoder_feeds

    ids = np.arange(tokens, dtype=np.int64) % min(1000, vocab - 1) + 1
    feeds = encoder_feeds(pipe.backends["encoder"], ids)
    best = []
    for enc in (pipe.backends["encoder"], encoder):
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            enc.run(feeds, [C.ENCODER_HIDDEN])
            times.append((time.perf_counter() - t0) * 1e3)
        best.append(min(times[1:]))
    return best[0], best[1]


def gate_encoder(
    pipe: Any, int8_path: Path, prompts: list[str], min_agreement: float, tokens: int
) -> dict[str, Any]:
    """Load the int8 encoder beside `pipe`'s, measure its spans and speed, and return the
    manifest record.

    Raises:
        AccuracyError: the mean span agreement is under `min_agreement`.
    """
    from semedge.runtime.backends.ort import OrtBackend

    old = pipe.backends["encoder"]
    enc = OrtBackend(int8_path, old.providers, old.spec, old.threads)
    enc.load()
    window = min(tokens, pipe.compression.encoder_window)
    try:
        agree = span_agreement(pipe, enc, prompts)
        fp32_ms, int8_ms = encoder_ms(pipe, enc, window)
    finally:
        enc.close()
    rec = {"scheme": "weight-only", **agree, "min_agreement": min_agreement,
           "encoder_ms_fp32": fp32_ms, "encoder_ms_int8": int8_ms, "window_tokens": window}  # fmt: skip
    log.info("int8 encoder: spans %d/%d identical, mean Jaccard %.4f; %.1f -> %.1f ms a window",
             agree["identical"], agree["cases"], agree["mean_jaccard"], fp32_ms, int8_ms)  # fmt: skip
    if agree["mean_jaccard"] < min_agreement:
        raise AccuracyError(
            f"the int8 encoder's spans agree with fp32's at mean Jaccard "
            f"{agree['mean_jaccard']:.4f} < {min_agreement:g}; keep --encoder fp32"
        )
    return rec


def int8_encoder(run: Any, stream: Any, start: int, end: int) -> dict:
    """The weight-only int8 encoder, quantized and gated on its spans; its record with the
    graph's scratch path under "path" (calibration.int8's _Run: `run`; the held-out text:
    tokens [start, end) of `stream`).

    Raises:
        InputError: the export has no encoder, or too little text for the gate.
        AccuracyError: its spans agree with fp32's under --min-span-agreement.
    """
    if "encoder" not in run.pipe.backends:
        raise InputError("--encoder int8: this export has no SemToken encoder")
    prompts = span_prompts(stream, start, end)
    named = ensure_node_names(run.src / C.ENCODER_ONNX, run.scratch / "named")
    path = run.scratch / "encoder-int8" / C.ENCODER_ONNX
    with log_timed(log, "weight-only int8 encoder: quantize and compare spans"):
        quantize_graph(named, path, run.settings("weight-only"))
        rec = gate_encoder(run.pipe, path, prompts, run.config.min_span_agreement,
                           run.config.speed_tokens)  # fmt: skip
    return {**rec, "block_size": run.config.block_size, "path": path}
