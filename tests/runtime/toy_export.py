"""A toy export that follows the export contract exactly, built with onnx.helper in ~100 ms.

The "model" is causal and cache-consistent, so prefill(T) + decode(1) must equal prefill(T+1):

    h_t      = E[id_t] + P[pos_t]                          (embed + position table)
    k_t, v_t = h_t Wk_i, h_t Wv_i                          per layer i, stored as presents
    logits_t = (h_t + sum_i masked_mean_{j<=t}(v_j)) W_out
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from semedge.artifacts import Manifest, write_manifest
from semedge.constants import FORMAT_EXPORT

D, L, NKV, HD = 8, 2, 2, 4  # hidden, layers, kv heads, head dim (NKV * HD == D)
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _kv_nodes(h, i, t_dim, prefix):
    """h (B,t,D) -> key/value (B,NKV,t,HD) for layer i."""
    nodes = []
    for kind in ("k", "v"):
        nodes += [
            helper.make_node("MatMul", [h, f"W{kind}{i}"], [f"{prefix}{kind}{i}_flat"]),
            helper.make_node("Reshape", [f"{prefix}{kind}{i}_flat", "kv_shape"], [f"{prefix}{kind}{i}_4"]),
            helper.make_node("Transpose", [f"{prefix}{kind}{i}_4"], [f"{prefix}{kind}{i}"], perm=[0, 2, 1, 3]),
        ]  # fmt: skip
    return nodes


def _masked_mean(values_bdt, mask, out, tag):
    """values (B, t, D), mask (B, t) int64 -> (B, 1, D) mean over unmasked positions."""
    return [
        helper.make_node("Cast", [mask], [f"{tag}_mf"], to=F),
        helper.make_node("Unsqueeze", [f"{tag}_mf", "ax2"], [f"{tag}_m3"]),
        helper.make_node("Mul", [values_bdt, f"{tag}_m3"], [f"{tag}_vm"]),
        helper.make_node("ReduceSum", [f"{tag}_vm", "ax1"], [f"{tag}_s"], keepdims=1),
        helper.make_node("ReduceSum", [f"{tag}_m3", "ax1"], [f"{tag}_n"], keepdims=1),
        helper.make_node("Div", [f"{tag}_s", f"{tag}_n"], [out]),
    ]


def _weights(rng, vocab, max_pos):
    w = {
        "E": rng.standard_normal((vocab, D)).astype(np.float32),
        "P": (0.1 * rng.standard_normal((max_pos, D))).astype(np.float32),
        "Wout": rng.standard_normal((D, vocab)).astype(np.float32),
    }
    for i in range(L):
        w[f"Wk{i}"] = rng.standard_normal((D, D)).astype(np.float32)
        w[f"Wv{i}"] = rng.standard_normal((D, D)).astype(np.float32)
    return w


def _save(nodes, inputs, outputs, inits, path):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _common_inits(w):
    return [_const(k, v) for k, v in w.items()] + [
        _const("kv_shape", np.array([0, 0, NKV, HD], np.int64)),
        _const("flat_shape", np.array([0, 0, D], np.int64)),
        _const("ax1", np.array([1], np.int64)),
        _const("ax2", np.array([2], np.int64)),
    ]


def _prefill(w, path):
    nodes = [
        helper.make_node("Gather", ["P", "position_ids"], ["pe"]),
        helper.make_node("Add", ["inputs_embeds", "pe"], ["h"]),
    ]
    outs, ctx = [], []
    for i in range(L):
        nodes += _kv_nodes("h", i, "T", "p")
        nodes += [
            helper.make_node("Identity", [f"pk{i}"], [f"present.{i}.key"]),
            helper.make_node("Identity", [f"pv{i}"], [f"present.{i}.value"]),
            helper.make_node("MatMul", ["h", f"Wv{i}"], [f"vflat{i}"]),
        ]
        nodes += _masked_mean(f"vflat{i}", "attention_mask", f"ctx{i}", f"m{i}")
        ctx.append(f"ctx{i}")
        outs += [helper.make_tensor_value_info(f"present.{i}.{k}", F, ["B", NKV, "T", HD])
                 for k in ("key", "value")]  # fmt: skip
    nodes += [
        helper.make_node("Sum", ctx, ["ctx"]),
        helper.make_node("Slice", ["h", "m1", "big", "ax1"], ["hlast"]),
        helper.make_node("Add", ["hlast", "ctx"], ["z"]),
        helper.make_node("MatMul", ["z", "Wout"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", F, ["B", "T", D]),
        helper.make_tensor_value_info("position_ids", I64, ["B", "T"]),
        helper.make_tensor_value_info("attention_mask", I64, ["B", "T"]),
    ]
    inits = _common_inits(w) + [_const("m1", np.array([-1], np.int64)),
                                _const("big", np.array([1 << 30], np.int64))]  # fmt: skip
    outputs = [helper.make_tensor_value_info("logits", F, ["B", 1, "V"]), *outs]
    _save(nodes, inputs, outputs, inits, path)


def _decode(w, path):
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["te"]),
        helper.make_node("Gather", ["P", "position_ids"], ["pe"]),
        helper.make_node("Add", ["te", "pe"], ["h"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", I64, ["B", 1]),
        helper.make_tensor_value_info("position_ids", I64, ["B", 1]),
        helper.make_tensor_value_info("attention_mask", I64, ["B", "P1"]),
    ]
    outs, ctx = [], []
    for i in range(L):
        nodes += _kv_nodes("h", i, 1, "d")
        for kind, short in (("key", "k"), ("value", "v")):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", F, ["B", NKV, "P", HD])
            )
            nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.{kind}", f"d{short}{i}"],
                                          [f"present.{i}.{kind}"], axis=2))  # fmt: skip
            outs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", F, ["B", NKV, "P1", HD])
            )
        nodes += [
            helper.make_node("Transpose", [f"present.{i}.value"], [f"vt{i}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"vt{i}", "flat_shape"], [f"vflat{i}"]),
        ]
        nodes += _masked_mean(f"vflat{i}", "attention_mask", f"ctx{i}", f"m{i}")
        ctx.append(f"ctx{i}")
    nodes += [
        helper.make_node("Sum", ctx, ["ctx"]),
        helper.make_node("Add", ["h", "ctx"], ["z"]),
        helper.make_node("MatMul", ["z", "Wout"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", F, ["B", 1, "V"]), *outs]
    _save(nodes, inputs, outputs, _common_inits(w), path)


def _simple(w, table, out_name, path, with_mask):
    nodes = [helper.make_node("Gather", [table, "input_ids"], [out_name])]
    inputs = [helper.make_tensor_value_info("input_ids", I64, ["B", "T"])]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", I64, ["B", "T"]))
    outputs = [helper.make_tensor_value_info(out_name, F, ["B", "T", D])]
    _save(nodes, inputs, outputs, [_const(table, w[table])], path)


def build_toy_export(
    out: Path, tokenizer_json: Path, max_context: int = 512, seed: int = 0
) -> Path:
    """Write a complete toy export directory (graphs, tokenizer.json, manifest.json)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    vocab = tok.get_vocab_size()
    rng = np.random.default_rng(seed)
    w = _weights(rng, vocab, 4 * max_context)  # positions run to T + new
    w["Eenc"] = rng.standard_normal((vocab, D)).astype(np.float32)
    out.mkdir(parents=True)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    _simple(w, "E", "inputs_embeds", out / "embed.onnx", with_mask=False)
    _simple(w, "Eenc", "encoder_hidden", out / "encoder.onnx", with_mask=True)
    _prefill(w, out / "prefill.onnx")
    _decode(w, out / "decode.onnx")
    eos = tok.token_to_id("<|endoftext|>")
    config = {
        "model": "toy", "model_type": "llama", "max_context": max_context,
        "max_positions": 4 * max_context, "dtype": "float32",
        "num_layers": L, "num_kv_heads": NKV, "head_dim": HD, "hidden_size": D,
        "vocab_size": vocab, "eos_token_id": eos, "bos_token_id": eos, "logits": "last",
        "compression": {"ratio": 2.4, "recency_window": 8, "sink_tokens": 2},
        "encoder": {"kind": "lm", "layers": 1}, "adapter": None,
    }  # fmt: skip
    write_manifest(
        out, Manifest(format=FORMAT_EXPORT, config=config, created_by={"semedge": "test"})
    )
    json.loads((out / "manifest.json").read_text())
    return out


def sample_text() -> str:
    """The real article text shipped in the package (what profile and the demo use)."""
    from semedge.runtime.profiling import _asset_text

    return _asset_text()
