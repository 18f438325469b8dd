"""Small hand-built ONNX graphs with the export contract's I/O, for the TensorRT/Triton tests.

`make_export` writes a directory shaped like `semedge export onnx` output (embed, encoder, prefill,
decode + manifest) with tiny dims, so check-trt, profiles and Triton run without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from semedge.artifacts import Manifest, write_manifest
from semedge.constants import FORMAT_EXPORT

D, V, N_KV, HD, LAYERS = 8, 16, 2, 4, 2  # hidden, vocab, kv heads, head dim, layers
MAX_CONTEXT = 64
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _kv_nodes(src: str, layer: int, past: bool) -> list[onnx.NodeProto]:
    """(B, T, D) -> (B, n_kv, T, hd) per layer, concatenated after the past when decoding."""
    p = f"/model/layers.{layer}/self_attn"
    nodes = []
    for kind in ("key", "value"):
        w, proj = f"w_{kind}{layer}", f"{kind[0]}_proj"
        nodes += [
            helper.make_node(
                "MatMul", [src, w], [f"{kind}{layer}_flat"], name=f"{p}/{proj}/MatMul"
            ),
            helper.make_node(
                "Reshape",
                [f"{kind}{layer}_flat", "kv_shape"],
                [f"{kind}{layer}_4"],
                name=f"{p}/Reshape_{kind}",
            ),  # fmt: skip
            helper.make_node(
                "Transpose",
                [f"{kind}{layer}_4"],
                [f"{kind}{layer}_t"],
                perm=[0, 2, 1, 3],
                name=f"{p}/Transpose_{kind}",
            ),  # fmt: skip
        ]
        out = f"present.{layer}.{kind}"
        if past:
            nodes.append(helper.make_node(
                "Concat", [f"past_key_values.{layer}.{kind}", f"{kind}{layer}_t"], [out], axis=2,
                name=f"{p}/Concat_{kind}"))  # fmt: skip
        else:
            nodes.append(
                helper.make_node("Identity", [f"{kind}{layer}_t"], [out], name=f"{p}/Id_{kind}")
            )
    return nodes


def _kv_inits() -> list[onnx.TensorProto]:
    inits = [numpy_helper.from_array(np.array([0, 0, N_KV, HD], np.int64), "kv_shape")]
    for layer in range(LAYERS):
        inits += [
            _init(f"w_key{layer}", (D, N_KV * HD), layer),
            _init(f"w_value{layer}", (D, N_KV * HD), 9 + layer),
        ]
    return inits  # fmt: skip


def _kv_outputs(t: str) -> list[onnx.ValueInfoProto]:
    return [_vi(f"present.{i}.{k}", F, ["batch", N_KV, t, HD]) for i in range(LAYERS) for k in ("key", "value")]  # fmt: skip


def prefill_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["inputs_embeds", "lm_head"], ["logits"], name="/lm_head/MatMul")
    ]
    for layer in range(LAYERS):
        nodes += _kv_nodes("inputs_embeds", layer, past=False)
    inputs = [
        _vi("inputs_embeds", F, ["batch", "sequence", D]),
        _vi("position_ids", I64, ["batch", "sequence"]),
        _vi("attention_mask", I64, ["batch", "sequence"]),
    ]
    outputs = [_vi("logits", F, ["batch", "sequence", V]), *_kv_outputs("sequence")]
    return make_model(nodes, inputs, outputs, [_init("lm_head", (D, V), 5), *_kv_inits()])  # fmt: skip


def decode_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "Gather", ["embed_tokens", "input_ids"], ["h"], name="/model/embed_tokens/Gather"
        ),
        helper.make_node("MatMul", ["h", "lm_head"], ["logits"], name="/lm_head/MatMul"),
    ]
    for layer in range(LAYERS):
        nodes += _kv_nodes("h", layer, past=True)
    inputs = [
        _vi("input_ids", I64, ["batch", 1]),
        _vi("position_ids", I64, ["batch", 1]),
        _vi("attention_mask", I64, ["batch", "total_sequence"]),
    ]
    inputs += [
        _vi(f"past_key_values.{i}.{k}", F, ["batch", N_KV, "past_sequence", HD])
        for i in range(LAYERS)
        for k in ("key", "value")
    ]
    outputs = [_vi("logits", F, ["batch", 1, V]), *_kv_outputs("total_sequence")]
    inits = [_init("embed_tokens", (V, D), 3), _init("lm_head", (D, V), 5), *_kv_inits()]
    return make_model(nodes, inputs, outputs, inits)  # fmt: skip


def embed_model(out: str = "inputs_embeds", extra_input: bool = False) -> onnx.ModelProto:
    nodes = [
        helper.make_node(
            "Gather", ["embed_tokens", "input_ids"], [out], name="/model/embed_tokens/Gather"
        )
    ]
    inputs = [_vi("input_ids", I64, ["batch", "sequence"])]
    if extra_input:
        inputs.append(_vi("attention_mask", I64, ["batch", "sequence"]))
    return make_model(nodes, inputs, [_vi(out, F, ["batch", "sequence", D])], [_init("embed_tokens", (V, D), 3)])  # fmt: skip


def _io(model: onnx.ModelProto) -> dict:
    names = {1: "float32", 7: "int64", 10: "float16"}

    def spec(vi):
        dims = vi.type.tensor_type.shape.dim
        return {
            "dtype": names[vi.type.tensor_type.elem_type],
            "shape": [d.dim_param or d.dim_value for d in dims],
        }

    return {"inputs": {v.name: spec(v) for v in model.graph.input},
            "outputs": {v.name: spec(v) for v in model.graph.output}}  # fmt: skip


def make_export(out: Path, extra: dict[str, onnx.ModelProto] | None = None) -> Path:
    """Write an export-shaped directory; `extra` replaces or adds graphs by file name."""
    out.mkdir(parents=True)
    models = {
        "embed.onnx": embed_model(),
        "encoder.onnx": embed_model("encoder_hidden", extra_input=True),
        "prefill.onnx": prefill_model(),
        "decode.onnx": decode_model(),
        **(extra or {}),
    }
    for name, model in models.items():
        onnx.save(model, str(out / name))
    (out / "tokenizer.json").write_text("{}")
    config = {"model": "tiny-test", "max_context": MAX_CONTEXT, "dtype": "fp32", "num_layers": LAYERS,
              "num_kv_heads": N_KV, "head_dim": HD, "hidden_size": D, "vocab_size": V}  # fmt: skip
    graphs = {Path(n).stem: _io(m) for n, m in models.items()}
    write_manifest(out, Manifest(format=FORMAT_EXPORT, graphs=graphs, config=config))
    return out


@pytest.fixture
def fake_export(tmp_path) -> Path:
    return make_export(tmp_path / "export")


def test_fake_export_graphs_run_in_onnxruntime(fake_export):
    """The hand-built graphs are valid and honour the contract's shapes (B=1, T=5, P=3)."""
    import onnxruntime as ort

    def run(name, feeds):
        sess = ort.InferenceSession(str(fake_export / name), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))

    ids = np.arange(5, dtype=np.int64)[None]
    emb = run("embed.onnx", {"input_ids": ids})["inputs_embeds"]
    pre = run(
        "prefill.onnx",
        {"inputs_embeds": emb, "position_ids": ids, "attention_mask": np.ones_like(ids)},
    )
    assert pre["logits"].shape == (1, 5, V) and pre["present.1.key"].shape == (1, N_KV, 5, HD)
    past = {
        f"past_key_values.{i}.{k}": pre[f"present.{i}.{k}"]
        for i in range(LAYERS)
        for k in ("key", "value")
    }
    dec = run(
        "decode.onnx",
        {
            "input_ids": ids[:, :1],
            "position_ids": ids[:, :1] + 5,
            "attention_mask": np.ones((1, 6), np.int64),
            **past,
        },
    )
    assert dec["logits"].shape == (1, 1, V) and dec["present.0.value"].shape == (1, N_KV, 6, HD)  # fmt: skip
