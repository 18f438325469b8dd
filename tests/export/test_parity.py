"""The parity gate as a library: grids, reports, and a gate that can fail."""

from __future__ import annotations

import pytest

from semedge.errors import InputError
from semedge.export import ExportConfig, ParityConfig, export_onnx
from semedge.export.parity import FAST_LENGTHS, check_parity
from semedge.models import load_model


def test_grid_is_capped_by_max_context():
    assert ParityConfig().grid(8192) == sorted(FAST_LENGTHS)
    assert ParityConfig(decode_steps=4).grid(64)[-1] == 60  # room for the decode steps
    assert max(ParityConfig.slow().grid(2048)) == 2044


def test_bad_parity_config_is_an_input_error():
    with pytest.raises(InputError, match="parity lengths must be >= 2"):
        ParityConfig(lengths=(1, 16))
    with pytest.raises(InputError, match="decode_steps"):
        ParityConfig(decode_steps=0)


def test_check_parity_reports_every_case(tiny_export, tiny_llama):
    model, tok = load_model(tiny_llama)
    cfg = ParityConfig(lengths=(9, 40), decode_steps=3)
    report = check_parity(model, tok, tiny_export, max_context=2048, atol=1e-4, config=cfg)
    assert report.passed and bool(report)
    names = [(c.case, c.tokens) for c in report.cases]
    assert ("text", 9) in names and ("text", 40) in names
    assert {"embed", "encoder", "batch", "compressed"} <= {c.case for c in report.cases}
    assert ("chunked", 40) in names  # the longest text, 3 chunks, the last two on decode.onnx
    d = report.to_dict()
    assert d["passed"] is True and len(d["cases"]) == len(report.cases)
    assert len(report.rows()[0]) == len(report.HEADERS)
    # the same export measured against a budget it cannot meet: the report says so
    strict = check_parity(model, tok, tiny_export, 2048, atol=1e-12, config=cfg)
    assert not strict.passed and strict.worst().max_abs > 1e-12


def test_chunked_prefill_is_gated_on_both_sides(tiny_export, tiny_llama, monkeypatch):
    """prefill_chunk reads every case in chunks, the torch reference too; a chunk that loses
    reads its tokens at the wrong positions fails the chunked case."""
    from semedge.runtime.generator import Generator

    model, tok = load_model(tiny_llama)
    cfg = ParityConfig(lengths=(50,), decode_steps=2, compressed=False, prefill_chunk=16)
    report = check_parity(model, tok, tiny_export, 2048, atol=1e-4, config=cfg)
    cases = {c.case for c in report.cases}  # every text is chunked: no separate 3-chunk case
    assert report.passed and cases >= {"text", "batch"} and "chunked" not in cases
    with pytest.raises(InputError, match="prefill_chunk"):
        ParityConfig(prefill_chunk=0)

    def shifted(self, tokens, pos, mask, start, chunk):
        return real(self, tokens, pos + 1, mask, start, chunk)  # the chunks' rotary one step off

    real = Generator._prefill_chunks
    monkeypatch.setattr(Generator, "_prefill_chunks", shifted)
    cfg = ParityConfig(lengths=(50,), decode_steps=1, batch=False, compressed=False)
    broken = check_parity(model, tok, tiny_export, 2048, atol=1e-3, config=cfg)
    assert [c.passed for c in broken.cases if c.case == "chunked"] == [False]


def test_gate_compares_against_the_model_not_the_wrappers(tiny_export, tiny_models):
    """A different model (other seed, same shapes) must fail against this export."""
    from semedge.models import make_tiny_model

    other = make_tiny_model("llama", tiny_models["llama"].parent / "llama-seed1", seed=1)
    model, tok = load_model(other)
    cfg = ParityConfig(lengths=(9,), decode_steps=1, batch=False, compressed=False)
    report = check_parity(model, tok, tiny_export, 2048, atol=1e-3, config=cfg)
    assert not report.passed
    assert min(c.top1 for c in report.cases if c.case == "text") < 1.0


@pytest.mark.slow
def test_smollm2_passes_the_long_grid(tmp_path):
    report = export_onnx("smollm2", tmp_path / "smollm2", ExportConfig(parity=ParityConfig.slow()))
    assert report.passed
    lengths = {c.tokens for c in report.parity.cases if c.case == "text"}
    assert max(lengths) >= 4000
    assert all(c.top1 == 1.0 for c in report.parity.cases)


@pytest.mark.slow
def test_smollm2_fp16_export_passes_its_budget(tmp_path):
    cfg = ExportConfig(dtype="fp16", parity=ParityConfig(lengths=(16, 512)))
    report = export_onnx("smollm2", tmp_path / "smollm2-fp16", cfg)
    assert report.passed


def test_gate_texts_begin_as_prompts_do(tiny_llama):
    """A tokenizer that adds a BOS (Gemma 3's) gets it first in the text and batch cases, as
    every runtime prompt has it; the compressed case's text leaves it to compress()."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from semedge.export.parity import gate_text_ids

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    plain = gate_text_ids(tok, 12)
    bos = tok.convert_ids_to_tokens(int(plain[3]))  # any token of the vocabulary serves
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, int(plain[3]))]
    )
    ids = gate_text_ids(tok, 12)
    assert ids.size == 12 and ids[0] == plain[3] and list(ids[1:]) == list(plain[:11])
    assert list(gate_text_ids(tok, 12, lead=False)) == list(plain)
    assert list(gate_text_ids(tok, 6, offset=5)) == [
        plain[3],
        *gate_text_ids(tok, 5, offset=5, lead=False),
    ]
