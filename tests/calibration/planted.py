"""A tiny three-MatMul "LM head" graph with one planted quantization-sensitive MatMul."""

from __future__ import annotations

from pathlib import Path

import numpy as np

D, V = 32, 64


def make_planted_graph(path: Path, seed: int = 0) -> Path:
    """x (1, T, D) -> mm_in -> +outlier -> mm_planted -> mm_out -> logits (1, T, V).

    The Add puts a 400.0 outlier into channel 0 before `mm_planted` (whose weight row 0 is zero,
    so fp32 ignores it): a per-tensor int8 range for that input then rounds every other channel
    to zero. Quantizing `mm_planted` destroys the output; the other two MatMuls are harmless.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_in = rng.normal(0, 1 / np.sqrt(D), (D, D)).astype(np.float32)
    w_planted = rng.normal(0, 1 / np.sqrt(D), (D, D)).astype(np.float32)
    w_planted[0] = 0.0
    w_out = rng.normal(0, 3 / np.sqrt(D), (D, V)).astype(np.float32)
    outlier = np.zeros(D, np.float32)
    outlier[0] = 400.0
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in (
            (w_in, "layers.0.mlp.up_proj.weight"),
            (w_planted, "layers.0.mlp.down_proj.weight"),
            (w_out, "lm_head.weight"),
            (outlier, "outlier"),
        )
    ]
    nodes = [
        helper.make_node(
            "MatMul", ["inputs_embeds", "layers.0.mlp.up_proj.weight"], ["h1"], "mm_in"
        ),
        helper.make_node("Add", ["h1", "outlier"], ["h2"], "add_outlier"),
        helper.make_node("MatMul", ["h2", "layers.0.mlp.down_proj.weight"], ["h3"], "mm_planted"),
        helper.make_node("MatMul", ["h3", "lm_head.weight"], ["logits"], "mm_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [1, "T", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", V])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def planted_feeds(n: int, T: int = 16, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"inputs_embeds": rng.normal(0, 1, (1, T, D)).astype(np.float32)} for _ in range(n)]


def pseudo_ppl(path: Path, feeds, reference: list[np.ndarray]) -> float:
    """exp(mean CE) of the model's logits against the fp32 model's argmax tokens."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    nll = []
    for feed, ref in zip(feeds, reference, strict=True):
        (logits,) = sess.run(["logits"], feed)
        z = logits[0].astype(np.float64)
        lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        nll.append(lse - z[np.arange(len(ref)), ref])
    return float(np.exp(np.mean(np.concatenate(nll))))


def plant_outliers(export_dir: Path, out_dir: Path, match: str = "", value: float = 400.0) -> Path:
    """Copy an export, planting a quantization-hostile outlier before chosen weight MatMuls.

    For each prefill/decode MatMul with a constant weight whose name contains `match`:
    input x -> x + [400, 0, ...] and the weight's row 0 -> 0. The fp32 model ignores channel 0,
    so it stays a valid model, but any per-tensor (or per-block) int8 activation range is then
    set by the outlier and the other channels round to zero. A `value` past 65504 overflows fp16
    (made at run time by a Mul, since the fp16 converter clamps constants).
    """
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    from semedge.artifacts import load_manifest, write_manifest

    shutil.copytree(export_dir, out_dir)
    for graph in ("prefill.onnx", "decode.onnx"):
        model = onnx.load(str(out_dir / graph))
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        weights.update(
            {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
             if n.op_type == "Constant" and n.attribute[0].name == "value"}
        )  # fmt: skip
        nodes = []
        for k, node in enumerate(model.graph.node):
            w = weights.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") else None
            if w is not None and w.ndim == 2 and match in node.name:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                arr = w.astype(np.float32).copy()
                if trans_b:  # Gemm(A, B^T): B is (N, K)
                    arr[:, 0] = 0.0
                else:
                    arr[0] = 0.0
                out = np.zeros(arr.shape[1] if trans_b else arr.shape[0], np.float32)
                out[0] = min(value, 400.0)
                model.graph.initializer.extend(
                    [numpy_helper.from_array(arr, f"planted_w{k}"),
                     numpy_helper.from_array(out, f"planted_c{k}")]
                )  # fmt: skip
                offset = f"planted_c{k}"
                if value > 400.0:  # computed at run time: a stored constant would be clamped
                    scale = np.array(value / 400.0, np.float32)
                    model.graph.initializer.append(numpy_helper.from_array(scale, f"planted_s{k}"))
                    nodes.append(helper.make_node("Mul", [offset, f"planted_s{k}"],
                                                  [f"planted_o{k}"], f"planted_mul{k}"))  # fmt: skip
                    offset = f"planted_o{k}"
                nodes.append(
                    helper.make_node(
                        "Add", [node.input[0], offset], [f"planted_x{k}"], f"planted_add{k}"
                    )
                )
                node.input[0], node.input[1] = f"planted_x{k}", f"planted_w{k}"
            nodes.append(node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(out_dir / graph))
    write_manifest(out_dir, load_manifest(out_dir))
    return out_dir
