"""Calibration inputs from real text through the deployed runtime itself.

Windows of the calibration text go through `Pipeline.prepare` (tokenizer, special tokens,
encoder windows, SemToken merge and the export's adapter), prefill feeds are batched as the
Generator batches them, and decode feeds are the ones the runtime's Generator feeds decode.onnx
after the fp32 prefill. The ranges ONNX Runtime's calibrator sees are therefore the ones the
deployed model sees. Torch-free (numpy, onnxruntime, tokenizers).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semedge import constants as C
from semedge.errors import InputError
from semedge.runtime.generator import Generator, batch_inputs
from semedge.runtime.pipeline import Pipeline, PreparedPrompt
from semedge.runtime.sampling import GenerationConfig

__all__ = [
    "TokenStream",
    "FeedReader",
    "tokenize_stream",
    "split_tokens",
    "prepare_windows",
    "prefill_feeds",
    "decode_feeds",
    "with_graphs",
    "data_fingerprint",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenStream:
    """A calibration text tokenized once: ids and each token's character offsets."""

    text: str
    ids: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (N, 2) [start, end) characters of each token

    def text_of(self, window: slice) -> str:
        """The text of a token window, cut at its tokens' character offsets."""
        start, stop = self.offsets[window.start, 0], self.offsets[window.stop - 1, 1]
        return self.text[start:stop]


def tokenize_stream(pipe: Pipeline, text: str) -> TokenStream:
    """Tokenize calibration text with the export's tokenizer (no special tokens added)."""
    enc = pipe.tokenizer.encode(text, add_special_tokens=False)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    return TokenStream(text, np.asarray(enc.ids, dtype=np.int64), offsets)


def split_tokens(
    n: int, samples: int, seq_len: int, eval_windows: int, eval_len: int
) -> tuple[list[slice], list[slice]]:
    """Cut a stream of `n` tokens into calibration windows (head) and held-out windows (tail).

    The two parts never overlap, so the quality measured is on text the ranges never saw.

    Raises:
        InputError: the stream is too short for the asked windows.
    """
    need_cal, need_eval = samples * seq_len, eval_windows * eval_len
    if n < need_cal + need_eval:
        raise InputError(
            f"calibration data has {n} tokens but --samples {samples} x {seq_len} tokens "
            f"plus {eval_windows} held-out windows of {eval_len} need {need_cal + need_eval}; "
            "give a longer --data file or fewer --samples"
        )
    cal = [slice(i * seq_len, (i + 1) * seq_len) for i in range(samples)]
    tail = n - need_eval
    held = [slice(tail + i * eval_len, tail + (i + 1) * eval_len) for i in range(eval_windows)]
    return cal, held


def _ratio(pipe: Pipeline, text: str) -> float | None:
    """The ratio the export compresses `text` at by default (None: it does not compress)."""
    cfg = pipe.compression
    if "encoder" not in pipe.backends or not pipe.config.get("compression"):
        return None
    if cfg.ratio is None:  # a target_tokens export
        return len(pipe.tokenize(text).ids) / cfg.target_tokens
    return cfg.ratio if cfg.ratio > 1.0 else None


def prepare_windows(
    pipe: Pipeline, texts: list[str], compress: bool = True
) -> list[PreparedPrompt]:
    """Each window as the runtime prepares it at the export's default ratio (`compress`) or
    uncompressed; a window too protected to reach the ratio is calibrated as is."""
    out = []
    for text in texts:
        ratio = _ratio(pipe, text) if compress else None
        try:
            out.append(pipe.prepare(text, ratio))
        except InputError as err:  # e.g. the recency window covers the whole window
            log.debug("window not compressed: %s", err)
            out.append(pipe.prepare(text))
    return out


def prefill_feeds(pipe: Pipeline, prompts: list[PreparedPrompt]) -> list[dict[str, np.ndarray]]:
    """Feeds for prefill.onnx, one prompt per batch, exactly as the Generator builds them."""
    feeds = []
    for prompt in prompts:
        embeds, pos, mask = batch_inputs([prompt], pipe.embed_dtype)
        feeds.append({C.INPUTS_EMBEDS: embeds, C.POSITION_IDS: pos, C.ATTENTION_MASK: mask})
    return feeds


def decode_feeds(
    pipe: Pipeline, prompts: list[PreparedPrompt], steps: int = 2
) -> list[dict[str, np.ndarray]]:
    """Feeds for decode.onnx: what the runtime's Generator feeds it for `steps` greedy tokens
    after prefilling each prompt (past keys/values copied from its KV cache)."""
    out: list[dict[str, np.ndarray]] = []
    config = GenerationConfig(max_new_tokens=steps + 1, ignore_eos=True)
    for prompt in prompts:
        gen = Generator(pipe, config, tap=out.append)
        gen.append_prompts([prompt])
        for _ in range(steps + 1):  # the first token needs no decode; each later one does
            gen.generate_next_token()
    return out


@contextmanager
def with_graphs(pipe: Pipeline, folder: Path | None) -> Iterator[Pipeline]:
    """`pipe` running the prefill/decode graphs in `folder` (a quantized or fp16 copy; None, or a
    graph absent from it: its own); tokenizer, embed and encoder stay shared. The copies'
    sessions close on exit."""
    if folder is None:
        yield pipe
        return
    from semedge.runtime.backends.ort import OrtBackend

    backends, own = dict(pipe.backends), []
    for key, name in (("prefill", C.PREFILL_ONNX), ("decode", C.DECODE_ONNX)):
        if (Path(folder) / name).exists():  # absent: not quantized, the export's own serves
            old = pipe.backends[key]
            backends[key] = OrtBackend(Path(folder) / name, old.providers, old.spec, old.threads)
            own.append(key)
    try:
        for key in own:
            backends[key].load()
        yield Pipeline(pipe.path, pipe.manifest, pipe.tokenizer, backends)
    finally:
        for key in own:
            backends[key].close()


def with_backends(pipe: Pipeline, **backends: Any) -> Pipeline:
    """A shallow copy of `pipe` with some backends replaced or added (the sessions are shared,
    not copied, and stay open when the copy is dropped)."""
    import copy

    out = copy.copy(pipe)
    out.backends = {**pipe.backends, **backends}
    return out


class FeedReader:
    """An onnxruntime CalibrationDataReader over prepared feed dicts; counts `get_next` calls.

    Keys starting with "_" are bookkeeping and never reach ONNX Runtime.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.calls = 0
        self._it: Iterator[dict] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.calls += 1
        if self._it is None:
            self._it = iter(self.feeds)
        feed = next(self._it, None)
        return None if feed is None else {k: v for k, v in feed.items() if not k.startswith("_")}

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return len(self.feeds)


def data_fingerprint(text: str, **settings: Any) -> str:
    """SHA-256 of the calibration text and every setting that changes the collected ranges."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()
