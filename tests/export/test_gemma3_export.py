"""Gemma 3 export on the tiny random Gemma 3 (window 16, QK-norm, sandwich norms, scaled
embeddings): local layers are banded (fused: local_window_size; plain: the mask), the embed graph
scales, and the parity gate sees a window that is wrong."""

from __future__ import annotations

import numpy as np
import onnx

from semedge import constants as C
from semedge.export import ExportConfig, ParityConfig, export_onnx
from semedge.runtime.backends.ort import session_from_path as _session

CPU = ["CPUExecutionProvider"]
GATE = ParityConfig(lengths=(7, 48), decode_steps=3)  # 48 + 3 slots: three windows of 16


def _gqa_windows(path) -> list[int | None]:
    """local_window_size of every GroupQueryAttention node, in graph order (None: global)."""
    out = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "GroupQueryAttention":
            attrs = {a.name: a.i for a in node.attribute}
            out.append(attrs.get("local_window_size"))
    return out


def test_fused_graphs_band_the_local_layers_only(tiny_export_gemma3):
    for graph in (C.PREFILL_ONNX, C.DECODE_ONNX):  # layer_types: L L G L L G
        assert _gqa_windows(tiny_export_gemma3 / graph) == [16, 16, None, 16, 16, None]


def test_plain_attention_passes_the_gate_with_compression(tiny_models, tmp_path):
    report = export_onnx(
        tiny_models["gemma3"], tmp_path / "o", ExportConfig(attention="plain", parity=GATE)
    )
    assert report.passed
    assert {c.case for c in report.parity.cases} >= {"text", "batch", "compressed"}
    assert max(c.max_abs for c in report.parity.cases) < 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / C.PREFILL_ONNX)).graph.node}
    assert "GroupQueryAttention" not in ops


def test_embed_graph_includes_the_sqrt_d_scale(tiny_models, tiny_export_gemma3):
    from semedge.models import load_model

    model, _ = load_model(tiny_models["gemma3"])
    ids = np.arange(3, 40, dtype=np.int64)[None]
    got = _session(tiny_export_gemma3 / C.EMBED_ONNX, CPU).run(None, {C.INPUT_IDS: ids})[0]
    table = model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_allclose(got[0], table[ids[0]] * np.sqrt(64), rtol=1e-6)


def test_a_wrong_window_is_visible_at_the_gate_lengths(tiny_models, tiny_export_gemma3):
    """The export's logits match the model with its window and not the model without one, so the
    gate's lengths do exercise the band."""
    import torch

    from semedge.models import load_model

    model, tok = load_model(tiny_models["gemma3"])
    ids = tok("The river rises in the northern hills and flows south through farmland. " * 3)
    ids = np.asarray(ids["input_ids"], dtype=np.int64)[None]
    assert ids.shape[1] > 3 * 16
    embeds = _session(tiny_export_gemma3 / C.EMBED_ONNX, CPU).run(None, {C.INPUT_IDS: ids})[0]
    feeds = {C.INPUTS_EMBEDS: embeds, C.POSITION_IDS: np.arange(ids.shape[1])[None],
             C.ATTENTION_MASK: np.ones_like(ids)}  # fmt: skip
    got = _session(tiny_export_gemma3 / C.PREFILL_ONNX, CPU).run(None, feeds)[0][0, -1]

    def last_logits():
        with torch.no_grad():
            return model(torch.as_tensor(ids)).logits[0, -1].numpy()

    assert np.abs(got - last_logits()).max() < 1e-4
    model.config.sliding_window = 4096  # every layer global
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
    assert np.abs(got - last_logits()).max() > 1e-2


def test_compression_keeps_bos_alone_at_position_0(tiny_models):
    from semedge.compressor import SemTokenCompressor
    from semedge.models import load_model
    from tests.runtime.toy_export import sample_text

    model, tok = load_model(tiny_models["gemma3"])
    prompt = SemTokenCompressor(model, tok).compress(sample_text()[:1500], ratio=3.0)
    assert prompt.input_ids[0] == tok.bos_token_id
    assert prompt.spans[0].tolist() == [0, 1]  # BOS is never merged
    assert prompt.compressed_tokens < prompt.original_tokens / 2
    # the merged path scales too: BOS's row is its scaled embedding
    bos = model.get_input_embeddings().weight[tok.bos_token_id].detach() * 8.0
    assert float((prompt.inputs_embeds[0, 0] - bos).abs().max()) < 1e-6


def test_max_context_beyond_the_model_is_one_line(cli, tiny_models, tmp_path):
    from tests.conftest import assert_one_line_error

    out = tmp_path / "o"
    res = cli("export", "onnx", "-m", tiny_models["gemma3"], out, "--max-context", 4096,
              "--no-validate", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "exceeds the model's 2048 positions" in res.stderr and not out.exists()
