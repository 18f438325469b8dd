"""Calibration inputs from real text through the semedge pipeline itself.

tokenize (tokenizer.json) -> embed (embed.onnx) -> SemToken compress (encoder.onnx + spans.py) ->
merged `inputs_embeds` / `position_ids` feeds for prefill.onnx, and decode feeds whose past
keys/values come from running the fp32 prefill. The ranges ONNX Runtime's calibrator sees are
therefore the ones the deployed model sees. Torch-free (numpy, onnxruntime, tokenizers).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from semedge import constants as C
from semedge.config import CompressionConfig
from semedge.deps import require
from semedge.errors import ArtifactError, InputError

__all__ = [
    "ExportGraphs",
    "FeedReader",
    "split_tokens",
    "prefill_feeds",
    "decode_feeds",
    "past_from_presents",
    "data_fingerprint",
    "ort_session",
]

log = logging.getLogger(__name__)

ORT_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def ort_session(path: Path | str, threads: int = 0):
    """A CPU InferenceSession for `path`; ORT load failures become ArtifactError."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises pybind errors on corrupt or unsupported graphs
        msg = str(err).splitlines()[0][:200]
        raise ArtifactError(f"{path} cannot be loaded by ONNX Runtime ({msg}); re-export") from err


@dataclass
class ExportGraphs:
    """An export directory opened for calibration: tokenizer, embed/encoder sessions, config.

    Not thread-safe (lazily opens sessions). Sessions are CPU ORT sessions on the fp32 graphs.
    """

    directory: Path
    config: dict[str, Any]
    _sessions: dict[str, Any] = field(default_factory=dict)
    _tokenizer: Any = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            tokenizers = require("tokenizers")
            path = self.directory / C.TOKENIZER_JSON
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; re-export the model")
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        return self._tokenizer

    def session(self, name: str):
        if name not in self._sessions:
            path = self.directory / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; re-export the model")
            self._sessions[name] = ort_session(path)
        return self._sessions[name]

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def compression(self) -> CompressionConfig | None:
        """The export's compression defaults, or None when it does not compress."""
        data = self.config.get("compression")
        if not data:
            return None
        cfg = CompressionConfig.from_dict(data)
        if cfg.ratio is not None and cfg.ratio <= 1.0 and cfg.target_tokens is None:
            return None
        return cfg

    def tokenize(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return np.asarray(enc.ids, dtype=np.int64)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(T,) ids -> (T, D) float32 input embeddings through embed.onnx."""
        sess = self.session(C.EMBED_ONNX)
        (out,) = sess.run([C.INPUTS_EMBEDS], {C.INPUT_IDS: ids.reshape(1, -1)})
        return np.asarray(out[0], dtype=np.float32)

    def compress(self, ids: np.ndarray, cfg: CompressionConfig) -> tuple[np.ndarray, np.ndarray]:
        """SemToken-merge a window: (T,) ids -> ((n, D) inputs_embeds, (n,) position_ids)."""
        from semedge.compressor import spans as S

        embeds = self.embed(ids)
        feeds = {
            C.INPUT_IDS: ids.reshape(1, -1),
            C.ATTENTION_MASK: np.ones((1, ids.size), np.int64),
        }
        (hidden,) = self.session(C.ENCODER_ONNX).run([C.ENCODER_HIDDEN], feeds)
        texts = [self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]
        special = np.zeros(ids.size, dtype=bool)
        protected = S.protected_mask(texts, special, cfg)
        found, _ = S.find_spans(np.asarray(hidden[0], np.float32), protected, cfg)
        merged = S.merge_embeddings(embeds, found, cfg.span_repr)
        return merged.astype(np.float32), S.span_positions(found, cfg.span_position)


def split_tokens(
    ids: np.ndarray, samples: int, seq_len: int, eval_windows: int, eval_len: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut a token stream into calibration windows (head) and held-out eval windows (tail).

    The two parts never overlap, so the quality measured is on text the ranges never saw.

    Raises:
        InputError: the stream is too short for the asked windows.
    """
    need_cal, need_eval = samples * seq_len, eval_windows * eval_len
    if ids.size < need_cal + need_eval:
        raise InputError(
            f"calibration data has {ids.size} tokens but --samples {samples} x {seq_len} tokens "
            f"plus {eval_windows} held-out windows of {eval_len} need {need_cal + need_eval}; "
            "give a longer --data file or fewer --samples"
        )
    cal = [ids[i * seq_len : (i + 1) * seq_len] for i in range(samples)]
    tail = ids[ids.size - need_eval :]
    held = [tail[i * eval_len : (i + 1) * eval_len] for i in range(eval_windows)]
    return cal, held


def prefill_feeds(graphs: ExportGraphs, windows: list[np.ndarray], compress: bool = True):
    """Feeds for prefill.onnx: merged inputs_embeds (1, n, D), position_ids and attention_mask."""
    cfg = graphs.compression() if compress and graphs.has(C.ENCODER_ONNX) else None
    feeds = []
    for ids in windows:
        embeds, pos = None, None
        if cfg is not None:
            try:
                embeds, pos = graphs.compress(ids, cfg)
            except InputError as err:  # window too protected for the ratio: calibrate it as is
                log.debug("window not compressed: %s", err)
        if embeds is None:
            embeds, pos = graphs.embed(ids), np.arange(ids.size, dtype=np.int64)
        n = embeds.shape[0]
        feeds.append(
            {
                C.INPUTS_EMBEDS: embeds[None],
                C.POSITION_IDS: np.asarray(pos, np.int64)[None],
                C.ATTENTION_MASK: np.ones((1, n), np.int64),
                "_next_ids": ids,  # the window's tokens, for decode feeds (stripped before ORT)
            }
        )
    return feeds


def past_from_presents(results: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """A graph's present.{i}.key/value outputs as the next decode's past_key_values feeds."""
    return {
        name.format(i=i): results[src.format(i=i)]
        for i in range(layers)
        for name, src in ((C.PAST_KEY, C.PRESENT_KEY), (C.PAST_VALUE, C.PRESENT_VALUE))
    }


def decode_feeds(graphs: ExportGraphs, feeds: list[dict], steps: int = 2) -> list[dict]:
    """Feeds for decode.onnx: past keys/values from the fp32 prefill, then `steps` tokens each."""
    prefill = graphs.session(C.PREFILL_ONNX)
    decode = graphs.session(C.DECODE_ONNX)
    layers = int(graphs.config.get("num_layers", 0))
    out_names = [o.name for o in prefill.get_outputs()]
    out = []
    for feed in feeds:
        ids = feed["_next_ids"]
        ort_feed = {k: v for k, v in feed.items() if not k.startswith("_")}
        results = dict(zip(out_names, prefill.run(None, ort_feed), strict=True))
        past = past_from_presents(results, layers)
        n, pos = ort_feed[C.INPUTS_EMBEDS].shape[1], int(ids.size)
        dec_out = [o.name for o in decode.get_outputs()]
        res: dict[str, np.ndarray] = {}
        for step in range(steps):
            tok = ids[-1] if step == 0 else int(np.argmax(res[C.LOGITS][0, -1]))
            f = {
                C.INPUT_IDS: np.array([[tok]], np.int64),
                C.POSITION_IDS: np.array([[pos + step]], np.int64),
                C.ATTENTION_MASK: np.ones((1, n + step + 1), np.int64),
                **past,
            }
            out.append(f)
            res = dict(zip(dec_out, decode.run(None, f), strict=True))
            past = past_from_presents(res, layers)
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
