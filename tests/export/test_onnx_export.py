"""ONNX export of the tiny Llama, Qwen2 and GPT-2: graph I/O, manifest, tamper detection."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from semedge import constants as C
from semedge.artifacts import load_manifest, verify_manifest
from semedge.config import CompressionConfig, adapter_layout
from semedge.errors import ArtifactError, InputError
from semedge.export import ExportConfig, ParityConfig, export_onnx
from semedge.export.graphs import past_names, present_names
from semedge.runtime.backends.ort import session_from_path

FAST = ParityConfig(lengths=(7, 48), decode_steps=2)

CONFIG_KEYS = {
    "model", "model_type", "max_context", "dtype", "num_layers", "num_kv_heads", "head_dim",
    "hidden_size", "vocab_size", "eos_token_id", "bos_token_id", "logits", "compression",
    "encoder", "adapter", "hidden_peak",
}  # fmt: skip


def test_tiny_llama_export_has_the_contract(tiny_export):
    m = verify_manifest(tiny_export, load_manifest(tiny_export, expect_format=C.FORMAT_EXPORT))
    assert set(m.config) == CONFIG_KEYS
    k = CompressionConfig().encoder_layers  # the encoder graph runs the default depth
    assert m.config["logits"] == "last" and m.config["encoder"] == {"kind": "lm", "layers": k}
    for f in (C.EMBED_ONNX, C.ENCODER_ONNX, C.PREFILL_ONNX, C.DECODE_ONNX, C.TOKENIZER_JSON,
              C.SEMEDGE_CONFIG, "tokenizer_config.json"):  # fmt: skip
        assert f in m.files, f
    n = m.config["num_layers"]
    decode = m.graphs["decode"]
    assert list(decode["inputs"])[:3] == [C.INPUT_IDS, C.POSITION_IDS, C.ATTENTION_MASK]
    assert list(decode["inputs"])[3:] == past_names(n)
    assert list(decode["outputs"]) == [C.LOGITS, *present_names(n)]
    assert decode["inputs"][past_names(n)[0]]["shape"] == [
        "batch_size",
        m.config["num_kv_heads"],
        "past_sequence_length",
        m.config["head_dim"],
    ]
    prefill = onnx.load(str(tiny_export / C.PREFILL_ONNX), load_external_data=False)
    ops = {node.op_type for node in prefill.graph.node}
    assert "GroupQueryAttention" in ops and "If" not in ops and "Loop" not in ops
    assert [i.name for i in prefill.graph.input] == list(m.graphs["prefill"]["inputs"])


CPU = ["CPUExecutionProvider"]


def test_prefill_then_decode_runs_with_gaps_in_positions(tiny_export):
    """Non-contiguous positions (a compressed prompt) and a 3-step decode chain on ORT alone."""
    m = load_manifest(tiny_export)
    n, kv, hd = m.config["num_layers"], m.config["num_kv_heads"], m.config["head_dim"]
    embed = session_from_path(tiny_export / C.EMBED_ONNX, CPU)
    prefill = session_from_path(tiny_export / C.PREFILL_ONNX, CPU)
    decode = session_from_path(tiny_export / C.DECODE_ONNX, CPU)
    ids = np.array([[5, 9, 30, 41, 7, 2]], dtype=np.int64)
    emb = embed.run(None, {C.INPUT_IDS: ids})[0]
    pos = np.array([[0, 1, 4, 7, 8, 9]], dtype=np.int64)
    out = prefill.run(None, {C.INPUTS_EMBEDS: emb, C.POSITION_IDS: pos,
                             C.ATTENTION_MASK: np.ones_like(ids)})  # fmt: skip
    assert out[0].shape == (1, 1, m.config["vocab_size"])
    assert out[1].shape == (1, kv, 6, hd) and len(out) == 1 + 2 * n
    past = out[1:]
    for step in range(3):
        tok = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        feeds = {C.INPUT_IDS: tok, C.POSITION_IDS: np.array([[10 + step]], dtype=np.int64),
                 C.ATTENTION_MASK: np.ones((1, 7 + step), dtype=np.int64)}  # fmt: skip
        out = decode.run(None, {**feeds, **dict(zip(past_names(n), past, strict=True))})
        past = out[1:]
        assert past[0].shape == (1, kv, 7 + step, hd)
        assert np.isfinite(out[0]).all()


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])  # llama: the tiny_export fixture
def test_tiny_family_passes_the_gate(tiny_models, tmp_path, family):
    out = tmp_path / family
    report = export_onnx(tiny_models[family], out, ExportConfig(parity=FAST))
    assert report.passed and report.parity is not None
    cases = {c.case for c in report.parity.cases}
    assert {"embed", "encoder", "text", "batch", "compressed"} <= cases
    assert max(c.max_abs for c in report.parity.cases) < 1e-4
    assert all(c.top1 == 1.0 for c in report.parity.cases)
    assert load_manifest(out).config["model_type"] == family


def test_full_logits_and_plain_attention(tiny_gpt2, tmp_path):
    cfg = ExportConfig(full_logits=True, attention="plain", parity=FAST)
    report = export_onnx(tiny_gpt2, tmp_path / "o", cfg)
    assert report.passed
    m = load_manifest(tmp_path / "o")
    assert m.config["logits"] == "all" and m.extra["attention"] == "plain"
    assert m.graphs["prefill"]["outputs"][C.LOGITS]["shape"][1] == "sequence_length"
    graph = onnx.load(str(tmp_path / "o" / C.PREFILL_ONNX)).graph
    ops = {n.op_type for n in graph.node}
    assert "GroupQueryAttention" not in ops and "Softmax" in ops
    from semedge.export.attention import PLAIN_QUERY_BLOCKS

    softmax = sum(n.op_type == "Softmax" for n in graph.node)
    assert softmax == PLAIN_QUERY_BLOCKS * m.config["num_layers"]  # causal query blocks (prefill)
    decode = onnx.load(str(tmp_path / "o" / C.DECODE_ONNX)).graph
    assert sum(n.op_type == "Softmax" for n in decode.node) == m.config["num_layers"]


def test_manifest_detects_a_tampered_graph(tiny_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    data = bytearray((copy / C.DECODE_ONNX).read_bytes())
    data[-100] ^= 0x01
    (copy / C.DECODE_ONNX).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decode.onnx does not match its SHA-256"):
        verify_manifest(copy)


def test_semedge_config_records_compression(tiny_export):
    cfg = json.loads((tiny_export / C.SEMEDGE_CONFIG).read_text())
    assert cfg["compression"] == CompressionConfig().to_dict() and cfg["adapter"] is None


def test_bad_options_fail_before_any_work(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="--opset between 14 and 20"):
        ExportConfig(opset=7)
    with pytest.raises(InputError, match="max-context 4096 exceeds"):
        export_onnx(tiny_llama, tmp_path / "o", ExportConfig(max_context=4096))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_adapter_is_shipped_without_auxiliary_heads(tiny_llama, tmp_path):
    from safetensors.numpy import load_file

    from semedge.models import load_model, model_id
    from semedge.training.adapter import SpanAdapter, model_fingerprint, save_adapter

    model, _ = load_model(tiny_llama)
    adapter_dir = tmp_path / "adapter"
    save_adapter(adapter_dir, SpanAdapter(64, width=8, buckets=4),
                 {"model_id": model_id(tiny_llama), "fingerprint": model_fingerprint(model)})  # fmt: skip
    fast = ParityConfig(lengths=(7,), decode_steps=1, batch=False)
    out = tmp_path / "o"
    export_onnx(tiny_llama, out, ExportConfig(adapter=str(adapter_dir), parity=fast))
    m = verify_manifest(out)
    assert m.config["adapter"] == C.ADAPTER_WEIGHTS and C.ADAPTER_WEIGHTS in m.files
    assert not any("recon" in k for k in load_file(str(out / C.ADAPTER_WEIGHTS)))
    assert json.loads((out / C.SEMEDGE_CONFIG).read_text())["adapter"]["file"] == C.ADAPTER_WEIGHTS
    # it recorded no settings: the defaults, with merged spans kept for the adapter
    assert m.config["compression"] == adapter_layout(CompressionConfig()).to_dict()
    assert m.config["compression"]["merged_spans"] == "keep"


def test_export_takes_the_compression_the_adapter_was_trained_with(tiny_llama, tmp_path):
    from semedge.models import load_model, model_id
    from semedge.runtime import Pipeline
    from semedge.training.adapter import SpanAdapter, model_fingerprint, save_adapter

    model, _ = load_model(tiny_llama)
    trained = CompressionConfig.adapter_default(ratio=2.4)
    adapter_dir = tmp_path / "adapter"
    save_adapter(adapter_dir, SpanAdapter(64, width=8, buckets=4),
                 {"model_id": model_id(tiny_llama), "fingerprint": model_fingerprint(model),
                  "compression": trained.to_dict()})  # fmt: skip
    fast = ParityConfig(lengths=(7,), decode_steps=1, batch=False)
    out = tmp_path / "o"
    export_onnx(tiny_llama, out, ExportConfig(adapter=str(adapter_dir), parity=fast))
    assert verify_manifest(out).config["compression"] == trained.to_dict()
    assert Pipeline.from_pretrained(out).compression == trained
    # settings the user chose explicitly are kept
    own = CompressionConfig(max_span=12)
    export_onnx(tiny_llama, tmp_path / "p",
                ExportConfig(adapter=str(adapter_dir), parity=fast, compression=own))  # fmt: skip
    assert verify_manifest(tmp_path / "p").config["compression"] == adapter_layout(own).to_dict()


def test_adapter_for_another_model_is_refused(tiny_llama, tiny_gpt2, tmp_path):
    from semedge.models import load_model, model_id
    from semedge.training.adapter import SpanAdapter, model_fingerprint, save_adapter

    model, _ = load_model(tiny_gpt2)
    adapter_dir = tmp_path / "adapter"
    save_adapter(adapter_dir, SpanAdapter(64, width=8, buckets=4),
                 {"model_id": model_id(tiny_gpt2), "fingerprint": model_fingerprint(model)})  # fmt: skip
    with pytest.raises(InputError, match="trained for model"):
        export_onnx(tiny_llama, tmp_path / "o", ExportConfig(adapter=str(adapter_dir)))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_decode_graph_rotates_each_token_at_its_own_position(family, tiny_models, request):
    """The fused decode graph rotates q/k inside GroupQueryAttention (do_rotary, from cos/sin
    caches): a 3-token chunk with gaps in its position ids over a gapped past (what chunked
    prefill of a compressed prompt feeds) gives the Hugging Face model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    export = request.getfixturevalue("tiny_export" if family == "llama" else "tiny_export_gemma3")
    m = load_manifest(export)
    n = m.config["num_layers"]
    decode_graph = onnx.load(str(export / C.DECODE_ONNX), load_external_data=False)
    gqa = [x for x in decode_graph.graph.node if x.op_type == "GroupQueryAttention"]
    assert len(gqa) == n
    assert all(a.i == 1 for x in gqa for a in x.attribute if a.name == "do_rotary")
    assert all(any(a.name == "do_rotary" for a in x.attribute) for x in gqa)
    negs = sum(x.op_type == "Neg" for x in decode_graph.graph.node)
    assert negs < n  # no rotate-half glue (2 Neg per layer)

    ids = np.array([[3, 17, 8, 25, 11, 40, 6]], dtype=np.int64)
    pos = np.array([[0, 2, 3, 9, 14, 15, 21]], dtype=np.int64)  # gaps everywhere
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(ids), position_ids=torch.from_numpy(pos)).logits[0, -1]
    embed = session_from_path(export / C.EMBED_ONNX, CPU)
    prefill = session_from_path(export / C.PREFILL_ONNX, CPU)
    decode = session_from_path(export / C.DECODE_ONNX, CPU)
    emb = embed.run(None, {C.INPUT_IDS: ids[:, :4]})[0]
    out = prefill.run(None, {C.INPUTS_EMBEDS: emb, C.POSITION_IDS: pos[:, :4],
                             C.ATTENTION_MASK: np.ones((1, 4), dtype=np.int64)})  # fmt: skip
    feeds = {C.INPUT_IDS: ids[:, 4:], C.POSITION_IDS: pos[:, 4:],
             C.ATTENTION_MASK: np.ones((1, 7), dtype=np.int64)}  # fmt: skip
    got = decode.run(None, {**feeds, **dict(zip(past_names(n), out[1:], strict=True))})[0][0, -1]
    assert np.abs(got - want.numpy()).max() < 1e-4
    shifted = {**feeds, C.POSITION_IDS: pos[:, 4:] + np.array([[0, 1, 0]])}  # one id moved
    moved = decode.run(None, {**shifted, **dict(zip(past_names(n), out[1:], strict=True))})[0]
    assert np.abs(moved[0, -1] - want.numpy()).max() > 1e-3  # the positions do matter


def test_encoder_skips_the_context_rows_of_a_window_with_the_same_states(tiny_export):
    """encoder.onnx returns rows keep_from.. only (their output projection and MLP run on those
    rows alone); the runtime's overlapping windows feed it and get the states a full window
    gives those rows."""
    import dataclasses

    from semedge.compressor.windows import encoder_windows
    from semedge.runtime import Pipeline

    with Pipeline.from_pretrained(tiny_export, providers="cpu") as pipe:
        enc = pipe.backends["encoder"]
        assert C.KEEP_FROM in enc.inputs
        ids = (np.arange(300, dtype=np.int64) * 7) % 300 + 3
        window = 96
        pipe.compression = dataclasses.replace(pipe.compression, encoder_window=window)
        got = pipe.encode(ids)
        plan = encoder_windows(len(ids), window)
        assert any(keep > start for start, _, keep in plan)  # some windows have context rows
        for start, end, keep in plan:
            chunk = ids[start:end].reshape(1, -1)
            feeds = {C.INPUT_IDS: chunk, C.ATTENTION_MASK: np.ones_like(chunk)}
            full = enc.run({**feeds, C.KEEP_FROM: np.array([0])}, [C.ENCODER_HIDDEN])
            want = full[C.ENCODER_HIDDEN][0, keep - start :]
            kept = enc.run({**feeds, C.KEEP_FROM: np.array([keep - start])}, [C.ENCODER_HIDDEN])
            assert kept[C.ENCODER_HIDDEN].shape[1] == end - keep  # context rows not returned
            np.testing.assert_allclose(got[keep:end], want, rtol=1e-5, atol=1e-5)
