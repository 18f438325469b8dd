"""Calibration inputs are the deployed runtime's: Pipeline.prepare, adapter included."""

from __future__ import annotations

import dataclasses

import numpy as np

from semedge import constants as C
from semedge.calibration.data import (
    decode_feeds,
    prefill_feeds,
    prepare_windows,
    split_tokens,
    tokenize_stream,
)
from semedge.calibration.int8 import open_export
from semedge.export import ExportConfig, ParityConfig, export_onnx


def _adapter_export(tiny_llama, tmp_path):
    """The tiny Llama exported with a span adapter that is not the identity."""
    import torch

    from semedge.models import load_model, model_id
    from semedge.training.adapter import SpanAdapter, model_fingerprint, save_adapter

    model, _ = load_model(tiny_llama)
    adapter = SpanAdapter(model.config.hidden_size, width=8, buckets=4)
    with torch.no_grad():
        adapter.w2.weight.normal_(0.0, 0.5)
        adapter.gain.fill_(0.3)
    meta = {"model_id": model_id(tiny_llama), "fingerprint": model_fingerprint(model)}
    save_adapter(tmp_path / "adapter", adapter, meta)
    out = tmp_path / "export"
    fast = ParityConfig(lengths=(7,), decode_steps=1, batch=False, compressed=False)
    export_onnx(tiny_llama, out, ExportConfig(adapter=str(tmp_path / "adapter"), parity=fast))
    return out


def test_calibration_inputs_equal_pipeline_prepare_with_an_adapter(
    tiny_llama, tiny_export, cal_text, tmp_path
):
    _, pipe = open_export(_adapter_export(tiny_llama, tmp_path))
    _, plain = open_export(tiny_export)  # the same model without the adapter
    with pipe, plain:
        stream = tokenize_stream(pipe, cal_text.read_text(encoding="utf-8")[:20_000])
        cal, _ = split_tokens(stream.ids.size, 2, 300, 1, 8)
        texts = [stream.text_of(w) for w in cal]
        prompts = prepare_windows(pipe, texts)
        feeds = prefill_feeds(pipe, prompts)
        ratio = pipe.compression.ratio
        for text, feed in zip(texts, feeds, strict=True):
            want = pipe.prepare(text, ratio)
            assert len(want.positions) < len(want.ids) / 2  # really compressed
            np.testing.assert_array_equal(feed[C.INPUTS_EMBEDS][0], want.embeds)
            np.testing.assert_array_equal(feed[C.POSITION_IDS][0], want.positions)
            assert feed[C.ATTENTION_MASK].shape == (1, len(want.positions))
        # the adapter is in them: without it the same spans give other multi-token rows
        assert pipe.compression.merged_spans == "keep"  # an adapter keeps merged spans
        plain.compression = dataclasses.replace(plain.compression, merged_spans="keep")
        base = plain.prepare(texts[0], ratio)
        np.testing.assert_array_equal(base.spans, prompts[0].spans)
        multi = (base.spans[:, 1] - base.spans[:, 0]) > 1
        assert multi.any()
        got = feeds[0][C.INPUTS_EMBEDS][0]
        np.testing.assert_array_equal(got[~multi], base.embeds[~multi])
        assert not np.allclose(got[multi], base.embeds[multi])
        # decode feeds follow the runtime's rule: positions continue where the prompt says, the past holds T'
        first = decode_feeds(pipe, prompts[:1], steps=2)
        assert len(first) == 2
        assert int(first[0][C.POSITION_IDS][0, 0]) == prompts[0].first_new_position
        past = first[1][C.PAST_KEY.format(i=0)]
        assert past.shape[2] == len(prompts[0].positions) + 1
